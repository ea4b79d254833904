"""ONNX export of any model built from the layers in :mod:`gpucnn.interop.table` (extra ``onnx``), and running an
exported file with onnxruntime (extra ``onnxruntime``).

The graph computes the model in inference mode (running statistics, no dropout) whatever the model's mode. Its
input is ``input`` of the shape given (the batch dimension named ``batch`` unless ``dynamic_batch=False``) and
the layer's dtype, its output ``output``; initializers carry the gpucnn parameter names ("3.W"). Each layer
becomes the ONNX operators its table entry names (ONNX operator specs: https://onnx.ai/onnx/operators/).
"""
from __future__ import annotations

import os

import numpy as np

from ..atomic import atomic_write
from ..devices import to_cpu
from ._optional import require
from .table import UnsupportedLayerError, describe, entry_for

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "to_onnx", "export_onnx", "onnx_session", "run_onnx"]

DEFAULT_OPSET = 17   # ONNX 1.12 (2022): read by every current runtime
MIN_OPSET = 13       # the oldest opset whose operator versions the table's nodes are written for


class _Graph:
    """An ONNX graph under construction. The table's onnx functions add to it with :meth:`node`, :meth:`param`
    and :meth:`constant`; containers add their children with :meth:`emit`. Names are made unique."""

    def __init__(self, helper, numpy_helper, dtype):
        self._helper, self._numpy_helper = helper, numpy_helper
        self.dtype = dtype             # the model's float dtype, for constants the entries make
        self.nodes, self.initializers = [], []
        self._used = {"input", "output"}
        self._layer, self._prefix = None, ""

    def _name(self, hint):
        name, i = hint, 1
        while name in self._used:
            name, i = f"{hint}_{i}", i + 1
        self._used.add(name)
        return name

    def _initializer(self, hint, value):
        name = self._name(hint)
        self.initializers.append(self._numpy_helper.from_array(np.asarray(value, order="C"), name))
        return name

    def param(self, key) -> str:
        """An initializer holding the current layer's parameter or buffer `key`, named by its gpucnn name."""
        arrays = {**self._layer.params, **self._layer.buffers}
        return self._initializer(self._prefix + key, to_cpu(arrays[key]))

    def constant(self, value, hint) -> str:
        """An initializer holding `value` (a numpy array), named after the current layer and `hint`."""
        return self._initializer(f"{self._prefix}{hint}", np.asarray(value))

    def node(self, op, inputs, **attributes) -> str:
        """Add one `op` node; returns its (single) output's name."""
        out = self._name(f"{self._prefix}{op}")
        self.nodes.append(self._helper.make_node(op, list(inputs), [out], name=out, **attributes))
        return out

    def emit(self, layer, x, shape, prefix=""):
        """Add `layer`, placed at `prefix` below the current layer, for input `x` of `shape`; returns (output
        name, output shape). Raises UnsupportedLayerError for a layer ONNX cannot express."""
        where = self._prefix + prefix
        entry = entry_for(layer, where)
        if entry.onnx is None:
            raise UnsupportedLayerError(f"{describe(layer, where)}: ONNX cannot express {type(layer).__name__}: "
                                        f"{entry.no_onnx}")
        out_shape = layer.output_shape(shape)
        outer = self._layer, self._prefix
        self._layer, self._prefix = layer, where
        try:
            return entry.onnx(layer, self, x, tuple(shape)), out_shape
        finally:
            self._layer, self._prefix = outer


def _model_dtype(model):
    dtypes = {np.dtype(v.dtype) for v in (*model.params.values(), *model.buffers.values())}
    if len(dtypes) > 1:
        raise ValueError(f"export_onnx: the model mixes dtypes {sorted(str(d) for d in dtypes)}; ONNX needs one")
    dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"export_onnx: expected float32 or float64 parameters, got {dtype}")
    return dtype


def _shape_arg(input_shape):
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise ValueError(f"export_onnx: input_shape must be the shape of one input batch, positive ints with the "
                         f"batch dimension first (e.g. (1, 1, 28, 28)), got {input_shape!r}")
    return tuple(int(v) for v in shape)


def to_onnx(model, input_shape, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, metadata=None):
    """The model as an onnx.ModelProto, checked by ``onnx.checker`` (full check, with shape inference).

    input_shape: one batch's shape, batch first, e.g. (1, 1, 28, 28); the model must take it (its
    output_shape raises ValueError otherwise). opset: MIN_OPSET (13) to the installed onnx's newest.
    dynamic_batch: name the batch dimension ``batch`` (any size) instead of fixing it. metadata: {str: str}
    stored in the model's metadata_props.

    Raises MissingDependencyError (onnx not installed: extra ``onnx``), UnsupportedLayerError naming a layer ONNX
    or the table cannot express, ValueError for a bad shape, opset or dtype.
    """
    onnx = require("onnx", "onnx", "gpucnn.interop.export_onnx")
    from onnx import helper, numpy_helper
    from .. import __version__
    shape = _shape_arg(input_shape)
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"export_onnx: opset must be an int from {MIN_OPSET} to {newest} (the installed onnx "
                         f"{onnx.__version__}'s newest), got {opset!r}")
    dtype = _model_dtype(model)
    graph = _Graph(helper, numpy_helper, dtype)
    out, out_shape = graph.emit(model, "input", shape)
    graph.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
    batch = "batch" if dynamic_batch else shape[0]
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    proto_graph = helper.make_graph(
        graph.nodes, type(model).__name__,
        [helper.make_tensor_value_info("input", elem, [batch, *shape[1:]])],
        [helper.make_tensor_value_info("output", elem, [batch, *out_shape[1:]])], graph.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(proto_graph, opset_imports=opsets, producer_name="gpucnn",
                              producer_version=__version__, ir_version=helper.find_min_ir_version_for(opsets))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, input_shape, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                metadata=None) -> str:
    """Write the model as an ONNX file at `path` (atomically); see :func:`to_onnx` for the arguments and errors.
    Returns the path."""
    proto = to_onnx(model, input_shape, opset=opset, dynamic_batch=dynamic_batch, metadata=metadata)
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return path


def onnx_session(path):
    """An onnxruntime InferenceSession of an ONNX file on the CPU (extra ``onnxruntime``); ValueError naming the
    file when onnxruntime cannot load it."""
    ort = require("onnxruntime", "onnxruntime", "running an ONNX model")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model {path}: no such file")
    try:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:   # onnxruntime raises its own classes (Fail, InvalidGraph, InvalidProtobuf)
        raise ValueError(f"ONNX model {path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None


def run_onnx(session, x) -> np.ndarray:
    """The output of an ONNX model (a session from :func:`onnx_session`, or a path) for input `x` (a host array
    of the model's input dtype and shape)."""
    if not hasattr(session, "run"):
        session = onnx_session(session)
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(to_cpu(x))})[0]
