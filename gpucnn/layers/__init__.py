"""The layer set: forward/backward on any device through ``xp`` (numpy, cupy or the emulated GPU).

One module per family, as ``torch.nn.modules``: :mod:`.base` (Layer), :mod:`.conv` (+ :mod:`.winograd`),
:mod:`.pooling`, :mod:`.linear`, :mod:`.activation`, :mod:`.dropout`, :mod:`.normalization`, :mod:`.loss` and
:mod:`.containers`; every layer is importable from here (``from gpucnn.layers import Conv2D``).
"""
from . import init  # noqa: F401 (gpucnn.layers.init: the initialisers)
from .activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .base import Layer
from .containers import Concat, Container, Residual, Sequential
from .conv import Conv2D, ConvTranspose2D, get_workspace_limit, set_workspace_limit
from .dropout import Dropout
from .linear import Affine, Flatten
from .loss import SoftmaxCrossEntropy
from .normalization import LRN, BatchNorm1D, BatchNorm2D
from .pooling import AdaptiveAvgPool2D, AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = ["Layer", "Container", "Sequential", "Residual", "Concat", "Conv2D", "ConvTranspose2D", "MaxPool2D",
           "AvgPool2D", "GlobalAvgPool2D", "AdaptiveAvgPool2D", "Affine", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
           "Flatten", "Dropout", "BatchNorm1D", "BatchNorm2D", "LRN", "SoftmaxCrossEntropy", "set_workspace_limit",
           "get_workspace_limit"]
