"""The Layer base class and the argument checks every layer shares.

Every layer has ``forward(x, train=None)`` (None: the layer's mode), ``backward(dout) -> dx``, dicts ``params``/``grads`` (same keys,
shapes, dtypes and device; ``backward`` overwrites ``grads`` in place so references to them stay valid),
``buffers`` (untrained state kept in checkpoints), ``need_input_grad`` (False: ``backward`` skips dx and
returns None), ``output_shape(shape)`` (validates an input shape), and ``to(device)``.
Layers only call ``xp`` and :mod:`gpucnn.devices.ops`, never create host arrays for device inputs and never sync.
Every layer's ``forward`` and ``backward`` run inside the device scope of their first argument (an array of
cuda:1 makes GPU 1 current, as CuPy needs; see :func:`gpucnn.devices.device_scope`): subclasses get this from
``Layer.__init_subclass__`` without writing it.
"""
from __future__ import annotations

import functools
import numbers

import numpy as np

from ..devices import (CPU, DeviceMismatchError, device_of, device_scope, get_array_module, get_device, to_cpu,
                       to_device)
from ..devices import dlpack, ops
from ..devices.flat import FlatArrays
from .init import INITS


# ------------------------------------------------------------------------------- argument checking

def _int_arg(value, what, owner, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{owner}: {what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _pair_arg(value, what, owner, minimum):
    """An int or an (h, w) pair of ints, each >= minimum, as a tuple."""
    pair = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value, value)
    ok = len(pair) == 2 and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum
                                for v in pair)
    if not ok:
        raise ValueError(f"{owner}: {what} must be an int or an (h, w) pair of ints >= {minimum}, "
                         f"got {value!r}")
    return int(pair[0]), int(pair[1])


def _float_arg(value, what, owner, low, high, high_inclusive=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= low and (
        value <= high if high_inclusive else value < high)
    if not ok:
        raise ValueError(f"{owner}: {what} must be in [{low}, {high}{']' if high_inclusive else ')'}, "
                         f"got {value!r}")
    return float(value)


def _dtype_arg(dtype, owner):
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"{owner}: dtype must be a floating type (float32 or float64), got {dt}")
    return dt


def _conversion_advice(dtype) -> str:
    """How to convert an input to `dtype` in the libraries inputs come from."""
    torch_name = {"float32": "float", "float64": "double"}.get(np.dtype(dtype).name)
    return (f"convert it first: x.astype('{np.dtype(dtype).name}') for numpy/cupy"
            + (f", x.{torch_name}() for a torch tensor" if torch_name else ""))


