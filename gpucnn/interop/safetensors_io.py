"""A model's weights as a safetensors file (extra ``safetensors``; format: https://huggingface.co/docs/safetensors),
under gpucnn's names ("0.W", Affine W as (in, out)) or PyTorch's ("0.weight", layouts of the twin), so that
``safetensors.torch.load_file`` gives a state_dict the PyTorch twin loads with strict=True.
"""
from __future__ import annotations

import os

import numpy as np

from ..atomic import atomic_write
from ..layers.base import state_mismatch
from ._optional import require
from .pytorch import IncompatibleKeys, StateDictError, load_torch_state_dict, to_torch_state_dict

__all__ = ["NAMES", "save_safetensors", "read_safetensors", "load_safetensors"]

NAMES = ("gpucnn", "torch")
NAMES_KEY = "gpucnn.names"   # metadata entry recording which names a file uses


def _names_arg(names, what):
    if names not in NAMES:
        raise ValueError(f"{what}: names must be one of {', '.join(map(repr, NAMES))}, got {names!r}")
    return names


def save_safetensors(model, path, names: str = "gpucnn", metadata=None) -> str:
    """Write the model's parameters and buffers to a safetensors file at `path` (atomically); returns the path.

    names: "gpucnn" (``model.state_dict()``) or "torch" (:func:`~gpucnn.interop.to_torch_state_dict`, with
    metadata ``format: pt`` as ``safetensors.torch`` writes). metadata: {str: str} stored in the header, beside
    ``gpucnn.names``. Raises MissingDependencyError (extra ``safetensors``), ValueError for unknown names, and
    UnsupportedLayerError (names="torch") for a layer the table does not know.
    """
    st = require("safetensors.numpy", "safetensors", "gpucnn.interop.save_safetensors")
    _names_arg(names, "save_safetensors")
    state = model.state_dict() if names == "gpucnn" else to_torch_state_dict(model)
    header = {**{str(k): str(v) for k, v in (metadata or {}).items()}, NAMES_KEY: names,
              "format": "pt" if names == "torch" else "np"}
    data = st.save({k: np.asarray(v, order="C") for k, v in state.items()}, metadata=header)
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(data))
    return path


def read_safetensors(path) -> tuple[dict, dict]:
    """(tensors as numpy arrays, header metadata) of a safetensors file; FileNotFoundError or ValueError naming
    the file when it is missing or not a readable safetensors file."""
    st = require("safetensors", "safetensors", "gpucnn.interop.load_safetensors")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file {path}: no such file")
    try:
        with st.safe_open(path, framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:   # SafetensorError (not an OSError or ValueError), or numpy refusing a dtype
        raise ValueError(f"safetensors file {path}: cannot be read ({type(e).__name__}: {e})") from None


def load_safetensors(model, path, names: str | None = None, strict: bool = True) -> IncompatibleKeys:
    """Load a safetensors file written by :func:`save_safetensors` (or by ``safetensors.torch.save_file`` from a
    twin's state_dict) into the model's arrays, keeping their device and dtype.

    names: "gpucnn", "torch", or None to take the file's ``gpucnn.names`` entry (files without one: gpucnn names
    if every key is one of the model's, else PyTorch names). strict as in
    :func:`~gpucnn.interop.load_torch_state_dict`; nothing is changed unless everything fits. Raises StateDictError
    naming the file and every missing key, unexpected key and shape mismatch; FileNotFoundError/ValueError for an
    unreadable file; MissingDependencyError (extra ``safetensors``). Returns IncompatibleKeys.
    """
    path = os.fspath(path)
    state, header = read_safetensors(path)
    ours = {**model.params, **model.buffers}
    if names is None:
        names = header.get(NAMES_KEY) or ("gpucnn" if set(state) <= set(ours) else "torch")
    if _names_arg(names, f"load_safetensors({path})") == "torch":
        return load_torch_state_dict(model, state, strict=strict, where=f"safetensors file {path}")
    problem = state_mismatch({k: v.shape for k, v in ours.items()}, state, strict)
    if problem:
        raise StateDictError(f"safetensors file {path}: the state does not fit the model "
                             f"({type(model).__name__}): {problem}")
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in state.items() if k in ours}})
    return IncompatibleKeys([k for k in ours if k not in state], [k for k in state if k not in ours])
