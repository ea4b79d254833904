"""The emulated GPU: a stand-in for CuPy 14.2 on machines without a GPU, as strict as CuPy where CuPy refuses.

Its arrays, :class:`EmulatedArray`, hold a numpy buffer but are not numpy arrays, as cupy.ndarray is not; its
array module is ``emulated_xp``; its kernels run through :mod:`.emulator`. What CuPy refuses is refused with
the exception type CuPy raises (source locations are CuPy v14.2.0's):

- implicit conversion to numpy: ``np.asarray(x)``/``np.array(x)`` call ``__array__``, which raises TypeError
  "Implicit conversion to a NumPy array is not allowed. Please use `.get()` ..." (cupy/_core/core.pyx
  ``_ndarray_base.__array__``);
- a host (numpy) array as an operand of a ufunc, an operator or any xp/numpy function, 0-d ones included
  (except in comparisons, where CuPy takes a 0-d array's ``.item()``): TypeError "Unsupported type <class
  'numpy.ndarray'>" (cupy/_core/_scalar.pyx ``CScalar.__init__`` via ``_kernel.pyx _preprocess_arg``, and
  ``concatenate_method`` in _routines_manipulation.pyx); a non-device ``out=``: TypeError;
- ``x[basic index] = host array`` (not 0-d): ValueError "non-scalar numpy.ndarray cannot be used for fill"
  (core.pyx ``__setitem__`` -> ``_scatter_op`` in _routines_indexing.pyx, which refuses CPU arrays, gh-2079,
  -> ``fill``). With an integer or boolean index array CuPy uploads a host value (``core.array(value)``):
  allowed here too, counted as a host-to-device copy; host index arrays likewise (``_prepare_slice_list``);
- ``float()``/``int()``/``complex()`` of an array that is not 0-d: TypeError from numpy after the read-back
  (core.pyx ``__float__`` is ``float(self.get())``); ``bool()`` of more than one element: ValueError
  (``__nonzero__``); ``item()`` of more than one: ValueError; ``operator.index()``: TypeError (no
  ``__index__``);
- DLPack: ``__dlpack_device__`` is (kDLCUDA, id); ``__dlpack__()`` exports device memory, which the emulated
  device has not got: BufferError (numpy's own ``from_dlpack`` raises BufferError "Unsupported device in
  DLTensor." for a CuPy capsule, numpy/_core/src/multiarray/dlpack.c); ``__dlpack__(dl_device=(1, 0))`` is
  CuPy's explicit host copy (counted), with ``copy=False`` ValueError (core.pyx ``__dlpack__``);
- arrays of another emulated GPU than the current one in an operation: ValueError "The device where the array
  resides (1) is different from the current device (0). Peer access is unavailable ..." (_kernel.pyx
  ``_check_peer_access``; CuPy only warns where peer access can be enabled).

Every call is counted in :mod:`.counters` by the rules of CuPy's launches in :mod:`.cupy_model`. The device core
knows nothing of this module: ``gpucnn.devices`` registers it (:func:`.core.register_kind`).
"""
from __future__ import annotations

import functools
import threading
import types
import warnings

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import counters, cupy_model
from .cupy_model import count_fill, count_mask, count_matmul
from .core import DeviceMismatchError

GPU_COUNT = 2            # emulated GPUs: 'emulated' is 'emulated:0'; 'emulated:1' tests cuda:N handling
KDL_CPU, KDL_CUDA = 1, 2  # DLPack device types

# --------------------------------------------------------------------------------------- current device

_local = threading.local()


def current() -> int:
    """The index of the current emulated GPU (CuPy's current device), 0 unless inside a scope."""
    return getattr(_local, "index", 0)


class EmulatedDevice:
    """cupy.cuda.Device look-alike: ``.id``; ``with device:`` makes it current; ``synchronize()``."""

    def __init__(self, index: int):
        self.id = int(index)

    def __enter__(self):
        stack = _local.__dict__.setdefault("stack", [])
        stack.append(current())
        _local.index = self.id
        return self

    def __exit__(self, *exc):
        _local.index = _local.stack.pop()
        return False

    def synchronize(self):
        counters.sync("synchronize")

    def __eq__(self, other):
        return isinstance(other, EmulatedDevice) and other.id == self.id

    def __hash__(self):
        return hash(("emulated", self.id))

    def __repr__(self):
        return f"<emulated GPU {self.id}>"


