"""Inverted dropout."""
from __future__ import annotations

from ..devices import random_uniform
from .base import Layer, _float_arg


class Dropout(Layer):
    """Inverted dropout: in training zero each value with probability p and scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = _float_arg(p, "p", "Dropout", 0.0, 1.0, high_inclusive=False)

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def forward(self, x, train=None):
        self._begin(x)
        train = self._mode(train)
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
