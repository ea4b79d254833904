"""2-D max and average pooling (custom kernels on a GPU, numpy twins on the CPU)."""
from __future__ import annotations

from ..devices import ops
from .base import Layer, _pair_arg


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
    """Average pooling; padding counts as zeros in the mean (PyTorch's count_include_pad=True)."""

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
