"""The numpy twins of the training step's kernels (kernels/optim.cu, check.cu, data.cu): the optimizers'
multi-tensor updates, the non-finite check, the metrics a step accumulates, and the batch gather.

Each function takes host arrays and the launcher's arguments and does what its kernel does; on the CPU the
optimizers, the training loop and the data loader run these (through :mod:`.ops`), so they are the CPU path
too. The updates are torch.optim's rules as numpy passes (one rounding per operation, in the arrays' dtype,
Python floats taken as numpy takes them) over cache-sized blocks of flat arrays: a step's passes over a
block stay in cache. This module imports numpy only.
"""
from __future__ import annotations

import numpy as np

BLOCK = 1 << 16   # elements per block of an update: its several passes stay in cache (2-core AVX-512 machine)


def _blocks(*arrays):
    """Matching slices of the flat views of same-size arrays (None stays None), BLOCK elements each; the whole
    arrays when one of them is not contiguous."""
    given = [a for a in arrays if a is not None]
    if given[0].size <= BLOCK or not all(a.flags.c_contiguous for a in given):
        yield arrays
        return
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    for start in range(0, given[0].size, BLOCK):
        yield tuple(None if a is None else a[start:start + BLOCK] for a in flat)


def _plus_scaled(g, x, c):
    """g + c * x as a new array, computed as (x * c) + g (torch's g.add(x, alpha=c)); g itself when c is 0."""
    if not c:
        return g
    out = np.multiply(x, c)
    out += g
    return out


# ------------------------------------------------------------------------------------------ optimizers

def sgd_step(p, g, buf, lr, weight_decay, momentum, first, dampening, nesterov):
    """torch.optim.SGD on p in place: L2 decay, momentum (buf started at the first gradient when `first`),
    dampening, Nesterov. buf is None without momentum."""
    for p, g, buf in _blocks(p, g, buf):
        g = _plus_scaled(g, p, weight_decay)
        if momentum:
            if first:
                buf[...] = g
            else:
                buf *= momentum
                buf += g if dampening == 0 else (1.0 - dampening) * g
            g = _plus_scaled(g, buf, momentum) if nesterov else buf
        p -= lr * g


def adagrad_step(p, g, total, clr, weight_decay, eps):
    """torch.optim.Adagrad on p in place: `total` the running sum of squares, clr the decayed rate."""
    for p, g, total in _blocks(p, g, total):
        g = _plus_scaled(g, p, weight_decay)
        t = g * g
        total += t
        np.sqrt(total, out=t)
        t += eps
        np.divide(g, t, out=t)
        t *= clr
        p -= t


def rmsprop_step(p, g, square_avg, grad_avg, buf, lr, weight_decay, alpha, eps, centered, momentum):
    """torch.optim.RMSprop on p in place (grad_avg None unless centered, buf None without momentum)."""
    for p, g, sq, ga, buf in _blocks(p, g, square_avg, grad_avg, buf):
        g = _plus_scaled(g, p, weight_decay)
        sq *= alpha
        t = g * g
        t *= 1.0 - alpha
        sq += t
        if centered:
            np.subtract(g, ga, out=t)
            t *= 1.0 - alpha
            ga += t
            np.multiply(ga, ga, out=t)
            np.subtract(sq, t, out=t)
            np.sqrt(t, out=t)
        else:
            np.sqrt(sq, out=t)
        t += eps
        np.divide(g, t, out=t)
        if momentum:
            buf *= momentum
            buf += t
            np.multiply(buf, lr, out=t)
        else:
            t *= lr
        p -= t


def adam_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, weight_decay, decoupled, betas, eps, amsgrad, step):
    """torch.optim.Adam (L2 decay) or AdamW (decoupled: p *= 1 - lr * weight_decay) on p in place, AMSGrad
    with max_exp_avg_sq; `step` the step count (>= 1) of the bias corrections."""
    b1, b2 = betas
    step_size = lr / (1.0 - b1 ** step)
    bc2_sqrt = (1.0 - b2 ** step) ** 0.5
    for p, g, m, v, vmax in _blocks(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq):
        if weight_decay:
            if decoupled:
                p *= 1.0 - lr * weight_decay
            else:
                g = _plus_scaled(g, p, weight_decay)
        t = g - m
        t *= 1.0 - b1
        m += t
        v *= b2
        np.multiply(g, g, out=t)
        t *= 1.0 - b2
        v += t
        if amsgrad:
            v = np.maximum(vmax, v, out=vmax)
        np.sqrt(v, out=t)
        t /= bc2_sqrt
        t += eps
        np.divide(m, t, out=t)
        t *= step_size
        p -= t


# ------------------------------------------------------------------------------------ step bookkeeping

def nonfinite_check(values, loss, step, first_bad):
    """first_bad (0-d int64) = step if it is -1 and `values` (or `loss`, a 0-d array or None) hold a NaN or an
    infinity; in place."""
    with np.errstate(invalid="ignore"):
        bad = not np.isfinite(values).all() or (loss is not None and not np.isfinite(loss).all())
    if bad and first_bad < 0:
        first_bad[...] = step


def accumulate_metrics(logits, labels, loss, count, loss_sum, correct):
    """loss_sum (0-d float64) += loss * count (in the loss's dtype); correct (0-d int64) += the samples whose
    argmax of logits (N, K) is their label; in place."""
    loss_sum += loss * count
    correct += np.count_nonzero(np.argmax(logits, axis=1) == labels)


# ---------------------------------------------------------------------------------------------- data

def gather_batch(images, labels, draws, has_crop, has_flip, pad, scale, shift, dtype):
    """(x, y) for a batch of uint8 images (N, C, H, W) and int64 labels: draws (B, 4) int32 rows (image index,
    dy, dx, flip); each image cropped at (dy, dx) of its copy zero-padded by `pad` (when has_crop), then
    mirrored left-right where flip != 0 (when has_flip), then x * scale - shift per channel ((C,) arrays of
    `dtype`)."""
    index = draws[:, 0]
    x = images[index]
    if has_crop:
        b, c, h, w = x.shape
        padded = np.zeros((b, c, h + 2 * pad, w + 2 * pad), x.dtype)
        padded[:, :, pad:pad + h, pad:pad + w] = x
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
        x = windows[np.arange(b), :, draws[:, 1], draws[:, 2]]
    if has_flip:
        x = np.where(draws[:, 3].astype(bool)[:, None, None, None], x[..., ::-1], x)
    out = np.empty(x.shape, dtype)
    np.multiply(x, scale.reshape(1, -1, 1, 1), out=out, dtype=dtype)
    np.subtract(out, shift.reshape(1, -1, 1, 1), out=out)
    return out, labels[index]
