"""Launchers of the fused kernels (kernels/activation.cu, loss.cu, lrn.cu): one device operation each where
array code takes several. Same arguments and results as their numpy twins in :mod:`.fused_twins`, which
document them; :mod:`.ops` picks one or the other by the arrays' device.

Each launcher checks what the kernel cannot (dtypes, shapes, contiguity, bounds of strided reads), raising
TypeError/ValueError naming the operation, allocates its outputs with ``xp.empty`` (every element is written)
and launches on the arrays' own GPU. Scalars go in the kernels' C types: sizes as np.int32/np.int64, real
numbers in the arrays' dtype (so a future bf16 variant takes its own), flags as np.int32.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import core
from .kernels import _SUFFIX, is_bf16, launch as _launch

__all__ = ["bias_act", "relu_backward", "xent_forward", "xent_reduce", "xent_backward", "lrn_forward",
           "lrn_backward"]


def _float(what, *arrays):
    dtype = np.dtype(arrays[0].dtype)
    for a in arrays:
        if np.dtype(a.dtype) not in _SUFFIX or np.dtype(a.dtype) != dtype:
            raise TypeError(f"{what}: expects float32 or float64 arrays of one dtype, got "
                            f"{', '.join(str(b.dtype) for b in arrays)}")
    return dtype.type


def _contiguous(what, *arrays):
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError(f"{what}: expects C-contiguous arrays, got one of shape {a.shape} with strides "
                             f"{a.strides}")


def _same_shape(what, a, b, names):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what}: {names[0]} of shape {tuple(a.shape)} and {names[1]} of shape {tuple(b.shape)} "
                         f"must have the same shape")


# ------------------------------------------------------------------------------------ bias and ReLU

def bias_act(src, strides, bias, out, relu, *, launch=None):
    """out (N, G, OG, P) = src through element strides (sn, sg, so, sq), + bias[g*OG + o], ReLU if `relu`, in
    one pass; see fused_twins.bias_act. A bfloat16 `src` (a bf16 GEMM's product) takes a float32 bias and out
    (the bias_act_bf16 kernel). Returns out."""
    what = "bias_act"
    _float(what, src if not is_bf16(src.dtype) else out, out, *(() if bias is None else (bias,)))
    if is_bf16(src.dtype) and np.dtype(out.dtype) != np.float32:
        raise TypeError(f"{what}: a bfloat16 product goes into a float32 out, got {out.dtype}")
    _contiguous(what, src, out, *(() if bias is None else (bias,)))
    if out.ndim != 4 or len(strides) != 4 or min(strides) < 0:
        raise ValueError(f"{what}: expects out (N, G, OG, P) and four strides >= 0, got out {tuple(out.shape)}, "
                         f"strides {tuple(strides)}")
    n, g, og, p = (int(s) for s in out.shape)
    if out.size and sum((d - 1) * s for d, s in zip(out.shape, strides)) >= src.size:
        raise ValueError(f"{what}: strides {tuple(strides)} over {tuple(out.shape)} read past the source's "
                         f"{src.size} elements")
    if bias is not None and bias.size != g * og:
        raise ValueError(f"{what}: expects {g * og} bias values, got {bias.size}")
    with core.device_scope(out):
        _launch(what, src.dtype, out, out.size,
                (src, out if bias is None else bias, np.int32(g), np.int32(og), np.int32(p),   # unread bias: float*
                 *(np.int64(s) for s in strides), np.int32(bias is not None), np.int32(bool(relu)), out), launch)
    return out


def relu_backward(y, dout, *, launch=None):
    """dout where y > 0 (or NaN), else 0; see fused_twins.relu_backward."""
    what = "relu_backward"
    _float(what, y, dout)
    _same_shape(what, y, dout, ("y", "dout"))
    xp = core.get_array_module(y, dout)
    with core.device_scope(y):
        y, dout = xp.ascontiguousarray(y), xp.ascontiguousarray(dout)
        dx = xp.empty(y.shape, dtype=y.dtype)
        _launch(what, y.dtype, y, y.size, (y, dout, dx), launch)
    return dx


# ---------------------------------------------------------------------------------- cross-entropy

def _xent_args(what, logits, labels, weight):
    """(dtype type, N, K, labels, weight or a stand-in pointer, has_weight) after the checks."""
    t = _float(what, logits, *(() if weight is None else (weight,)))
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"{what}: expects logits (N, K), N, K >= 1, got shape {tuple(logits.shape)}")
    n, k = (int(s) for s in logits.shape)
    if np.dtype(labels.dtype) != np.int64 or tuple(labels.shape) != (n,):
        raise TypeError(f"{what}: expects int64 labels of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
    if weight is not None and tuple(weight.shape) != (k,):
        raise ValueError(f"{what}: expects {k} class weights, got shape {tuple(weight.shape)}")
    _contiguous(what, logits, labels, *(() if weight is None else (weight,)))
    return t, n, k, (logits if weight is None else weight), np.int32(weight is not None)


def _smoothing(what, t, eps, k):
    """(smoothing flag, 1 - eps, eps / K) in the kernel's types."""
    if not (isinstance(eps, numbers.Real) and 0.0 <= eps <= 1.0):
        raise ValueError(f"{what}: label smoothing must be in [0, 1], got {eps!r}")
    return np.int32(eps > 0), t(1 - eps), t(eps / k)


def xent_forward(logits, labels, weight, ignore_index, eps, *, launch=None):
    """Per-sample losses, label weights and row statistics; see fused_twins.xent_forward."""
    what = "xent_forward"
    t, n, k, w, has_w = _xent_args(what, logits, labels, weight)
    xp = core.get_array_module(logits, labels)
    with core.device_scope(logits):
        losses, wy = xp.empty(n, dtype=logits.dtype), xp.empty(n, dtype=logits.dtype)
        stats = xp.empty((n, 2), dtype=logits.dtype)
        _launch(what, logits.dtype, logits, n, (np.int32(k), logits, labels, w, has_w, np.int64(ignore_index),
                                                *_smoothing(what, t, eps, k), losses, wy, stats), launch)
    return losses, wy, stats


def xent_reduce(losses, wy, mean, *, launch=None):
    """(2,): the summed (mean when `mean`) loss and the mean's denominator; see fused_twins.xent_reduce."""
    what = "xent_reduce"
    _float(what, losses, wy)
    _same_shape(what, losses, wy, ("losses", "wy"))
    _contiguous(what, losses, wy)
    if losses.ndim != 1:
        raise ValueError(f"{what}: expects 1-D losses, got shape {tuple(losses.shape)}")
    xp = core.get_array_module(losses, wy)
    with core.device_scope(losses):
        out = xp.empty(2, dtype=losses.dtype)
        _launch(what, losses.dtype, losses, 1, (np.int64(losses.size), losses, wy, np.int32(bool(mean)), out),
                launch)
    return out


def xent_backward(logits, stats, labels, weight, wsum, ignore_index, eps, dout, red, mean, *, launch=None):
    """d loss / d logits; see fused_twins.xent_backward. `wsum`: the weights' sum as a host number (the
    layer keeps its weights on the host too: reading them back would be a sync); `dout`: a Python number, a
    0-d device array or one per sample (N,); `red`: xent_reduce's output (read when `mean`)."""
    what = "xent_backward"
    t, n, k, w, has_w = _xent_args(what, logits, labels, weight)
    xp = core.get_array_module(logits, stats, labels)
    with core.device_scope(logits):
        if isinstance(dout, numbers.Real):
            mode, pointer, value = 0, logits, t(dout)
        else:
            if tuple(dout.shape) not in ((), (n,)):
                raise ValueError(f"{what}: expects dout as a number, a 0-d array or ({n},), got shape "
                                 f"{tuple(dout.shape)}")
            mode, value = (1 if dout.ndim == 0 else 2), t(0)
            pointer = xp.ascontiguousarray(dout.astype(logits.dtype, copy=False))
        red = logits if red is None else red
        if mean and (np.dtype(red.dtype) != np.dtype(logits.dtype) or red.size != 2):
            raise ValueError(f"{what}: the mean needs xent_reduce's (2,) output in {logits.dtype}")
        flag, keep, eps_k = _smoothing(what, t, eps, k)
        grad = xp.empty((n, k), dtype=logits.dtype)
        _launch(what, logits.dtype, logits, n * k,
                (np.int32(k), logits, stats, labels, w, has_w, np.int64(ignore_index), flag, keep, eps_k,
                 t(k if weight is None else wsum),
                 pointer, np.int32(mode), value, red, np.int32(bool(mean)), grad), launch)
    return grad


# -------------------------------------------------------------------------------------------- LRN

def _lrn_geometry(what, x):
    if x.ndim != 4:
        raise ValueError(f"{what}: expects an (N, C, H, W) array, got shape {tuple(x.shape)}")
    return np.int32(x.shape[1]), np.int64(x.shape[2] * x.shape[3])


def lrn_forward(x, size, alpha, beta, k, *, launch=None):
    """(y, d, scale) of LRN over channels; see fused_twins.lrn_forward."""
    what = "lrn_forward"
    t = _float(what, x)
    c, hw = _lrn_geometry(what, x)
    xp = core.get_array_module(x)
    with core.device_scope(x):
        x = xp.ascontiguousarray(x)
        y, d, scale = (xp.empty(x.shape, dtype=x.dtype) for _ in range(3))
        _launch(what, x.dtype, x, x.size, (x, c, hw, np.int32(size // 2), np.int32((size - 1) // 2),
                                           t(alpha / size), t(k), t(-beta), y, d, scale), launch)
    return y, d, scale


def lrn_backward(x, y, d, scale, dout, size, alpha, beta, *, launch=None):
    """dx of LRN; see fused_twins.lrn_backward."""
    what = "lrn_backward"
    t = _float(what, x, y, d, scale, dout)
    for name, a in (("y", y), ("d", d), ("scale", scale), ("dout", dout)):
        _same_shape(what, x, a, ("x", name))
    c, hw = _lrn_geometry(what, x)
    xp = core.get_array_module(x, y, d, scale, dout)
    with core.device_scope(x):
        x, y, d, scale, dout = (xp.ascontiguousarray(a) for a in (x, y, d, scale, dout))
        dx = xp.empty(x.shape, dtype=x.dtype)
        _launch(what, x.dtype, x, x.size, (x, y, d, scale, dout, c, hw, np.int32((size - 1) // 2),
                                           np.int32(size // 2), t(2 * beta * alpha / size), dx), launch)
    return dx
