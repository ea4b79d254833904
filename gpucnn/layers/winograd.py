"""Winograd F(2x2, 3x3) convolution (Lavin & Gray, 2016): the forward pass and both gradients of a 3x3,
stride-1 convolution with 2.25x fewer multiplications than im2col and no 9x column buffer.

Each 4x4 input tile d (tiles at stride 2) gives a 2x2 output tile A^T [(G g G^T) * (B^T d B)] A; summed
over input channels, the 16 elementwise products become 16 GEMMs. The transforms are separable (applied
along rows, then along columns) and the gradients are their exact adjoints. Only xp calls: the same code
runs on NumPy and CuPy, deterministically (no atomics, fixed summation order).
"""
from __future__ import annotations

import numpy as np

from ..devices import device_of, get_array_module, to_device
from ..devices.ops import copy_blocked

# Forward transforms of F(2x2, 3x3): input tile B^T (4 taps -> 4), filter G (3 taps -> 4), output A^T (4 -> 2).
# The filter transform runs as a GEMM with kron(G, G); the others as adds and subtracts (_combine).
BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _transposed(m):
    return tuple(zip(*m))


def _combine(xp, coefs, taps, out):
    """out = sum(coef * tap) for coefficients in {-1, 0, 1} (those of B^T and A^T): one pass per term after the first."""
    terms = [(k, t) for k, t in zip(coefs, taps) if k != 0]
    (k0, t0), (k1, t1) = (terms + [(0, None)])[:2]
    if t1 is None:
        xp.copyto(out, t0) if k0 > 0 else xp.negative(t0, out=out)
    elif k0 > 0:
        (xp.add if k1 > 0 else xp.subtract)(t0, t1, out=out)
    elif k1 > 0:
        xp.subtract(t1, t0, out=out)
    else:
        xp.negative(xp.add(t0, t1, out=out), out=out)
    for k, t in terms[2:]:
        (xp.add if k > 0 else xp.subtract)(out, t, out=out)


def _apply(xp, mat, taps, outs):
    """outs[i] = sum_j mat[i][j] * taps[j]: one 1-D transform applied to whole arrays of taps."""
    for coefs, out in zip(mat, outs):
        _combine(xp, coefs, taps, out)


def _along(a, axis, start, count, step=2):
    """a[start : start + step*count : step] along `axis`."""
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + step * count, step)
    return a[tuple(index)]


# When Winograd beats im2col, measured on a 2-core AVX-512 machine for training steps (forward and both
# gradients) of batch 8-128, 4x4-24x24 outputs, 128-512 channels (see Conv2D.uses_winograd):
MIN_CHANNELS = 192       # harmonic mean of in and out channels: the GEMMs' work per transformed value
MIN_ROWS = 512           # tiles x batch, the 16 GEMMs' row count: fewer, and the filter transforms dominate
MAX_BYTES = 64 * 2**20   # one transformed tensor; larger ones fall out of cache and lose to im2col


# On a GPU a Conv2D takes im2col, whatever its size (Conv2D.uses_winograd), unless ON_GPU is set (tests set it to
# run the transforms on a device). Counted on the emulated device for the AlexNet-style net at batch 32 (README,
# "GPU speed"): a 3x3 layer costs 4 device operations forward and 7 backward (ReLU's included) through im2col,
# against 40 and 74 through these transforms as xp passes; as one RawKernel per transform they would still take
# about 5 and 10 (the batched GEMMs' transposed operands are copied), and im2col's extra bytes (9x columns:
# 14 MB for 192->384 channels on 8x8 maps at batch 32) cost an H200 ~3 us of bandwidth, less than one launch.
ON_GPU = False


def pays(in_channels, out_channels, n, oh, ow, itemsize) -> bool:
    """Whether a 3x3 stride-1 convolution of this size runs faster through Winograd than through im2col."""
    th, tw = tiles(oh, ow)
    return (2 * in_channels * out_channels >= MIN_CHANNELS * (in_channels + out_channels)
            and th * tw * n >= MIN_ROWS and buffer_bytes(in_channels, out_channels, n, oh, ow, itemsize) <= MAX_BYTES)


def buffer_bytes(in_channels, out_channels, n, oh, ow, itemsize) -> int:
    """Bytes of the largest transformed tensor: V or M (16 values per tile, sample and channel), or the
    filters' U or dU (16 values per filter and input channel)."""
    th, tw = tiles(oh, ow)
    return 16 * max(th * tw * n * max(in_channels, out_channels), in_channels * out_channels) * itemsize


def tiles(oh, ow):
    """Tile rows and columns covering an oh x ow output (the last ones cut off when odd)."""
    return (oh + 1) // 2, (ow + 1) // 2


_FILTER_MATRICES = {}


def _filter_matrix(w):
    """kron(G, G) on w's device and in its dtype: the 16 x 9 matrix taking a flattened 3x3 filter to its
    flattened 4x4 transform (made once per device and dtype: no host-to-device copy per step)."""
    key = (device_of(w), w.dtype)
    if key not in _FILTER_MATRICES:
        _FILTER_MATRICES[key] = to_device(np.kron(np.array(G), np.array(G)).astype(w.dtype), key[0])
    return _FILTER_MATRICES[key]


def filter_transform(w):
    """(O, C, 3, 3) weights -> U, (16, O, C): G g G^T for every filter and channel, as one GEMM."""
    xp = get_array_module(w)
    o, c = w.shape[:2]
    return xp.matmul(_filter_matrix(w), w.reshape(o * c, 9).T).reshape(16, o, c)


