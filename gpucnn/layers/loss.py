"""Softmax cross-entropy loss, with PyTorch's ignore_index, label smoothing, class weights and reductions."""
from __future__ import annotations

import numbers

import numpy as np

from ..devices import DeviceMismatchError, device_of, device_scope, get_array_module, ops, to_cpu, to_device
from .base import Layer

REDUCTIONS = ("mean", "sum", "none")


class SoftmaxCrossEntropy(Layer):
    """Cross-entropy of softmax(logits) against integer class labels, exactly as
    ``torch.nn.functional.cross_entropy(logits, labels, weight, ignore_index=, reduction=, label_smoothing=)``.

    For logits (N, K) and labels (N,) with class weights w (all 1 without ``weight``) and smoothing e:

        loss_n = (1 - e) * w[y_n] * -log p[n, y_n] + (e / K) * sum_c w[c] * -log p[n, c]

    and 0 for samples whose label is ``ignore_index``. ``reduction='mean'`` divides the sum over samples by the
    sum of w[y_n] over the samples not ignored (their count without weights; NaN if all are ignored, as in
    PyTorch), ``'sum'`` returns the sum, ``'none'`` the (N,) losses. log p is a log-softmax shifted by the row
    maximum and the label's term is gathered, never multiplied by a one-hot mask, so the loss is finite for
    any finite or -inf logits wherever its true value is (for example 1.3132617 for [[0, -inf, 1]] and label
    0; 0 for float32 [[3e38, -3e38]] and label 0); a class with weight 0 adds nothing even at -inf.

    Labels outside [0, classes) other than ignore_index raise ValueError for host (numpy) arrays. On a GPU
    that check would need a device-to-host sync every step, so there such labels make the loss and its
    gradient NaN instead, which the trainer's non-finite check stops on. ``weight``: K non-negative finite
    numbers (ValueError otherwise), used in the logits' dtype and device.
    """

    def __init__(self, ignore_index=-100, label_smoothing=0.0, weight=None, reduction="mean"):
        super().__init__()
        name = "SoftmaxCrossEntropy"
        if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
            raise ValueError(f"{name}: ignore_index must be an int, got {ignore_index!r}")
        ok = isinstance(label_smoothing, numbers.Real) and not isinstance(label_smoothing, bool) and \
            0.0 <= label_smoothing <= 1.0
        if not ok:
            raise ValueError(f"{name}: label_smoothing must be in [0.0, 1.0], got {label_smoothing!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"{name}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
        if weight is not None:
            w = np.asarray(to_cpu(weight), dtype=np.float64)
            if w.ndim != 1 or w.size < 1 or not np.all(np.isfinite(w)) or (w < 0).any():
                raise ValueError(f"{name}: weight must be a 1-D array of non-negative finite class weights, got "
                                 f"{weight!r}")
            weight = w
        self.ignore_index, self.label_smoothing = int(ignore_index), float(label_smoothing)
        self.weight, self.reduction = weight, reduction
        self._weights = {}

    def __repr__(self):
        parts = [f"ignore_index={self.ignore_index}"] if self.ignore_index != -100 else []
        parts += [f"label_smoothing={self.label_smoothing}"] if self.label_smoothing else []
        parts += ["weight=[...]"] if self.weight is not None else []
        parts += [f"reduction={self.reduction!r}"] if self.reduction != "mean" else []
        return f"SoftmaxCrossEntropy({', '.join(parts)})"

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def _check(self, logits, labels):
        """xp after checking types, shapes, and (on the host) the label range."""
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
        if self.weight is not None and self.weight.size != k:
            raise ValueError(f"{self!r}: expected {k} class weights for {k} classes, got {self.weight.size}")
        if xp is np:
            kept = labels[labels.astype(np.int64) != self.ignore_index]
            if kept.size and (int(kept.min()) < 0 or int(kept.max()) >= k):
                raise ValueError(f"{self!r}: expected labels in [0, {k}) for {k} classes"
                                 f"{'' if self.ignore_index in range(k) else f' (or {self.ignore_index}, ignored)'}, "
                                 f"got values in [{int(kept.min())}, {int(kept.max())}]")
        return xp

    def _class_weights(self, logits):
        """The weights as an array in the logits' dtype and on their device (moved once per device)."""
        key = (device_of(logits), np.dtype(logits.dtype))
        if key not in self._weights:
            self._weights[key] = to_device(self.weight.astype(key[1]), key[0])
        return self._weights[key]

    def forward(self, logits, labels):
        """The loss: a 0-d array on the logits' device, or (N,) with reduction='none'.

        Two kernels on a GPU (kernels/loss.cu: the per-sample losses, then their sum or mean), the numpy twins
        in gpucnn.devices.fused_twins on the CPU."""
        xp = self._check(logits, labels)
        with device_scope(logits):
            labels = xp.ascontiguousarray(labels.astype(xp.int64, copy=False))
            w = self._class_weights(logits) if self.weight is not None else None
            losses, wy, stats = ops.xent_forward(logits, labels, w, self.ignore_index, self.label_smoothing)
            red = None if self.reduction == "none" else ops.xent_reduce(losses, wy, self.reduction == "mean")
        self._cache = (logits, stats, labels, red)
        return losses if red is None else red[:1].reshape(())

    def backward(self, dout=1.0):
        """d(loss)/d(logits), (N, K): per sample (1-e)*w[y]*(p - onehot) + (e/K)*(p*sum(w) - w), divided by the
        mean's denominator and times dout (a scalar, or (N,) with reduction='none'); 0 for ignored samples.
        One kernel on a GPU."""
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        logits, stats, labels, red = self._cache
        n = logits.shape[0]
        if getattr(dout, "ndim", 0) == 1 and tuple(dout.shape) != (n,):
            raise ValueError(f"{self!r}: expected dout of shape ({n},) (the losses'), got {tuple(dout.shape)}")
        with device_scope(logits):   # dout may be a Python number: the device is the forward pass's
            w = self._class_weights(logits) if self.weight is not None else None
            wsum = None if self.weight is None else float(self.weight.sum())
            return ops.xent_backward(logits, stats, labels, w, wsum, self.ignore_index, self.label_smoothing, dout,
                                     red, self.reduction == "mean")