def scope(index: int):
    """A context manager making emulated GPU `index` current."""
    return EmulatedDevice(index)


# ------------------------------------------------------------------------------------------ operands

def _refuse_host(a, what):
    raise DeviceMismatchError(
        f"Unsupported type {type(a)}: {what} got a host (numpy) array of shape {a.shape} in code running on "
        f"the emulated GPU; cupy refuses it (cupy/_core/_scalar.pyx CScalar). Move it with "
        f"gpucnn.to_device(x, device) first")


def _check_device(a, what):
    if a._d != current():
        raise ValueError(f"The device where the array resides ({a._d}) is different from the current device "
                         f"({current()}). Peer access is unavailable between these devices. ({what} on the "
                         f"emulated GPU: run it inside gpucnn.devices.device_scope(array))")


def _operands(obj, what, host_ok=False):
    """obj with device arrays replaced by their buffers (after the device check); host arrays refused unless
    host_ok (then each is counted as an upload)."""
    if isinstance(obj, EmulatedArray):
        _check_device(obj, what)
        return obj._a
    if isinstance(obj, np.ndarray):
        if not host_ok:
            _refuse_host(obj, what)
        counters.host_to_device(what)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_operands(o, what, host_ok) for o in obj)
    return obj


def _wrap(result):
    """numpy results as arrays of the current emulated GPU."""
    if isinstance(result, np.ndarray):
        return EmulatedArray(result, current())
    if isinstance(result, np.generic):
        return EmulatedArray(np.asarray(result), current())
    if isinstance(result, (tuple, list)):
        return type(result)(_wrap(r) for r in result)
    return result


def _quiet(fn, *args, **kwargs):
    """CuPy never warns about overflow, division by zero or invalid values: neither does the emulator."""
    with np.errstate(all="ignore"):
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------ the arrays

