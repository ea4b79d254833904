"""Devices and array modules: the one place that imports cupy or knows what a device is.

Three devices exist: ``cpu`` (numpy), ``cuda:N`` (cupy on a real GPU) and ``emulated``, a GPU stand-in
for machines without one: its arrays are :class:`EmulatedArray` (numpy underneath) that behave like cupy
arrays where it matters for correctness (no mixing with host arrays, host syncs counted), and its kernels
run through :mod:`gpucnn.emulator`. Importing this module never fails for lack of cupy, a driver or a GPU.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import time
import types
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("gpucnn")

DEVICE_ENV = "GPUCNN_DEVICE"


class CudaUnavailableError(RuntimeError):
    """A CUDA device was asked for and none is usable; the message says what is missing and the fix."""


class DeviceMismatchError(TypeError):
    """Arrays from different devices (e.g. numpy and cupy) met in one call."""


# --------------------------------------------------------------------------------------------- cupy

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


# ------------------------------------------------------------------------------------------ devices

@dataclass(frozen=True)
class Device:
    """Where arrays live: kind is 'cpu', 'cuda' or 'emulated'; index is the GPU ordinal for 'cuda'."""
    kind: str
    index: int = 0

    def __str__(self):
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def is_gpu(self) -> bool:
        """True where layers take their GPU branch (custom kernels): real or emulated CUDA."""
        return self.kind != "cpu"

    @property
    def xp(self):
        """The array module for this device."""
        if self.kind == "cuda":
            return cupy_module()
        if self.kind == "emulated":
            return emulated_xp
        return np


CPU = Device("cpu")
EMULATED = Device("emulated")


def get_device(spec=None) -> Device:
    """Resolve 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'emulated' (default: $GPUCNN_DEVICE, else 'auto')."""
    if isinstance(spec, Device):
        return spec
    if spec is None:
        spec = os.environ.get(DEVICE_ENV) or "auto"
    s = str(spec).strip().lower()
    if s == "cpu":
        return CPU
    if s == "emulated":
        return EMULATED
    if s == "auto":
        ok, why = cuda_status()
        if ok:
            return Device("cuda", 0)
        _log_fallback(why)
        return CPU
    if s in ("cuda", "gpu") or s.startswith(("cuda:", "gpu:")):
        idx_text = s.split(":", 1)[1] if ":" in s else "0"
        if not idx_text.isdigit():
            raise ValueError(f"device {spec!r}: expected 'cuda' or 'cuda:N' with N a GPU number")
        ok, why = cuda_status()
        if not ok:
            raise CudaUnavailableError(f"device {spec!r} was asked for but CUDA is not usable: {why}. "
                                       f"Use --device cpu (or auto) to run on the CPU")
        count = cupy_module().cuda.runtime.getDeviceCount()
        idx = int(idx_text)
        if idx >= count:
            raise CudaUnavailableError(f"device {spec!r}: there are only {count} GPU(s) (cuda:0..cuda:{count - 1})")
        return Device("cuda", idx)
    raise ValueError(f"unknown device {spec!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'emulated'")


@functools.lru_cache(maxsize=None)
def _log_fallback(why):
    log.info("no usable GPU, running on the CPU (%s)", why)


def device_of(x) -> Device:
    """The device an array lives on (numpy scalars and Python numbers count as cpu)."""
    if isinstance(x, EmulatedArray):
        return EMULATED
    if _is_cupy_array(x):
        return Device("cuda", x.device.id)
    return CPU


def get_array_module(*arrays):
    """numpy, cupy or the emulated-cupy namespace, from the arrays given (None and scalars are ignored).

    Raises DeviceMismatchError when host arrays and device arrays are mixed: such code would fail on a GPU.
    """
    kinds = {device_of(a).kind for a in arrays if isinstance(a, np.ndarray) or _is_cupy_array(a)}
    if len(kinds) > 1:
        raise DeviceMismatchError(
            f"arrays from different devices were mixed in one call ({', '.join(sorted(kinds))}); "
            f"move them to one device first with gpucnn.to_device(x, device)")
    kind = kinds.pop() if kinds else "cpu"
    return Device(kind).xp if kind != "cuda" else cupy_module()


def _is_cupy_array(x):
    """True for a cupy array; never imports cupy (no cupy array can exist before it is imported)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def is_gpu_array(x) -> bool:
    """True for arrays on a (real or emulated) GPU: layers then use the custom kernels."""
    return device_of(x).is_gpu


