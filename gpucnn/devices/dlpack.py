"""Arrays from other libraries (PyTorch, JAX, CuPy, numba, ...) taken without a copy, through DLPack or the CUDA
array interface.

DLPack (https://dmlc.github.io/dlpack/latest/python_spec.html): a producer offers ``__dlpack__()`` and
``__dlpack_device__() -> (device type, device id)``; a consumer (``numpy.from_dlpack``, ``cupy.from_dlpack``)
wraps the same memory. Device types used here (``DLDeviceType`` in dlpack.h): 1 kDLCPU, 2 kDLCUDA, 3 kDLCUDAHost
(pinned host memory), 13 kDLCUDAManaged. The CUDA array interface (``__cuda_array_interface__``, numba's
specification) is the older GPU-only protocol; cupy.asarray wraps it without a copy.

This module knows devices, so it lives in the devices wing; layers call :func:`accept` on their inputs, and
:func:`from_dlpack` is public as ``gpucnn.from_dlpack``.
"""
from __future__ import annotations

import numpy as np

from . import core, cuda
from .core import CPU, CudaUnavailableError, Device, DeviceMismatchError, device_of, get_device

__all__ = ["from_dlpack", "is_foreign", "dlpack_device", "accept"]

# DLDeviceType values (dlpack.h) and the gpucnn device kind that can read that memory without a copy
_KINDS = {1: "cpu", 3: "cpu", 2: "cuda", 13: "cuda"}
_NAMES = {1: "kDLCPU", 2: "kDLCUDA", 3: "kDLCUDAHost", 4: "kDLOpenCL", 7: "kDLVulkan", 8: "kDLMetal", 9: "kDLVPI",
          10: "kDLROCM", 11: "kDLROCMHost", 12: "kDLExtDev", 13: "kDLCUDAManaged", 14: "kDLOneAPI",
          15: "kDLWebGPU", 16: "kDLHexagon", 17: "kDLMAIA"}


def _is_ours(x) -> bool:
    """numpy, cupy or a registered kind's (the emulated GPU's) arrays: used as they are, never exported."""
    return isinstance(x, np.ndarray) or cuda.is_cupy_array(x) or core._registered_kind(x) is not None


def is_foreign(x) -> bool:
    """True for an array of another library that offers ``__dlpack__`` or ``__cuda_array_interface__``
    (a torch tensor, a JAX array, a numba device array); False for numpy/cupy/emulated arrays and non-arrays."""
    return not _is_ours(x) and (hasattr(x, "__dlpack__") or hasattr(x, "__cuda_array_interface__"))


def _describe(obj) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ not in ("builtins", None) else t.__qualname__


def dlpack_device(obj) -> Device | None:
    """The gpucnn device whose memory holds `obj`, from ``__dlpack_device__`` (None for a producer that offers
    only ``__cuda_array_interface__``: some GPU, known once cupy has wrapped it).

    Raises TypeError for memory no gpucnn device reads (ROCm, Metal, ...) or an object offering neither protocol.
    """
    if _is_ours(obj):
        return device_of(obj)
    if hasattr(obj, "__dlpack_device__"):
        dev_type, dev_id = (int(v) for v in obj.__dlpack_device__())
        kind = _KINDS.get(dev_type)
        if kind is None:
            raise TypeError(f"{_describe(obj)} lives on DLPack device type {dev_type} "
                            f"({_NAMES.get(dev_type, 'unknown')}), which gpucnn cannot read: it runs on the CPU "
                            f"(numpy) and CUDA GPUs (cupy)")
        return CPU if kind == "cpu" else Device("cuda", dev_id)
    if hasattr(obj, "__cuda_array_interface__"):
        return None
    raise TypeError(f"expected an array offering __dlpack__ or __cuda_array_interface__ (a torch tensor, a JAX "
                    f"array, a numpy or cupy array), got {_describe(obj)}")


def _cupy_for(obj, where):
    ok, why = cuda.cuda_status()
    if not ok:
        raise CudaUnavailableError(f"{_describe(obj)} is in CUDA GPU memory ({where}), but CUDA is not usable "
                                   f"here: {why}. Move it to the host first (torch: tensor.cpu())")
    return cuda.cupy_module()


def _check_device(obj, have, want):
    if want is not None and have != want:
        raise DeviceMismatchError(f"{_describe(obj)} is on {have} but {want} was asked for; from_dlpack never "
                                  f"copies: copy it with gpucnn.to_device(x, {str(want)!r})")


def _wrap(obj, have):
    """numpy or cupy array over obj's memory (have: its device, None for a CUDA-array-interface producer)."""
    on_host = have is not None and have.kind == "cpu"
    cp = None if on_host else _cupy_for(obj, f"on {have}" if have is not None else "it offers __cuda_array_interface__")
    try:
        if on_host:
            return np.from_dlpack(obj)
        if have is None:
            return cp.asarray(obj)
        with cp.cuda.Device(have.index):
            return cp.from_dlpack(obj)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"{_describe(obj)} could not be shared without a copy: {type(e).__name__}: {e}") from None


def from_dlpack(obj, device=None):
    """`obj` as a gpucnn array on the device that holds it, sharing its memory (no copy).

    obj: anything offering ``__dlpack__`` (PyTorch tensors, JAX and TensorFlow arrays, numpy, cupy) or
    ``__cuda_array_interface__`` (numba, older cupy). Host memory becomes a numpy array (``numpy.from_dlpack``),
    CUDA memory a cupy array on its GPU (``cupy.from_dlpack``, or ``cupy.asarray`` for the CUDA array
    interface). Writing through either side is seen by the other. numpy, cupy and emulated-GPU arrays are
    returned as they are.

    device: None (wherever obj lives) or the device the caller needs ('cpu', 'cuda:N', 'emulated', a Device); a
    different one raises DeviceMismatchError rather than copying (copy with gpucnn.to_device(x, device)).

    Raises DeviceMismatchError (obj on another device than `device`), CudaUnavailableError (GPU memory but no
    usable CUDA), TypeError (no protocol, memory of an unsupported device, or an export the producer refuses, such
    as a torch tensor that requires grad: call ``.detach()`` first, or a dtype numpy lacks, such as bfloat16).
    """
    want = None if device is None else get_device(device)
    have = dlpack_device(obj)
    if have is not None:   # known before wrapping: refuse before touching the memory
        _check_device(obj, have, want)
    if _is_ours(obj):
        return obj
    array = _wrap(obj, have)
    _check_device(obj, device_of(array), want)
    return array


def accept(x, owner):
    """x itself, or a foreign array (see :func:`is_foreign`) as a gpucnn array sharing its memory; errors name
    `owner` (the layer taking it)."""
    if not is_foreign(x):
        return x
    try:
        return from_dlpack(x)
    except (TypeError, CudaUnavailableError) as e:
        raise type(e)(f"{owner}: {e}") from None
