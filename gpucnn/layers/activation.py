"""Elementwise activations."""
from __future__ import annotations

from ..devices import ops
from .base import Layer, _float_arg


class _Elementwise(Layer):
    """Layers whose output has the input's shape; the cache holds what backward needs plus that shape."""

    def forward(self, x, train=None):
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
    """max(x, 0); the gradient is dout where the output is positive (or NaN) and exactly 0 elsewhere, also for
    an infinite or NaN dout (a selection, not a multiplication by a 0/1 mask), as PyTorch's threshold_backward.

    Backward is one kernel on a GPU (kernels/activation.cu). In a chain (Sequential, Residual), a ReLU right
    after a layer that can apply it in the pass adding its bias (``fuses_relu``: Conv2D, Affine) costs no pass
    of its own forward: the chain calls that layer's ``forward_relu`` and this layer's :meth:`rectified`."""

    def _forward(self, xp, x):
        y = xp.maximum(x, 0)
        return y, y

    def _backward(self, xp, dout, y):
        return ops.relu_backward(y, dout)

    def rectified(self, y):
        """Take `y`, already max(x, 0) of this layer's input x (the layer before applied it), as this layer's
        output: no work, the backward pass is the same as after forward(x). Returns y."""
        self._begin(y)
        return self._save(y, y)


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