# ---------------------------------------------------------------------------------------- transfers

class TransferStats:
    """Counts of device-to-host transfers and syncs on the emulated device, for tests of the hot path."""

    def __init__(self):
        self.device_to_host = 0

    def reset(self):
        self.device_to_host = 0


transfer_stats = TransferStats()


def to_device(x, device=None):
    """Copy (if needed) an array to the device ('auto', 'cpu', 'cuda:N', 'emulated' or a Device)."""
    dev = get_device(device)
    if dev.kind == "cpu":
        return to_cpu(x)
    if dev.kind == "emulated":
        if isinstance(x, EmulatedArray):
            return x
        cp = cupy_module() if _is_cupy_array(x) else None
        host = cp.asnumpy(x) if cp is not None else np.asarray(x)
        return np.ascontiguousarray(host).view(EmulatedArray)
    cp = cupy_module()
    if isinstance(x, EmulatedArray):
        x = np.asarray(x)
    with cp.cuda.Device(dev.index):
        return cp.asarray(x)


def to_cpu(x):
    """The array as a numpy array (a device-to-host copy for GPU arrays; counted on the emulated device)."""
    if isinstance(x, EmulatedArray):
        transfer_stats.device_to_host += 1
        return np.array(x.view(np.ndarray))
    if _is_cupy_array(x):
        return cupy_module().asnumpy(x)
    return np.asarray(x)


def synchronize(device=None):
    """Wait for the device to finish its queued work (no-op on the CPU); used only for honest timing."""
    dev = get_device(device) if device is not None else None
    if dev is not None and dev.kind == "cuda":
        cupy_module().cuda.Device(dev.index).synchronize()


