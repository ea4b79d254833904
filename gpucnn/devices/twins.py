"""The numpy twins of the CUDA kernels: im2col/col2im, pooling, and the blocked transposing copy.

Each function takes host NCHW arrays and is the reference its kernel in :mod:`.kernels` is tested against;
:mod:`.ops` picks the twin on the CPU and the kernel on a GPU (real or emulated). This module imports numpy only.

Window geometry, the same for every function here and in :mod:`.kernels`: kernel (kh, kw), stride (sh, sw),
dilation (dh, dw: the taps of a window are dh rows / dw columns apart) and padding ph, pw, each an int (the same
on both sides) or a (before, after) pair. ``after`` may be negative (ConvTranspose2D's output_padding trims the
end); it only sets the output size (:func:`out_size`), every read past the input's end is padding.

The column layout is channels-last and group-major, ``(G, N, out_h, out_w, kh, kw, C/G)``, written without the
G axis, ``(N, out_h, out_w, kh, kw, C)``, when groups == 1: seen as ``(G, N*out_h*out_w, kh*kw*C/G)`` it makes the
forward, weight-gradient and column-gradient products one batched GEMM each over all samples and groups. Its
``(kw, C)`` blocks are contiguous rows of the channels-last input (groups 1, no column dilation), so the CPU
twins copy and add long rows (with few channels the twin stores the same array tap-major instead; see im2col).
"""
from __future__ import annotations

import numbers

import numpy as np
from numpy.lib.stride_tricks import as_strided


def pad_pair(p) -> tuple[int, int]:
    """(before, after) of a padding given as an int or a pair."""
    if isinstance(p, numbers.Integral):
        return int(p), int(p)
    before, after = p
    return int(before), int(after)


