"""Devices and array modules: what a device is, which array module serves it, and moving arrays between them.

Three kinds of device exist: ``cpu`` (numpy), ``cuda:N`` (cupy on a real GPU, :mod:`.cuda`) and ``emulated``,
a GPU stand-in for machines without one (:mod:`.emulated`, which registers itself here with
:func:`register_kind`). Importing this module never fails for lack of cupy, a driver or a GPU.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import cuda

log = logging.getLogger("gpucnn")

DEVICE_ENV = "GPUCNN_DEVICE"


class CudaUnavailableError(RuntimeError):
    """A CUDA device was asked for and none is usable; the message says what is missing and the fix."""


class DeviceMismatchError(TypeError):
    """Arrays from different devices (e.g. numpy and cupy) met in one call."""


# ------------------------------------------------------------------------------------ registered kinds

@dataclass(frozen=True)
class _Kind:
    """How the core handles a device kind implemented elsewhere (the emulated GPU)."""
    xp: object                  # its array module
    array_type: type            # the class of its arrays
    upload: object              # (x, host numpy array) -> device array
    download: object            # device array -> host numpy array
    compile_module: object      # (code, options) -> module with .get_function(name)


_KINDS: dict[str, _Kind] = {}


def register_kind(name: str, *, xp, array_type, upload, download, compile_module):
    """Make device kind `name` known to the core (called by gpucnn.devices for the emulated GPU)."""
    _KINDS[name] = _Kind(xp, array_type, upload, download, compile_module)


def _registered_kind(x):
    for name, kind in _KINDS.items():
        if isinstance(x, kind.array_type):
            return name
    return None


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
            return cuda.cupy_module()
        if self.kind in _KINDS:
            return _KINDS[self.kind].xp
        return np


CPU = Device("cpu")
EMULATED = Device("emulated")


def get_device(spec=None) -> Device:
    """Resolve 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'emulated' (default: $GPUCNN_DEVICE, else 'auto').

    Raises ValueError for an unknown name and CudaUnavailableError when a GPU is asked for and none is usable."""
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
        ok, why = cuda.cuda_status()
        if ok:
            return Device("cuda", 0)
        _log_fallback(why)
        return CPU
    if s in ("cuda", "gpu") or s.startswith(("cuda:", "gpu:")):
        idx_text = s.split(":", 1)[1] if ":" in s else "0"
        if not idx_text.isdigit():
            raise ValueError(f"device {spec!r}: expected 'cuda' or 'cuda:N' with N a GPU number")
        ok, why = cuda.cuda_status()
        if not ok:
            raise CudaUnavailableError(f"device {spec!r} was asked for but CUDA is not usable: {why}. "
                                       f"Use --device cpu (or auto) to run on the CPU")
        count = cuda.device_count()
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
    kind = _registered_kind(x)
    if kind is not None:
        return Device(kind)
    if cuda.is_cupy_array(x):
        return Device("cuda", x.device.id)
    return CPU


def get_array_module(*arrays):
    """numpy, cupy or the emulated-cupy namespace, from the arrays given (None and scalars are ignored).

    Raises DeviceMismatchError when host arrays and device arrays are mixed: such code would fail on a GPU.
    """
    kinds = {device_of(a).kind for a in arrays if isinstance(a, np.ndarray) or cuda.is_cupy_array(a)}
    if len(kinds) > 1:
        raise DeviceMismatchError(
            f"arrays from different devices were mixed in one call ({', '.join(sorted(kinds))}); "
            f"move them to one device first with gpucnn.to_device(x, device)")
    kind = kinds.pop() if kinds else "cpu"
    return Device(kind).xp


def is_gpu_array(x) -> bool:
    """True for arrays on a (real or emulated) GPU: layers then use the custom kernels."""
    return device_of(x).is_gpu


# ---------------------------------------------------------------------------------------- transfers

def to_device(x, device=None):
    """Copy (if needed) an array to the device ('auto', 'cpu', 'cuda:N', 'emulated' or a Device)."""
    dev = get_device(device)
    if dev.kind == "cpu":
        return to_cpu(x)
    if dev.kind in _KINDS:
        kind = _KINDS[dev.kind]
        if isinstance(x, kind.array_type):
            return x
        return kind.upload(x, to_cpu(x))
    cp = cuda.cupy_module()
    if _registered_kind(x) is not None:
        x = to_cpu(x)
    with cp.cuda.Device(dev.index):
        return cp.asarray(x)


def to_cpu(x):
    """The array as a numpy array (a device-to-host copy for GPU arrays; counted on the emulated device)."""
    kind = _registered_kind(x)
    if kind is not None:
        return _KINDS[kind].download(x)
    if cuda.is_cupy_array(x):
        return cuda.cupy_module().asnumpy(x)
    return np.asarray(x)


def synchronize(device=None):
    """Wait for the device to finish its queued work (no-op on the CPU); used only for honest timing."""
    dev = get_device(device) if device is not None else None
    if dev is not None and dev.kind == "cuda":
        cuda.cupy_module().cuda.Device(dev.index).synchronize()


class DeviceTimer:
    """Times a block honestly: wall clock on the CPU; CUDA events and a final sync on a GPU, so that work
    still queued on the device when the block ends is counted. `seconds` holds the result."""

    def __init__(self, device=None):
        self.device = get_device(device)
        self.seconds = None

    def __enter__(self):
        if self.device.kind == "cuda":
            cp = cuda.cupy_module()
            with cp.cuda.Device(self.device.index):
                self._start, self._end = cp.cuda.Event(), cp.cuda.Event()
                self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.kind == "cuda":
            cp = cuda.cupy_module()
            with cp.cuda.Device(self.device.index):
                self._end.record()
                self._end.synchronize()
                self.seconds = cp.cuda.get_elapsed_time(self._start, self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0
        return False


# ------------------------------------------------------------------------------------- kernel modules

def compile_module(code: str, options: tuple, device: Device):
    """Compile CUDA source for a device; returns an object with .get_function(name) -> callable(grid, block, args).

    cupy.RawModule on a real GPU, the registered kind's compiler (g++ for the emulated device) otherwise.
    """
    if device.kind == "cuda":
        return cuda.compile_module(code, options, device.index)
    if device.kind in _KINDS:
        return _KINDS[device.kind].compile_module(code, options)
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
            cp = cuda.cupy_module()
            with cp.cuda.Device(index):
                g = cp.random.default_rng(int(self.host.integers(2**63 - 1)))
            self._gpu[index] = g
        return g


_rng = _RNG()


def seed(n: int | None):
    """Seed every random number generator the library uses (weights, data order, dropout, augmentation)."""
    _rng.seed(n)
    cp = sys.modules.get("cupy")
    if cp is not None and n is not None and cuda.cuda_status()[0]:
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
    return _KINDS[dev.kind].upload(sample, sample) if dev.kind in _KINDS else sample


def get_rng_state() -> dict:
    """The host RNG state, JSON-serialisable, for checkpoints."""
    return _rng.host.bit_generator.state


def set_rng_state(state: dict):
    """Restore a state from get_rng_state()."""
    bg = np.random.PCG64()
    bg.state = state
    _rng.host = np.random.Generator(bg)
    _rng._gpu = {}
