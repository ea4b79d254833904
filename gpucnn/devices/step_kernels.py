"""Launchers of the training step's kernels (kernels/optim.cu, check.cu, data.cu): one launch per optimizer
update of a flat range, per non-finite check, per metrics update and per batch. Same arguments and results as
their numpy twins in :mod:`.step_twins`, which document them; :mod:`.ops` picks one or the other by the
arrays' device.

Hyper-parameters arrive as Python numbers and are passed as scalars in the arrays' dtype, derived the way the
twins' numpy passes take them (``1 - beta1``, ``lr / (1 - beta1**step)``, ...): nothing is uploaded and
nothing is read back. Every array must be contiguous (TypeError/ValueError otherwise, naming the operation).
"""
from __future__ import annotations

import numpy as np

from . import core
from .fused import _contiguous, _float
from .kernels import launch as _launch

__all__ = ["sgd_step", "adagrad_step", "rmsprop_step", "adam_step", "nonfinite_check", "accumulate_metrics",
           "gather_batch"]

_i32 = np.int32


def _update_arrays(what, p, g, *state):
    """The dtype type of an update after checking p, g and the state arrays (None: unused) match."""
    given = [a for a in (p, g, *state) if a is not None]
    t = _float(what, *given)
    _contiguous(what, *given)
    if any(a.size != p.size for a in given):
        raise ValueError(f"{what}: parameters, gradients and state must have the same size, got "
                         f"{', '.join(str(a.size) for a in given)}")
    return t


def _run(what, p, args, launch):
    with core.device_scope(p):
        _launch(what, p.dtype, p, p.size, args, launch)


def sgd_step(p, g, buf, lr, weight_decay, momentum, first, dampening, nesterov, *, launch=None):
    """SGD in place; see step_twins.sgd_step."""
    what = "sgd_step"
    t = _update_arrays(what, p, g, buf)
    _run(what, p, (p, g, p if buf is None else buf, t(lr), _i32(bool(weight_decay)), t(weight_decay),
                   _i32(bool(momentum)), t(momentum), _i32(bool(first)), _i32(dampening != 0), t(1.0 - dampening),
                   _i32(bool(nesterov))), launch)


def adagrad_step(p, g, total, clr, weight_decay, eps, *, launch=None):
    """AdaGrad in place; see step_twins.adagrad_step."""
    what = "adagrad_step"
    t = _update_arrays(what, p, g, total)
    _run(what, p, (p, g, total, t(clr), _i32(bool(weight_decay)), t(weight_decay), t(eps)), launch)


def rmsprop_step(p, g, square_avg, grad_avg, buf, lr, weight_decay, alpha, eps, centered, momentum, *, launch=None):
    """RMSprop in place; see step_twins.rmsprop_step."""
    what = "rmsprop_step"
    t = _update_arrays(what, p, g, square_avg, grad_avg, buf)
    _run(what, p, (p, g, square_avg, p if grad_avg is None else grad_avg, p if buf is None else buf, t(lr),
                   _i32(bool(weight_decay)), t(weight_decay), t(alpha), t(1.0 - alpha), t(eps), _i32(bool(centered)),
                   _i32(bool(momentum)), t(momentum)), launch)


def adam_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, weight_decay, decoupled, betas, eps, amsgrad, step, *,
              launch=None):
    """Adam/AdamW in place; see step_twins.adam_step."""
    what = "adam_step"
    t = _update_arrays(what, p, g, exp_avg, exp_avg_sq, max_exp_avg_sq)
    b1, b2 = betas
    _run(what, p, (p, g, exp_avg, exp_avg_sq, p if max_exp_avg_sq is None else max_exp_avg_sq,
                   _i32(bool(weight_decay)), t(weight_decay), _i32(bool(decoupled)), t(1.0 - lr * weight_decay),
                   t(1.0 - b1), t(b2), t(1.0 - b2), _i32(bool(amsgrad)), t((1.0 - b2 ** step) ** 0.5), t(eps),
                   t(lr / (1.0 - b1 ** step))), launch)


def nonfinite_check(values, loss, step, first_bad, *, launch=None):
    """first_bad = step where values or loss are not finite (unless already set); see step_twins."""
    what = "nonfinite_check"
    _float(what, values, *(() if loss is None else (loss,)))
    _contiguous(what, values, first_bad, *(() if loss is None else (loss,)))
    if np.dtype(first_bad.dtype) != np.int64 or first_bad.size != 1:
        raise TypeError(f"{what}: first_bad must be one int64, got {first_bad.dtype} of shape {first_bad.shape}")
    n = int(values.size)
    with core.device_scope(values):
        _launch(what, values.dtype, values, n + (loss is not None),
                (np.int64(n), values, values if loss is None else loss, np.int64(step), first_bad), launch)


def accumulate_metrics(logits, labels, loss, count, loss_sum, correct, *, launch=None):
    """loss_sum += loss * count, correct += right argmaxes; see step_twins.accumulate_metrics."""
    what = "accumulate_metrics"
    t = _float(what, logits, loss)
    _contiguous(what, logits, labels, loss, loss_sum, correct)
    n, k = (int(s) for s in logits.shape)
    if np.dtype(labels.dtype) != np.int64 or labels.shape != (n,) or np.dtype(loss_sum.dtype) != np.float64 or \
            np.dtype(correct.dtype) != np.int64:
        raise TypeError(f"{what}: expects int64 labels ({n},), a float64 loss sum and an int64 count, got "
                        f"{labels.dtype} {labels.shape}, {loss_sum.dtype}, {correct.dtype}")
    with core.device_scope(logits):
        _launch(what, logits.dtype, logits, n, (_i32(k), logits, labels, loss, t(count), loss_sum, correct), launch)


def gather_batch(images, labels, draws, has_crop, has_flip, pad, scale, shift, dtype, *, launch=None):
    """(x, y) of a batch gathered from device-resident uint8 images; see step_twins.gather_batch."""
    what = "gather_batch"
    if np.dtype(images.dtype) != np.uint8 or images.ndim != 4:
        raise TypeError(f"{what}: expects uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    n_all, c, h, w = (int(s) for s in images.shape)
    b = int(draws.shape[0])
    for a, want, shape in ((labels, np.int64, (n_all,)), (draws, np.int32, (b, 4)), (scale, dtype, (c,)),
                           (shift, dtype, (c,))):
        if np.dtype(a.dtype) != np.dtype(want) or tuple(a.shape) != shape:
            raise TypeError(f"{what}: expects {np.dtype(want)} of shape {shape}, got {a.dtype} {tuple(a.shape)}")
    _contiguous(what, images, labels, draws, scale, shift)
    xp = core.get_array_module(images, draws)
    with core.device_scope(images):
        out = xp.empty((b, c, h, w), dtype=dtype)
        out_labels = xp.empty(b, dtype=np.int64)
        _launch(what, dtype, images, out.size,
                (images, labels, draws, _i32(bool(has_crop)), _i32(bool(has_flip)), _i32(pad), _i32(c), _i32(h),
                 _i32(w), scale, shift, out, out_labels), launch)
    return out, out_labels
