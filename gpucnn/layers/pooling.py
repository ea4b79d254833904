"""2-D pooling: max and average windows (custom kernels on a GPU, numpy twins on the CPU), global and adaptive
average pooling (xp only)."""
from __future__ import annotations

import numbers

import numpy as np

from ..devices import device_of, ops, to_device
from .base import Layer, _pair_arg


class _Pool2D(Layer):
    """Shared argument handling for the window pools: stride defaults to the kernel, padding <= kernel / 2 (as
    PyTorch requires), output size rounded down or, with ceil_mode, up (PyTorch's rule: the last window must
    start inside the input or the left padding)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair_arg(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else _pair_arg(stride, "stride", name, 1)
        self.padding = _pair_arg(padding, "padding", name, 0)
        self.dilation = _pair_arg(dilation, "dilation", name, 1)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding must be at most half the kernel size (as in PyTorch), "
                             f"got padding={self.padding} for kernel_size={self.kernel_size}")
        if not isinstance(ceil_mode, (bool, np.bool_)):
            raise ValueError(f"{name}: ceil_mode must be True or False, got {ceil_mode!r}")
        self.ceil_mode = bool(ceil_mode)

    def __repr__(self):
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}{self._repr_extra()})")

    def _repr_extra(self):
        return "" if not self.ceil_mode else ", ceil_mode=True"

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, "(N, C, H, W)")
        oh, ow = self._window_out(shape, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return (shape[0], shape[1], oh, ow)


class MaxPool2D(_Pool2D):
    """Max pooling, as ``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False)``:
    (N, C, H, W) -> (N, C, out_h, out_w), out_h = (H + 2*padding - dilation*(kh-1) - 1) / stride + 1 rounded
    down (or up with ceil_mode, PyTorch's rule). Only input elements compete, padding never wins: ties go to the
    first maximum in row-major window order, NaN wins (as PyTorch), and a window of -inf inputs sends its
    gradient to its first input. A window that reads no input at all (only possible with dilation) gives
    -inf and no gradient (PyTorch indexes outside the input there). ValueError for bad arguments.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)

    def _repr_extra(self):
        return ("" if self.dilation == (1, 1) else f", dilation={self.dilation}") + super()._repr_extra()

    def _args(self):
        return (*self.kernel_size, *self.stride, *self.padding, *self.dilation, self.ceil_mode)

    def forward(self, x, train=None):
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
    """Average pooling, as ``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True)``: each window's sum divided by its size clipped to the padded input
    (count_include_pad=True: padding counts as zeros) or by its number of input elements (False: exclusive
    averaging); output size as MaxPool2D's without dilation. ValueError for bad arguments.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        if not isinstance(count_include_pad, (bool, np.bool_)):
            raise ValueError(f"AvgPool2D: count_include_pad must be True or False, got {count_include_pad!r}")
        self.count_include_pad = bool(count_include_pad)

    def _repr_extra(self):
        return super()._repr_extra() + ("" if self.count_include_pad else ", count_include_pad=False")

    def _args(self):
        return (*self.kernel_size, *self.stride, *self.padding, self.ceil_mode, self.count_include_pad)

    def forward(self, x, train=None):
        xp = self._begin(x)
        y = ops.avgpool_forward(xp.ascontiguousarray(x), *self._args())
        return self._save(x.shape, y)

    def backward(self, dout):
        x_shape = self._saved(dout)
        xp = self._xp(dout)
        if not self.need_input_grad:
            return None
        return ops.avgpool_backward(xp.ascontiguousarray(dout), x_shape, *self._args())


# ------------------------------------------------------------------------------------ adaptive pools

def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """The [start, end) window of each of `out` outputs over `size` inputs: PyTorch's adaptive pooling rule,
    start = floor(i*size/out), end = ceil((i+1)*size/out) (aten/src/ATen/native/AdaptiveAveragePooling.cpp)."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _averaging_matrix(size, out, dtype):
    """(out, size) host matrix whose row i averages adaptive window i."""
    a = np.zeros((out, size), dtype=dtype)
    for i, (s, e) in enumerate(adaptive_windows(size, out)):
        a[i, s:e] = 1.0 / (e - s)
    return a


class AdaptiveAvgPool2D(Layer):
    """Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool2d(output_size)``: (N, C, H, W) ->
    (N, C, oh, ow), output_size an int or an (oh, ow) pair whose entries may be None (keep that input size).
    Output (i, j) is the mean of rows [floor(i*H/oh), ceil((i+1)*H/oh)) and the columns likewise
    (see adaptive_windows). Computed as two small matrix products, A_h x A_w^T, whose transposes give the
    gradient: xp only, no kernel. ValueError for a bad output_size.
    """

    def __init__(self, output_size):
        super().__init__()
        pair = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        ok = len(pair) == 2 and all(v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                   and v >= 1) for v in pair)
        if not ok:
            raise ValueError(f"{type(self).__name__}: output_size must be an int >= 1 or an (h, w) pair of ints "
                             f">= 1 or None, got {output_size!r}")
        self.output_size = tuple(None if v is None else int(v) for v in pair)
        self._matrices = {}

    def __repr__(self):
        return f"AdaptiveAvgPool2D(output_size={self.output_size})"

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, "(N, C, H, W)")
        oh, ow = (s if o is None else o for o, s in zip(self.output_size, shape[2:]))
        return (shape[0], shape[1], oh, ow)

    def _averaging(self, x):
        """(A_h, A_w^T) for x's size, dtype and device, built once per shape on the host and kept."""
        _, _, oh, ow = self.output_shape(x.shape)
        key = (x.shape[2], x.shape[3], np.dtype(x.dtype), device_of(x))
        if key not in self._matrices:
            a_h = _averaging_matrix(x.shape[2], oh, x.dtype)
            a_w = _averaging_matrix(x.shape[3], ow, x.dtype)
            self._matrices[key] = (to_device(a_h, key[3]), to_device(np.ascontiguousarray(a_w.T), key[3]))
        return self._matrices[key]

    def forward(self, x, train=None):
        xp = self._begin(x)
        a_h, a_wt = self._averaging(x)
        return self._save((x.shape, a_h, a_wt), xp.matmul(xp.matmul(a_h, x), a_wt))

    def backward(self, dout):
        x_shape, a_h, a_wt = self._saved(dout)
        xp = self._xp(dout, a_h)
        if not self.need_input_grad:
            return None
        return xp.matmul(xp.matmul(a_h.T, dout), a_wt.T)

    def to(self, device):
        self._matrices = {}
        return super().to(device)


class GlobalAvgPool2D(Layer):
    """The mean over each channel's whole map: (N, C, H, W) -> (N, C, 1, 1), as MXNet Gluon's GlobalAvgPool2D
    and ``torch.nn.AdaptiveAvgPool2d(1)``; follow it with Flatten for (N, C). xp only."""

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, "(N, C, H, W)")
        return (shape[0], shape[1], 1, 1)

    def forward(self, x, train=None):
        self._begin(x)
        return self._save(x.shape, x.mean(axis=(2, 3), keepdims=True))

    def backward(self, dout):
        x_shape = self._saved(dout)
        xp = self._xp(dout)
        if not self.need_input_grad:
            return None
        return xp.broadcast_to(dout * dout.dtype.type(1.0 / (x_shape[2] * x_shape[3])), x_shape).copy()