def _init_arg(init, owner):
    if init not in INITS:
        raise ValueError(f"{owner}: init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    return init


def state_mismatch(expected: dict, state: dict, strict: bool = True, optional=()) -> str:
    """What keeps `state` (name -> array) from fitting `expected` (name -> shape): "missing keys [...]",
    "unexpected keys [...]" (both only when strict; names in `optional` may be absent) and "shape mismatches
    (name: expected (..), got (..); ...)", every offending name listed; "" when it fits."""
    missing = [k for k in expected if k not in state and k not in optional] if strict else []
    unexpected = [k for k in state if k not in expected] if strict else []
    wrong = [f"{k}: expected {tuple(shape)}, got {tuple(np.shape(state[k]))}"
             for k, shape in expected.items() if k in state and tuple(np.shape(state[k])) != tuple(shape)]
    return ", ".join(([f"missing keys {missing}"] if missing else []) +
                     ([f"unexpected keys {unexpected}"] if unexpected else []) +
                     ([f"shape mismatches ({'; '.join(wrong)})"] if wrong else []))


# ------------------------------------------------------------------------------------ foreign arrays

def _accepting_foreign_arrays(method):
    """`method` (a layer's forward or backward) with every argument that is another library's array (a torch
    tensor, a JAX array: see :func:`gpucnn.devices.dlpack.is_foreign`) replaced by a numpy/cupy array sharing its
    memory; errors name the layer."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if any(dlpack.is_foreign(a) for a in args) or any(dlpack.is_foreign(v) for v in kwargs.values()):
            owner = repr(self) if "\n" not in repr(self) else type(self).__name__   # containers: one line
            args = tuple(dlpack.accept(a, owner) for a in args)
            kwargs = {k: dlpack.accept(v, owner) for k, v in kwargs.items()}
        return method(self, *args, **kwargs)
    return wrapper


# -------------------------------------------------------------------------------------------- base

def _on_argument_device(method):
    """method(self, a, ...) run with a's GPU current (no-op for host arrays and non-arrays)."""
    @functools.wraps(method)
    def run(self, a=None, *args, **kwargs):
        with device_scope(a):
            return method(self, *(() if a is None else (a,)), *args, **kwargs)
    run.on_argument_device = True
    return run


class Layer:
    """Base class: parameter/gradient/buffer dicts, modes, device moves, state dicts and the input checks all
    layers share.

    A layer is in training mode when built (``training`` is True, as in PyTorch); ``eval()`` and ``train()``
    switch it and every layer inside it. ``layer(x)`` and ``forward(x)`` run in the current mode;
    ``forward(x, train=False)`` asks for a mode for one call.

    Inputs may be numpy or cupy arrays, or any array offering ``__dlpack__`` or ``__cuda_array_interface__``
    (PyTorch tensors, JAX arrays): ``forward`` and ``backward`` of every subclass take those without a copy
    (:func:`gpucnn.from_dlpack`), so a CPU tensor feeds a CPU model and a CUDA tensor a model on its GPU; on another
    device they raise DeviceMismatchError (or CudaUnavailableError for GPU memory where CUDA is not usable).
    Outputs are gpucnn arrays; ``torch.from_dlpack(y)`` hands them back to PyTorch without a copy.
    """

    need_input_grad = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("forward", "backward"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "on_argument_device", False):
                # another library's array becomes a gpucnn one first, so the scope is that of its device
                setattr(cls, name, _accepting_foreign_arrays(_on_argument_device(method)))

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self._cache = None
        self._scratch = {}   # host work buffers reused across steps (see devices.twins.im2col)

    # -- interface
    def forward(self, x, train=None):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x, train=None):
        return self.forward(x, train)

    def output_shape(self, shape) -> tuple:
        """The output shape for an input of `shape`; raises ValueError if the layer cannot take it."""
        return tuple(shape)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def children(self) -> list:
        """The layers directly inside this one (none for a plain layer)."""
        return []

    # -- modes
    def _mode(self, train):
        """The mode of one forward call: `train` if given, else the layer's own (``training``)."""
        return self.training if train is None else bool(train)

    def train(self, mode: bool = True):
        """Set training mode (batch statistics, dropout) on this layer and every layer inside it; returns self."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Inference mode (running statistics, no dropout) for this layer and every layer inside it; returns
        self. ``model.eval()`` makes ``model(x)`` deterministic."""
        return self.train(False)

    # -- devices and state
    def to(self, device):
        """Move params, grads and buffers to a device ('cpu', 'cuda:N', 'emulated'); returns self."""
        dev = get_device(device)
        for d in (self.params, self.grads, self.buffers):
            for k in d:
                d[k] = to_device(d[k], dev)
        self._cache = None
        self._scratch = {}
        return self

    def flatten_parameters(self, order=None):
        """Put every parameter of this layer (and of the layers inside it) into one contiguous buffer and every
        gradient into another, each array becoming a view into its buffer (same names, shapes, values; one
        device copy per array, once): a multi-tensor optimizer then updates them all in one launch and the
        non-finite check reads one buffer (see gpucnn.devices.flat). `order`: the parameter names in the
        order wanted in the buffers (all of them; default: the ``params`` order). ``params``, ``grads``,
        state dicts and checkpoints work as before; moving the layer (``to``) makes fresh arrays, not flat
        until this is called again.

        Returns (parameters, gradients) as :class:`gpucnn.devices.flat.FlatArrays` (the layer keeps them
        alive). ValueError when the parameters are of several dtypes or devices, or `order` is not a
        permutation of their names."""
        params, grads = self.params, self.grads
        names = list(params) if order is None else [str(n) for n in order]
        if sorted(names) != sorted(params):
            raise ValueError(f"{type(self).__name__}.flatten_parameters: order must name every parameter once "
                             f"({sorted(params)}), got {names}")
        if not names:
            return None, None
        try:
            flat_params = FlatArrays({n: params[n] for n in names})
            flat_grads = FlatArrays({n: grads[n] for n in names})
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}.flatten_parameters: {str(e).split(': ', 1)[-1]}") from None
        for n in names:
            self._rebind(n, flat_params.views[n], flat_grads.views[n])
        self._flat = (flat_params, flat_grads)
        return self._flat

    def _rebind(self, name, param, grad):
        """Make params[name] and grads[name] the given arrays (views of flat buffers)."""
        self.params[name], self.grads[name] = param, grad

    @property
    def device(self):
        """The device the parameters (or buffers) live on; cpu for a layer with neither."""
        for v in (*self.params.values(), *self.buffers.values()):
            return device_of(v)
        return CPU

    def num_params(self) -> int:
        """The number of trained values."""
        return sum(int(p.size) for p in self.params.values())

    def state_dict(self) -> dict:
        """Host (numpy) copies of all params and buffers, keyed like ``params``/``buffers``."""
        return {k: np.array(to_cpu(v)) for k, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state: dict):
        """Copy values into the existing arrays (keeping their device and dtype); refuses any key or shape
        mismatch, naming all of them, before changing anything (ValueError)."""
        targets = {**self.params, **self.buffers}
        problem = state_mismatch({k: v.shape for k, v in targets.items()}, state)
        if problem:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state does not match the model: {problem}")
        for k, v in targets.items():
            with device_scope(v):
                v[...] = to_device(np.asarray(to_cpu(state[k]), dtype=v.dtype), device_of(v))

    # -- helpers for subclasses
    def _add_param(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def _set_grad(self, name, value):
        self.grads[name][...] = value

    def _xp(self, x, *others):
        """The array module for x and the layer's arrays; a clear error when they sit on different devices."""
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"{self!r}: expected an array, got {type(x).__name__}")
        try:
            return get_array_module(x, *others)
        except DeviceMismatchError:
            where = sorted({str(device_of(a)) for a in others if a is not None} - {str(device_of(x))})
            raise DeviceMismatchError(
                f"{self!r}: input is on {device_of(x)} but the layer's arrays are on {', '.join(where)}; "
                f"move the layer with .to(device) or the input with gpucnn.to_device(x, device)") from None

    def _check_float(self, x):
        """Float input; for layers with parameters, of the parameters' dtype."""
        if x.dtype not in (np.float32, np.float64):   # what the kernels take, so the CPU takes no more
            raise TypeError(f"{self!r}: expected a float32 or float64 input, got dtype {x.dtype} "
                            f"({_conversion_advice('float32')})")
        for p in self.params.values():
            if p.dtype != x.dtype:
                raise TypeError(f"{self!r}: expected {p.dtype} input (the layer's dtype), got {x.dtype} "
                                f"({_conversion_advice(p.dtype)})")
            break

    def _begin(self, x):
        """Shared forward preamble: xp, dtype and shape checks; returns xp."""
        xp = self._xp(x, *self.params.values(), *self.buffers.values())
        self._check_float(x)
        self.output_shape(x.shape)
        return xp

    def _save(self, cache, y):
        """Keep what backward needs, and the output's shape and device to check dout against."""
        self._cache, self._out_shape, self._out_device = cache, tuple(y.shape), device_of(y)
        return y

    def _saved(self, dout):
        """The forward cache, after checking backward follows a forward and dout has the output's shape and
        device."""
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        if not hasattr(dout, "shape") or tuple(dout.shape) != self._out_shape:
            raise ValueError(f"{self!r}: expected dout of shape {self._out_shape} (the output's), "
                             f"got {getattr(dout, 'shape', type(dout).__name__)}")
        if device_of(dout) != self._out_device:
            raise DeviceMismatchError(f"{self!r}: dout is on {device_of(dout)} but the forward pass ran on "
                                      f"{self._out_device}; move it with gpucnn.to_device(dout, device)")
        return self._cache

    def _expect_ndim(self, shape, ndim, layout):
        if len(shape) != ndim:
            raise ValueError(f"{self!r}: expected a {ndim}-D input {layout}, got shape {tuple(shape)}")

    def _window_out(self, shape, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
        """(out_h, out_w) of a sliding window over the last two dims (padding per axis an int or a (before,
        after) pair; see gpucnn.devices.twins.out_size), refusing inputs the window does not fit."""
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, stride, dilation, padding
        h, w = shape[2], shape[3]
        oh, ow = ops.out_size(h, kh, sh, ph, dh, ceil_mode), ops.out_size(w, kw, sw, pw, dw, ceil_mode)
        if oh < 1 or ow < 1:
            dilated = f" (dilation {dh}x{dw}: {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1})" if (dh, dw) != (1, 1) else ""
            pads = ",".join(str(p) if isinstance(p, numbers.Integral) else str(p[0]) if p[0] == p[1] else
                            f"({p[0]}, {p[1]})" for p in (ph, pw))
            raise ValueError(f"{self!r}: expected an input at least as large as the kernel {kh}x{kw}{dilated} after "
                             f"padding {pads}, got shape {tuple(shape)} ({h}x{w})")
        return oh, ow