class DeviceTimer:
    """Times a block honestly: wall clock on the CPU; CUDA events and a final sync on a GPU, so that work
    still queued on the device when the block ends is counted. `seconds` holds the result."""

    def __init__(self, device=None):
        self.device = get_device(device)
        self.seconds = None

    def __enter__(self):
        if self.device.kind == "cuda":
            cp = cupy_module()
            with cp.cuda.Device(self.device.index):
                self._start, self._end = cp.cuda.Event(), cp.cuda.Event()
                self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.kind == "cuda":
            cp = cupy_module()
            with cp.cuda.Device(self.device.index):
                self._end.record()
                self._end.synchronize()
                self.seconds = cp.cuda.get_elapsed_time(self._start, self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0
        return False


# ------------------------------------------------------------------------------------ emulated cupy

def _check_not_host(args, what):
    for a in args:
        if isinstance(a, (list, tuple)):
            _check_not_host(a, what)
        elif isinstance(a, np.ndarray) and not isinstance(a, EmulatedArray):
            raise DeviceMismatchError(
                f"{what}: a numpy (host) array of shape {a.shape} was passed into code running on the "
                f"emulated GPU; cupy would refuse it. Move it with gpucnn.to_device(x, device) first")


def _wrap(result):
    if isinstance(result, EmulatedArray):
        return result
    if isinstance(result, np.ndarray):
        return result.view(EmulatedArray)
    if isinstance(result, np.generic):
        return np.asarray(result).view(EmulatedArray)
    if isinstance(result, tuple):
        return tuple(_wrap(r) for r in result)
    if isinstance(result, list):
        return [_wrap(r) for r in result]
    return result


def _unwrap(a):
    if isinstance(a, EmulatedArray):
        return a.view(np.ndarray)
    if isinstance(a, (list, tuple)):
        return type(a)(_unwrap(x) for x in a)
    return a


class EmulatedArray(np.ndarray):
    """A numpy array standing in for a cupy array: mixing with host arrays raises, host reads are counted."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _check_not_host(inputs, f"numpy.{ufunc.__name__}")
        out = kwargs.get("out")
        if out is not None:
            _check_not_host(out, f"numpy.{ufunc.__name__}(out=...)")
            kwargs["out"] = _unwrap(out)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def _sync(self):
        transfer_stats.device_to_host += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def __index__(self):
        return self._sync().__index__()

    def item(self, *args):
        return self._sync().item(*args)

    def tolist(self):
        return self._sync().tolist()

    def get(self):
        """cupy's ndarray.get(): a host copy."""
        return to_cpu(self)

    def __repr__(self):
        return "emulated_" + repr(self.view(np.ndarray))


_CREATORS = {"array", "asarray", "ascontiguousarray", "asanyarray", "frombuffer"}


class _EmulatedNumpy(types.ModuleType):
    """numpy as seen from code running on the emulated GPU: results are EmulatedArrays, host arrays refused."""

    def __init__(self, base, name):
        super().__init__(name)
        self._base = base
        self._cache = {}

    def __getattr__(self, name):
        try:
            return self._cache[name]
        except KeyError:
            pass
        attr = getattr(self._base, name)
        if isinstance(attr, types.ModuleType) and attr.__name__.startswith("numpy"):
            value = _EmulatedNumpy(attr, "emulated_" + attr.__name__)
        elif isinstance(attr, (types.FunctionType, types.BuiltinFunctionType)) or (
                callable(attr) and type(attr).__name__ == "_ArrayFunctionDispatcher"):
            value = self._wrap_function(name, attr)
        else:
            value = attr
        self._cache[name] = value
        return value

    def _wrap_function(self, name, fn):
        checks = name not in _CREATORS

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if checks:
                _check_not_host(args, f"xp.{name}")
                _check_not_host(list(kwargs.values()), f"xp.{name}")
            result = fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
            return _wrap(result)
        return wrapper


emulated_xp = _EmulatedNumpy(np, "emulated_numpy")


# ------------------------------------------------------------------------------------- kernel modules

def compile_module(code: str, options: tuple, device: Device):
    """Compile CUDA source for a device; returns an object with .get_function(name) -> callable(grid, block, args).

    cupy.RawModule on a real GPU, gpucnn.emulator.RawModule (g++ on the CPU) on the emulated device.
    """
    if device.kind == "cuda":
        cp = cupy_module()
        with cp.cuda.Device(device.index):
            return cp.RawModule(code=code, options=options)
    if device.kind == "emulated":
        from . import emulator
        return emulator.RawModule(code=code, options=options)
    raise ValueError(f"kernels run on a GPU device, not on {device}")


# ------------------------------------------------------------------------------------------ randomness

class _RNG:
    """The library's random state: one numpy Generator for the host (init, data order, dropout on CPU and
    the emulated device) and, per GPU, a cupy generator seeded from it."""

    def __init__(self):
        self.seed(None)

    def seed(self, n):
        self.host = np.random.default_rng(n)
        self._gpu = {}

    def gpu(self, index):
        g = self._gpu.get(index)
        if g is None:
            cp = cupy_module()
            with cp.cuda.Device(index):
                g = cp.random.default_rng(int(self.host.integers(2**63 - 1)))
            self._gpu[index] = g
        return g


_rng = _RNG()


def seed(n: int | None):
    """Seed every random number generator the library uses (weights, data order, dropout, augmentation)."""
    _rng.seed(n)
    cp = sys.modules.get("cupy")
    if cp is not None and n is not None and cuda_status()[0]:
        cp.random.seed(n)


def host_rng() -> np.random.Generator:
    """The host generator (weight init, shuffling, augmentation)."""
    return _rng.host


def random_uniform(shape, like, dtype=None):
    """Uniform [0, 1) samples on the same device as `like` (used for dropout masks)."""
    dtype = np.dtype(dtype or like.dtype)
    dev = device_of(like)
    if dev.kind == "cuda":
        return _rng.gpu(dev.index).random(shape, dtype=dtype)
    sample = _rng.host.random(shape, dtype=dtype if dtype in (np.float32, np.float64) else np.float64)
    return sample.view(EmulatedArray) if dev.kind == "emulated" else sample


def get_rng_state() -> dict:
    """The host RNG state, JSON-serialisable, for checkpoints."""
    return _rng.host.bit_generator.state


def set_rng_state(state: dict):
    """Restore a state from get_rng_state()."""
    bg = np.random.PCG64()
    bg.state = state
    _rng.host = np.random.Generator(bg)
    _rng._gpu = {}
