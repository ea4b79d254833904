"""The one table of layer types: for each gpucnn layer class, its PyTorch twin (module, parameter names and
layouts) and its ONNX nodes. Adding a layer type to gpucnn.interop is adding one entry to :data:`TABLE`.

An entry's functions are called with what they need (the torch modules, an ONNX graph builder), so this module
imports nothing but numpy and the layers. A layer whose class is not in the table, or that carries a public
attribute its entry does not read (an option added to the layer after its entry was written), is refused with
:class:`UnsupportedLayerError` naming it: never a silently wrong twin or export.

PyTorch correspondence (names and layouts of ``torch.nn``; the twin is what :func:`gpucnn.interop.torch_twin`
builds):

========================  ===================================  ================================================
gpucnn                    PyTorch twin                         parameters (gpucnn -> PyTorch)
========================  ===================================  ================================================
Conv2D                    nn.Conv2d (PaddedConv2d: F.pad, then W (out, in/groups, kh, kw) -> weight, same
                          nn.Conv2d, for unequal padding)      layout; b -> bias
ConvTranspose2D           nn.ConvTranspose2d                   W (in, out/groups, kh, kw) -> weight, same
                                                               layout; b -> bias
Affine                    FlattenLinear (nn.Linear on          W (in, out) -> weight (out, in), transposed;
                          x.flatten(1))                        b -> bias
BatchNorm1D, BatchNorm2D  nn.BatchNorm1d, nn.BatchNorm2d       gamma -> weight, beta -> bias, running_mean,
                                                               running_var; num_batches_tracked (PyTorch only)
MaxPool2D, AvgPool2D,     nn.MaxPool2d, nn.AvgPool2d,          none
GlobalAvgPool2D,          nn.AdaptiveAvgPool2d(1),
AdaptiveAvgPool2D, LRN,   nn.AdaptiveAvgPool2d, nn.LocalResponseNorm,
ReLU, LeakyReLU, Sigmoid, their nn namesakes
Tanh, Flatten, Dropout
SoftmaxCrossEntropy       nn.CrossEntropyLoss                  (a loss: class weights a constructor argument,
                                                               no ONNX)
Sequential                nn.Sequential                        children keep their names: "3.0.W" -> "3.0.weight"
Residual, Concat          Residual, Concat (modules of         children "0", "1", ... and "shortcut":
                          gpucnn.interop._torch_modules)       "3.shortcut.0.W" -> "3.shortcut.0.weight"
========================  ===================================  ================================================

``num_batches_tracked``: gpucnn does not count batches. PyTorch reads the count only when a BatchNorm's momentum
is None (a cumulative average), which a gpucnn BatchNorm never has, so it changes no output: 0 is written, and
on loading any 0-d integer is accepted and dropped (and its absence is not an error, as in PyTorch's own loading of
older state dicts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import layers as L
from ..devices import to_cpu
from ..layers.pooling import _averaging_matrix


class UnsupportedLayerError(ValueError):
    """A layer gpucnn.interop cannot map (no table entry, an option its entry does not read, or a layer ONNX cannot
    express); the message names the layer, its place in the model and what to do."""


@dataclass(frozen=True)
class Tensor:
    """One gpucnn parameter or buffer and its PyTorch counterpart."""
    ours: str                   # gpucnn name: "W", "gamma", "running_mean"
    theirs: str                 # PyTorch name: "weight", "bias", "running_mean"
    transpose: bool = False     # PyTorch's layout is ours transposed (2-D: Affine's W)


@dataclass(frozen=True)
class TorchOnly:
    """State PyTorch keeps and gpucnn does not: written as `value`; on loading it may be absent, and is checked
    (the shape of `value`, an integer dtype) and dropped."""
    theirs: str
    value: Callable             # layer -> numpy array


@dataclass(frozen=True)
class Entry:
    """How one gpucnn layer class maps onto PyTorch and ONNX.

    torch(layer, t, children) -> the twin module without weights; ``t`` is
        :mod:`gpucnn.interop._torch_modules` (``t.nn`` is torch.nn, beside gpucnn's own small twins), children the
        twins of the layer's children (containers).
    tensors / torch_only: parameter and buffer correspondence, in the order of the twin's state_dict.
    onnx(layer, g, x, shape) -> the name of the output of the nodes it adds to builder ``g`` (see
        :mod:`gpucnn.interop.onnx_export`) for input `x` of `shape`; None when ONNX cannot express the layer, and
        ``no_onnx`` says why.
    children(layer) -> [(gpucnn prefix, PyTorch prefix, child)] for containers.
    reads: the public attributes the entry uses; a layer carrying any other is refused.
    """
    torch: Callable
    tensors: tuple = ()
    torch_only: tuple = ()
    onnx: Callable | None = None
    no_onnx: str = ""
    children: Callable | None = None
    reads: frozenset = frozenset()


# Attributes every layer has (Layer.__init__, containers) that no entry needs to read.
_BASE = frozenset({"params", "grads", "buffers", "training", "need_input_grad", "layers"})


# ------------------------------------------------------------------------------------------ ONNX parts

def _pads(padding):
    """ONNX pads (begin of each spatial axis, then end) of a symmetric (ph, pw)."""
    return [padding[0], padding[1], padding[0], padding[1]]


def _onnx_conv(layer, g, x, shape):
    top, bottom, left, right = layer.pads
    inputs = [x, g.param("W")] + ([g.param("b")] if "b" in layer.params else [])
    return g.node("Conv", inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=[top, left, bottom, right], dilations=list(layer.dilation), group=layer.groups)


def _onnx_conv_transpose(layer, g, x, shape):
    """output_padding is exported as that much less cropping at the end of the full transposed convolution
    (onnxruntime refuses an output_padding >= stride, which PyTorch allows below the dilation); rows past the
    full output (output_padding > padding) are zeros, then the bias, as in PyTorch."""
    (ph, pw), (oph, opw) = layer.padding, layer.output_padding
    past = (max(0, oph - ph), max(0, opw - pw))
    bias_after = any(past) and "b" in layer.params
    inputs = [x, g.param("W")] + ([g.param("b")] if "b" in layer.params and not bias_after else [])
    y = g.node("ConvTranspose", inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
               pads=[ph, pw, max(0, ph - oph), max(0, pw - opw)], dilations=list(layer.dilation),
               group=layer.groups)
    if any(past):
        y = g.node("Pad", [y, g.constant(np.array([0, 0, 0, 0, 0, 0, *past], np.int64), "output_pads")])
    if bias_after:
        y = g.node("Add", [y, g.constant(to_cpu(layer.params["b"]).reshape(-1, 1, 1), "b")])
    return y


def _ceil_extra(layer, shape):
    """Rows and columns past the end padding that floor-mode windows need to give the layer's output size:
    nonzero only with ceil_mode, whose last windows run past the padded input. Exported as explicit padding
    rather than ONNX's ceil_mode, so the output size is gpucnn's (PyTorch's rule) whatever the runtime's."""
    _, _, oh, ow = layer.output_shape(shape)
    return [max(0, (o - 1) * s + d * (k - 1) + 1 - (size + 2 * p)) for o, s, d, k, size, p in
            zip((oh, ow), layer.stride, layer.dilation, layer.kernel_size, shape[2:], layer.padding)]


def _onnx_maxpool(layer, g, x, shape):
    """The padding (and ceil_mode's end) as -inf by a Pad node: -inf never wins a max, as padding never does in
    gpucnn, and a dilated window that reads no input gives -inf as in gpucnn (onnxruntime's own padding gives
    -3.4e38 there)."""
    (ph, pw), (eh, ew) = layer.padding, _ceil_extra(layer, shape)
    if ph or pw or eh or ew:
        x = g.node("Pad", [x, g.constant(np.array([0, 0, ph, pw, 0, 0, ph + eh, pw + ew], np.int64), "pads"),
                           g.constant(np.array(-np.inf, g.dtype), "minus_inf")])
    return g.node("MaxPool", [x], kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  dilations=list(layer.dilation))


def _onnx_avgpool(layer, g, x, shape):
    """PyTorch's divisor: the window clipped to the padded input (count_include_pad) or to the input. The
    padding that counts is made real by a Pad node, so the pool itself always averages exclusively."""
    (ph, pw), (eh, ew) = layer.padding, _ceil_extra(layer, shape)
    if layer.count_include_pad and (ph or pw):
        x = g.node("Pad", [x, g.constant(np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64), "pads")])
        ph = pw = 0
    return g.node("AveragePool", [x], kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=[ph, pw, ph + eh, pw + ew], count_include_pad=0)


def _onnx_adaptive_avgpool(layer, g, x, shape):
    """A_h @ x @ A_w^T with the averaging matrices of PyTorch's adaptive windows, as the layer computes it
    (ONNX has no adaptive pooling)."""
    _, _, oh, ow = layer.output_shape(shape)
    rows = g.constant(_averaging_matrix(shape[2], oh, g.dtype), "rows")
    columns = g.constant(np.ascontiguousarray(_averaging_matrix(shape[3], ow, g.dtype).T), "columns")
    return g.node("MatMul", [g.node("MatMul", [rows, x]), columns])


def _onnx_affine(layer, g, x, shape):
    if len(shape) != 2:
        x = g.node("Flatten", [x], axis=1)
    return g.node("Gemm", [x, g.param("W"), g.param("b")])   # W is (in, out): no transB


def _onnx_batchnorm(layer, g, x, shape):
    return g.node("BatchNormalization", [x, g.param("gamma"), g.param("beta"), g.param("running_mean"),
                                         g.param("running_var")], epsilon=layer.eps)


def _onnx_lrn(layer, g, x, shape):
    """ONNX's LRN sums channels c - floor((size-1)/2) .. c + ceil((size-1)/2); PyTorch's and gpucnn's sum
    c - size//2 .. c + (size-1)//2. They agree for odd sizes. For even sizes the windows are mirror images (and
    onnxruntime refuses an even size), so the layer is built from its definition instead: the squares summed over
    the channel window by a ones (size, 1) convolution over (N, 1, C, H*W) padded (size//2, size//2 - 1)."""
    if layer.size % 2:
        return g.node("LRN", [x], size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
    c = shape[1]
    squares = g.node("Reshape", [g.node("Mul", [x, x]), g.constant(np.array([0, 1, c, -1], np.int64), "shape")])
    half = layer.size // 2
    window = g.node("Conv", [squares, g.constant(np.ones((1, 1, layer.size, 1), g.dtype), "ones")],
                    kernel_shape=[layer.size, 1], pads=[half, 0, half - 1, 0])
    sums = g.node("Reshape", [window, g.node("Shape", [x])])
    d = g.node("Add", [g.node("Mul", [sums, g.constant(np.array(layer.alpha / layer.size, g.dtype), "alpha")]),
                       g.constant(np.array(layer.k, g.dtype), "k")])
    return g.node("Mul", [x, g.node("Pow", [d, g.constant(np.array(-layer.beta, g.dtype), "minus_beta")])])


def _onnx_chain(layers, g, x, shape):
    for i, child in enumerate(layers):
        x, shape = g.emit(child, x, shape, f"{i}.")
    return x


def _onnx_residual(layer, g, x, shape):
    side = x if layer.shortcut is None else g.emit(layer.shortcut, x, shape, "shortcut.")[0]
    return g.node("Add", [_onnx_chain(layer.layers, g, x, shape), side])


def _onnx_concat(layer, g, x, shape):
    return g.node("Concat", [g.emit(branch, x, shape, f"{i}.")[0] for i, branch in enumerate(layer.layers)],
                  axis=layer.axis)


def _op(name, **attrs):
    return lambda layer, g, x, shape: g.node(name, [x], **{k: f(layer) for k, f in attrs.items()})


def _identity(layer, g, x, shape):
    return x


def _named(layer):
    """A container's children under their gpucnn names ("0", "1", ..., "shortcut"), which the twins keep."""
    return [(f"{name}.", f"{name}.", child) for name, child in layer.named_children()]


# ---------------------------------------------------------------------------------------- PyTorch parts

def _torch_conv(layer, t, children):
    top, bottom, left, right = layer.pads
    options = dict(stride=layer.stride, dilation=layer.dilation, groups=layer.groups, bias="b" in layer.params)
    if (top, left) == (bottom, right):
        return t.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, padding=(top, left), **options)
    return t.PaddedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, pads=layer.pads, **options)


def _torch_residual(layer, t, children):
    n = len(layer.layers)
    return t.Residual(children[:n], children[n] if layer.shortcut is not None else None)


# ----------------------------------------------------------------------------------------------- table

_WEIGHTS = (Tensor("W", "weight"), Tensor("b", "bias"))
_CONV_READS = frozenset({"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"})
_POOL_READS = frozenset({"kernel_size", "stride", "padding", "dilation", "ceil_mode"})
_BN = (Tensor("gamma", "weight"), Tensor("beta", "bias"), Tensor("running_mean", "running_mean"),
       Tensor("running_var", "running_var"))
_BN_COUNT = (TorchOnly("num_batches_tracked", lambda layer: np.array(0, np.int64)),)
_BN_READS = frozenset({"num_features", "eps", "momentum"})

TABLE: dict[type, Entry] = {
    L.Conv2D: Entry(torch=_torch_conv, tensors=_WEIGHTS, onnx=_onnx_conv, reads=_CONV_READS | {"pads"}),
    L.ConvTranspose2D: Entry(
        torch=lambda layer, t, children: t.nn.ConvTranspose2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.output_padding, layer.groups, "b" in layer.params, layer.dilation),
        tensors=_WEIGHTS, onnx=_onnx_conv_transpose, reads=_CONV_READS | {"output_padding"}),
    L.MaxPool2D: Entry(
        torch=lambda layer, t, children: t.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding,
                                                        layer.dilation, ceil_mode=layer.ceil_mode),
        onnx=_onnx_maxpool, reads=_POOL_READS),
    L.AvgPool2D: Entry(   # its dilation is always 1 (PyTorch's AvgPool2d has none)
        torch=lambda layer, t, children: t.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                                                        layer.ceil_mode, layer.count_include_pad),
        onnx=_onnx_avgpool, reads=_POOL_READS | {"count_include_pad"}),
    L.GlobalAvgPool2D: Entry(torch=lambda layer, t, children: t.nn.AdaptiveAvgPool2d(1),
                             onnx=_op("GlobalAveragePool")),
    L.AdaptiveAvgPool2D: Entry(torch=lambda layer, t, children: t.nn.AdaptiveAvgPool2d(layer.output_size),
                               onnx=_onnx_adaptive_avgpool, reads=frozenset({"output_size"})),
    L.Affine: Entry(
        torch=lambda layer, t, children: t.FlattenLinear(layer.in_features, layer.out_features),
        tensors=(Tensor("W", "weight", transpose=True), Tensor("b", "bias")), onnx=_onnx_affine,
        reads=frozenset({"in_features", "out_features"})),
    L.ReLU: Entry(torch=lambda layer, t, children: t.nn.ReLU(), onnx=_op("Relu")),
    L.LeakyReLU: Entry(torch=lambda layer, t, children: t.nn.LeakyReLU(layer.negative_slope),
                       onnx=_op("LeakyRelu", alpha=lambda layer: layer.negative_slope),
                       reads=frozenset({"negative_slope"})),
    L.Sigmoid: Entry(torch=lambda layer, t, children: t.nn.Sigmoid(), onnx=_op("Sigmoid")),
    L.Tanh: Entry(torch=lambda layer, t, children: t.nn.Tanh(), onnx=_op("Tanh")),
    L.Flatten: Entry(torch=lambda layer, t, children: t.nn.Flatten(), onnx=_op("Flatten", axis=lambda layer: 1)),
    L.Dropout: Entry(torch=lambda layer, t, children: t.nn.Dropout(layer.p), onnx=_identity,   # inference: identity
                     reads=frozenset({"p"})),
    L.BatchNorm1D: Entry(
        torch=lambda layer, t, children: t.nn.BatchNorm1d(layer.num_features, layer.eps, layer.momentum),
        tensors=_BN, torch_only=_BN_COUNT, onnx=_onnx_batchnorm, reads=_BN_READS),
    L.BatchNorm2D: Entry(
        torch=lambda layer, t, children: t.nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum),
        tensors=_BN, torch_only=_BN_COUNT, onnx=_onnx_batchnorm, reads=_BN_READS),
    L.LRN: Entry(torch=lambda layer, t, children: t.nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta,
                                                                         layer.k),
                 onnx=_onnx_lrn, reads=frozenset({"size", "alpha", "beta", "k"})),
    L.SoftmaxCrossEntropy: Entry(
        torch=lambda layer, t, children: t.cross_entropy(layer),
        no_onnx="it is a loss (it takes labels), not part of an inference graph: export the model without it",
        reads=frozenset({"ignore_index", "label_smoothing", "weight", "reduction"})),
    L.Sequential: Entry(torch=lambda layer, t, children: t.nn.Sequential(*children),
                        onnx=lambda layer, g, x, shape: _onnx_chain(layer.layers, g, x, shape), children=_named),
    L.Residual: Entry(torch=_torch_residual, onnx=_onnx_residual, children=_named, reads=frozenset({"shortcut"})),
    L.Concat: Entry(torch=lambda layer, t, children: t.Concat(children, layer.axis), onnx=_onnx_concat,
                    children=_named, reads=frozenset({"axis"})),
}


