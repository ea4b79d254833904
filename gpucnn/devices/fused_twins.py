"""The numpy twins of the fused kernels (kernels/activation.cu, loss.cu, lrn.cu): the bias-and-ReLU pass
after a GEMM, ReLU's backward pass, softmax cross-entropy forward, reduction and backward, and LRN forward and
backward.

Each function takes host arrays and the launcher's arguments, returns what its kernel writes, and is the
reference the kernel is tested against; on the CPU the layers run these (through :mod:`.ops`), so they are
also the CPU path, written for numpy's speed (whole-array passes, in place where possible). This module
imports numpy only.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

# ------------------------------------------------------------------------------------ bias and ReLU


def bias_act(src, strides, bias, out, relu):
    """out (N, G, OG, P) = src read through element `strides` (sn, sg, so, sq) for out's (n, g, o, q) index,
    plus bias[g*OG + o] (None: no bias), then max(., 0) when `relu` (numpy.maximum: NaN stays, -0.0 becomes
    +0.0). `src` is the GEMM's product (any layout the strides describe), or `out` itself for a pass in place
    (then `strides` are out's own, :func:`own_strides`). Returns out."""
    n, g, og, p = out.shape
    with np.errstate(invalid="ignore", over="ignore"):   # inf - inf is NaN, as on a GPU, without a warning
        if src is out:
            if bias is not None:
                out += bias.reshape(1, g, og, 1)
        else:
            view = as_strided(src, out.shape, tuple(int(s) * src.itemsize for s in strides), writeable=False)
            if bias is None:
                np.copyto(out, view)
            else:
                np.add(view, bias.reshape(1, g, og, 1), out=out)
    if relu:
        np.maximum(out, 0, out=out)
    return out


def own_strides(shape) -> tuple:
    """The element strides of a C-contiguous array of `shape` (for bias_act in place)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= int(size)
    return tuple(reversed(strides))


def keep_or_zero(keep, a):
    """`a` where the bool array `keep` is True, exactly +0.0 elsewhere (whatever `a` holds, inf and NaN
    included): np.where(keep, a, 0), computed as a's bit pattern times keep in integers. np.where with a
    data-dependent mask branches per element and is about 10x slower (1.5 ms against 0.16 ms for 401,408
    float32 values on one core of the 2-core AVX-512 machine, numpy 2.4)."""
    out = np.empty(a.shape, a.dtype)
    bits = np.dtype(f"i{a.dtype.itemsize}")
    np.multiply(a.view(bits) if a.flags.c_contiguous else np.ascontiguousarray(a).view(bits), keep,
                out=out.view(bits), dtype=bits)
    return out


def relu_backward(y, dout):
    """dout where y > 0 or y is NaN, else exactly +0.0 (whatever dout holds): PyTorch's threshold_backward."""
    return keep_or_zero(~(y <= 0), dout)


# ---------------------------------------------------------------------------------- cross-entropy


def _labels(labels, k, ignore_index):
    """(safe class index per sample, ignored, valid) as the kernels read a label."""
    ignored = labels == ignore_index
    valid = ignored | ((labels >= 0) & (labels < k))
    return np.where(valid & ~ignored, labels, 0), ignored, valid


def xent_forward(logits, labels, weight, ignore_index, eps):
    """Per-sample softmax cross-entropy (see kernels/loss.cu): logits (N, K) float, labels (N,) int64, weight
    (K,) of the logits' dtype or None, smoothing eps in [0, 1] -> (losses (N,), wy (N,), stats (N, 2) =
    (row max, log-sum-exp)). torch.nn.functional.cross_entropy's definition (reduction='none')."""
    n, k = logits.shape
    dt = logits.dtype.type
    safe, ignored, valid = _labels(labels, k, ignore_index)
    wy = np.where(ignored, dt(0), weight[safe] if weight is not None else dt(1))
    with np.errstate(over="ignore", invalid="ignore"):   # logits - max may overflow to -inf; 0 * inf dropped
        m = logits.max(axis=1, keepdims=True)
        z = logits - m
        ls = np.log(np.exp(z).sum(axis=1, keepdims=True))
        logp = z - ls
        picked = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
        losses = np.where(wy == 0, dt(0), wy * picked)
        if eps > 0:
            terms = -logp if weight is None else np.where(weight == 0, dt(0), -logp * weight)
            smooth = np.where(ignored, dt(0), terms.sum(axis=1))
            nll = dt(1 - eps) * losses if eps < 1 else dt(0)
            losses = nll + dt(eps / k) * smooth
    losses = np.where(valid, losses, dt(np.nan))
    return losses, wy, np.concatenate([m, ls], axis=1)


def xent_reduce(losses, wy, mean):
    """(2,) array: (sum(losses), divided by sum(wy) when `mean`; sum(wy)), in the losses' dtype."""
    total, denom = losses.sum(), wy.sum()
    if mean:
        with np.errstate(divide="ignore", invalid="ignore"):   # every sample ignored: NaN, as in PyTorch
            total = total / denom
    return np.array([total, denom], dtype=losses.dtype)


def xent_backward(logits, stats, labels, weight, wsum, ignore_index, eps, dout, red, mean):
    """d loss / d logits (N, K) (see kernels/loss.cu): `wsum` the weights' sum (a host number; unused
    without weights, where it is K); `dout` a Python number, a 0-d array or (N,) per sample; `red`
    xent_reduce's output, whose denominator divides when `mean`."""
    n, k = logits.shape
    dt = logits.dtype.type
    safe, ignored, valid = _labels(labels, k, ignore_index)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        p = np.exp((logits - stats[:, :1]) - stats[:, 1:])
        wy = np.where(ignored, dt(0), weight[safe] if weight is not None else dt(1))
        coef = dt(1 - eps) * wy if eps > 0 else wy
        grad = p * coef[:, None]
        rows = np.arange(n)
        grad[rows, safe] -= coef
        if eps > 0:
            sw = np.where(ignored, dt(0), dt(k) if weight is None else dt(wsum))[:, None]
            grad += dt(eps / k) * (p * sw - np.where(sw == 0, dt(0), weight if weight is not None else dt(1)))
        grad[~valid] = np.nan
        scale = np.asarray(dout, dtype=logits.dtype)
        if mean:
            scale = scale / red[1]
        scale = scale[:, None] if scale.ndim == 1 else scale
        out = grad * scale
    out[ignored] = 0
    return out


# -------------------------------------------------------------------------------------------- LRN


def _channel_window_sum(a, before, after):
    """out[:, c] = a[:, c] + a[:, c+1] + ... + a[:, c+after] + a[:, c-1] + ... + a[:, c-before], in that order
    (channels outside the range count as zero)."""
    out = a.copy()
    c = a.shape[1]
    for o in range(1, min(after, c - 1) + 1):
        out[:, :c - o] += a[:, o:]
    for o in range(1, min(before, c - 1) + 1):
        out[:, o:] += a[:, :c - o]
    return out


def lrn_forward(x, size, alpha, beta, k):
    """(N, C, H, W) -> (y, d, scale): d = k + alpha/size * (window sum of x^2 over size // 2 channels before
    and (size - 1) // 2 after), scale = d^-beta, y = x * scale (torch.nn.LocalResponseNorm)."""
    d = _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    d *= alpha / size
    d += k
    scale = d ** -beta
    return x * scale, d, scale


def lrn_backward(x, y, d, scale, dout, size, alpha, beta):
    """Gradient of lrn_forward: x_j appears in the windows of channels j-(size-1)//2 .. j+size//2."""
    u = _channel_window_sum(dout * y / d, (size - 1) // 2, size // 2)
    return dout * scale - (2 * beta * alpha / size) * x * u
