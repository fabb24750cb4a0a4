"""Layers: each writes its own forward and backward pass."""

from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .attention import MultiHeadAttention
from .base import Layer, layer_class
from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d
from .containers import LayerContainer, Residual
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding, PositionalEmbedding
from .normalization import LayerNorm
from .pooling import AvgPool2D, MaxPool2D
from .recurrent import GRU, LSTM
from .reshape import Flatten

__all__ = ["GELU", "GRU", "LSTM", "AvgPool2D", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "Conv2D", "Dense",
           "Dropout", "Embedding", "Flatten", "Layer", "LayerContainer", "LayerNorm", "LeakyReLU", "MaxPool2D",
           "MultiHeadAttention", "PositionalEmbedding", "ReLU", "Residual", "Sigmoid", "Softmax", "Tanh", "layer_class"]
