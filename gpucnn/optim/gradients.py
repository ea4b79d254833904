"""Gradient utilities: global-norm clipping and the non-finite check, on the gradients' device, without a sync."""
from __future__ import annotations

from .. import devices
from .optimizers import _real


def _grad_list(grads):
    gs = list(grads.values()) if isinstance(grads, dict) else list(grads)
    return gs, devices.get_array_module(*gs)


def clip_grad_norm(grads, max_norm: float):
    """Scale all gradients in place so their joint L2 norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_; returns the norm before clipping as a 0-d array on the gradients' device.

    The scale min(1, max_norm / (norm + 1e-6)) is computed and applied on the device: no host sync.
    """
    max_norm = _real("clip_grad_norm", "max_norm", max_norm, lo_open=True)
    gs, xp = _grad_list(grads)
    if not gs:
        return xp.asarray(0.0)
    with devices.device_scope(gs[0]):
        norms = xp.stack([xp.linalg.norm(g.ravel()) for g in gs])
        total = xp.asarray(xp.linalg.norm(norms))
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
        for g in gs:
            g *= coef
    return total


def grads_finite(grads):
    """A 0-d bool array on the gradients' device: True when no gradient holds a NaN or an infinity."""
    gs, xp = _grad_list(grads)
    if not gs:
        return xp.asarray(True)
    with devices.device_scope(gs[0]):
        return xp.asarray(xp.all(xp.stack([xp.all(xp.isfinite(g)) for g in gs])))
