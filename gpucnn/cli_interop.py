"""The interop commands of ``gpucnn``: ``export`` (a checkpoint's model as ONNX, safetensors or a PyTorch state
dict) and ``eval --onnx`` (an exported ONNX file run by onnxruntime on the test split). :mod:`gpucnn.cli` adds
the arguments and calls these functions; errors are the library's own (ValueError, OSError,
MissingDependencyError), which the command line turns into one line and exit code 2.
"""
from __future__ import annotations

import json
import os

FORMATS = ("onnx", "safetensors", "torch")

# ONNX metadata_props written by `gpucnn export` and read by `gpucnn eval --onnx`
META_DATASET, META_DATA_DIR, META_MEAN, META_STD = "gpucnn.dataset", "gpucnn.data_dir", "gpucnn.mean", "gpucnn.std"


def add_export_parser(sub, name_type=str):
    """The ``export`` subcommand's parser, added to `sub` (argparse subparsers); `name_type` converts the values
    of --format and --names (gpucnn.cli passes its case-folding one: option values are case-insensitive)."""
    from .interop import DEFAULT_OPSET
    x = sub.add_parser("export", help="write a checkpoint's model as ONNX, safetensors or a PyTorch state dict",
                       description="Write the model of a checkpoint for other runtimes: an ONNX file (inference "
                                   "graph, batch size free; needs gpucnn[onnx]), a safetensors file "
                                   "(gpucnn[safetensors]) or a PyTorch state dict for torch.load (torch). PyTorch "
                                   "names and layouts are those of gpucnn.interop.torch_twin.")
    x.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by gpucnn train")
    x.add_argument("--format", required=True, type=name_type, choices=FORMATS, help="onnx, safetensors or torch")
    x.add_argument("--out", required=True, help="the file to write")
    x.add_argument("--names", type=name_type, choices=("gpucnn", "torch"), default="gpucnn",
                   help="safetensors: gpucnn's parameter names (0.W) or PyTorch's (0.weight) (default gpucnn)")
    x.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"onnx: opset version (default {DEFAULT_OPSET})")
    return x


def add_eval_onnx_argument(group):
    """``--onnx PATH`` for the eval subcommand (in the group that makes it the alternative to --checkpoint)."""
    group.add_argument("--onnx", metavar="PATH", help="an ONNX file written by gpucnn export: run it with "
                                                      "onnxruntime on the test split instead of a checkpoint")


def _checkpoint_model(path):
    from . import models
    from .train import checkpoint
    ckpt = checkpoint.load(path)
    if not ckpt.model_name:
        raise checkpoint.CheckpointError(f"checkpoint {ckpt.path}: does not name its model (it was trained from a "
                                         f"model object), so it cannot be rebuilt for export")
    return ckpt, ckpt.load_into(models.build(ckpt.model_name, **ckpt.model_kwargs))   # a zoo name or file.py:fn


def _onnx_metadata(ckpt) -> dict:
    """What `eval --onnx` needs to rebuild the test inputs: the dataset, where it was read, its normalisation."""
    from .data import DatasetError, dataset_spec
    meta = {"gpucnn.model": ckpt.model_name, "gpucnn.model_kwargs": json.dumps(ckpt.model_kwargs),
            "gpucnn.epoch": str(ckpt.epoch)}
    name = ckpt.config.get("dataset")
    if name:
        meta[META_DATASET] = name
        if ckpt.config.get("data_dir"):
            meta[META_DATA_DIR] = str(ckpt.config["data_dir"])
        if ckpt.data:          # the normalisation and classes the run recorded (any data set)
            meta[META_MEAN], meta[META_STD] = json.dumps(ckpt.data["mean"]), json.dumps(ckpt.data["std"])
            meta["gpucnn.preprocess"] = (f"(pixel / {ckpt.data['scale']:g} - mean) / std per channel, NCHW "
                                         f"float32")
            meta["gpucnn.classes"] = json.dumps(ckpt.data["classes"])
        else:
            try:
                spec = dataset_spec(name)
                meta[META_MEAN], meta[META_STD] = json.dumps(list(spec.mean)), json.dumps(list(spec.std))
                meta["gpucnn.preprocess"] = "(pixel / 255 - mean) / std per channel, NCHW float32"
                meta["gpucnn.classes"] = json.dumps(list(spec.classes))
            except DatasetError:
                pass
    if ckpt.history:
        meta["gpucnn.test_acc"] = str(ckpt.history[-1].get("test_acc"))
    return meta


