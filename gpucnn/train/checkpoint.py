"""Training checkpoints: one ``.npz`` file written atomically, read back with every problem named.

Layout (no pickles, so loading never runs code): ``__format__`` (int version), ``__meta__`` (a JSON
string: model name and constructor kwargs, epoch, global step, host RNG state, run configuration,
metrics history, the optimizer state's skeleton, and ``data``: class names, image shape and the
normalisation the model was trained with), ``model/<key>`` (the model's state_dict) and ``optim/<n>``
(the arrays of the optimizer state, referenced from the skeleton, numbered in the state's order).

The same contents give the same bytes: np.savez dates every zip member 1980-01-01 (zipfile's default, not
the time of writing), and every name and order comes from the run, never from set iteration or hashing.

A write goes to a temporary file in the same directory, is flushed and fsynced, then renamed over the
old checkpoint (``os.replace`` is atomic) and the directory is fsynced: a crash at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ..atomic import atomic_write as _atomic_write
from ..devices import to_cpu

FORMAT_VERSION = 1
_TEMP_PREFIX = ".gpucnn-ckpt-"
_TEMP_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, of another format version, or does not fit the model."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file."""
    path: str
    version: int
    model_name: str
    model_kwargs: dict
    model_state: dict
    optim_state: dict | None
    epoch: int
    step: int
    rng_state: dict | None
    config: dict
    history: list = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def check_model(self, model):
        """Raise CheckpointError unless the model's state_dict has exactly this checkpoint's keys and shapes."""
        check_state(f"{self.path} ({self.model_name} {self.model_kwargs})", self.model_state, model.state_dict())

    def load_into(self, model):
        """Check the state fits the model, then load it."""
        self.check_model(model)
        model.load_state_dict(self.model_state)
        return model


# ----------------------------------------------------------------------------------------------- save

def save(path, *, model_name: str, model_kwargs: dict, model_state: dict, optim_state: dict | None = None,
         epoch: int = 0, step: int = 0, rng_state: dict | None = None, config: dict | None = None,
         history: list | None = None, data: dict | None = None) -> str:
    """Write a checkpoint atomically to `path` (see the module docstring); returns the path."""
    path = os.fspath(path)
    arrays = {f"model/{k}": np.ascontiguousarray(to_cpu(v)) for k, v in model_state.items()}
    optim_arrays: dict = {}
    meta = {
        "model_name": model_name,
        "model_kwargs": _jsonable(model_kwargs),
        "epoch": int(epoch),
        "step": int(step),
        "rng_state": _jsonable(rng_state),
        "config": _jsonable(config or {}),
        "history": _jsonable(history or []),
        "optim": _encode(optim_state, optim_arrays) if optim_state is not None else None,
        "data": _jsonable(data or {}),
    }
    arrays.update(optim_arrays)
    arrays["__format__"] = np.array(FORMAT_VERSION, dtype=np.int64)
    arrays["__meta__"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def atomic_write(path, write):
    """Call write(file) on a temp file next to `path`, fsync it, rename it over `path`, fsync the directory."""
    _atomic_write(path, write, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)


def remove_stale_temps(directory) -> int:
    """Delete temp files a killed writer left in `directory`; returns how many were removed."""
    n = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
            try:
                os.unlink(os.path.join(directory, name))
                n += 1
            except FileNotFoundError:
                pass
    return n


# ----------------------------------------------------------------------------------------------- load

def load(path, model=None) -> Checkpoint:
    """Read and validate a checkpoint; with `model`, also check it fits and load the weights into it.

    Every problem (missing, truncated, corrupt, other format version, wrong model) raises CheckpointError
    whose message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a directory, expected a checkpoint .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}  # reads every member now, so CRC errors surface here
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"checkpoint {path}: truncated or corrupt file, cannot be read "
                              f"({type(e).__name__}: {e})") from None
    for key in ("__format__", "__meta__"):
        if key not in data:
            raise CheckpointError(f"checkpoint {path}: not a gpucnn checkpoint (missing {key!r})")
    try:
        version = int(data["__format__"])
    except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path}: unreadable format version {data['__format__']!r}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version}, but this gpucnn reads version "
                              f"{FORMAT_VERSION}; retrain or use the gpucnn version that wrote it")
    try:
        meta = json.loads(str(data["__meta__"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: corrupt metadata ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: corrupt metadata, expected a JSON object, "
                              f"got {type(meta).__name__}")
    required = ("model_name", "model_kwargs", "epoch", "step", "rng_state", "config", "optim")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path}: corrupt metadata, missing {', '.join(missing)}")
    types = {"model_name": str, "model_kwargs": dict, "epoch": int, "step": int, "config": dict,
             "history": list, "rng_state": (dict, type(None)), "optim": (dict, type(None)), "data": dict}
    wrong = [k for k, t in types.items() if k in meta and not isinstance(meta[k], t)]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: corrupt metadata, {', '.join(wrong)} of the wrong type")
    model_state = {k[len("model/"):]: v for k, v in data.items() if k.startswith("model/")}
    if not model_state:
        raise CheckpointError(f"checkpoint {path}: holds no model weights")
    optim_arrays = {k: v for k, v in data.items() if k.startswith("optim/")}
    try:
        optim_state = _decode(meta["optim"], optim_arrays) if meta["optim"] is not None else None
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path}: optimizer state is missing array {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: corrupt optimizer state ({e})") from None
    ckpt = Checkpoint(path=path, version=version, model_name=meta["model_name"],
                      model_kwargs=meta["model_kwargs"], model_state=model_state, optim_state=optim_state,
                      epoch=int(meta["epoch"]), step=int(meta["step"]), rng_state=meta["rng_state"],
                      config=meta["config"], history=meta.get("history") or [], data=meta.get("data") or {})
    if model is not None:
        ckpt.load_into(model)
    return ckpt


def check_state(where: str, saved: dict, expected: dict):
    """CheckpointError naming the file (`where`) unless `saved` has the keys and shapes of `expected`."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    wrong = [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(expected[k].shape)}"
             for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
    if not (missing or extra or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing {_short(missing)}")
    if extra:
        parts.append(f"unexpected {_short(extra)}")
    if wrong:
        parts.append(f"shape mismatch {_short(wrong)}")
    raise CheckpointError(f"checkpoint {where} does not fit the model: {'; '.join(parts)}")


def _short(items, n=4):
    text = ", ".join(items[:n])
    return text + (f" and {len(items) - n} more" if len(items) > n else "")


# ------------------------------------------------------------------------- nested state <-> npz + JSON

def _encode(obj, arrays: dict):
    """A JSON skeleton of a nested dict/list state; its arrays go to `arrays` as optim/<n>."""
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
        return {k: _encode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy, cupy or emulated array
        name = f"optim/{len(arrays)}"
        arrays[name] = np.ascontiguousarray(to_cpu(obj))
        return {"__array__": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj, arrays: dict):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__items__"}:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__items__"]}
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def _jsonable(obj):
    """obj with numpy scalars and tuples made JSON-native (arrays are not expected here)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
