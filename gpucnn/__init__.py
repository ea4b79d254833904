"""gpucnn: convolutional networks whose same layers run on NumPy (CPU) and CuPy (CUDA GPU).

The wings, each depending only on those below it: :mod:`gpucnn.cli` -> :mod:`gpucnn.train` ->
:mod:`gpucnn.layers` / :mod:`gpucnn.optim` / :mod:`gpucnn.data` -> :mod:`gpucnn.devices`.
"""
from . import devices, models, optim
from .data import DataLoader, Dataset, DatasetError, load_dataset
from .devices import (CudaUnavailableError, DeviceMismatchError, PrecisionError, from_dlpack, get_array_module,
                      get_device, get_precision, seed, to_cpu, to_device)
from .devices.precision import precision
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layer_names
from .layers import init
from .train import History, fit

__version__ = "0.1.0"

__all__ = ["CudaUnavailableError", "DeviceMismatchError", "from_dlpack", "get_array_module", "get_device", "get_precision", "precision", "PrecisionError", "seed",
           "to_cpu", "to_device", "DataLoader", "Dataset", "DatasetError", "load_dataset", "devices", "init", "models",
           "optim", "fit", "History", "__version__", *_layer_names]
