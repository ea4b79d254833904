"""The layer set: forward/backward on any device through ``xp`` (numpy, cupy or the emulated GPU).

Every layer has ``forward(x, train=True)``, ``backward(dout) -> dx``, dicts ``params``/``grads`` (same keys,
shapes, dtypes and device; ``backward`` overwrites ``grads`` in place so references to them stay valid),
``buffers`` (untrained state kept in checkpoints), ``need_input_grad`` (False: ``backward`` skips dx and
returns None), ``output_shape(shape)`` (validates an input shape), and ``to(device)``.
Layers only call ``xp`` and :mod:`gpucnn.ops`, never create host arrays for device inputs and never sync.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import ops, winograd
from .backend import (DeviceMismatchError, device_of, get_array_module, get_device, random_uniform,
                      to_device)
from .init import INITS, initialise, zeros

__all__ = ["Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "Affine", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
           "Flatten", "Dropout", "BatchNorm1D", "BatchNorm2D", "LRN", "SoftmaxCrossEntropy",
           "set_workspace_limit", "get_workspace_limit"]

# ------------------------------------------------------------------------------------ workspace limit

_workspace_limit = 512 * 2**20


def set_workspace_limit(nbytes: int):
    """Bound the bytes of one im2col column buffer; larger batches are convolved in chunks of samples."""
    global _workspace_limit
    if not isinstance(nbytes, numbers.Integral) or isinstance(nbytes, bool) or nbytes <= 0:
        raise ValueError(f"workspace limit: expected a positive number of bytes, got {nbytes!r}")
    _workspace_limit = int(nbytes)


def get_workspace_limit() -> int:
    """The current im2col workspace limit in bytes (default 512 MiB)."""
    return _workspace_limit


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


def _init_arg(init, owner):
    if init not in INITS:
        raise ValueError(f"{owner}: init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    return init


# -------------------------------------------------------------------------------------------- base

class Layer:
    """Base class: parameter/gradient/buffer dicts, device moves and the input checks all layers share."""

    need_input_grad = True

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self._cache = None
        self._scratch = {}   # host work buffers reused across steps (see ops.im2col)

    # -- interface
    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x, train=True):
        return self.forward(x, train)

    def output_shape(self, shape) -> tuple:
        """The output shape for an input of `shape`; raises ValueError if the layer cannot take it."""
        return tuple(shape)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def to(self, device):
        """Move params, grads and buffers to a device ('cpu', 'cuda:N', 'emulated'); returns self."""
        dev = get_device(device)
        for d in (self.params, self.grads, self.buffers):
            for k in d:
                d[k] = to_device(d[k], dev)
        self._cache = None
        self._scratch = {}
        return self

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
                            f"(convert with x.astype('float32'))")
        for p in self.params.values():
            if p.dtype != x.dtype:
                raise TypeError(f"{self!r}: expected {p.dtype} input (the layer's dtype), got {x.dtype} "
                                f"(convert with x.astype('{p.dtype}'))")
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

    def _window_out(self, shape, kernel, stride, padding):
        """(out_h, out_w) of a sliding window over the last two dims, refusing inputs smaller than it."""
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        h, w = shape[2], shape[3]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"{self!r}: expected an input at least as large as the kernel {kh}x{kw} after "
                             f"padding {ph},{pw}, got shape {tuple(shape)} ({h}x{w})")
        return ops.out_size(h, kh, sh, ph), ops.out_size(w, kw, sw, pw)


# -------------------------------------------------------------------------------------------- conv

class Conv2D(Layer):
    """2-D convolution (cross-correlation, as PyTorch): im2col, then one GEMM per chunk of samples.

    The columns of the whole batch are cached for backward when they fit in the workspace limit;
    otherwise the batch is processed in chunks and each chunk's columns are recomputed in backward.
    3x3 stride-1 layers with many channels take Winograd F(2x2, 3x3) instead (see `uses_winograd`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, init="he",
                 dtype=np.float32):
        super().__init__()
        name = "Conv2D"
        self.in_channels = _int_arg(in_channels, "in_channels", name, 1)
        self.out_channels = _int_arg(out_channels, "out_channels", name, 1)
        self.kernel_size = _pair_arg(kernel_size, "kernel_size", name, 1)
        self.stride = _pair_arg(stride, "stride", name, 1)
        self.padding = _pair_arg(padding, "padding", name, 0)
        dtype = _dtype_arg(dtype, name)
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self._add_param("W", initialise(_init_arg(init, name), shape, dtype))
        if not isinstance(bias, (bool, np.bool_)):
            raise ValueError(f"{name}: bias must be True or False, got {bias!r}")
        if bias:
            self._add_param("b", zeros((self.out_channels,), dtype))

    def __repr__(self):
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{'' if 'b' in self.params else ', bias=False'})")

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, f"(N, {self.in_channels}, H, W)")
        if shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: expected input (N, {self.in_channels}, H, W), got shape {tuple(shape)}")
        oh, ow = self._window_out(shape, self.kernel_size, self.stride, self.padding)
        return (shape[0], self.out_channels, oh, ow)

    def uses_winograd(self, input_shape, dtype=np.float32) -> bool:
        """Whether this input is convolved by Winograd F(2x2, 3x3) (:mod:`gpucnn.winograd`) rather than im2col:
        3x3 kernels at stride 1, of a size where it was measured faster (`winograd.pays`: many channels, enough
        tiles, transforms that fit in cache), with the whole batch's transforms within the workspace limit.
        A function of shapes only: a layer takes the same path on every device."""
        if (self.kernel_size, self.stride) != ((3, 3), (1, 1)):
            return False
        size = self._winograd_size(input_shape, dtype)
        return winograd.pays(*size) and winograd.buffer_bytes(*size) <= _workspace_limit

    def _winograd_size(self, input_shape, dtype):
        n, _, oh, ow = self.output_shape(input_shape)
        return self.in_channels, self.out_channels, int(n), oh, ow, np.dtype(dtype).itemsize

    def sample_bytes(self, input_shape, dtype=np.float32) -> int:
        """Bytes of one sample's im2col columns, C*kh*kw x out_h*out_w: the largest work buffer per sample
        (column gradients and the weight-gradient temporaries are at most as large)."""
        _, _, oh, ow = self.output_shape(input_shape)
        k = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return k * oh * ow * np.dtype(dtype).itemsize

    def chunk_size(self, input_shape, dtype=np.float32) -> int:
        """Samples convolved at once by im2col: as many as keep every work buffer within the workspace limit (>= 1)."""
        return max(1, min(int(input_shape[0]), _workspace_limit // self.sample_bytes(input_shape, dtype)))

    def column_bytes(self, input_shape, dtype=np.float32) -> int:
        """Bytes of the largest work buffer (the im2col columns or the Winograd transforms) a forward/backward
        of this input makes: within the workspace limit unless a single sample's columns exceed it."""
        if self.uses_winograd(input_shape, dtype):
            return winograd.buffer_bytes(*self._winograd_size(input_shape, dtype))
        return self.chunk_size(input_shape, dtype) * self.sample_bytes(input_shape, dtype)

    def _cols(self, x):
        """(n*oh*ow, kh*kw*C) columns of a chunk, row- or column-major (in this layer's scratch buffer on the CPU)."""
        col = ops.im2col(x, *self.kernel_size, *self.stride, *self.padding, self._scratch)
        return col.reshape(-1, col.shape[3] * col.shape[4] * col.shape[5])

    def _weight_rows(self, xp):
        """W as (out, kh*kw*C), the order of a column row."""
        w = self.params["W"]
        return xp.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)

    def forward(self, x, train=True):
        xp = self._begin(x)
        n = x.shape[0]
        _, o, oh, ow = self.output_shape(x.shape)
        p = oh * ow
        x = xp.ascontiguousarray(x)
        if self.uses_winograd(x.shape, x.dtype):
            u = winograd.filter_transform(self.params["W"])
            v = winograd.input_transform(x, self.padding)
            y = winograd.output_transform(xp.matmul(v, u.transpose(0, 2, 1)), n, oh, ow, self.params.get("b"))
            return self._save((x, v if train else None, u, True), y)
        wk = self._weight_rows(xp)
        chunk = self.chunk_size(x.shape, x.dtype)
        y = xp.empty((n, o, p), dtype=x.dtype)
        b = self.params["b"][:, None] if "b" in self.params else x.dtype.type(0)
        col = None
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            col = self._cols(x[s:s + m])
            # The GEMM's output is transposed into NCHW by the pass that adds the bias.
            if o >= 32:   # (out, m*oh*ow): rows of the transposing pass are oh*ow long
                xp.add(xp.matmul(wk, col.T).reshape(o, m, p).transpose(1, 0, 2), b, out=y[s:s + m])
            else:         # few filters: BLAS is faster with the long dimension first
                xp.add(xp.matmul(col, wk.T).reshape(m, p, o).transpose(0, 2, 1), b, out=y[s:s + m])
        return self._save((x, col if (train and chunk >= n) else None, wk, False), y.reshape(n, o, oh, ow))

    def backward(self, dout):
        # wk: the weight rows (or the Winograd filters) the forward pass used
        x, cached_col, wk, by_winograd = self._saved(dout)
        xp = self._xp(dout, x, *self.params.values())
        if by_winograd:
            return self._backward_winograd(xp, dout, x, cached_col, wk)
        n, c, h, w = x.shape
        _, o, oh, ow = dout.shape
        kh, kw = self.kernel_size
        p = oh * ow
        d = xp.ascontiguousarray(dout.reshape(n, o, p).transpose(1, 0, 2)).reshape(o, n * p)
        chunk = n if cached_col is not None else self.chunk_size(x.shape, x.dtype)
        dwk = None
        dx = xp.empty(x.shape, dtype=x.dtype) if self.need_input_grad and chunk < n else None
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            col = cached_col if cached_col is not None else self._cols(x[s:s + m])
            ds = d[:, s * p:(s + m) * p]
            part = xp.matmul(ds, col)                                  # (out, kh*kw*C): one GEMM
            dwk = part if dwk is None else dwk + part
            if self.need_input_grad:
                if col.flags.c_contiguous:   # the columns are spent: their buffer takes their gradient
                    xp.matmul(ds.T, wk, out=col)
                else:                        # tap-major columns from the CPU twin (see ops.im2col)
                    xp.matmul(wk.T, ds, out=col.T)
                dcol = col.reshape(m, oh, ow, kh, kw, c)
                dxs = ops.col2im(dcol, (m, c, h, w), *self.stride, *self.padding)
                if dx is None:
                    dx = dxs
                else:
                    dx[s:s + m] = dxs
        self._cache = (x, None, wk, False)   # the cached columns now hold their gradient; another backward recomputes
        self._set_grad("W", dwk.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))
        if "b" in self.params:
            self._set_grad("b", d.sum(axis=1))
        return dx

    def _backward_winograd(self, xp, dout, x, v, u):
        """Both gradients through the Winograd transforms' adjoints; the cached V's buffer takes dV."""
        v = winograd.input_transform(x, self.padding) if v is None else v
        dm = winograd.output_gradient_transform(dout)
        self._set_grad("W", winograd.filter_gradient(xp.matmul(dm.transpose(0, 2, 1), v)))
        if "b" in self.params:
            self._set_grad("b", dout.sum(axis=(0, 2, 3)))
        self._cache = (x, None, u, True)
        if not self.need_input_grad:
            return None
        return winograd.input_gradient(xp.matmul(dm, u, out=v), x.shape, self.padding)


