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


# ------------------------------------------------------------------------------------------------ NCCL

# dtypes NCCL reduces (ncclDataType_t), by numpy name, with cupy.cuda.nccl's constant for each
NCCL_DTYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "int64": "NCCL_INT64",
               "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


@functools.lru_cache(maxsize=None)
def nccl_status() -> tuple[bool, str]:
    """(usable, explanation): whether cupy's NCCL binding loaded libnccl (the nvidia-nccl-cu12/cu13 wheel, or
    a system NCCL), and its version, or why not."""
    ok, why = cuda_status()
    if not ok:
        return False, why
    import warnings
    with warnings.catch_warnings():   # cupy warns at import when libnccl is missing; the reason is said here
        warnings.simplefilter("ignore")
        try:
            from cupy.cuda import nccl
        except Exception as e:
            return False, f"cupy.cuda.nccl cannot be imported ({type(e).__name__}: {e})"
    if not getattr(nccl, "available", False):
        return False, ("libnccl could not be loaded: install the NCCL wheel matching cupy "
                       "(pip install 'gpucnn[distributed-cuda12]' or 'gpucnn[distributed-cuda13]')")
    return True, f"NCCL {nccl.get_version()}"


def check_collective_operand(a, index: int, current: int, what: str):
    """ValueError unless `a` can go to a device collective of the communicator of GPU `index` while GPU
    `current` is current: C-contiguous, of a dtype in NCCL_DTYPES, on that GPU (NCCL reads and writes the
    buffer in place, on the current device's stream)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {a.strides} for shape {a.shape}")
    if a.dtype.name not in NCCL_DTYPES:
        raise ValueError(f"{what}: NCCL does not reduce {a.dtype} arrays (expected one of {', '.join(NCCL_DTYPES)})")
    where = a.device.id
    if where != index or current != index:
        raise ValueError(f"{what}: the communicator is on GPU {index}, but the array is on GPU {where} with GPU "
                         f"{current} current")


class NcclComm:
    """One process's NCCL communicator on GPU `index` (cupy.cuda.nccl.NcclCommunicator): the device half of
    gpucnn.distributed's communicator. Collectives run in place on cupy arrays, on the current stream, without
    waiting: :meth:`marker` tells when the work queued so far is done.

    `uid` is :func:`nccl_unique_id`'s value on process 0, broadcast to the others (bytes on CuPy 14, a tuple of
    128 ints on CuPy 13: each version's NcclCommunicator takes back what its get_unique_id gave).
    """

    def __init__(self, size: int, uid, rank: int, index: int):
        from cupy.cuda import nccl
        cp = cupy_module()
        self._nccl, self._cp, self.index, self.size = nccl, cp, int(index), int(size)
        with cp.cuda.Device(self.index):
            self._comm = nccl.NcclCommunicator(int(size), uid, int(rank))

    def _args(self, a, what):
        check_collective_operand(a, self.index, self._cp.cuda.Device().id, f"NCCL {what}")
        return a.data.ptr, a.size, getattr(self._nccl, NCCL_DTYPES[a.dtype.name])

    def _stream(self):
        return self._cp.cuda.get_current_stream().ptr

    def all_reduce(self, a):
        """a <- the sum of every process's a, in place."""
        ptr, n, dtype = self._args(a, "all_reduce")
        self._comm.allReduce(ptr, ptr, n, dtype, self._nccl.NCCL_SUM, self._stream())

    def all_gather(self, a):
        """Every process's a stacked: a new array (size, *a.shape) on the same GPU."""
        ptr, n, dtype = self._args(a, "all_gather")
        out = self._cp.empty((self.size,) + tuple(a.shape), a.dtype)
        self._comm.allGather(ptr, out.data.ptr, n, dtype, self._stream())
        return out

    def broadcast(self, a, root: int = 0):
        """a <- process `root`'s a, in place."""
        ptr, n, dtype = self._args(a, "broadcast")
        self._comm.bcast(ptr, n, dtype, int(root), self._stream())

    def marker(self):
        """A function telling whether the work queued on the current stream so far has finished (a CUDA event:
        asking does not wait)."""
        event = self._cp.cuda.Event(block=False, disable_timing=True)
        event.record()
        return lambda: event.done

    def abort(self):
        """End the communicator at once, releasing collectives that wait for a process that will never come."""
        self._comm.abort()


def nccl_unique_id():
    """A new NCCL unique id (on process 0, to broadcast to the others)."""
    from cupy.cuda import nccl
    return nccl.get_unique_id()
