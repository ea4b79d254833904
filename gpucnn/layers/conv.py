"""Convolution and transposed convolution: im2col + one batched GEMM over the groups, or Winograd F(2x2, 3x3)
for 3x3 stride-1 layers with many channels.

Grouped convolution runs as ONE batched GEMM per product (``xp.matmul`` on ``(G, rows, K)`` arrays: cuBLAS's
strided-batched GEMM on a GPU, one BLAS call per group inside numpy's loop on the CPU) rather than G separate
GEMMs: a fixed number of device operations per layer whatever G is (a depthwise layer of 512 channels would
otherwise launch 512 GEMMs and 512 slicing copies), and the group-major column layout ``(G, N, oh, ow, kh, kw,
C/G)`` the im2col kernel writes makes every group's matrix a plain slice, so no copy is needed to batch them.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..devices import CPU, device_of, get_device, is_gpu_array, ops, twins
from ..devices.precision import gemm_dtype, lowered
from . import winograd
from .base import Layer, _dtype_arg, _init_arg, _int_arg, _on_argument_device, _pair_arg
from .init import initialise, zeros

# ------------------------------------------------------------------------------------ workspace limit

_workspace_limit = 512 * 2**20


def set_workspace_limit(nbytes: int):
    """Bound the bytes of one im2col column buffer; larger batches are convolved in chunks of samples."""
    global _workspace_limit
    if not isinstance(nbytes, numbers.Integral) or isinstance(nbytes, bool) or nbytes <= 0:
        raise ValueError(f"workspace limit: expected a positive number of bytes, got {nbytes!r}")
    _workspace_limit = int(nbytes)


def get_workspace_limit() -> int:
    """The current im2col workspace limit in bytes (default 512 MiB)."""
    return _workspace_limit

# ------------------------------------------------------------------------------------ arguments


def _is_int(v, minimum):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum


def _conv_padding(padding, kernel, stride, dilation, owner):
    """(top, bottom, left, right) of a Conv2D padding: an int, an (h, w) pair, a (top, bottom, left, right)
    4-tuple, 'valid' (none) or 'same' (PyTorch's rule: d*(k-1) in all per axis, the smaller half before;
    refused with a stride > 1, as PyTorch does)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{owner}: padding='same' is not supported for strided convolutions (as in "
                                 f"PyTorch), got stride={stride}")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
    elif _is_int(padding, 0):
        return (int(padding),) * 4
    elif isinstance(padding, (tuple, list, np.ndarray)) and len(padding) in (2, 4) and all(
            _is_int(p, 0) for p in padding):
        p = tuple(int(v) for v in padding)
        return (p[0], p[0], p[1], p[1]) if len(p) == 2 else p
    raise ValueError(f"{owner}: padding must be an int >= 0, an (h, w) pair or a (top, bottom, left, right) "
                     f"4-tuple of ints >= 0, 'same' or 'valid', got {padding!r}")


def _padding_repr(padding):
    """The padding as the user gave it, normalised: 'same'/'valid', an (h, w) pair, or a 4-tuple."""
    if isinstance(padding, str):
        return padding
    if _is_int(padding, 0):
        return (int(padding),) * 2
    return tuple(int(v) for v in padding)


def _weight_gradient(xp, a, col3):
    """a (G, F, rows) @ col3 (G, rows, K) -> (G, F, K), one (batched) GEMM.

    On the CPU, row-major columns go as they are and tap-major ones (a column-major view, see ops.im2col) as
    (col3^T a^T)^T, the order OpenBLAS runs faster for each. Measured on the 2-core AMD EPYC (AVX-512) machine,
    one thread, numpy's OpenBLAS 0.3.31, ms: row-major F=64, K=288, 12544 rows 6.2 against 6.7; F=16, K=144,
    100352 rows 11.3 against 13.6; F=96, K=363, 24200 rows 20.9 against 23.5, and a@col3 was faster on all ten
    shapes tried; tap-major F=16, K=144, 100352 rows 9.9 against 13.9 the other way. On a GPU as it stands, 2-D
    for one group: cuBLAS takes C- or F-ordered matrices as they are, where a batched product of transposed
    operands would first be copied (CuPy's matmul)."""
    if xp is np and col3.flags.c_contiguous:
        return xp.matmul(a, col3)
    if xp is np:
        return xp.matmul(col3.transpose(0, 2, 1), a.transpose(0, 2, 1)).transpose(0, 2, 1)
    if a.shape[0] == 1:
        return xp.matmul(a[0], col3[0])[None]
    return xp.matmul(a, col3)


