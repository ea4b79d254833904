"""Interop: PyTorch names and twins, ONNX export, safetensors files and DLPack exchange.

- :mod:`.table`: the one table mapping each gpucnn layer type onto PyTorch (module, parameter names, layouts) and
  ONNX (nodes); a new layer type is one entry there.
- :mod:`.pytorch`: ``to_torch_state_dict``, ``load_torch_state_dict``, ``torch_names``, ``convert_to_torch`` and
  ``torch_twin`` (the PyTorch module computing what a gpucnn model computes).
- :mod:`.onnx_export`: ``export_onnx`` / ``to_onnx`` (inference graphs checked by onnx.checker) and
  ``onnx_session`` / ``run_onnx`` (onnxruntime).
- :mod:`.safetensors_io`: ``save_safetensors`` / ``load_safetensors`` with gpucnn's or PyTorch's names.
- ``from_dlpack``: another library's array (a torch tensor, a JAX array) as a gpucnn array without a copy; it
  lives in :mod:`gpucnn.devices.dlpack` because layers take such arrays too.

Importing this package needs numpy only. The optional packages are imported when a function needs them, and a
missing one raises MissingDependencyError naming the extra: ``torch`` (torch_twin), ``onnx`` (export),
``onnxruntime`` (running an export), ``safetensors``; ``pip install 'gpucnn[interop]'`` installs all four.
"""
from ..devices.dlpack import from_dlpack
from ._optional import MissingDependencyError
from .onnx_export import DEFAULT_OPSET, export_onnx, onnx_session, run_onnx, to_onnx
from .pytorch import (IncompatibleKeys, StateDictError, convert_to_torch, load_torch_state_dict, to_torch_state_dict,
                      torch_names, torch_twin)
from .safetensors_io import load_safetensors, read_safetensors, save_safetensors
from .table import TABLE, UnsupportedLayerError

__all__ = ["from_dlpack", "MissingDependencyError", "DEFAULT_OPSET", "export_onnx", "onnx_session", "run_onnx",
           "to_onnx", "IncompatibleKeys", "StateDictError", "convert_to_torch", "load_torch_state_dict",
           "to_torch_state_dict", "torch_names", "torch_twin", "load_safetensors", "read_safetensors",
           "save_safetensors", "TABLE", "UnsupportedLayerError"]