def out_size(size: int, k: int, s: int, p, d: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a window of k taps, d apart, at stride s over size plus padding p (int or (before,
    after)): PyTorch's rule (aten pooling_output_shape), rounding down, or up with ceil_mode, in which case the
    last window must start inside the input or the leading padding."""
    before, after = pad_pair(p)
    span = size + before + after - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + before:
        out -= 1
    return out


def _extent(size, k, s, before, d, out):
    """Length of the padded buffer a twin needs: the input with its leading padding, or as far as the last
    window reaches if that is further."""
    return max(before + size, (out - 1) * s + d * (k - 1) + 1)


def _padded(x, top, left, hp, wp, value=0.0, channels_last=False):
    """x (N, C, H, W) inside a (N, C, hp, wp) buffer (or (N, hp, wp, C)) filled with `value`, at (top, left)."""
    n, c, h, w = x.shape
    if channels_last:
        if (top, left, hp, wp) == (0, 0, h, w):
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        buf = np.full((n, hp, wp, c), value, dtype=x.dtype)
        buf[:, top:top + h, left:left + w] = x.transpose(0, 2, 3, 1)
        return buf
    if (top, left, hp, wp) == (0, 0, h, w):
        return np.ascontiguousarray(x)
    buf = np.full((n, c, hp, wp), value, dtype=x.dtype)
    buf[:, :, top:top + h, left:left + w] = x
    return buf


def _windows(xp_, i, j, sh, sw, oh, ow):
    """The (..., oh, ow) view of a padded array seen by the tap at padded offset (i, j)."""
    return xp_[..., i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


def _geometry(shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode=False):
    """(top, left, oh, ow, hp, wp) of a window over an (N, C, H, W) shape: leading pads, output size, and the
    padded buffer's size."""
    h, w = shape[2], shape[3]
    (top, _), (left, _) = pad_pair(ph), pad_pair(pw)
    oh, ow = out_size(h, kh, sh, ph, dh, ceil_mode), out_size(w, kw, sw, pw, dw, ceil_mode)
    return top, left, oh, ow, _extent(h, kh, sh, top, dh, oh), _extent(w, kw, sw, left, dw, ow)


# ------------------------------------------------------------------------------------------ im2col

def _tap_major(cg: int, run_taps: int, ow: int) -> bool:
    """Whether the CPU twin lays the columns out in memory as (G, kh, kw, C/G, N, out_h, out_w): copying rows
    of out_w from the NCHW image beats copying the channels-last runs of run_taps*C/G values when those are
    shorter (few channels per group)."""
    return ow > run_taps * cg


def im2col(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, groups=1, scratch=None):
    """(N, C, H, W) -> columns (N, out_h, out_w, kh, kw, C), or (G, N, out_h, out_w, kh, kw, C/G) for groups
    G > 1 (channel g*C/G + c of the input is column channel c of group g); padding reads as zero.

    On a GPU the columns are contiguous. The CPU twin makes them contiguous too unless out_w is longer than
    the contiguous channels-last run (kw*C for groups 1 without column dilation, else C/G); then they are a
    transposed view of contiguous (G, kh, kw, C/G, N, out_h, out_w) memory. Either way
    col.reshape(G, -1, kh*kw*C/G) is a view that BLAS takes as is (row- or column-major).
    `scratch`, a dict owned by the caller, lets the CPU twin write into the buffer of its previous call
    (the columns are then valid until the next call with that dict): re-faulting fresh pages for a large
    array each step costs as much as filling them. On a GPU the memory pool recycles buffers; it is unused.
    """
    n, c, h, w = x.shape
    g = groups
    cg = c // g
    top, left, oh, ow, hp, wp = _geometry(x.shape, kh, kw, sh, sw, ph, pw, dh, dw)
    merged = g == 1 and dw == 1            # (kw, C) of a window row is one run of the channels-last image
    tap_major = _tap_major(cg, kw if merged else 1, ow)
    shape = (g, kh, kw, cg, n, oh, ow) if tap_major else (g, n, oh, ow, kh, kw, cg)
    if scratch is None:
        col = np.empty(shape, x.dtype)
    else:
        col = scratch.get("im2col")
        if col is None or col.shape != shape or col.dtype != x.dtype:
            col = scratch["im2col"] = np.empty(shape, x.dtype)
    e = x.itemsize      # strides from the shapes: numpy may report any stride for a length-1 axis
    if tap_major:       # rows of out_w from the padded NCHW image
        xp_ = _padded(x, top, left, hp, wp)
        plane = hp * wp * e
        view = as_strided(xp_, shape, (cg * plane, dh * wp * e, dw * e, plane, c * plane, sh * wp * e, sw * e),
                          writeable=False)
        np.copyto(col, view)
        col = col.transpose(0, 4, 5, 6, 1, 2, 3)
    else:
        xt = _padded(x, top, left, hp, wp, channels_last=True)
        row = wp * c * e
        if merged:      # each (kw, C) block of a window is one contiguous run of the padded channels-last row
            view = as_strided(xt, (n, oh, ow, kh, kw * c), (hp * row, sh * row, sw * c * e, dh * row, e),
                              writeable=False)
            np.copyto(col.reshape(n, oh, ow, kh, kw * c), view)
        else:
            view = as_strided(xt, shape, (cg * e, hp * row, sh * row, sw * c * e, dh * row, dw * c * e, e),
                              writeable=False)
            np.copyto(col, view)
    return col[0] if g == 1 else col


_COL2IM_BLOCK_BYTES = 1 << 19   # channels-last accumulator of col2im's CPU twin: a few samples, in L2


def col2im(col, x_shape, sh, sw, ph, pw, dh=1, dw=1):
    """Adjoint of im2col: sums columns (N, out_h, out_w, kh, kw, C) or (G, N, out_h, out_w, kh, kw, C/G) back
    into a contiguous (N, C, H, W) image.

    Taps are added in row-major kernel order, as the CUDA kernel does. The CPU twin accumulates in the
    layout whose rows are long for the columns' memory order (see im2col): NCHW for tap-major memory,
    channels-last otherwise. bfloat16 columns (mixed precision) are summed in float32 into a float32 image, as
    the col2im_bf16 kernel sums them.
    """
    if col.dtype.name == "bfloat16":
        col = col.astype(np.float32)
    n, c, h, w = x_shape
    col = col if col.ndim == 7 else col[None]
    g, _, oh, ow, kh, kw, cg = col.shape
    top, left = pad_pair(ph)[0], pad_pair(pw)[0]
    hp, wp = _extent(h, kh, sh, top, dh, oh), _extent(w, kw, sw, left, dw, ow)
    if col.transpose(0, 4, 5, 6, 1, 2, 3).flags.c_contiguous:
        dxp = np.zeros((n, g, cg, hp, wp), dtype=col.dtype)
        for i in range(kh):
            for j in range(kw):
                _windows(dxp, i * dh, j * dw, sh, sw, oh, ow)[...] += col[:, :, :, :, i, j].transpose(1, 0, 4, 2, 3)
        return np.ascontiguousarray(dxp[..., top:top + h, left:left + w]).reshape(n, c, h, w)

    def block_taps(s, e):   # tap (i, j) of samples s:e as (e - s, out_h, out_w, G, C/G)
        block = col[:, s:e]
        if c < 16:   # rows of C floats are too short to add: regroup by tap once, then add rows of out_w*C
            block = np.ascontiguousarray(block.transpose(1, 4, 5, 2, 3, 0, 6))
            return lambda i, j: block[:, i, j]
        return lambda i, j: block[:, :, :, :, i, j].transpose(1, 2, 3, 0, 4)
    return _sum_channels_last(block_taps, (n, g, cg, h, w), (kh, kw, sh, sw, dh, dw, oh, ow, top, left, hp, wp),
                              col.dtype).reshape(n, c, h, w)


def _sum_channels_last(block_taps, dx_shape, window, dtype):
    """dx (N, *channels, H, W) summed a few samples at a time in a channels-last accumulator (N', hp, wp,
    *channels) that stays in cache (L2) over the taps: block_taps(s, e)(i, j) is tap (i, j)'s (e - s, out_h,
    out_w, *channels) block for samples s:e, added in row-major tap order; `window` = (kh, kw, sh, sw, dh, dw,
    oh, ow, top, left, hp, wp). What col2im's channels-last layout and col2im_by_tap share."""
    n, *channels, h, w = dx_shape
    kh, kw, sh, sw, dh, dw, oh, ow, top, left, hp, wp = window
    nb = max(1, min(n, _COL2IM_BLOCK_BYTES // (hp * wp * int(np.prod(channels)) * np.dtype(dtype).itemsize)))
    acc_buf = np.empty((nb, hp, wp, *channels), dtype=dtype)
    dx = np.empty(dx_shape, dtype=dtype)
    to_nchw = (0, *range(3, 3 + len(channels)), 1, 2)
    for s in range(0, n, nb):
        acc = acc_buf[:min(nb, n - s)]
        acc.fill(0)
        taps = block_taps(s, s + nb)
        for i in range(kh):
            for j in range(kw):
                rows, cols = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
                acc[:, rows, cols] += taps(i, j)
        dx[s:s + nb] = acc[:, top:top + h, left:left + w].transpose(to_nchw)
    return dx


def col2im_by_tap(taps, x_shape, kh, kw, sh, sw, ph, pw, dh=1, dw=1):
    """col2im of one group's columns stored tap-first and channels-last, ``(kh*kw, N, out_h, out_w, C)``
    (C-contiguous), float32 or float64: the same sums as :func:`col2im`, in the same order, bit for bit (summed
    in the columns' dtype: no bfloat16 here). CPU only; it serves Conv2D's dx, whose column gradient one batched
    GEMM writes in this layout (see Conv2D._dx_by_tap).

    Each tap adds its (out_h, out_w, C) block into a channels-last accumulator of a few samples (kept in L2):
    with a column stride of 1 an output row of the block is one run of out_w*C numbers, where col2im's
    channels-last layout adds runs of C.
    """
    n, c, h, w = x_shape
    _, _, oh, ow, _ = taps.shape
    top, left = pad_pair(ph)[0], pad_pair(pw)[0]
    hp, wp = _extent(h, kh, sh, top, dh, oh), _extent(w, kw, sw, left, dw, ow)
    return _sum_channels_last(lambda s, e: lambda i, j: taps[i * kw + j, s:e], (n, c, h, w),
                              (kh, kw, sh, sw, dh, dw, oh, ow, top, left, hp, wp), taps.dtype)


# ------------------------------------------------------------------------------------------ max pool

def _first_inside(size, k, s, p, d, out):
    """Per window along one axis, the first tap that reads the input rather than padding (-1 if none)."""
    start = np.arange(out) * s - p
    first = np.maximum(0, -(start // d))         # taps before it sit in the leading padding (ceil(-start/d))
    return np.where((first < k) & (start + first * d < size), first, -1)


def maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    """Max over each window -> (y, argmax); argmax is int32, the winner's offset i*kw+j inside its window.

    Padding never wins: a window's argmax is the first of its input elements holding its maximum (ties go to
    the first, NaN wins and a later NaN wins over an earlier one, as in PyTorch), so a window of -inf inputs
    still sends its gradient to an input. A window that reads no input at all (possible only with dilation)
    gives -inf and argmax -1 (PyTorch points such a window outside the input).
    """
    n, c, h, w = x.shape
    top, left, oh, ow, hp, wp = _geometry(x.shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    if _halving(x.shape, kh, kw, sh, sw, top, left, oh, ow, dh, dw):
        fast = _maxpool_halving(x, oh, ow)
        if fast is not None:
            return fast
    xp_ = _padded(x, top, left, hp, wp, value=-np.inf)
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    fi, fj = _first_inside(h, kh, sh, top, dh, oh), _first_inside(w, kw, sw, left, dw, ow)
    first = np.where((fi[:, None] >= 0) & (fj[None, :] >= 0), fi[:, None] * kw + fj[None, :], -1)
    # Branch-free passes over the taps (masked copies with data-dependent masks are several times slower),
    # argmax + 1 kept in the narrowest integer that holds it: a tap replaces the winner only when strictly
    # greater, and taps grow in scan order, so the larger code is the later winner. It starts at the first
    # tap inside the input: the taps before it read padding (-inf), which is never greater. NaN windows,
    # which `>` cannot see, are fixed up afterwards: their argmax is the last NaN, as in the kernel's scan.
    small = np.uint8 if kh * kw < 255 else np.int32
    arg = np.empty(y.shape, dtype=small)
    arg[...] = (first + 1).astype(small)
    better, code = np.empty(y.shape, np.bool_), np.empty(y.shape, small)
    for i in range(kh):
        for j in range(kw):
            win = _windows(xp_, i * dh, j * dw, sh, sw, oh, ow)
            np.greater(win, y, out=better)
            np.maximum(win, y, out=y)      # NaN from either side; on ties numpy returns y, the first maximum
            np.multiply(better.view(np.uint8), small(i * kw + j + 1), out=code, casting="unsafe")
            np.maximum(arg, code, out=arg)
    if np.isnan(y).any():
        for i in range(kh):
            for j in range(kw):
                np.copyto(arg, small(i * kw + j + 1), where=np.isnan(_windows(xp_, i * dh, j * dw, sh, sw, oh, ow)),
                          casting="unsafe")
    arg = arg.astype(np.int32)
    arg -= 1
    return y, arg


def _halving(x_shape, kh, kw, sh, sw, top, left, oh, ow, dh, dw) -> bool:
    """Whether a max pool is the common 2x2 window at stride 2 with no padding and every window inside x."""
    return ((kh, kw, sh, sw, top, left, dh, dw) == (2, 2, 2, 2, 0, 0, 1, 1)
            and 2 * oh <= x_shape[2] and 2 * ow <= x_shape[3])


def _quarters(a, oh, ow):
    """The (N, C, 2*oh, 2*ow) corner of a seen as (2, 2, N, C, oh, ow): [i, j] holds every window's tap (i, j)."""
    n, c = a.shape[:2]
    return a[:, :, :2 * oh, :2 * ow].reshape(n, c, oh, 2, ow, 2).transpose(3, 5, 0, 1, 2, 4)


def _maxpool_halving(x, oh, ow):
    """maxpool_forward of a 2x2 window at stride 2, bit for bit, or None when the result holds a NaN (the general
    pass then fixes the argmax up). The taps are first copied apart (one pass), so that every later pass runs
    over contiguous arrays (numpy's passes over every other element are 7x slower), and compared as a tournament:
    top = max(tap 0, tap 1), bottom = max(tap 2, tap 3), then max(top, bottom), each won by the second only when
    strictly greater, which keeps the first of tied maxima as the general pass does. np.maximum(a, b) returns b
    on ties, so each is called with the earlier tap second. Measured on the 2-core AMD EPYC machine, one thread,
    float32, ms against the general pass: (64, 32, 28, 28) 1.32 against 2.03, (64, 64, 14, 14) 0.82 against
    1.30, (64, 128, 7, 7) 0.47 against 0.88. The backward pass keeps the general one: writing the quarters back
    interleaved costs what the masked writes to every other element cost (1.30 ms for the first shape)."""
    q = np.empty((2, 2) + x.shape[:2] + (oh, ow), dtype=x.dtype)
    np.copyto(q, _quarters(x, oh, ow))
    (a, b), (c, d) = q
    first_top, first_bottom = np.greater(b, a), np.greater(d, c)
    top, bottom = np.maximum(b, a), np.maximum(d, c, out=d)
    lower = np.greater(bottom, top)
    y = np.maximum(bottom, top, out=top)
    if np.isnan(y).any():
        return None
    # argmax = 2*lower + (lower ? first_bottom : first_top), in bytes
    np.bitwise_xor(first_top, first_bottom, out=first_bottom)
    np.bitwise_and(first_bottom, lower, out=first_bottom)
    np.bitwise_xor(first_top, first_bottom, out=first_top)
    arg = np.left_shift(lower.view(np.uint8), 1, dtype=np.int32)
    arg |= first_top.view(np.uint8)
    return y, arg


def maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    """Gradient of maxpool_forward: each dy goes to the input its window's argmax points at (nowhere for -1)."""
    n, c, h, w = x_shape
    top, left, oh, ow, hp, wp = _geometry(x_shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    tiled = (sh, sw, top, left, dh, dw, oh * kh, ow * kw) == (kh, kw, 0, 0, 1, 1, h, w)  # windows cover x once
    dxp = (np.empty if tiled else np.zeros)((n, c, hp, wp), dtype=dy.dtype)
    # dy where argmax == k, else +0.0, as a bit mask (np.where with a data-dependent mask is far slower).
    # Windows that do not overlap each own their inputs: the share is written there, not added (dy + 0
    # first turns -0.0 into the +0.0 the kernel's sum from zero gives).
    disjoint = sh >= dh * (kh - 1) + 1 and sw >= dw * (kw - 1) + 1
    bits = np.dtype(f"i{dy.dtype.itemsize}")
    dy_bits = (dy + dy.dtype.type(0) if disjoint else np.ascontiguousarray(dy)).view(bits)
    mask, share = np.empty(dy.shape, bits), np.empty(dy.shape, dy.dtype)
    for i in range(kh):
        for j in range(kw):
            np.equal(argmax, i * kw + j, out=mask)
            np.negative(mask, out=mask)
            target = _windows(dxp, i * dh, j * dw, sh, sw, oh, ow)
            if disjoint:
                np.bitwise_and(dy_bits, mask, out=target.view(bits))
            else:
                np.bitwise_and(dy_bits, mask, out=share.view(bits))
                target += share
    return dxp[:, :, top:top + h, left:left + w]


# ------------------------------------------------------------------------------------------ avg pool

def avgpool_divisors(size, k, s, p, out, count_include_pad=True):
    """Per window along one axis, how many cells its mean divides by: PyTorch's avg_pool2d counts the window
    clipped to the padded input (count_include_pad=True) or to the input alone (False). The divisor of a 2-D
    window is the product of its row and column counts."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _divisor(x_shape, kh, kw, sh, sw, ph, pw, oh, ow, count_include_pad, dtype):
    rows = avgpool_divisors(x_shape[2], kh, sh, ph, oh, count_include_pad)
    cols = avgpool_divisors(x_shape[3], kw, sw, pw, ow, count_include_pad)
    return (rows[:, None] * cols[None, :]).astype(dtype)


def avgpool_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True):
    """Mean over each window (see avgpool_divisors for what it divides by): the window's sum over its input
    elements in row-major order, divided by the count, as the kernel computes it."""
    n, c, h, w = x.shape
    top, left, oh, ow, hp, wp = _geometry(x.shape, kh, kw, sh, sw, ph, pw, 1, 1, ceil_mode)
    xp_ = _padded(x, top, left, hp, wp)
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += _windows(xp_, i, j, sh, sw, oh, ow)
    y /= _divisor(x.shape, kh, kw, sh, sw, ph, pw, oh, ow, count_include_pad, x.dtype)
    return y


def avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True):
    """Gradient of avgpool_forward: each dy divided by its window's count, given to the window's inputs."""
    n, c, h, w = x_shape
    top, left, oh, ow, hp, wp = _geometry(x_shape, kh, kw, sh, sw, ph, pw, 1, 1, ceil_mode)
    dxp = np.zeros((n, c, hp, wp), dtype=dy.dtype)
    share = dy / _divisor(x_shape, kh, kw, sh, sw, ph, pw, oh, ow, count_include_pad, dy.dtype)
    for i in range(kh):
        for j in range(kw):
            _windows(dxp, i, j, sh, sw, oh, ow)[...] += share
    return dxp[:, :, top:top + h, left:left + w]


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