class _Conv(Layer):
    """What Conv2D and ConvTranspose2D share: channel/kernel/stride/dilation/groups arguments, the weight seen
    as grouped GEMM rows, and the workspace-limited chunks of samples."""

    def _setup(self, name, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, dtype):
        self.in_channels = _int_arg(in_channels, "in_channels", name, 1)
        self.out_channels = _int_arg(out_channels, "out_channels", name, 1)
        self.kernel_size = _pair_arg(kernel_size, "kernel_size", name, 1)
        self.stride = _pair_arg(stride, "stride", name, 1)
        self.dilation = _pair_arg(dilation, "dilation", name, 1)
        self.groups = _int_arg(groups, "groups", name, 1)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{name}: groups must divide in_channels and out_channels, got groups={self.groups} "
                             f"for in_channels={self.in_channels}, out_channels={self.out_channels}")
        if not isinstance(bias, (bool, np.bool_)):
            raise ValueError(f"{name}: bias must be True or False, got {bias!r}")
        return _dtype_arg(dtype, name)

    def _repr_extra(self):
        extra = "" if self.dilation == (1, 1) else f", dilation={self.dilation}"
        extra += "" if self.groups == 1 else f", groups={self.groups}"
        return extra + ("" if "b" in self.params else ", bias=False")

    def _weight_rows(self, xp, dtype=None):
        """W (G*A, B, kh, kw) as (G, A, kh*kw*B): per group, one row of a column's order (kh, kw, channel) for
        each of A filters (Conv2D: A = out/G filters over B = in/G channels; ConvTranspose2D: A = in/G, B = out/G);
        in `dtype` (default W's: bfloat16 for a bf16 GEMM, cast in the same copy)."""
        w = self.params["W"]
        a, b, kh, kw = w.shape
        g = self.groups
        rows = w.reshape(g, a // g, b, kh, kw).transpose(0, 1, 3, 4, 2)
        return xp.ascontiguousarray(rows, dtype=dtype).reshape(g, a // g, kh * kw * b)

    def _set_weight_grad(self, dwk):
        """grads['W'] from the gradient of the weight rows (G, A, kh*kw*B) (the inverse of _weight_rows)."""
        grad = self.grads["W"]
        a, b, kh, kw = grad.shape
        g = self.groups
        grad.reshape(g, a // g, b, kh, kw)[...] = dwk.reshape(g, a // g, kh, kw, b).transpose(0, 1, 4, 2, 3)

    def sample_bytes(self, input_shape, dtype=np.float32) -> int:
        """Bytes of one sample's im2col columns: the largest work buffer per sample (column gradients and the
        weight-gradient temporaries are at most as large)."""
        positions, channels = self._column_size(input_shape)
        return positions * channels * self.kernel_size[0] * self.kernel_size[1] * np.dtype(dtype).itemsize

    def chunk_size(self, input_shape, dtype=np.float32) -> int:
        """Samples convolved at once by im2col: as many as keep every work buffer within the workspace limit (>= 1)."""
        return max(1, min(int(input_shape[0]), _workspace_limit // self.sample_bytes(input_shape, dtype)))


# -------------------------------------------------------------------------------------------- conv

class Conv2D(_Conv):
    """2-D convolution (cross-correlation, as PyTorch's Conv2d): (N, in, H, W) -> (N, out, out_h, out_w).

    Arguments follow ``torch.nn.Conv2d``: ``kernel_size``, ``stride`` and ``dilation`` an int or an (h, w) pair;
    ``padding`` an int, an (h, w) pair, a (top, bottom, left, right) 4-tuple, ``'valid'`` (none) or ``'same'``
    (output size = input size; d*(k-1) padding per axis, the smaller half before; ValueError with a stride
    > 1, as in PyTorch); ``groups`` divides both channel counts (depthwise when groups == in_channels).
    W has shape (out, in/groups, kh, kw), b (out,); ``init`` 'he' or 'xavier'; ``dtype`` float32 or float64.
    out_h = (H + top + bottom - dilation*(kh-1) - 1) // stride + 1 (PyTorch's formula), likewise out_w.

    im2col, then one batched GEMM over the groups per chunk of samples. The columns of the whole batch are
    cached for backward when they fit in the workspace limit; otherwise the batch is processed in chunks and
    each chunk's columns are recomputed in backward. 3x3 stride-1 layers with many channels (no groups, no
    dilation, symmetric padding) take Winograd F(2x2, 3x3) instead (see `uses_winograd`). dx is the column
    gradient summed back by col2im, except on the CPU for stride-1 layers with no more filters than channels,
    where it is dout correlated with the flipped filters (see `_dx_by_correlation`). In a bf16 scope on a
    GPU (:mod:`gpucnn.devices.precision`) the im2col path's GEMMs take bfloat16 columns (im2col_bf16 of a bfloat16
    copy of x), weight rows and output gradients, sum in float32, and write float32 (bias_act_bf16,
    col2im_bf16); W, b, their gradients, the output and dx stay float32 (Winograd stays float32). Raises ValueError
    for bad arguments or an input the kernel does not fit, TypeError for a non-float input.
    """

    fuses_relu = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 init="he", dtype=np.float32):
        super().__init__()
        name = "Conv2D"
        dtype = self._setup(name, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, dtype)
        self.pads = _conv_padding(padding, self.kernel_size, self.stride, self.dilation, name)
        self.padding = _padding_repr(padding)
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self._add_param("W", initialise(_init_arg(init, name), shape, dtype))
        if bias:
            self._add_param("b", zeros((self.out_channels,), dtype))

    def __repr__(self):
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}{self._repr_extra()})")

    def _window(self):
        """im2col's window arguments: kh, kw, sh, sw, (top, bottom), (left, right), dh, dw."""
        t, b, left, r = self.pads
        return (*self.kernel_size, *self.stride, (t, b), (left, r), *self.dilation)

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, f"(N, {self.in_channels}, H, W)")
        if shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: expected input (N, {self.in_channels}, H, W), got shape {tuple(shape)}")
        t, b, left, r = self.pads
        oh, ow = self._window_out(shape, self.kernel_size, self.stride, ((t, b), (left, r)), self.dilation)
        return (shape[0], self.out_channels, oh, ow)

    def _column_size(self, input_shape):
        _, _, oh, ow = self.output_shape(input_shape)
        return oh * ow, self.in_channels

    def uses_winograd(self, input_shape, dtype=np.float32, device=CPU) -> bool:
        """Whether this input is convolved by Winograd F(2x2, 3x3) (:mod:`gpucnn.layers.winograd`) rather than im2col:
        3x3 kernels at stride 1 without groups or dilation and with the same padding on both sides, of a size
        where it was measured faster on the CPU (`winograd.pays`: many channels, enough tiles, transforms that
        fit in cache), with the whole batch's transforms within the workspace limit. On a GPU `device`, never
        unless ``winograd.ON_GPU`` (im2col costs fewer device operations there; see winograd.ON_GPU).
        A function of shapes and the device's kind only."""
        t, b, left, r = self.pads
        if (self.kernel_size, self.stride, self.dilation, self.groups) != ((3, 3), (1, 1), (1, 1), 1) or \
                t != b or left != r or (get_device(device).is_gpu and not winograd.ON_GPU):
            return False
        size = self._winograd_size(input_shape, dtype)
        return winograd.pays(*size) and winograd.buffer_bytes(*size) <= _workspace_limit

    def _winograd_size(self, input_shape, dtype):
        n, _, oh, ow = self.output_shape(input_shape)
        return self.in_channels, self.out_channels, int(n), oh, ow, np.dtype(dtype).itemsize

    def column_bytes(self, input_shape, dtype=np.float32, device=CPU) -> int:
        """Bytes of the largest work buffer (the im2col columns or the Winograd transforms) a forward/backward
        of this input makes on `device`: within the workspace limit unless a single sample's columns exceed it."""
        if self.uses_winograd(input_shape, dtype, device):
            return winograd.buffer_bytes(*self._winograd_size(input_shape, dtype))
        return self.chunk_size(input_shape, dtype) * self.sample_bytes(input_shape, dtype)

    def _cols(self, x, dtype):
        """A chunk's columns in `dtype` (x's, or bfloat16 for a bf16 GEMM) as im2col returns them, and the same
        memory seen as (G, n*oh*ow, kh*kw*C/G), row- or column-major per group (in this layer's scratch buffer on
        the CPU)."""
        col = ops.im2col(lowered(x, dtype), *self._window(), self.groups, self._scratch)
        return col, col.reshape(self.groups, -1, col.shape[-3] * col.shape[-2] * col.shape[-1])

    def forward(self, x, train=None):
        return self._forward(x, train, relu=False)

    @_on_argument_device
    def forward_relu(self, x, train=None):
        """max(forward(x), 0), the ReLU applied in the pass that adds the bias and writes NCHW (what a chain
        calls for this layer followed by a ReLU; the ReLU then takes the result through ReLU.rectified)."""
        return self._forward(x, train, relu=True)

    def _forward(self, x, train, relu):
        xp = self._begin(x)
        train = self._mode(train)
        n = x.shape[0]
        _, o, oh, ow = self.output_shape(x.shape)
        p = oh * ow
        g = self.groups
        og = o // g
        x = xp.ascontiguousarray(x)
        if self.uses_winograd(x.shape, x.dtype, device_of(x)):
            u = winograd.filter_transform(self.params["W"])
            v = winograd.input_transform(x, self.pads[::2])
            y = winograd.output_transform(xp.matmul(v, u.transpose(0, 2, 1)), n, oh, ow, self.params.get("b"))
            if relu:
                xp.maximum(y, 0, out=y)
            return self._save((x, v if train else None, u, True), y)
        dt = gemm_dtype(x)
        wk = self._weight_rows(xp, dt)                                 # (G, out/G, K)
        chunk = self.chunk_size(x.shape, x.dtype)
        y = xp.empty((n, o, p), dtype=x.dtype)
        y4 = y.reshape(n, g, og, p)
        gpu = is_gpu_array(x)
        col = None
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            col, col3 = self._cols(x[s:s + m], dt)
            # The GEMM's product is moved to NCHW by the pass that adds the bias (ops.bias_act, with the ReLU
            # after this layer if there is one), reading it through the strides of its (n, g, o, q) elements.
            if gpu and g == 1:   # (out, m*oh*ow), 2-D: cuBLAS takes both operands as they are
                prod, strides = xp.matmul(wk[0], col3[0].T), (p, 0, m * p, 1)
            elif og >= 32 and not gpu and not col3.flags.c_contiguous:
                # (G, out/G, m*oh*ow) from tap-major columns: rows of the transposing pass are oh*ow long, and
                # BLAS is faster this way round (1->32 channels on 28x28 at batch 64: 5.0 against 5.3 ms)
                prod, strides = xp.matmul(wk, col3.transpose(0, 2, 1)), (p, og * m * p, m * p, 1)
            else:   # (G, m*oh*ow, out/G): row-major columns (faster whole: 32->64 channels on 14x14 at batch 64,
                # 8.1 against 9.3 ms, 64->128 on 7x7 6.1 against 6.3), few filters, or groups
                prod, strides = xp.matmul(col3, wk.transpose(0, 2, 1)), (p * og, m * p * og, 1, og)
            ops.bias_act(prod, strides, self.params.get("b"), y4[s:s + m], relu)
        return self._save((x, col if (train and chunk >= n) else None, wk, False), y.reshape(n, o, oh, ow))

    def backward(self, dout):
        # wk: the weight rows (or the Winograd filters) the forward pass used
        x, cached_col, wk, by_winograd = self._saved(dout)
        xp = self._xp(dout, x, *self.params.values())
        if by_winograd:
            return self._backward_winograd(xp, dout, x, cached_col, wk)
        n, c, h, w = x.shape
        _, o, oh, ow = dout.shape
        p = oh * ow
        g = self.groups
        d = xp.ascontiguousarray(dout.reshape(n, o, p).transpose(1, 0, 2)).reshape(g, o // g, n * p)
        dg = lowered(d, wk.dtype)      # the GEMMs' operand (bfloat16 in a bf16 step); d itself gives the bias's
        chunk = n if cached_col is not None else self.chunk_size(x.shape, x.dtype)
        dwk = None
        dx = xp.empty(x.shape, dtype=x.dtype) if self.need_input_grad and chunk < n else None
        flipped = self._flipped_rows(wk) if self.need_input_grad and self._dx_by_correlation(xp, x, wk) else None
        by_tap = self._tap_filters(wk) if self.need_input_grad and flipped is None and self._dx_by_tap(xp, x, wk) \
            else None
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            if cached_col is not None:
                col = cached_col
                col3 = col.reshape(g, m * p, -1)
            else:
                col, col3 = self._cols(x[s:s + m], wk.dtype)
            ds = dg[:, :, s * p:(s + m) * p]
            part = _weight_gradient(xp, ds, col3)
            if chunk < n:   # partial sums in the weights' dtype (float32 in a bf16 step)
                part = lowered(part, x.dtype)
            dwk = part if dwk is None else dwk + part
            if not self.need_input_grad:
                continue
            if flipped is not None:
                dxs = self._correlate(dout[s:s + m], flipped)
            elif by_tap is not None and col3.flags.c_contiguous:   # into the spent columns' buffer
                taps = col3.reshape(by_tap.shape[0], m, oh, ow, c)
                np.matmul(ds[0].T[None], by_tap, out=taps.reshape(by_tap.shape[0], m * p, c))
                dxs = twins.col2im_by_tap(taps, (m, c, h, w), *self._window())
            else:
                if g == 1 and xp is not np:   # 2-D on a GPU (see _weight_gradient); into the spent columns
                    xp.matmul(ds[0].T, wk[0], out=col3[0])
                elif col3.flags.c_contiguous:   # the columns are spent: their buffer takes their gradient
                    xp.matmul(ds.transpose(0, 2, 1), wk, out=col3)
                else:                         # tap-major columns from the CPU twin (see ops.im2col)
                    xp.matmul(wk.transpose(0, 2, 1), ds, out=col3.transpose(0, 2, 1))
                dxs = ops.col2im(col, (m, c, h, w), *self._window()[2:])
            if dx is None:
                dx = dxs
            else:
                dx[s:s + m] = dxs
        self._cache = (x, None, wk, False)   # the cached columns now hold their gradient; another backward recomputes
        self._set_weight_grad(dwk)
        if "b" in self.params:
            xp.sum(d, axis=2, out=self.grads["b"].reshape(g, o // g))
        return dx

    def _dx_by_correlation(self, xp, x, wk) -> bool:
        """Whether the CPU computes dx as dout correlated with the flipped filters (im2col of dout, one GEMM)
        instead of the column gradient and col2im: for stride 1, no dilation, one group, padding of at most
        k - 1 per side, and no more filters than input channels (dout's columns are then no wider than x's).
        col2im adds rows of C numbers per tap, which is slow for few channels; im2col copies. Measured on the
        2-core AMD EPYC machine, one thread, GEMM included (dx only): 16->16 channels on 28x28 maps at batch 128
        13.2 against 6.2 ms, 32->32 on 14x14 5.4 against 3.6, 64->64 on 7x7 2.9 against 2.4; with twice as many
        filters as channels (32->64 on 14x14, batch 64) 3.6 against 3.5, so those keep col2im."""
        t, b, left, r = self.pads
        kh, kw = self.kernel_size
        return (xp is np and self.groups == 1 and self.stride == (1, 1) and self.dilation == (1, 1)
                and max(t, b) < kh and max(left, r) < kw and self.out_channels <= self.in_channels
                and wk.dtype == x.dtype and x.dtype in (np.float32, np.float64))

    def _dx_by_tap(self, xp, x, wk) -> bool:
        """Whether the CPU computes the column gradient tap by tap, channels-last ((kh*kw, rows, C), one batched
        GEMM) and sums it with twins.col2im_by_tap, whose adds run along out_w*C numbers where col2im's run along
        C: for one group, stride 1, and at most 32 input channels (with more, col2im's runs are long enough).
        The same sums as col2im's, in the same order; the per-tap GEMMs may round their dot products unlike the
        one wide GEMM (they did not on numpy's OpenBLAS here, float32; tests check float64 to 1e-12). Measured
        on the 2-core AMD EPYC machine, one thread, dx with its GEMM, batch 64, ms: 32->64 channels on 14x14
        10.4 against 8.6; 16->32 on 28x28 23.1 against 13.6; 6->16 with 5x5 filters on 14x14 (batch 128) 5.2
        against 3.5; 64->128 on 7x7 6.3 against 6.3, 64->192 with 5x5 on 16x16 (batch 32) 62 against 69, and
        stride 2 3.1 against 3.1, which keep col2im."""
        return (xp is np and self.groups == 1 and self.stride == (1, 1) and self.in_channels <= 32
                and wk.dtype == x.dtype)

    def _tap_filters(self, wk):
        """The weight rows (1, out, kh*kw*in) as per-tap matrices (kh*kw, out, in)."""
        kh, kw = self.kernel_size
        return np.ascontiguousarray(wk[0].reshape(self.out_channels, kh * kw, self.in_channels).transpose(1, 0, 2))

    def _flipped_rows(self, wk):
        """The weight rows (1, out, kh*kw*in) as the correlation's filters (kh*kw*out, in): row (i, j, o) holds
        W[o, :, kh-1-i, kw-1-j]."""
        kh, kw = self.kernel_size
        o, c = self.out_channels, self.in_channels
        return np.ascontiguousarray(wk[0].reshape(o, kh, kw, c)[:, ::-1, ::-1, :].transpose(1, 2, 0, 3)).reshape(
            kh * kw * o, c)

    def _correlate(self, dout, flipped):
        """dx (N, C, H, W) of a stride-1 convolution: dout padded by k - 1 - padding per side, im2col'd, times
        the flipped filters, written NCHW."""
        t, b, left, r = self.pads
        kh, kw = self.kernel_size
        n, _, oh, ow = dout.shape
        h, w = oh + kh - 1 - t - b, ow + kw - 1 - left - r
        col = ops.im2col(dout, kh, kw, 1, 1, (kh - 1 - t, kh - 1 - b), (kw - 1 - left, kw - 1 - r), 1, 1, 1,
                         self._scratch.setdefault("dout", {}))
        rows = np.matmul(col.reshape(n * h * w, -1), flipped)          # (N*H*W, C), channels-last
        return ops.copy_blocked(np.empty((n, self.in_channels, h, w), dout.dtype),
                                rows.reshape(n, h, w, -1).transpose(0, 3, 1, 2))

    def _backward_winograd(self, xp, dout, x, v, u):
        """Both gradients through the Winograd transforms' adjoints; the cached V's buffer takes dV."""
        v = winograd.input_transform(x, self.pads[::2]) if v is None else v
        dm = winograd.output_gradient_transform(dout)
        self._set_grad("W", winograd.filter_gradient(xp.matmul(dm.transpose(0, 2, 1), v)))
        if "b" in self.params:
            xp.sum(dout, axis=(0, 2, 3), out=self.grads["b"])
        self._cache = (x, None, u, True)
        if not self.need_input_grad:
            return None
        return winograd.input_gradient(xp.matmul(dm, u, out=v), x.shape, self.pads[::2])


# ---------------------------------------------------------------------------------- transposed conv

class ConvTranspose2D(_Conv):
    """2-D transposed convolution (PyTorch's ConvTranspose2d): the adjoint of Conv2D with the same kernel,
    stride, padding, dilation and groups, mapping (N, in, H, W) -> (N, out, out_h, out_w) with
    out_h = (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1 (likewise out_w).

    ``kernel_size``, ``stride``, ``padding``, ``output_padding`` and ``dilation`` are ints or (h, w) pairs;
    ``output_padding`` (extra rows/columns at the end) must be smaller than the stride or the dilation of its
    axis, as in PyTorch. W has shape (in, out/groups, kh, kw), b (out,).
    Forward is one batched GEMM of x against the weight rows followed by col2im (the transposed convolution
    is Conv2D's input gradient); backward is im2col of dout followed by one batched GEMM per gradient.
    Raises ValueError for bad arguments, TypeError for a non-float input.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, init="he", dtype=np.float32):
        super().__init__()
        name = "ConvTranspose2D"
        dtype = self._setup(name, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, dtype)
        self.padding = _pair_arg(padding, "padding", name, 0)
        self.output_padding = _pair_arg(output_padding, "output_padding", name, 0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"{name}: output_padding must be smaller than either stride or dilation (as in "
                                 f"PyTorch), got output_padding={self.output_padding}, stride={self.stride}, "
                                 f"dilation={self.dilation}")
        shape = (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        self._add_param("W", initialise(_init_arg(init, name), shape, dtype))
        if bias:
            self._add_param("b", zeros((self.out_channels,), dtype))

    def __repr__(self):
        extra = "" if self.output_padding == (0, 0) else f", output_padding={self.output_padding}"
        return (f"ConvTranspose2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra}{self._repr_extra()})")

    def _window(self):
        """The window of the Conv2D this layer is the adjoint of, over the output: its padding after is
        shortened by output_padding (it may go negative), so that its im2col has exactly H x W positions."""
        (ph, pw), (oph, opw) = self.padding, self.output_padding
        return (*self.kernel_size, *self.stride, (ph, ph - oph), (pw, pw - opw), *self.dilation)

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, f"(N, {self.in_channels}, H, W)")
        if shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: expected input (N, {self.in_channels}, H, W), got shape {tuple(shape)}")
        size = [(i - 1) * s - 2 * p + d * (k - 1) + op + 1 for i, s, p, d, k, op in zip(
            shape[2:], self.stride, self.padding, self.dilation, self.kernel_size, self.output_padding)]
        if min(size) < 1:
            raise ValueError(f"{self!r}: the output of an input of shape {tuple(shape)} would be {size[0]}x{size[1]}; "
                             f"expected a larger input or less padding")
        return (shape[0], self.out_channels, size[0], size[1])

    def _column_size(self, input_shape):
        return int(input_shape[2]) * int(input_shape[3]), self.out_channels

    def _rows_of(self, xp, x):
        """x (m, in, H, W) as (G, in/G, m*H*W): one GEMM operand per group."""
        m, c, h, w = x.shape
        g = self.groups
        xt = xp.ascontiguousarray(x.reshape(m, g, c // g, h * w).transpose(1, 2, 0, 3))
        return xt.reshape(g, c // g, m * h * w)

    def forward(self, x, train=None):
        xp = self._begin(x)
        n = x.shape[0]
        _, o, oh, ow = self.output_shape(x.shape)
        x = xp.ascontiguousarray(x)
        wk = self._weight_rows(xp)                                     # (G, in/G, K)
        kh, kw = self.kernel_size
        chunk = self.chunk_size(x.shape, x.dtype)
        y = None
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            cols = xp.matmul(self._rows_of(xp, x[s:s + m]).transpose(0, 2, 1), wk)   # (G, m*H*W, K)
            cols = cols.reshape(self.groups, m, x.shape[2], x.shape[3], kh, kw, o // self.groups)
            ys = ops.col2im(cols if self.groups > 1 else cols[0], (m, o, oh, ow), *self._window()[2:])
            if "b" in self.params:
                ys += self.params["b"].reshape(1, o, 1, 1)
            if chunk >= n:
                y = ys
            else:
                if y is None:
                    y = xp.empty((n, o, oh, ow), dtype=x.dtype)
                y[s:s + m] = ys
        return self._save((x, wk), y)

    def backward(self, dout):
        x, wk = self._saved(dout)
        xp = self._xp(dout, x, *self.params.values())
        n, c, h, w = x.shape
        g = self.groups
        dout = xp.ascontiguousarray(dout)
        chunk = self.chunk_size(x.shape, x.dtype)
        dwk = None
        dx = xp.empty(x.shape, dtype=x.dtype) if self.need_input_grad else None
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            col = ops.im2col(dout[s:s + m], *self._window(), g, self._scratch)
            col3 = col.reshape(g, m * h * w, -1)
            part = _weight_gradient(xp, self._rows_of(xp, x[s:s + m]), col3)
            dwk = part if dwk is None else dwk + part
            if dx is not None:
                dxs = xp.matmul(wk, col3.transpose(0, 2, 1))          # (G, in/G, m*H*W)
                dx[s:s + m] = dxs.reshape(c, m, h * w).transpose(1, 0, 2).reshape(m, c, h, w)
        self._set_weight_grad(dwk)
        if "b" in self.params:
            self._set_grad("b", dout.sum(axis=(0, 2, 3)))
        return dx