def filter_gradient(du):
    """dU, (16, O, C) -> dW, (O, C, 3, 3): G^T dU G (the adjoint of filter_transform)."""
    xp = get_array_module(du)
    o, c = du.shape[1:]
    return xp.matmul(du.reshape(16, o * c).T, _filter_matrix(du)).reshape(o, c, 3, 3)


def input_transform(x, padding):
    """(N, C, H, W) -> V, (16, th*tw*N, C): B^T d B for every 4x4 tile of the zero-padded input.

    The work is done channels-last, (H, W, N, C), so that every pass runs along rows of N*C numbers."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    p, q = padding
    th, tw = tiles(h + 2 * p - 2, w + 2 * q - 2)
    xs = xp.zeros((2 * th + 2, 2 * tw + 2, n, c), x.dtype)
    copy_blocked(xs[p:p + h, q:q + w].reshape(h, w, n * c), x.reshape(n * c, h, w).transpose(1, 2, 0))
    rows = xp.empty((4, th, 2 * tw + 2, n, c), x.dtype)
    _apply(xp, BT, [_along(xs, 0, k, th) for k in range(4)], rows)
    v = xp.empty((4, 4, th, tw, n, c), x.dtype)
    for a in range(4):
        _apply(xp, BT, [_along(rows[a], 1, k, tw) for k in range(4)], v[a])
    return v.reshape(16, th * tw * n, c)


def input_gradient(dv, x_shape, padding):
    """dV, (16, th*tw*N, C) -> dx, (N, C, H, W): the adjoint of input_transform (tiles overlap-added, padding cut)."""
    xp = get_array_module(dv)
    n, c, h, w = x_shape
    p, q = padding
    th, tw = tiles(h + 2 * p - 2, w + 2 * q - 2)
    dv = dv.reshape(4, 4, th, tw, n, c)
    rows = xp.empty((4, 2 * th + 2, tw, n, c), dv.dtype)
    for b in range(4):
        _overlap_add(xp, [dv[a, b] for a in range(4)], rows[b], 0, th)
    dxs = xp.empty((2 * th + 2, 2 * tw + 2, n, c), dv.dtype)
    _overlap_add(xp, rows, dxs, 1, tw)
    dx = xp.empty(x_shape, dv.dtype)
    copy_blocked(dx.reshape(n * c, h, w), dxs[p:p + h, q:q + w].reshape(h, w, n * c).transpose(2, 0, 1))
    return dx


def _overlap_add(xp, taps, out, axis, count):
    """Scatter B dV (4 taps per tile, tiles at stride 2) into `out` along `axis`: neighbouring tiles share two taps."""
    bt = _transposed(BT)
    _apply(xp, bt[:2], taps, [_along(out, axis, k, count) for k in range(2)])
    _along(out, axis, 2 * count, 2, step=1)[...] = 0
    for k in (2, 3):
        part = xp.empty(taps[0].shape, out.dtype)
        _combine(xp, bt[k], taps, part)
        dest = _along(out, axis, k, count)
        xp.add(dest, part, out=dest)


def output_transform(m, n, oh, ow, bias=None):
    """M, (16, th*tw*N, O) -> y, (N, O, oh, ow): A^T M A per tile, plus the bias (added into M, which is spent)."""
    xp = get_array_module(m)
    th, tw = tiles(oh, ow)
    o = m.shape[2]
    if bias is not None:   # column 1 of A^T is all ones: what is added to M[1, 1] reaches all four outputs of a tile
        xp.add(m[5], bias, out=m[5])
    m = m.reshape(4, 4, th, tw, n, o)
    rows = xp.empty((2, 4, th, tw, n, o), m.dtype)
    _apply(xp, AT, m, rows)
    yt = xp.empty((th, 2, tw, 2, n, o), m.dtype)
    for i in range(2):
        _apply(xp, AT, [rows[i, k] for k in range(4)], [yt[:, i, :, j] for j in range(2)])
    y = xp.empty((n, o, oh, ow), m.dtype)
    copy_blocked(y.reshape(n * o, oh, ow), yt.reshape(2 * th, 2 * tw, n * o)[:oh, :ow].transpose(2, 0, 1))
    return y


def output_gradient_transform(dy):
    """(N, O, oh, ow) output gradient -> dM, (16, th*tw*N, O): A dY A^T per tile (the adjoint of output_transform)."""
    xp = get_array_module(dy)
    n, o, oh, ow = dy.shape
    th, tw = tiles(oh, ow)
    dys = (xp.empty if (oh, ow) == (2 * th, 2 * tw) else xp.zeros)((2 * th, 2 * tw, n, o), dy.dtype)
    copy_blocked(dys[:oh, :ow].reshape(oh, ow, n * o), dy.reshape(n * o, oh, ow).transpose(1, 2, 0))
    rows = xp.empty((4, th, 2 * tw, n, o), dy.dtype)
    _apply(xp, _transposed(AT), [_along(dys, 0, k, th) for k in range(2)], rows)
    dm = xp.empty((4, 4, th, tw, n, o), dy.dtype)
    for a in range(4):
        _apply(xp, _transposed(AT), [_along(rows[a], 1, k, tw) for k in range(2)], dm[a])
    return dm.reshape(16, th * tw * n, o)
