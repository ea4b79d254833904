"""Convolution: im2col + GEMM, or Winograd F(2x2, 3x3) for 3x3 stride-1 layers with many channels."""
from __future__ import annotations

import numbers

import numpy as np

from ..devices import ops
from . import winograd
from .base import Layer, _dtype_arg, _init_arg, _int_arg, _pair_arg
from .init import initialise, zeros

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
        """Whether this input is convolved by Winograd F(2x2, 3x3) (:mod:`gpucnn.layers.winograd`) rather than im2col:
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

    def forward(self, x, train=None):
        xp = self._begin(x)
        train = self._mode(train)
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