def cmd_export(args) -> int:
    """``gpucnn export``: prints what was written."""
    from . import interop
    ckpt, model = _checkpoint_model(args.checkpoint)
    model.eval()
    out = os.fspath(args.out)
    if not out or os.path.isdir(out):
        raise ValueError(f"--out {out!r}: expected a file path")
    if args.format == "onnx":
        c, size = int(ckpt.model_kwargs["in_channels"]), ckpt.model_kwargs["input_size"]
        h, w = (int(v) for v in (size if isinstance(size, (list, tuple)) else (size, size)))
        interop.export_onnx(model, out, (1, c, int(h), int(w)), opset=args.opset, metadata=_onnx_metadata(ckpt))
        what = f"ONNX opset {args.opset}, input (batch, {c}, {h}, {w}) float32, output (batch, classes)"
    elif args.format == "safetensors":
        interop.save_safetensors(model, out, names=args.names)
        what = f"safetensors, {args.names} names"
    else:
        from .atomic import atomic_write
        from .interop._optional import require
        torch = require("torch", "torch", "gpucnn export --format torch")
        state = {k: torch.from_numpy(v) for k, v in interop.to_torch_state_dict(model).items()}
        atomic_write(out, lambda f: torch.save(state, f))
        what = "PyTorch state dict (torch.load, then torch_twin's load_state_dict)"
    print(f"wrote {out}: {ckpt.model_name} from {ckpt.path} (epoch {ckpt.epoch}) as {what}")
    return 0


class _OnnxModel:
    """An onnxruntime session behind the forward(x, train=False) that gpucnn.train.evaluate calls."""

    def __init__(self, session):
        from .interop import run_onnx
        self.session, self._run = session, run_onnx

    def forward(self, x, train=False):
        return self._run(self.session, x)


def cmd_eval_onnx(args, confusion_table) -> int:
    """``gpucnn eval --onnx PATH``: the same report as ``eval --checkpoint`` (accuracy, loss, confusion matrix,
    printed by `confusion_table`), computed by onnxruntime on the test split of the data set named in the file's
    metadata, or of --dataset (normalised as the file's metadata says); ValueError for --split or --model, which
    only eval --checkpoint takes, and for a data set whose images the file does not take."""
    from . import data, interop
    from .train import evaluate
    if args.device not in (None, "cpu"):
        raise ValueError(f"--device {args.device}: eval --onnx runs onnxruntime on the CPU")
    if args.limit_test is not None and args.limit_test < 1:
        raise ValueError(f"--limit-test must be a positive integer, got {args.limit_test}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    session = interop.onnx_session(args.onnx)
    meta = session.get_modelmeta().custom_metadata_map
    if META_DATASET not in meta:
        raise ValueError(f"ONNX model {args.onnx}: its metadata does not name the data set it was trained on "
                         f"({META_DATASET}); export it with gpucnn export --format onnx")
    for option, value in (("--split", None if args.split == "test" else args.split), ("--model", args.model)):
        if value is not None:
            raise ValueError(f"{option} {value}: eval --onnx scores the test split of the run's data set (or of "
                             f"--dataset) with the file's own graph; {option} applies to eval --checkpoint")
    own_data = args.dataset is not None and args.dataset != meta[META_DATASET]
    dataset = args.dataset if own_data else meta[META_DATASET]
    data_dir = args.data_dir or (None if own_data else meta.get(META_DATA_DIR))
    test_set = data.load_dataset(dataset, "test", data_dir=data_dir, download=args.download)
    want = tuple(d if isinstance(d, int) else None for d in session.get_inputs()[0].shape[1:])
    if any(w is not None and w != g for w, g in zip(want, test_set.image_shape)):
        raise ValueError(f"ONNX model {args.onnx}: takes {'x'.join(map(str, want))} images, but {dataset} has "
                         f"{'x'.join(map(str, test_set.image_shape))} images")
    norm = {k: json.loads(meta[m]) for k, m in (("mean", META_MEAN), ("std", META_STD)) if m in meta}
    loader = data.DataLoader(test_set, batch_size=args.batch_size, shuffle=False, seed=0, normalize=True,
                             augment=False, device="cpu", drop_last=False, limit=args.limit_test, **norm)
    loss, acc, confusion = evaluate(_OnnxModel(session), loader)
    n = int(confusion.sum())
    print(f"{meta.get('gpucnn.model', 'model')} from {args.onnx} (onnxruntime, epoch {meta.get('gpucnn.epoch', '?')})"
          f" on {test_set.name} test, {n} images, cpu")
    print(f"test accuracy {100 * acc:.2f}%  loss {loss:.4f}")
    print(confusion_table(confusion, list(test_set.classes)))
    return 0


__all__ = ["FORMATS", "add_export_parser", "add_eval_onnx_argument", "cmd_export", "cmd_eval_onnx"]