# -------------------------------------------------------------------------------------------- pooling

class _Pool2D(Layer):
    """Shared argument handling for the 2-D pools: stride defaults to the kernel, padding <= kernel / 2."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair_arg(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else _pair_arg(stride, "stride", name, 1)
        self.padding = _pair_arg(padding, "padding", name, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding must be at most half the kernel size (as in PyTorch), "
                             f"got padding={self.padding} for kernel_size={self.kernel_size}")

    def __repr__(self):
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding})")

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, "(N, C, H, W)")
        oh, ow = self._window_out(shape, self.kernel_size, self.stride, self.padding)
        return (shape[0], shape[1], oh, ow)

    def _args(self):
        return (*self.kernel_size, *self.stride, *self.padding)


class MaxPool2D(_Pool2D):
    """Max pooling; padding reads as -inf; ties go to the first maximum (as PyTorch)."""

    def forward(self, x, train=True):
        xp = self._begin(x)
        y, argmax = ops.maxpool_forward(xp.ascontiguousarray(x), *self._args())
        return self._save((x.shape, argmax), y)

    def backward(self, dout):
        x_shape, argmax = self._saved(dout)
        xp = self._xp(dout, argmax)
        if not self.need_input_grad:
            return None
        return ops.maxpool_backward(xp.ascontiguousarray(dout), argmax, x_shape, *self._args())


class AvgPool2D(_Pool2D):
    """Average pooling; padding counts as zeros in the mean (PyTorch's count_include_pad=True)."""

    def forward(self, x, train=True):
        xp = self._begin(x)
        y = ops.avgpool_forward(xp.ascontiguousarray(x), *self._args())
        return self._save(x.shape, y)

    def backward(self, dout):
        x_shape = self._saved(dout)
        xp = self._xp(dout)
        if not self.need_input_grad:
            return None
        return ops.avgpool_backward(xp.ascontiguousarray(dout), x_shape, *self._args())


# -------------------------------------------------------------------------------------------- affine

class Affine(Layer):
    """Fully connected: y = x.reshape(N, -1) @ W + b, with W of shape (in_features, out_features)."""

    def __init__(self, in_features, out_features, init="he", dtype=np.float32):
        super().__init__()
        name = "Affine"
        self.in_features = _int_arg(in_features, "in_features", name, 1)
        self.out_features = _int_arg(out_features, "out_features", name, 1)
        dtype = _dtype_arg(dtype, name)
        self._add_param("W", initialise(_init_arg(init, name), (self.in_features, self.out_features), dtype))
        self._add_param("b", zeros((self.out_features,), dtype))

    def __repr__(self):
        return f"Affine({self.in_features}, {self.out_features})"

    def output_shape(self, shape):
        if len(shape) < 2 or int(np.prod(shape[1:])) != self.in_features:
            raise ValueError(f"{self!r}: expected input (N, {self.in_features}) or (N, ...) with "
                             f"{self.in_features} features per sample, got shape {tuple(shape)}")
        return (shape[0], self.out_features)

    def forward(self, x, train=True):
        self._begin(x)
        x2 = x.reshape(x.shape[0], -1)
        return self._save((x2, x.shape), x2 @ self.params["W"] + self.params["b"])

    def backward(self, dout):
        x2, x_shape = self._saved(dout)
        xp = self._xp(dout, x2, *self.params.values())
        xp.matmul(x2.T, dout, out=self.grads["W"])   # straight into the gradient: no temporary to copy
        xp.sum(dout, axis=0, out=self.grads["b"])
        if not self.need_input_grad:
            return None
        return (dout @ self.params["W"].T).reshape(x_shape)


# ------------------------------------------------------------------------------------- activations

class _Elementwise(Layer):
    """Layers whose output has the input's shape; the cache holds what backward needs plus that shape."""

    def forward(self, x, train=True):
        xp = self._begin(x)
        y, saved = self._forward(xp, x)
        return self._save(saved, y)

    def backward(self, dout):
        saved = self._saved(dout)
        xp = self._xp(dout, saved)
        if not self.need_input_grad:
            return None
        return self._backward(xp, dout, saved)


class ReLU(_Elementwise):
    """max(x, 0); gradient 0 at x == 0 (as PyTorch)."""

    def _forward(self, xp, x):
        y = xp.maximum(x, 0)
        return y, y

    def _backward(self, xp, dout, y):
        return dout * (y > 0)


class LeakyReLU(_Elementwise):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = _float_arg(negative_slope, "negative_slope", "LeakyReLU", -float("inf"), float("inf"))

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.negative_slope})"

    def _forward(self, xp, x):
        positive = x > 0
        return xp.where(positive, x, x * self.negative_slope), positive

    def _backward(self, xp, dout, positive):
        return xp.where(positive, dout, dout * self.negative_slope)


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so it never overflows."""

    def _forward(self, xp, x):
        z = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + z), z / (1 + z))
        return y, y

    def _backward(self, xp, dout, y):
        return dout * y * (1 - y)


class Tanh(_Elementwise):
    """tanh(x)."""

    def _forward(self, xp, x):
        y = xp.tanh(x)
        return y, y

    def _backward(self, xp, dout, y):
        return dout * (1 - y * y)


class Flatten(Layer):
    """(N, ...) -> (N, features)."""

    def output_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"{self!r}: expected an input (N, ...) with a batch dimension, got shape {tuple(shape)}")
        return (shape[0], int(np.prod(shape[1:])))

    def forward(self, x, train=True):
        self._begin(x)
        return self._save(x.shape, x.reshape(self.output_shape(x.shape)))

    def backward(self, dout):
        shape = self._saved(dout)
        return dout.reshape(shape) if self.need_input_grad else None


class Dropout(Layer):
    """Inverted dropout: in training zero each value with probability p and scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = _float_arg(p, "p", "Dropout", 0.0, 1.0, high_inclusive=False)

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def forward(self, x, train=True):
        self._begin(x)
        mask = None
        if train and self.p > 0:
            mask = (random_uniform(x.shape, like=x) >= self.p).astype(x.dtype)
            mask *= 1 / (1 - self.p)
            x = x * mask
        return self._save((mask,), x)

    def backward(self, dout):
        mask, = self._saved(dout)
        self._xp(dout, mask)
        if not self.need_input_grad:
            return None
        return dout if mask is None else dout * mask