# -------------------------------------------------------------------------------------------- lookups

def describe(layer, where: str = "") -> str:
    """How errors name a layer: its place in the model ("layer 3.0") and its repr (a container's class name)."""
    text = repr(layer) if "\n" not in repr(layer) else type(layer).__name__
    return f"layer {where.rstrip('.')} ({text})" if where else text


def entry_for(layer, where: str = "") -> Entry:
    """The table entry of `layer` (by its exact class: a subclass may compute something else); `where` names
    its place in the model ("3.0."). Raises UnsupportedLayerError for an unknown class or an unknown option."""
    named = describe(layer, where)
    entry = TABLE.get(type(layer))
    if entry is None:
        base = next((c.__name__ for c in type(layer).__mro__[1:] if c in TABLE and c is not L.Sequential), None)
        hint = f" (a subclass of {base}, whose computation may differ)" if base else ""
        raise UnsupportedLayerError(
            f"{named}: gpucnn.interop has no mapping for layer type {type(layer).__qualname__}{hint}; it knows "
            f"{', '.join(sorted(c.__name__ for c in TABLE))}. Add an entry to TABLE in gpucnn/interop/table.py")
    unknown = sorted(k for k in vars(layer) if not k.startswith("_") and k not in _BASE and k not in entry.reads)
    if unknown:
        raise UnsupportedLayerError(
            f"{named}: {type(layer).__name__} has option(s) {', '.join(unknown)} that its gpucnn.interop entry does "
            f"not read, so the mapping could be wrong; update its entry in gpucnn/interop/table.py")
    return entry


def walk(model, ours: str = "", theirs: str = ""):
    """(gpucnn prefix, PyTorch prefix, layer, entry) for `model` and every layer inside it, parents first."""
    entry = entry_for(model, ours)
    yield ours, theirs, model, entry
    for child_ours, child_theirs, child in (entry.children(model) if entry.children else ()):
        yield from walk(child, ours + child_ours, theirs + child_theirs)
