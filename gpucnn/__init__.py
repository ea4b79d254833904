"""gpucnn: convolutional networks whose same layers run on NumPy (CPU) and CuPy (CUDA GPU)."""
from . import init, models, optim
from .backend import (CudaUnavailableError, DeviceMismatchError, get_array_module, get_device, seed, to_cpu,
                      to_device)
from .data import DataLoader, Dataset, DatasetError, load_dataset
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layer_names
from .sequential import Sequential

__version__ = "0.1.0"

__all__ = ["CudaUnavailableError", "DeviceMismatchError", "get_array_module", "get_device", "seed", "to_cpu",
           "to_device", "DataLoader", "Dataset", "DatasetError", "load_dataset", "Sequential", "init", "models",
           "optim", "__version__", *_layer_names]