class EmulatedArray(NDArrayOperatorsMixin):
    """An array on an emulated GPU: a numpy buffer behind cupy.ndarray's rules (see the module doc).

    Operators, ufuncs and numpy functions run on the buffer and give EmulatedArrays; every call is counted as
    CuPy would launch it; reading values on the host (``get()``, ``float()``, ...) is counted as a transfer.
    """

    __slots__ = ("_a", "_d")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, buffer: np.ndarray, index: int = 0):
        self._a = buffer
        self._d = index

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: EmulatedArray(self._a.T, self._d))
    real = property(lambda self: EmulatedArray(self._a.real, self._d))
    imag = property(lambda self: EmulatedArray(self._a.imag, self._d))

    @property
    def device(self) -> EmulatedDevice:
        """The emulated GPU the array lives on (a context manager, like cupy's)."""
        return EmulatedDevice(self._d)

    # -- numpy protocols
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly. (an emulated GPU array: gpucnn.to_cpu(x) reads it back)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        namespace = emulated_xp
        for part in func.__module__.split(".")[1:]:
            namespace = getattr(namespace, part, None)
            if namespace is None:
                return NotImplemented
        impl = getattr(namespace, func.__name__, None)
        return NotImplemented if impl is None else impl(*args, **kwargs)

    def __dlpack_device__(self):
        return (KDL_CUDA, self._d)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if dl_device is not None and tuple(dl_device) == (KDL_CPU, 0):
            if copy is False:
                raise ValueError("GPU memory cannot be exported to CPU without copy.")
            return download(self).__dlpack__(max_version=max_version)
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError("unsupported device requested.")
        raise BufferError("an emulated GPU array has no device memory to export through DLPack (a cupy array "
                          "exports a kDLCUDA capsule, which numpy refuses with BufferError 'Unsupported device "
                          "in DLTensor.'); read it back with gpucnn.to_cpu(x)")

    # -- reading values back (each one a device-to-host copy and a host sync)
    def get(self, stream=None, order="C", out=None, blocking=True):
        """cupy's ndarray.get(): a host copy."""
        host = download(self, "get()")
        if out is not None:
            out[...] = host
            return out
        return np.asarray(host, order=order)

    def set(self, arr, stream=None):
        """cupy's ndarray.set(): copy a host array of the same shape and dtype in."""
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"set: expected a numpy array of shape {self.shape} and dtype {self.dtype}")
        counters.host_to_device("set()")
        self._a[...] = arr

    def _scalar(self, convert, name):
        return convert(download(self, name))

    def __float__(self):
        return self._scalar(float, "float()")

    def __int__(self):
        return self._scalar(int, "int()")

    def __complex__(self):
        return self._scalar(complex, "complex()")

    def __bool__(self):
        if self.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False, but in future this "
                          "will result in an error.", DeprecationWarning, stacklevel=2)
            return False
        if self.size > 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous. "
                             "Use a.any() or a.all()")
        return self._scalar(bool, "bool()")

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._scalar(np.ndarray.item, "item()")

    def tolist(self):
        return self._scalar(np.ndarray.tolist, "tolist()")

    def tobytes(self, order="C"):
        return download(self, "tobytes()").tobytes(order)

    def __repr__(self):
        return "emulated_" + repr(download(self, "repr()"))

    def __str__(self):
        return str(download(self, "str()"))

    def __format__(self, spec):
        return format(download(self, "format()"), spec)

    def __reduce__(self):
        return (_rebuild, (download(self, "pickle"), self._d))

    # -- containers and indexing
    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, key):
        _check_device(self, "indexing")
        kind = cupy_model.index_kind(key, EmulatedArray)
        result = self._a[_operands(key, "an index", host_ok=True)]
        if kind == "mask":
            count_mask()
            counters.op("kernel:getitem_mask")
        elif kind == "fancy":
            counters.op("kernel:take")
        return EmulatedArray(result, self._d)

    def __setitem__(self, key, value):
        _check_device(self, "assignment")
        kind = cupy_model.index_kind(key, EmulatedArray)
        if kind == "basic":
            target = self._a[key]
            if isinstance(value, EmulatedArray):
                _check_device(value, "assignment")
                if not (np.may_share_memory(target, value._a) and target.shape == value.shape
                        and target.strides == value.strides):
                    counters.op("copy")
                target[...] = value._a
                return
            if isinstance(value, np.ndarray) and value.ndim > 0:
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill (cupy refuses to assign a host "
                                 "array to a device array; move it with gpucnn.to_device first)")
            count_fill(value, target)
            self._a[key] = value
            return
        if kind == "mask":
            count_mask()
        if not isinstance(value, (EmulatedArray, np.ndarray)):
            counters.host_to_device("a scattered value")   # core.array(value) in _scatter_op_single
        counters.op("kernel:scatter")
        self._a[_operands(key, "an index", host_ok=True)] = _operands(value, "a value", host_ok=True)

    # -- methods (numpy's, counted as CuPy launches them)
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        _check_device(self, "astype")
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        counters.op("copy")
        return EmulatedArray(self._a.astype(dtype, order=order), self._d)

    def copy(self, order="C"):
        _check_device(self, "copy")
        counters.op("copy")
        return EmulatedArray(self._a.copy(order=order), self._d)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def fill(self, value):
        _check_device(self, "fill")
        count_fill(value, self._a)
        self._a.fill(value)

    def view(self, dtype=None):
        return EmulatedArray(self._a.view() if dtype is None else self._a.view(dtype), self._d)

    def reshape(self, *shape, order="C"):
        return emulated_xp.reshape(self, shape[0] if len(shape) == 1 else shape, order=order)

    def ravel(self, order="C"):
        return emulated_xp.ravel(self, order=order)

    def flatten(self, order="C"):
        return self.copy(order).ravel()

    def transpose(self, *axes):
        return EmulatedArray(self._a.transpose(*axes), self._d)

    def swapaxes(self, a, b):
        return EmulatedArray(self._a.swapaxes(a, b), self._d)

    def squeeze(self, axis=None):
        return EmulatedArray(self._a.squeeze(axis), self._d)

    def dot(self, b, out=None):
        return emulated_xp.dot(self, b, out=out)

    def nonzero(self):
        return emulated_xp.nonzero(self)


