"""Layers: each writes its own forward and backward pass."""

from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, layer_class
from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .pooling import AvgPool2D, MaxPool2D
from .reshape import Flatten

__all__ = ["GELU", "AvgPool2D", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "Conv2D", "Dense", "Dropout",
           "Flatten", "Layer", "LeakyReLU", "MaxPool2D", "ReLU", "Sigmoid", "Softmax", "Tanh", "layer_class"]
