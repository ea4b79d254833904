"""The emulated GPU: a stand-in for CuPy on machines without a GPU.

Its arrays are :class:`EmulatedArray` (numpy underneath) and its array module is ``emulated_xp``; they behave
like cupy's where it matters for correctness (no mixing with host arrays, host syncs counted), and its kernels
run through :mod:`.emulator`. The device core knows nothing of this module: ``gpucnn.devices`` registers it
there (:func:`.core.register_kind`), so there is no import circle between the two.
"""
from __future__ import annotations

import functools
import types

import numpy as np

from .core import DeviceMismatchError


class TransferStats:
    """Counts of device-to-host transfers and syncs on the emulated device, for tests of the hot path."""

    def __init__(self):
        self.device_to_host = 0

    def reset(self):
        self.device_to_host = 0


transfer_stats = TransferStats()



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
        return download(self)

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




def upload(x, host):
    """A device (emulated) copy of host array `host`."""
    if isinstance(x, EmulatedArray):
        return x
    return np.ascontiguousarray(host).view(EmulatedArray)


def download(x):
    """A host copy of an emulated array, counted as a device-to-host transfer."""
    transfer_stats.device_to_host += 1
    return np.array(x.view(np.ndarray))
