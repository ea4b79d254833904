"""Softmax cross-entropy loss."""
from __future__ import annotations

import numpy as np

from ..devices import DeviceMismatchError, device_of, device_scope, get_array_module
from .base import Layer


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
        with device_scope(p):   # dout may be a Python number: the device is the forward pass's
            return (p - onehot) * (dout / p.shape[0])
