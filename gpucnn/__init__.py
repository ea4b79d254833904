"""gpucnn: convolutional networks whose same layers run on NumPy (CPU) and CuPy (CUDA GPU)."""
from .backend import (CudaUnavailableError, DeviceMismatchError, get_array_module, get_device, seed, to_cpu,
                      to_device)

__version__ = "0.1.0"

__all__ = ["CudaUnavailableError", "DeviceMismatchError", "get_array_module", "get_device", "seed", "to_cpu",
           "to_device", "__version__"]
