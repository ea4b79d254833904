"""Gradient utilities: global-norm clipping and the non-finite check, on the gradients' device, without a sync.

Gradients in one flat buffer (:meth:`gpucnn.layers.Layer.flatten_parameters`) are handled as that one
buffer: one pass for the check, three operations for the norm; separate gradients one at a time.
"""
from __future__ import annotations

from .. import devices
from ..devices import flat, ops
from .optimizers import _real


def _flat_arrays(grads):
    """(the arrays to read: the flat buffer when the gradients are all its views, else each one flattened,
    their array module)."""
    if isinstance(grads, dict):
        buffer = flat.owner(grads)
        if buffer is not None:
            return [buffer.buffer], devices.get_array_module(buffer.buffer)
        gs = list(grads.values())
    else:
        gs = list(grads)
    return gs, devices.get_array_module(*gs)


def clip_grad_norm(grads, max_norm: float):
    """Scale all gradients in place so their joint L2 norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_; returns the norm before clipping as a 0-d array on the gradients' device.

    The scale min(1, max_norm / (norm + 1e-6)) is computed and applied on the device: no host sync.
    """
    max_norm = _real("clip_grad_norm", "max_norm", max_norm, lo_open=True)
    gs, xp = _flat_arrays(grads)
    if not gs:
        return xp.asarray(0.0)
    with devices.device_scope(gs[0]):
        if len(gs) == 1:
            total = xp.asarray(xp.linalg.norm(gs[0].ravel()))
        else:
            total = xp.asarray(xp.linalg.norm(xp.stack([xp.linalg.norm(g.ravel()) for g in gs])))
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
        for g in gs:
            g *= coef
    return total


def note_nonfinite(grads, loss, first_bad, step: int):
    """Record on the device that step `step` had a NaN or infinite gradient or loss: first_bad (a 0-d int64
    device array, -1 while every step was finite) becomes `step` unless it already holds an earlier one.
    One kernel over a flat gradient buffer (one per gradient otherwise; kernels/check.cu), no host sync.
    `loss`: a 0-d array in the gradients' dtype, or None."""
    gs, _ = _flat_arrays(grads)
    arrays = gs or []
    if not arrays and loss is not None:
        arrays = [loss.reshape(1)]
    for i, g in enumerate(arrays):
        ops.nonfinite_check(g.reshape(-1), loss if i == 0 else None, step, first_bad)


def grads_finite(grads, loss=None):
    """A 0-d bool array on the gradients' device: True when no gradient (nor `loss`, when given) holds a NaN
    or an infinity."""
    gs, xp = _flat_arrays(grads)
    if not gs and loss is None:
        return xp.asarray(True)
    with devices.device_scope(gs[0] if gs else loss):
        first_bad = xp.full((), -1, dtype=xp.int64)
        note_nonfinite(grads, loss, first_bad, 0)
        return xp.asarray(first_bad < 0)
