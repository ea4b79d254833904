"""CUDA through CuPy: the one module that imports cupy. Importing it never fails; what is missing (cupy, a
driver, a GPU) is said only when a GPU is asked for (the way Chainer's ``cuda.py`` does it)."""
from __future__ import annotations

import functools
import sys


@functools.lru_cache(maxsize=None)
def _import_cupy():
    """(cupy module or None, reason it is unusable or '')."""
    try:
        import cupy  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        return None, f"cupy is not installed ({type(e).__name__}: {e})"
    return cupy, ""


def cupy_module():
    """The cupy module, or None when it cannot be imported."""
    return _import_cupy()[0]


@functools.lru_cache(maxsize=None)
def cuda_status() -> tuple[bool, str]:
    """(usable, explanation): whether cupy, a CUDA driver and a GPU are all there, and if not, which is missing."""
    cp, why = _import_cupy()
    if cp is None:
        return False, (f"{why}. Install it with: pip install 'gpucnn[cuda12]' (CUDA 12) or "
                       f"'gpucnn[cuda13]' (CUDA 13), matching your driver's CUDA version")
    try:
        driver = cp.cuda.runtime.driverGetVersion()
    except Exception as e:
        return False, (f"cupy {cp.__version__} is installed but no CUDA driver was found ({e}). "
                       f"Install the NVIDIA driver (nvidia-smi must work)")
    if driver == 0:
        return False, (f"cupy {cp.__version__} is installed but no CUDA driver was found. "
                       f"Install the NVIDIA driver (nvidia-smi must work)")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, (f"cupy {cp.__version__} and CUDA driver {driver} are installed but no GPU is usable "
                       f"({e}). Check nvidia-smi and CUDA_VISIBLE_DEVICES")
    if count == 0:
        return False, (f"cupy {cp.__version__} and CUDA driver {driver} are installed but no GPU was found. "
                       f"Check nvidia-smi and CUDA_VISIBLE_DEVICES")
    return True, f"cupy {cp.__version__}, CUDA driver {driver}, {count} GPU(s)"




def is_cupy_array(x) -> bool:
    """True for a cupy array; never imports cupy (no cupy array can exist before it is imported)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def device_count() -> int:
    """The number of GPUs cupy sees (call only when cuda_status() says CUDA is usable)."""
    return cupy_module().cuda.runtime.getDeviceCount()


def compile_module(code: str, options: tuple, index: int):
    """cupy.RawModule for GPU `index` (compiled lazily by cupy on first use; call .compile() to force it)."""
    cp = cupy_module()
    with cp.cuda.Device(index):
        return cp.RawModule(code=code, options=options)
