"""Inverted dropout."""
from __future__ import annotations

from ..devices import ops, random_uniform
from .base import Layer, _float_arg


class Dropout(Layer):
    """Inverted dropout: in training zero each value with probability p and scale the rest by 1/(1-p).

    A dropped value is 0 and its gradient is 0 whatever it held, inf and NaN included: the mask selects, it
    does not multiply (PyTorch multiplies, so a dropped inf gives NaN there)."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = _float_arg(p, "p", "Dropout", 0.0, 1.0, high_inclusive=False)

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def forward(self, x, train=None):
        self._begin(x)
        train = self._mode(train)
        keep = None
        if train and self.p > 0:
            keep = random_uniform(x.shape, like=x) >= self.p
            x = self._kept(x, keep)
        return self._save((keep,), x)

    def _kept(self, a, keep):
        """a / (1 - p) where kept, exactly 0 where dropped."""
        return ops.keep_or_zero(keep, a * a.dtype.type(1 / (1 - self.p)))

    def backward(self, dout):
        keep, = self._saved(dout)
        self._xp(dout, keep)   # checks dout is on keep's device
        if not self.need_input_grad:
            return None
        return dout if keep is None else self._kept(dout, keep)
