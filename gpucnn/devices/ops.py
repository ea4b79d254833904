"""The array operations behind the conv and pooling layers, on any device: the custom CUDA kernel
(:mod:`.kernels`) for a GPU array (real or emulated), its numpy twin (:mod:`.twins`) for a host array.

The column layout is channels-last ``(N, out_h, out_w, kh, kw, C)`` on both devices: seen as 2-D
``(N*out_h*out_w, kh*kw*C)`` it makes the forward, weight-gradient and column-gradient products one plain GEMM
each over all samples. Arguments and results are documented on the twins.
"""
from __future__ import annotations

from . import kernels, twins
from .core import is_gpu_array
from .twins import out_size

__all__ = ["out_size", "im2col", "col2im", "maxpool_forward", "maxpool_backward", "avgpool_forward",
           "avgpool_backward", "copy_blocked"]


def im2col(x, kh, kw, sh, sw, ph, pw, scratch=None):
    """(N, C, H, W) -> columns (N, out_h, out_w, kh, kw, C); see twins.im2col (`scratch` is used on the CPU only)."""
    if is_gpu_array(x):
        return kernels.im2col(x, kh, kw, sh, sw, ph, pw)
    return twins.im2col(x, kh, kw, sh, sw, ph, pw, scratch)


def col2im(col, x_shape, sh, sw, ph, pw):
    """Adjoint of im2col; see twins.col2im."""
    if is_gpu_array(col):
        return kernels.col2im(col, x_shape, sh, sw, ph, pw)
    return twins.col2im(col, x_shape, sh, sw, ph, pw)


def maxpool_forward(x, kh, kw, sh, sw, ph, pw):
    """Max over each window -> (y, int32 argmax); see twins.maxpool_forward."""
    if is_gpu_array(x):
        return kernels.maxpool_forward(x, kh, kw, sh, sw, ph, pw)
    return twins.maxpool_forward(x, kh, kw, sh, sw, ph, pw)


def maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw):
    """Gradient of maxpool_forward; see twins.maxpool_backward."""
    if is_gpu_array(dy):
        return kernels.maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw)
    return twins.maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw)


def avgpool_forward(x, kh, kw, sh, sw, ph, pw):
    """Mean over each window; see twins.avgpool_forward."""
    if is_gpu_array(x):
        return kernels.avgpool_forward(x, kh, kw, sh, sw, ph, pw)
    return twins.avgpool_forward(x, kh, kw, sh, sw, ph, pw)


def avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw):
    """Gradient of avgpool_forward; see twins.avgpool_backward."""
    if is_gpu_array(dy):
        return kernels.avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw)
    return twins.avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw)


def copy_blocked(out, src):
    """out[...] = src for a transposing copy: one copy on a GPU, in blocks on the CPU (see twins.copy_blocked)."""
    if is_gpu_array(out):
        out[...] = src
        return out
    return twins.copy_blocked(out, src)
