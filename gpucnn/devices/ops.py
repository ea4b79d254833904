"""The array operations behind the layers, on any device: the custom CUDA kernel (:mod:`.kernels`,
:mod:`.fused`) for a GPU array (real or emulated), its numpy twin (:mod:`.twins`, :mod:`.fused_twins`) for a
host array.

The column layout is channels-last and group-major, ``(G, N, out_h, out_w, kh, kw, C/G)`` (no G axis for
groups == 1), on both devices: seen as ``(G, N*out_h*out_w, kh*kw*C/G)`` it makes the forward, weight-gradient
and column-gradient products one batched GEMM each over all samples and groups. Window arguments (padding
pairs, dilation, ceil_mode), arguments and results are documented on the twins.
"""
from __future__ import annotations

import functools

from . import core, fused, fused_twins, kernels, step_kernels, step_twins, twins
from .core import is_gpu_array
from .twins import out_size, pad_pair

__all__ = ["out_size", "pad_pair", "im2col", "col2im", "maxpool_forward", "maxpool_backward", "avgpool_forward",
           "avgpool_backward", "copy_blocked", "bias_act", "relu_backward", "xent_forward", "xent_reduce",
           "xent_backward", "lrn_forward", "lrn_backward", "sgd_step", "adagrad_step", "rmsprop_step", "adam_step",
           "nonfinite_check", "accumulate_metrics", "gather_batch", "keep_or_zero"]


def im2col(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, groups=1, scratch=None):
    """(N, C, H, W) -> columns (N, out_h, out_w, kh, kw, C), or (G, N, out_h, out_w, kh, kw, C/G) for groups
    G > 1; see twins.im2col (`scratch` is used on the CPU only)."""
    if is_gpu_array(x):
        return kernels.im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, groups)
    return twins.im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, groups, scratch)


def col2im(col, x_shape, sh, sw, ph, pw, dh=1, dw=1):
    """Adjoint of im2col; see twins.col2im."""
    if is_gpu_array(col):
        return kernels.col2im(col, x_shape, sh, sw, ph, pw, dh, dw)
    return twins.col2im(col, x_shape, sh, sw, ph, pw, dh, dw)


def maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    """Max over each window -> (y, int32 argmax); see twins.maxpool_forward."""
    if is_gpu_array(x):
        return kernels.maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    return twins.maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)


def maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    """Gradient of maxpool_forward; see twins.maxpool_backward."""
    if is_gpu_array(dy):
        return kernels.maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    return twins.maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)


def avgpool_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True):
    """Mean over each window; see twins.avgpool_forward."""
    if is_gpu_array(x):
        return kernels.avgpool_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad)
    return twins.avgpool_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad)


def avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True):
    """Gradient of avgpool_forward; see twins.avgpool_backward."""
    if is_gpu_array(dy):
        return kernels.avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad)
    return twins.avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad)


def copy_blocked(out, src):
    """out[...] = src for a transposing copy: one copy on a GPU, in blocks on the CPU (see twins.copy_blocked)."""
    if is_gpu_array(out):
        out[...] = src
        return out
    return twins.copy_blocked(out, src)


def keep_or_zero(keep, a):
    """`a` where `keep` (bool, a's shape) is True, exactly +0.0 elsewhere, inf and NaN included: xp.where on a
    GPU, a bit mask on the CPU (see fused_twins.keep_or_zero)."""
    if is_gpu_array(a):
        return core.get_array_module(a).where(keep, a, a.dtype.type(0))
    return fused_twins.keep_or_zero(keep, a)


def _by_device(name, launchers=fused, numpy_twins=fused_twins):
    """ops.<name>(first, ...): the kernel's launcher for a GPU array `first`, else its numpy twin (documented
    there)."""
    kernel, twin = getattr(launchers, name), getattr(numpy_twins, name)

    @functools.wraps(twin)
    def op(first, *args, **kwargs):
        return (kernel if is_gpu_array(first) else twin)(first, *args, **kwargs)
    return op


bias_act = _by_device("bias_act")
relu_backward = _by_device("relu_backward")
xent_forward = _by_device("xent_forward")
xent_reduce = _by_device("xent_reduce")
xent_backward = _by_device("xent_backward")
lrn_forward = _by_device("lrn_forward")
lrn_backward = _by_device("lrn_backward")

sgd_step, adagrad_step, rmsprop_step, adam_step, nonfinite_check, accumulate_metrics, gather_batch = (
    _by_device(name, step_kernels, step_twins) for name in ("sgd_step", "adagrad_step", "rmsprop_step", "adam_step",
                                                            "nonfinite_check", "accumulate_metrics", "gather_batch"))
