"""Layers: each writes its own forward and backward pass."""

from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, layer_class
from .dense import Dense

__all__ = ["GELU", "Dense", "Layer", "LeakyReLU", "ReLU", "Sigmoid", "Softmax", "Tanh", "layer_class"]
