"""Devices and array modules: what a device is, which array module serves it, and moving arrays between them.

Three kinds of device exist: ``cpu`` (numpy), ``cuda:N`` (cupy on a real GPU, :mod:`.cuda`) and
``emulated``/``emulated:N``, GPU stand-ins for machines without one (:mod:`.emulated`, which registers itself
here with :func:`register_kind`). Work on a GPU runs on its *current* device (CuPy's rule): code that handles
arrays of GPU N runs inside ``device_scope(array)``. Importing this module never fails for lack of cupy, a
driver or a GPU.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
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
    count: int                  # how many devices of the kind there are (indices 0..count-1)
    upload: object              # (host numpy array, index) -> device array
    copy_to: object             # (device array, index) -> a copy on device `index`
    download: object            # device array -> host numpy array
    index_of: object            # device array -> its device index
    scope: object               # index -> context manager making that device current
    generator: object           # (seed, index) -> generator with .random(shape, dtype)
    compile_module: object      # (code, options, index) -> module with .get_function(name)


_KINDS: dict[str, _Kind] = {}


def register_kind(name: str, **kind):
    """Make device kind `name` known to the core (called by gpucnn.devices for the emulated GPU); the keyword
    arguments are the fields of _Kind."""
    _KINDS[name] = _Kind(**kind)


def _registered_kind(x):
    for name, kind in _KINDS.items():
        if isinstance(x, kind.array_type):
            return name
    return None


# ------------------------------------------------------------------------------------------ devices

@dataclass(frozen=True)
class Device:
    """Where arrays live: kind is 'cpu', 'cuda' or 'emulated'; index is the GPU ordinal ('cuda:1',
    'emulated:1'; 'emulated' is 'emulated:0')."""
    kind: str
    index: int = 0

    def __str__(self):
        if self.kind == "cuda" or (self.kind in _KINDS and self.index):
            return f"{self.kind}:{self.index}"
        return self.kind

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
    """Resolve 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'emulated' | 'emulated:N' (default: $GPUCNN_DEVICE, else
    'auto').

    Raises ValueError for an unknown name or emulated GPU and CudaUnavailableError when a GPU is asked for and
    none is usable."""
    if isinstance(spec, Device):
        return spec
    if spec is None:
        spec = os.environ.get(DEVICE_ENV) or "auto"
    s = str(spec).strip().lower()
    if s == "cpu":
        return CPU
    for name, kind in _KINDS.items():
        if s == name or s.startswith(name + ":"):
            idx_text = s.split(":", 1)[1] if ":" in s else "0"
            if not idx_text.isdigit() or int(idx_text) >= kind.count:
                raise ValueError(f"unknown device {spec!r}: there are {kind.count} {name} GPUs "
                                 f"({name}:0..{name}:{kind.count - 1})")
            return Device(name, int(idx_text))
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
    raise ValueError(f"unknown device {spec!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N', 'emulated' or "
                     f"'emulated:N'")


@functools.lru_cache(maxsize=None)
def _log_fallback(why):
    log.info("no usable GPU, running on the CPU (%s)", why)


def device_of(x) -> Device:
    """The device an array lives on (numpy scalars and Python numbers count as cpu)."""
    kind = _registered_kind(x)
    if kind is not None:
        return Device(kind, _KINDS[kind].index_of(x))
    if cuda.is_cupy_array(x):
        return Device("cuda", x.device.id)
    return CPU


def get_array_module(*arrays):
    """numpy, cupy or the emulated-cupy namespace, from the arrays given (None and scalars are ignored).

    Raises DeviceMismatchError when host arrays and device arrays are mixed: such code would fail on a GPU.
    """
    kinds = {device_of(a).kind for a in arrays
             if isinstance(a, np.ndarray) or cuda.is_cupy_array(a) or _registered_kind(a) is not None}
    if len(kinds) > 1:
        raise DeviceMismatchError(
            f"arrays from different devices were mixed in one call ({', '.join(sorted(kinds))}); "
            f"move them to one device first with gpucnn.to_device(x, device)")
    kind = kinds.pop() if kinds else "cpu"
    return Device(kind).xp


def is_gpu_array(x) -> bool:
    """True for arrays on a (real or emulated) GPU: layers then use the custom kernels."""
    return device_of(x).is_gpu


def device_scope(where):
    """A context manager making a GPU current for the work inside: `where` is an array (its device), a Device
    or a device name. ``cupy.cuda.Device(N)`` on CUDA, the emulated GPU's own scope, nothing on the CPU.

    CuPy runs kernels, cuBLAS calls and allocations on the current device, whatever device the arrays are on,
    so code handling arrays of cuda:1 must run inside their scope (the emulated device refuses otherwise)."""
    if isinstance(where, (Device, str)):
        dev = get_device(where)
    elif where is None or not hasattr(where, "dtype"):
        return contextlib.nullcontext()
    else:
        dev = device_of(where)
    if dev.kind == "cuda":
        return cuda.cupy_module().cuda.Device(dev.index)
    if dev.kind in _KINDS:
        return _KINDS[dev.kind].scope(dev.index)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------- transfers

def to_device(x, device=None):
    """The array on a device ('auto', 'cpu', 'cuda:N', 'emulated:N' or a Device): x itself when it is there
    already, else a copy (host-to-device, device-to-host, or between two GPUs)."""
    dev = get_device(device)
    if dev.kind == "cpu":
        return to_cpu(x)
    src = device_of(x)
    if src == dev and (dev.kind in _KINDS or cuda.is_cupy_array(x)):
        return x
    if dev.kind in _KINDS:
        kind = _KINDS[dev.kind]
        if src.kind == dev.kind:
            return kind.copy_to(x, dev.index)
        return kind.upload(to_cpu(x), dev.index)
    cp = cuda.cupy_module()
    if _registered_kind(x) is not None:
        x = to_cpu(x)
    with cp.cuda.Device(dev.index):
        return x.copy() if cuda.is_cupy_array(x) else cp.asarray(x)   # copy(): a peer copy from another GPU


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
    elif dev is not None and dev.kind in _KINDS:
        with _KINDS[dev.kind].scope(dev.index) as current:
            current.synchronize()


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
            if self.device.kind in _KINDS:   # the end event's wait, on a GPU
                synchronize(self.device)
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
        return _KINDS[device.kind].compile_module(code, options, device.index)
    raise ValueError(f"kernels run on a GPU device, not on {device}")


# ------------------------------------------------------------------------------------------ randomness

class _RNG:
    """The library's random state: one numpy Generator for the host (init, data order, dropout on the CPU)
    and, per GPU, a device generator seeded from it, made when the GPU first draws (a cupy.random.Generator on
    CUDA: no cuRAND library is loaded unless the library draws on the device, e.g. for dropout)."""

    def __init__(self):
        self.seed(None)

    def seed(self, n):
        self.host = np.random.default_rng(n)
        self.devices = {}
        self.rows = None   # (total, start, stop) while a process draws for its share of a batch


    def on(self, dev: Device):
        g = self.devices.get(dev)
        if g is None:
            seed = int(self.host.integers(2**63 - 1))
            if dev.kind == "cuda":
                cp = cuda.cupy_module()
                with cp.cuda.Device(dev.index):
                    g = cp.random.default_rng(seed)
            else:
                g = _KINDS[dev.kind].generator(seed, dev.index)
            self.devices[dev] = g
        return g


_rng = _RNG()


def seed(n: int | None):
    """Seed every random number generator the library uses (weights, data order, dropout, augmentation).
    Device generators are re-made from the new seed when they are next used (cupy.random.seed, which loads
    cuRAND, is not called)."""
    _rng.seed(n)


def host_rng() -> np.random.Generator:
    """The host generator (weight init, shuffling, augmentation)."""
    return _rng.host


def random_uniform(shape, like, dtype=None):
    """Uniform [0, 1) samples on the same device as `like` (used for dropout masks).

    Inside :func:`batch_rows` a draw whose first dimension is the share's length draws for the whole batch
    and returns the share's rows."""
    dtype = np.dtype(dtype or like.dtype)
    dev = device_of(like)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    rows = _rng.rows
    if rows is not None and shape and shape[0] == rows[2] - rows[1]:
        total, start, stop = rows
        _rng.rows = None
        try:
            return random_uniform((total,) + shape[1:], like, dtype)[start:stop]
        finally:
            _rng.rows = rows
    if dev.is_gpu:
        with device_scope(dev):
            return _rng.on(dev).random(shape, dtype=dtype)
    return _rng.host.random(shape, dtype=dtype if dtype in (np.float32, np.float64) else np.float64)


def batch_rows(rows=None):
    """Draw for a share of a batch: with ``rows=(total, start, stop)``, :func:`random_uniform` draws of a
    shape ``(stop - start, ...)`` (a dropout mask of the share) draw ``(total, ...)`` and return rows
    start:stop, so each process of a data-parallel run draws what one process holding the whole batch would,
    and every process's generators stay in the same state. ``None`` ends it. (Set per step by
    gpucnn.distributed; cleared by :func:`seed` and :func:`set_rng_state` too.)"""
    if rows is not None:
        total, start, stop = (int(v) for v in rows)
        if not 0 <= start <= stop <= total:
            raise ValueError(f"batch_rows: expected 0 <= start <= stop <= total, got {tuple(rows)}")
        rows = (total, start, stop)
    _rng.rows = rows


def get_rng_state() -> dict:
    """The host RNG state, JSON-serialisable, for checkpoints."""
    return _rng.host.bit_generator.state


def set_rng_state(state: dict):
    """Restore a state from get_rng_state()."""
    bg = np.random.PCG64()
    bg.state = state
    _rng.host = np.random.Generator(bg)
    _rng.devices = {}
    _rng.rows = None