# ------------------------------------------------------------------------------------ normalisation

class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channel axis 1, with PyTorch's running statistics:
    biased variance normalises the batch, the unbiased one goes into running_var; eval uses running stats."""

    _layout = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = _int_arg(num_features, "num_features", name, 1)
        self.eps = _float_arg(eps, "eps", name, 0.0, float("inf"))
        if self.eps <= 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        self.momentum = _float_arg(momentum, "momentum", name, 0.0, 1.0)
        dtype = _dtype_arg(dtype, name)
        self._add_param("gamma", np.ones(self.num_features, dtype))
        self._add_param("beta", np.zeros(self.num_features, dtype))
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype)

    def __repr__(self):
        return f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum})"

    def output_shape(self, shape):
        ndim = len(self._layout.split(","))
        self._expect_ndim(shape, ndim, self._layout.replace("C", str(self.num_features)))
        if shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input {self._layout.replace('C', str(self.num_features))}, "
                             f"got shape {tuple(shape)}")
        return tuple(shape)

    def _axes_and_bshape(self, x):
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, self.num_features) + (1,) * (x.ndim - 2)
        return axes, bshape

    def forward(self, x, train=True):
        xp = self._begin(x)
        axes, bshape = self._axes_and_bshape(x)
        m = x.size // self.num_features
        if train:
            if m < 2:
                raise ValueError(f"{self!r}: expected more than 1 value per channel when training, "
                                 f"got input shape {tuple(x.shape)}")
            # Statistics of x minus one of its own values per channel: a large common offset then cancels
            # exactly, before the float32 sums, instead of rounding the deviations away.
            shift = x[(0, slice(None)) + (0,) * (x.ndim - 2)].reshape(bshape)
            xc = x - shift
            shifted_mean = xc.mean(axis=axes, keepdims=True)
            xc -= shifted_mean
            mean = shift + shifted_mean
            var = (xc * xc).mean(axis=axes, keepdims=True)
            mom = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - mom
            rm += mom * mean.reshape(-1)
            rv *= 1 - mom
            rv += (mom * m / (m - 1)) * var.reshape(-1)
        else:
            xc = x - self.buffers["running_mean"].reshape(bshape)
            var = self.buffers["running_var"].reshape(bshape)
        invstd = 1 / xp.sqrt(var + self.eps)
        xhat = xc * invstd
        y = xhat * self.params["gamma"].reshape(bshape) + self.params["beta"].reshape(bshape)
        return self._save((xhat, invstd, train), y)

    def backward(self, dout):
        xhat, invstd, train = self._saved(dout)
        self._xp(dout, xhat, *self.params.values())
        axes, bshape = self._axes_and_bshape(xhat)
        dbeta = dout.sum(axis=axes)
        dgamma = (dout * xhat).sum(axis=axes)
        self._set_grad("beta", dbeta)
        self._set_grad("gamma", dgamma)
        if not self.need_input_grad:
            return None
        scale = self.params["gamma"].reshape(bshape) * invstd
        if not train:
            return dout * scale
        m = xhat.size // self.num_features
        return scale * (dout - dbeta.reshape(bshape) / m - xhat * (dgamma.reshape(bshape) / m))


class BatchNorm1D(_BatchNorm):
    """Batch norm of (N, C) features."""
    _layout = "(N, C)"


class BatchNorm2D(_BatchNorm):
    """Batch norm of (N, C, H, W) maps, per channel."""
    _layout = "(N, C, H, W)"


def _channel_window_sum(a, before, after):
    """out[:, c] = sum of a[:, c-before .. c+after] (channels outside the range count as zero)."""
    out = a.copy()
    c = a.shape[1]
    for o in range(1, min(after, c - 1) + 1):
        out[:, :c - o] += a[:, o:]
    for o in range(1, min(before, c - 1) + 1):
        out[:, o:] += a[:, :c - o]
    return out


class LRN(Layer):
    """Local response normalisation across channels, exactly PyTorch's LocalResponseNorm:
    y_c = x_c / (k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} x_c'^2) ** beta."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        self.size = _int_arg(size, "size", "LRN", 1)
        self.alpha = _float_arg(alpha, "alpha", "LRN", 0.0, float("inf"))
        self.beta = _float_arg(beta, "beta", "LRN", 0.0, float("inf"))
        self.k = _float_arg(k, "k", "LRN", 0.0, float("inf"))
        if self.k <= 0:
            raise ValueError(f"LRN: k must be > 0, got {k!r}")

    def __repr__(self):
        return f"LRN(size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k})"

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, "(N, C, H, W)")
        return tuple(shape)

    def forward(self, x, train=True):
        self._begin(x)
        d = _channel_window_sum(x * x, self.size // 2, (self.size - 1) // 2)
        d *= self.alpha / self.size
        d += self.k
        scale = d ** -self.beta
        y = x * scale
        return self._save((x, y, d, scale), y)

    def backward(self, dout):
        x, y, d, scale = self._saved(dout)
        self._xp(dout, x)
        if not self.need_input_grad:
            return None
        # x_j appears in the windows of channels c = j-(size-1)//2 .. j+size//2: the transposed window.
        u = _channel_window_sum(dout * y / d, (self.size - 1) // 2, self.size // 2)
        return dout * scale - (2 * self.beta * self.alpha / self.size) * x * u


# --------------------------------------------------------------------------------------------- loss

class SoftmaxCrossEntropy(Layer):
    """Mean cross-entropy of softmax(logits) against integer class labels (numerically stable log-softmax).

    Labels outside [0, classes) raise ValueError for host (numpy) arrays. On a GPU that check would need a
    device-to-host sync every step, so there such labels make the loss and its gradient NaN instead, which
    the trainer's non-finite check stops on (its datasets' labels are checked when they are read).
    """

    def __repr__(self):
        return "SoftmaxCrossEntropy()"

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        """Mean loss, a 0-d array on the logits' device."""
        for name, a in (("logits", logits), ("labels", labels)):
            if not (hasattr(a, "shape") and hasattr(a, "dtype")):
                raise TypeError(f"{self!r}: expected {name} as an array, got {type(a).__name__}")
        try:
            xp = get_array_module(logits, labels)
        except DeviceMismatchError:
            raise DeviceMismatchError(f"{self!r}: logits are on {device_of(logits)} but labels on "
                                      f"{device_of(labels)}; move both to one device") from None
        if logits.ndim != 2 or logits.shape[0] < 1:
            raise ValueError(f"{self!r}: expected logits (N, classes) with N >= 1, got shape {tuple(logits.shape)}")
        if logits.dtype.kind != "f":
            raise TypeError(f"{self!r}: expected floating-point logits, got dtype {logits.dtype}")
        n, k = logits.shape
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{self!r}: expected integer labels, got dtype {labels.dtype}")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"{self!r}: expected labels of shape ({n},) for logits {tuple(logits.shape)}, "
                             f"got shape {tuple(labels.shape)}")
        if xp is np:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= k:
                raise ValueError(f"{self!r}: expected labels in [0, {k}) for {k} classes, "
                                 f"got values in [{lo}, {hi}]")
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        onehot = (xp.arange(k)[None, :] == labels[:, None]).astype(logits.dtype)
        if xp is not np:   # a row without its class has a label outside [0, k): poison it, with no sync
            onehot[:, :1] += xp.where(onehot.sum(axis=1, keepdims=True) == 0, logits.dtype.type(np.nan), 0)
        self._cache = (xp.exp(logp), onehot)
        return xp.asarray((onehot * logp).sum() * logits.dtype.type(-1 / n))

    def backward(self, dout=1.0):
        """d(loss)/d(logits) = (softmax - onehot) * dout / N."""
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        p, onehot = self._cache
        return (p - onehot) * (dout / p.shape[0])
