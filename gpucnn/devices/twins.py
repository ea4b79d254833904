"""The numpy twins of the CUDA kernels: im2col/col2im, pooling, and the blocked transposing copy.

Each function takes host NCHW arrays and is the reference its kernel in :mod:`.kernels` is tested against;
:mod:`.ops` picks the twin on the CPU and the kernel on a GPU (real or emulated). This module imports numpy only.
The column layout is channels-last ``(N, out_h, out_w, kh, kw, C)``, the same on both devices: seen as
2-D ``(N*out_h*out_w, kh*kw*C)`` it makes the forward, weight-gradient and column-gradient products one
plain GEMM each over all samples, and its ``(kw, C)`` blocks are contiguous rows of the channels-last
input, so the CPU twins copy and add long rows (with few channels the twin stores the same array
tap-major instead; see im2col).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def out_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a window of k with stride s over size+2p (rounded down, as PyTorch does)."""
    return (size + 2 * p - k) // s + 1


def _pad(x, ph, pw, value=0.0):
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


def _windows(xp_, i, j, sh, sw, oh, ow):
    """The (N, C, oh, ow) view of padded input seen by kernel offset (i, j)."""
    return xp_[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


# ------------------------------------------------------------------------------------------ im2col

def _channels_last(x, ph, pw):
    """(N, C, H, W) -> contiguous zero-padded (N, H + 2ph, W + 2pw, C)."""
    n, c, h, w = x.shape
    if ph == 0 and pw == 0:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    xt = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    xt[:, ph:ph + h, pw:pw + w] = x.transpose(0, 2, 3, 1)
    return xt


def _tap_major(c: int, kw: int, ow: int) -> bool:
    """Whether the CPU twin lays the columns out in memory as (kh, kw, C, N, out_h, out_w): copying rows of
    out_w from the NCHW image beats copying the channels-last (kw, C) runs when those are shorter (few channels)."""
    return ow > kw * c


def im2col(x, kh, kw, sh, sw, ph, pw, scratch=None):
    """(N, C, H, W) -> columns (N, out_h, out_w, kh, kw, C); padding reads as zero.

    On a GPU the columns are contiguous. The CPU twin makes them contiguous too unless out_w > kw*C (few
    channels); then they are a transposed view of contiguous (kh, kw, C, N, out_h, out_w) memory. Either way col.reshape(-1, kh*kw*C)
    is a view that BLAS takes as is (row- or column-major).
    `scratch`, a dict owned by the caller, lets the CPU twin write into the buffer of its previous call
    (the columns are then valid until the next call with that dict): re-faulting fresh pages for a large
    array each step costs as much as filling them. On a GPU the memory pool recycles buffers; it is unused.
    """
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    tap_major = _tap_major(c, kw, ow)
    shape = (kh, kw, c, n, oh, ow) if tap_major else (n, oh, ow, kh, kw, c)
    if scratch is None:
        col = np.empty(shape, x.dtype)
    else:
        col = scratch.get("im2col")
        if col is None or col.shape != shape or col.dtype != x.dtype:
            col = scratch["im2col"] = np.empty(shape, x.dtype)
    e = x.itemsize      # strides from the shapes: numpy may report any stride for a length-1 axis
    if tap_major:       # rows of out_w from the padded NCHW image
        xp_ = np.ascontiguousarray(_pad(x, ph, pw))
        hp, wp = xp_.shape[2:]
        view = as_strided(xp_, shape, (wp * e, e, hp * wp * e, c * hp * wp * e, wp * sh * e, sw * e),
                          writeable=False)
        np.copyto(col, view)
        return col.transpose(3, 4, 5, 0, 1, 2)
    xt = _channels_last(x, ph, pw)
    _, hp, wp, _ = xt.shape
    # Each (kw, C) block of a window is one contiguous run of the padded channels-last row.
    view = as_strided(xt, (n, oh, ow, kh, kw * c), (hp * wp * c * e, wp * c * e * sh, c * e * sw, wp * c * e, e),
                      writeable=False)
    np.copyto(col.reshape(n, oh, ow, kh, kw * c), view)
    return col


_COL2IM_BLOCK_BYTES = 1 << 19   # channels-last accumulator of col2im's CPU twin: a few samples, in L2


def col2im(col, x_shape, sh, sw, ph, pw):
    """Adjoint of im2col: sums columns (N, out_h, out_w, kh, kw, C) back into a contiguous (N, C, H, W) image.

    Taps are added in row-major kernel order, as the CUDA kernel does. The CPU twin accumulates in the
    layout whose rows are long for the columns' memory order (see im2col): NCHW for tap-major memory,
    channels-last otherwise.
    """
    n, c, h, w = x_shape
    _, oh, ow, kh, kw, _ = col.shape
    if col.transpose(3, 4, 5, 0, 1, 2).flags.c_contiguous:
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=col.dtype)
        for i in range(kh):
            for j in range(kw):
                _windows(dxp, i, j, sh, sw, oh, ow)[...] += col[:, :, :, i, j].transpose(0, 3, 1, 2)
        return np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + w])
    # Accumulated a few samples at a time, in a channels-last block that stays in cache over the taps.
    hp, wp = h + 2 * ph, w + 2 * pw
    nb = max(1, min(n, _COL2IM_BLOCK_BYTES // (hp * wp * c * col.itemsize)))
    acc_buf = np.empty((nb, hp, wp, c), dtype=col.dtype)
    dx = np.empty((n, c, h, w), dtype=col.dtype)
    for s in range(0, n, nb):
        block, acc = col[s:s + nb], acc_buf[:min(nb, n - s)]
        acc.fill(0)
        if c < 16:   # rows of C floats are too short to add: regroup by tap once, then add rows of out_w*C
            block = np.ascontiguousarray(block.transpose(0, 3, 4, 1, 2, 5))
            taps = lambda i, j: block[:, i, j]
        else:
            taps = lambda i, j: block[:, :, :, i, j]
        for i in range(kh):
            for j in range(kw):
                acc[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += taps(i, j)
        dx[s:s + nb] = acc[:, ph:ph + h, pw:pw + w].transpose(0, 3, 1, 2)
    return dx


# ------------------------------------------------------------------------------------------ max pool

def maxpool_forward(x, kh, kw, sh, sw, ph, pw):
    """Max over each window -> (y, argmax); argmax is int32, the winner's offset i*kw+j inside its window.

    Ties go to the first maximum in row-major window order and NaN wins, as in PyTorch.
    """
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    xp_ = _pad(x, ph, pw, value=-np.inf)
    y = np.array(_windows(xp_, 0, 0, sh, sw, oh, ow))
    # Branch-free passes (masked copies with data-dependent masks are several times slower), the offsets
    # kept in the narrowest integer that holds them; NaN windows, which `>` cannot see, are fixed up
    # afterwards: their argmax is the last NaN, as in the kernel's scan.
    small = np.uint8 if kh * kw <= 256 else np.int32
    arg = np.zeros(y.shape, dtype=small)
    better, code = np.empty(y.shape, np.bool_), np.empty(y.shape, small)
    for i in range(kh):
        for j in range(kw):
            if i == 0 and j == 0:
                continue
            win = _windows(xp_, i, j, sh, sw, oh, ow)
            np.greater(win, y, out=better)
            np.maximum(win, y, out=y)      # NaN from either side; on ties numpy returns y, the first maximum
            np.multiply(better.view(np.uint8), small(i * kw + j), out=code, casting="unsafe")
            np.maximum(arg, code, out=arg)  # offsets grow in scan order: the larger is the later winner
    if np.isnan(y).any():
        for i in range(kh):
            for j in range(kw):
                np.copyto(arg, small(i * kw + j), where=np.isnan(_windows(xp_, i, j, sh, sw, oh, ow)),
                          casting="unsafe")
    arg = arg.astype(np.int32, copy=False)
    return y, arg


def maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw):
    """Gradient of maxpool_forward: each dy goes to the input its window's argmax points at."""
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    tiled = (sh, sw, ph, pw, oh * kh, ow * kw) == (kh, kw, 0, 0, h, w)   # the windows cover x exactly once
    dxp = (np.empty if tiled else np.zeros)((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    # dy where argmax == k, else +0.0, as a bit mask (np.where with a data-dependent mask is far slower).
    # Windows that do not overlap each own their inputs: the share is written there, not added (dy + 0
    # first turns -0.0 into the +0.0 the kernel's sum from zero gives).
    disjoint = sh >= kh and sw >= kw
    bits = np.dtype(f"i{dy.dtype.itemsize}")
    dy_bits = (dy + dy.dtype.type(0) if disjoint else np.ascontiguousarray(dy)).view(bits)
    mask, share = np.empty(dy.shape, bits), np.empty(dy.shape, dy.dtype)
    for i in range(kh):
        for j in range(kw):
            np.equal(argmax, i * kw + j, out=mask)
            np.negative(mask, out=mask)
            if disjoint:
                np.bitwise_and(dy_bits, mask, out=_windows(dxp, i, j, sh, sw, oh, ow).view(bits))
            else:
                np.bitwise_and(dy_bits, mask, out=share.view(bits))
                _windows(dxp, i, j, sh, sw, oh, ow)[...] += share
    return dxp[:, :, ph:ph + h, pw:pw + w]


# ------------------------------------------------------------------------------------------ avg pool

def avgpool_forward(x, kh, kw, sh, sw, ph, pw):
    """Mean over each window, padding counted as zeros (PyTorch's count_include_pad=True)."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    xp_ = _pad(x, ph, pw)
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += _windows(xp_, i, j, sh, sw, oh, ow)
    y *= x.dtype.type(1.0 / (kh * kw))
    return y


def avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw):
    """Gradient of avgpool_forward: each dy spread evenly over its window."""
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    share = dy * dy.dtype.type(1.0 / (kh * kw))
    for i in range(kh):
        for j in range(kw):
            _windows(dxp, i, j, sh, sw, oh, ow)[...] += share
    return dxp[:, :, ph:ph + h, pw:pw + w]


# ------------------------------------------------------------------------------------------ copies

_COPY_BLOCK = 256


def copy_blocked(out, src):
    """out[...] = src, for a transposing copy into `out`.

    On the CPU the copy goes a block of out's last axis at a time: when src is strided along that axis,
    each cache line it loads is then used for a whole block, not evicted first (a plain numpy copy that
    streams a long strided axis misses the cache on every element: up to 10x slower).
    """
    n = out.shape[-1]
    if n <= 2 * _COPY_BLOCK:
        out[...] = src
        return out
    for s in range(0, n, _COPY_BLOCK):
        out[..., s:s + _COPY_BLOCK] = src[..., s:s + _COPY_BLOCK]
    return out