def _method(name):
    def method(self, *args, **kwargs):
        return getattr(emulated_xp, name)(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name in ("sum", "mean", "max", "min", "prod", "all", "any", "argmax", "argmin", "var", "std", "cumsum",
              "clip", "round", "conj", "take", "repeat", "sort", "argsort", "trace", "diagonal"):
    setattr(EmulatedArray, _name, _method(_name))


def _rebuild(host, index):
    counters.host_to_device("unpickle")
    return EmulatedArray(host, index)


# ------------------------------------------------------------------------------------------ ufuncs

_COMPARISONS = {"greater", "greater_equal", "less", "less_equal", "equal", "not_equal"}
_UFUNC_METHODS = {"__call__": "ufunc", "reduce": "reduce", "accumulate": "scan", "at": "scatter",
                  "outer": "ufunc", "reduceat": "reduce"}


def _ufunc(ufunc, method, inputs, kwargs):
    name = ufunc.__name__
    what = f"xp.{name}"
    if name in _COMPARISONS:   # CuPy takes 0-d host arrays in comparisons as scalars (core.pyx, numpy#12142)
        inputs = tuple(x[()] if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs)
    args = _operands(inputs, what)
    out = kwargs.get("out")
    if out is not None:
        out = out if isinstance(out, tuple) else (out,)
        for o in out:
            if not isinstance(o, EmulatedArray):
                raise TypeError(f"Output arguments must be cupy.ndarray ({what} got {type(o).__name__} as out=)")
        kwargs = {**kwargs, "out": _operands(out, what)}
    kwargs = {k: (_operands(v, what) if k != "out" else v) for k, v in kwargs.items()}
    if name == "matmul" and method == "__call__":
        count_matmul(*args[:2], out=kwargs["out"][0] if out is not None else None)
        if len(args) == 2 and set(kwargs) <= {"out"}:   # cuBLAS's rounding (other arguments: numpy's matmul)
            return _gemm(args, kwargs["out"][0] if out is not None else None, out)
    else:
        counters.op(f"{_UFUNC_METHODS.get(method, 'ufunc')}:{name}")
    result = _quiet(getattr(ufunc, method), *args, **kwargs)
    if out is not None:
        return out[0] if len(out) == 1 else out
    return _wrap(result)


# ------------------------------------------------------------------------------------------- GEMMs

_tf32 = set()   # emulated GPUs whose float32 GEMMs run in TF32 (gpucnn.devices.precision sets it)


def set_tf32(index: int, on: bool):
    """Let emulated GPU `index` run float32 GEMMs as TF32 tensor cores do (cuBLAS's TF32 math mode): operands
    rounded to a 10-bit mantissa (round_tf32), products summed in float32."""
    (_tf32.add if on else _tf32.discard)(int(index))


def tf32_enabled(index: int) -> bool:
    return int(index) in _tf32


def _round_mantissa(x, dropped_bits: int):
    """float32 `x` (numpy) rounded to nearest even, keeping 23 - dropped_bits mantissa bits; inf and NaN kept."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    half = np.uint32((1 << (dropped_bits - 1)) - 1)
    lsb = (bits >> np.uint32(dropped_bits)) & np.uint32(1)
    rounded = (bits + half + lsb) & np.uint32(~((1 << dropped_bits) - 1) & 0xFFFFFFFF)
    special = (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    return np.where(special, bits, rounded).view(np.float32)


def round_tf32(x):
    """float32 array (numpy) -> the TF32 values tensor cores multiply: 10 mantissa bits kept, rounded to nearest
    even (as cvt.rna.tf32.f32 rounds, save ties: PTX ISA 'cvt'; hardware fed float32 directly may truncate
    instead, which at most doubles the error, 2^-11 -> 2^-10 relative), still stored as float32."""
    return _round_mantissa(x, 13)


def _gemm(operands, out_buffer, out):
    """matmul (and ``@``, what the layers call; ``dot`` is not modelled) on the emulated GPU as cuBLAS computes
    it: bfloat16 operands multiplied and summed in float32 (CUBLAS_COMPUTE_32F) and the result rounded to
    bfloat16 (numpy with ml_dtypes would return float32); float32 operands rounded to TF32 first when the
    device's TF32 mode is on. An `out` of another dtype gets the result through a copy (CuPy's
    elementwise_copy, counted)."""
    a, b = operands
    dtype = np.promote_types(a.dtype, b.dtype)
    if dtype.name == "bfloat16":
        a, b = a.astype(np.float32), b.astype(np.float32)
    elif dtype == np.float32 and current() in _tf32:
        a, b = round_tf32(a), round_tf32(b)
    result = _quiet(np.matmul, a, b).astype(dtype, copy=False)
    if out is None:
        return _wrap(result)
    if out_buffer.dtype != dtype:
        counters.op("copy")
    out_buffer[...] = result
    return out[0] if len(out) == 1 else out


class _Ufunc:
    """A numpy ufunc as seen from the emulated xp: host operands refused, results on the device, counted."""

    def __init__(self, ufunc):
        self._u = ufunc
        functools.update_wrapper(self, ufunc, assigned=("__name__", "__doc__"), updated=())

    def __call__(self, *args, **kwargs):
        return _ufunc(self._u, "__call__", args, kwargs)

    def __getattr__(self, name):
        if name in _UFUNC_METHODS:
            return lambda *args, **kwargs: _ufunc(self._u, name, args, kwargs)
        return getattr(self._u, name)


class _EmulatedNumpy(types.ModuleType):
    """numpy as seen from code running on the emulated GPU (the emulated ``cupy`` namespace): results are
    EmulatedArrays on the current emulated GPU, host arrays are refused except by the array constructors
    (uploads), each call is counted per cupy_model.COSTS (default: one device operation named 'xp.<name>')."""

    ndarray = EmulatedArray

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
        elif isinstance(attr, np.ufunc):
            value = _Ufunc(attr)
        elif isinstance(attr, (types.FunctionType, types.BuiltinFunctionType)) or (
                callable(attr) and type(attr).__name__ == "_ArrayFunctionDispatcher"):
            value = self._wrap_function(name, attr)
        else:
            value = attr
        self._cache[name] = value
        return value

    def asnumpy(self, a, stream=None, order="C", out=None, blocking=True):
        """cupy.asnumpy: a host copy of a device array (host arrays are returned as they are)."""
        return a.get(order=order, out=out) if isinstance(a, EmulatedArray) else np.asarray(a, order=order)

    @staticmethod
    def get_array_module(*args):
        return emulated_xp if any(isinstance(a, EmulatedArray) for a in args) else np

    def _wrap_function(self, name, fn):
        host_ok = name in cupy_model.HOST_INPUT_OK
        cost = cupy_model.COSTS.get(name)
        label = f"xp.{name}"

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            raw_args = _operands(args, label, host_ok)
            raw_kwargs = {k: _operands(v, label, host_ok) for k, v in kwargs.items()}
            raw = _quiet(fn, *raw_args, **raw_kwargs)
            on_device = isinstance(args[0] if args else kwargs.get("a", kwargs.get("object")), EmulatedArray)
            out = kwargs.get("out")
            if isinstance(out, EmulatedArray) and raw is out._a:
                result = out   # as CuPy, the `out` array itself
            else:
                if host_ok and isinstance(raw, np.ndarray) and not on_device:
                    raw = np.array(raw, copy=True)   # an upload is new (device) memory, never the host's
                result = _wrap(raw)
            if cost is None:
                counters.op(label)
            else:
                cost(raw_args, raw_kwargs, raw, on_device)
            return result
        return wrapper


emulated_xp = _EmulatedNumpy(np, "emulated_numpy")


# ----------------------------------------------------------------------------------------- transfers

def upload(host, index: int = 0) -> EmulatedArray:
    """A copy of host array `host` on emulated GPU `index` (a host-to-device transfer)."""
    counters.host_to_device("to_device")
    return EmulatedArray(np.array(host, copy=True, order="C"), index)


def copy_to(x: EmulatedArray, index: int) -> EmulatedArray:
    """A copy of x on emulated GPU `index` (a device-to-device copy, as cupy's peer copy)."""
    counters.op("copy")
    return EmulatedArray(np.array(x._a, copy=True, order="C"), index)


def download(x: EmulatedArray, where: str = "to_cpu") -> np.ndarray:
    """A host copy of an emulated array (a device-to-host transfer and a host sync)."""
    counters.device_to_host(where)
    return np.array(x._a, copy=True)


def index_of(x: EmulatedArray) -> int:
    """The emulated GPU an array lives on."""
    return x._d


def buffer(x: EmulatedArray) -> np.ndarray:
    """The host memory standing in for x's device memory (for the kernel emulator only)."""
    return x._a


class Generator:
    """A random generator on an emulated GPU (as cupy.random.Generator): numpy's PCG64 drawing into device
    arrays, each draw counted as one kernel launch."""

    def __init__(self, seed: int, index: int):
        self._rng = np.random.default_rng(seed)
        self.index = index

    def random(self, shape, dtype=np.float32):
        dtype = np.dtype(dtype)
        counters.op("kernel:random")
        sample = self._rng.random(shape, dtype=dtype if dtype in (np.float32, np.float64) else np.float64)
        return EmulatedArray(sample.astype(dtype, copy=False), self.index)
