"""PyTorch names and layouts: state dicts both ways, and the PyTorch twin of any gpucnn model.

The correspondence itself (which module, which names, which layout) is the table in
:mod:`gpucnn.interop.table`; this module walks a model through it. Only :func:`torch_twin` needs torch (extra
``torch``); state dicts come and go as numpy arrays, and torch tensors are taken as they are.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..devices import device_of, to_cpu, to_device
from ..layers.base import state_mismatch
from ._optional import require
from .table import entry_for, walk

__all__ = ["StateDictError", "IncompatibleKeys", "to_torch_state_dict", "load_torch_state_dict", "torch_names",
           "convert_to_torch", "torch_twin"]


class StateDictError(ValueError):
    """A state dict that does not fit the model: every missing key, unexpected key and shape mismatch is named."""


class IncompatibleKeys(NamedTuple):
    """What a non-strict load left out, as PyTorch's load_state_dict returns it (PyTorch names)."""
    missing_keys: list
    unexpected_keys: list


@dataclass(frozen=True)
class _Slot:
    """One entry of the twin's state_dict: its PyTorch name, and the gpucnn name it comes from (None for state
    only PyTorch keeps, then `value` is what is written)."""
    theirs: str
    ours: str | None
    transpose: bool = False
    value: np.ndarray | None = None


def _slots(model) -> list:
    """The twin's state_dict entries in its order (each module's parameters, then its buffers, then children)."""
    slots = []
    for ours, theirs, layer, entry in walk(model):
        own = {**layer.params, **layer.buffers} if entry.children is None else {}
        slots += [_Slot(theirs + t.theirs, ours + t.ours, t.transpose) for t in entry.tensors if t.ours in own]
        slots += [_Slot(theirs + t.theirs, None, value=t.value(layer)) for t in entry.torch_only]
    return slots


def _theirs(array, slot):
    return np.ascontiguousarray(array.T) if slot.transpose else np.array(array)


def torch_names(model) -> dict:
    """{gpucnn name: PyTorch name} of every parameter and buffer ("3.0.W" -> "3.0.weight", "1.gamma" ->
    "1.weight"). Raises UnsupportedLayerError for a layer the table does not know."""
    return {s.ours: s.theirs for s in _slots(model) if s.ours is not None}


def convert_to_torch(model, arrays: Mapping) -> dict:
    """`arrays` keyed by gpucnn names (model.params, model.grads, model.buffers, or any subset) as host numpy
    copies keyed by PyTorch names, in PyTorch's layouts (Affine's (in, out) W becomes (out, in))."""
    return {s.theirs: _theirs(to_cpu(arrays[s.ours]), s) for s in _slots(model)
            if s.ours is not None and s.ours in arrays}


def to_torch_state_dict(model) -> dict:
    """The model's parameters and buffers as PyTorch's state_dict of its twin: host numpy copies (the layer's
    dtype) keyed by PyTorch names, in PyTorch's layouts and order, including ``num_batches_tracked`` (int64, 0-d,
    0: see :mod:`gpucnn.interop.table`). ``torch.load``-free: pass it to ``module.load_state_dict`` after
    ``torch.from_numpy`` of each value, or use :func:`torch_twin`.

    Raises UnsupportedLayerError for a layer the table does not know."""
    arrays = {**model.params, **model.buffers}
    return {s.theirs: (s.value.copy() if s.ours is None else _theirs(to_cpu(arrays[s.ours]), s))
            for s in _slots(model)}


def _host_array(value):
    """A numpy array of a state dict value: numpy, cupy, emulated, or a torch tensor on any device (detached; a
    dtype numpy lacks, such as bfloat16, is widened to float32, exactly)."""
    if type(value).__module__.split(".")[0] == "torch":
        t = value.detach().cpu()
        try:
            return t.numpy()
        except TypeError:
            return t.float().numpy()
    return np.asarray(to_cpu(value))


def load_torch_state_dict(model, state_dict, strict: bool = True, where: str = "") -> IncompatibleKeys:
    """Load a PyTorch state dict (names and layouts of the model's twin, see :mod:`gpucnn.interop.table`) into the
    model's existing arrays, keeping their device and dtype.

    state_dict: a mapping of PyTorch names to torch tensors (any device, detached here) or numpy arrays.
    strict: every twin key must be there and nothing else (``num_batches_tracked`` may be absent); with
    strict=False missing and unexpected keys are skipped and returned. Shapes must match either way.
    Nothing is changed unless everything fits. Raises StateDictError naming every missing key, unexpected key and
    shape mismatch (`where`, e.g. a file name, prefixes the message), TypeError for a non-mapping, and
    UnsupportedLayerError for a layer the table does not know. Returns IncompatibleKeys (PyTorch names).
    """
    if not isinstance(state_dict, Mapping):
        hint = " (a module: pass module.state_dict())" if hasattr(state_dict, "state_dict") else ""
        raise TypeError(f"load_torch_state_dict: expected a mapping of names to tensors or arrays, got "
                        f"{type(state_dict).__name__}{hint}")
    slots = _slots(model)
    targets = {**model.params, **model.buffers}
    expected = {s.theirs: (s.value.shape if s.ours is None else _theirs_shape(targets[s.ours].shape, s))
                for s in slots}
    optional = {s.theirs for s in slots if s.ours is None}
    problem = state_mismatch(expected, state_dict, strict, optional)
    not_ints = [s.theirs for s in slots if s.ours is None and s.theirs in state_dict
                and _host_array(state_dict[s.theirs]).dtype.kind not in "iu"]
    if not_ints:
        problem = ", ".join(filter(None, [problem, f"non-integer values for {not_ints}"]))
    if problem:
        prefix = f"{where}: " if where else ""
        raise StateDictError(f"{prefix}the PyTorch state dict does not fit the model "
                             f"({type(model).__name__}): {problem}")
    values = {s.ours: _host_array(state_dict[s.theirs]) for s in slots if s.ours is not None and s.theirs in state_dict}
    for s in slots:
        if s.ours in values:
            target = targets[s.ours]
            value = values[s.ours].T if s.transpose else values[s.ours]
            target[...] = to_device(np.asarray(value, dtype=target.dtype), device_of(target))
    return IncompatibleKeys([k for k in expected if k not in state_dict and k not in optional],
                            [k for k in state_dict if k not in expected])


def _theirs_shape(shape, slot):
    return tuple(shape)[::-1] if slot.transpose else tuple(shape)


def torch_twin(model):
    """The PyTorch equivalent of a gpucnn model (any model built from the layers in :mod:`gpucnn.interop.table`,
    not only the zoo), on the CPU, with the model's weights and buffers copied in (strict), each module in its
    layer's mode (``training``) and dtype. Same input, same output: ``twin(torch.from_numpy(x))`` computes
    ``model(x)``.

    Needs torch (extra ``torch``: MissingDependencyError otherwise); raises UnsupportedLayerError for a layer the
    table does not know.
    """
    require("torch", "torch", "gpucnn.interop.torch_twin")
    from . import _torch_modules as t
    module = _build(model, "", t)
    module.load_state_dict({k: t.torch.from_numpy(v) for k, v in to_torch_state_dict(model).items()}, strict=True)
    return module


def _build(layer, where, t):
    entry = entry_for(layer, where)
    children = [_build(child, where + ours, t) for ours, _, child in entry.children(layer)] if entry.children else []
    module = entry.torch(layer, t, children)
    if entry.children is None:
        dtypes = {np.dtype(v.dtype) for v in (*layer.params.values(), *layer.buffers.values())}
        if dtypes == {np.dtype(np.float64)}:
            module.double()
    module.training = layer.training   # this module only: its children carry their own layers' modes
    return module
