"""The ``gpucnn`` command: ``train``, ``eval``, ``bench``, ``info``, ``models`` and ``export``
(:mod:`gpucnn.cli_interop`, which also runs ``eval --onnx``).

Mistakes a user can make (bad options, missing data, a corrupt checkpoint, no GPU for ``--device cuda``, a
run that diverges; ValueError, OSError and the library's own errors) end with one line ``gpucnn: error: ...`` on stderr and exit code 2; set GPUCNN_DEBUG=1
to see their traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become a UsageError (one line, no usage dump) instead of exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog.replace('gpucnn ', '', 1) + ': ' if ' ' in self.prog else ''}{message}")


def _user_errors() -> tuple:
    from . import train
    from .train import checkpoint
    from .devices import CudaUnavailableError
    from .interop import MissingDependencyError
    # TypeError is not here: command-line input arrives as strings, so a TypeError is a bug (traceback).
    errors = [UsageError, CudaUnavailableError, checkpoint.CheckpointError, train.NumericalFaultError,
              ValueError, OSError, MissingDependencyError]
    try:
        from .data import DatasetError
        errors.append(DatasetError)
    except ImportError:
        pass
    return tuple(errors)


# ----------------------------------------------------------------------------------------------- parser

def _model_name(text):
    """A model name in any spelling models.get takes ('LeNet-5'); unknown ones are left for argparse's choices."""
    from . import models
    try:
        return models.canonical_name(text)
    except ValueError:
        return text


def _bench_model_name(text):
    """A network name in any spelling bench takes ('AlexNet-style')."""
    from . import bench
    try:
        return bench.canonical_name(text)
    except ValueError:
        return text


def _build_parser() -> argparse.ArgumentParser:
    from . import bench, cli_interop, models, optim
    from .train import NONFINITE_MODES, TrainConfig
    d = TrainConfig()
    parser = _Parser(prog="gpucnn", description="Train and evaluate convolutional networks on the CPU or a "
                                                "CUDA GPU (numpy / cupy).")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,bench,info,models,export}",
                                parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (defaults: LeNet-5 on Fashion-MNIST)",
                       description="Train a model; --resume continues the run in --out from its checkpoint.")
    t.add_argument("--model", type=_model_name, choices=models.names(), help=f"model (default {d.model})")
    t.add_argument("--dataset", help=f"dataset name (default {d.dataset})")
    t.add_argument("--data-dir", help="directory holding the dataset files (default: the dataset's standard "
                                      "locations)")
    t.add_argument("--epochs", type=int, help=f"total number of epochs (default {d.epochs})")
    t.add_argument("--batch-size", type=int, help=f"training batch size (default {d.batch_size})")
    t.add_argument("--optimizer", choices=optim.names(), help=f"optimizer (default {d.optimizer})")
    t.add_argument("--lr", type=float, help=f"base learning rate (default {d.lr:g})")
    t.add_argument("--weight-decay", type=float,
                   help="weight decay (default: 0.05 for adamw, whose decay is decoupled; 0 for the others)")
    t.add_argument("--schedule", choices=optim.schedule_names(),
                   help=f"learning-rate schedule over the run (default {d.schedule})")
    t.add_argument("--warmup", type=int, help="linear learning-rate warm-up over this many steps (default 0)")
    t.add_argument("--clip", type=float, help="clip the global gradient norm to this value (default: no clipping)")
    t.add_argument("--augment", action="store_true", default=None,
                   help="random crops and flips of the training images")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N or emulated (default: $GPUCNN_DEVICE, else auto: "
                                    "the GPU if usable, otherwise the CPU)")
    t.add_argument("--seed", type=int, help=f"random seed: weights, data order, dropout (default {d.seed})")
    t.add_argument("--out", help="output directory for metrics.jsonl, checkpoint.npz and the pictures "
                                 "(default runs/<model>-<dataset>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, up to "
                                                         "--epochs in total")
    t.add_argument("--limit-train", type=int, metavar="N", help="train on the first N training images only")
    t.add_argument("--limit-test", type=int, metavar="N", help="evaluate on the first N test images only")
    t.add_argument("--on-nonfinite", choices=NONFINITE_MODES,
                   help="on a NaN/inf loss or gradient: stop with an error (default) or skip the step")
    t.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="fail instead of downloading a dataset that is not found locally")
    t.add_argument("--log-every", type=float, metavar="SECONDS",
                   help="seconds between progress updates (default 0.25 on a terminal, 10 otherwise)")

    e = sub.add_parser("eval", help="evaluate a checkpoint (or an exported ONNX file) on the test split",
                       description="Test accuracy and confusion matrix of a saved model.")
    model_source = e.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--checkpoint", help="a checkpoint.npz written by gpucnn train")
    cli_interop.add_eval_onnx_argument(model_source)
    e.add_argument("--data-dir", help="directory holding the dataset files")
    e.add_argument("--device", help="auto, cpu, cuda, cuda:N or emulated")
    e.add_argument("--limit-test", type=int, metavar="N", help="evaluate on the first N test images only")
    e.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")

    b = sub.add_parser("bench", help="images per second of training and inference steps, or device ops per step",
                       description="Time training steps (forward, backward, SGD-momentum update) and inference on random "
                                   "data already on the device, after a warm-up; CUDA events on a GPU. Kernels are "
                                   "compiled before timing, and their compile time is reported apart. With "
                                   "--count-ops: the device operations of a training step, counted on the emulated "
                                   "device, per layer.")
    b.add_argument("--model", type=_bench_model_name, choices=bench.names(),
                   help="network (default lenet5; with --count-ops, default both lenet5 at batch 128 and "
                        "alexnet_style at batch 32)")
    b.add_argument("--batch-size", type=int, help="batch size (default 128, or the reference cases' with --count-ops)")
    b.add_argument("--count-ops", action="store_true",
                   help="print device operations, host syncs and transfers per training step (on the emulated "
                        "device) instead of timing")
    b.add_argument("--device", help="auto, cpu, cuda, cuda:N or emulated")
    b.add_argument("--input-shape", metavar="CxHxW",
                   help="input shape (default 1x28x28 for lenet5/simple_convnet, else 3x32x32)")
    b.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")

    sub.add_parser("info", help="versions, devices, CUDA and kernel status")
    sub.add_parser("models", help="the models and their parameter counts")
    cli_interop.add_export_parser(sub)
    return parser


# ------------------------------------------------------------------------------------------------ train

_TRAIN_FIELDS = ("model", "dataset", "data_dir", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
                 "schedule", "warmup", "clip", "augment", "device", "seed", "out", "limit_train", "limit_test",
                 "on_nonfinite", "log_every", "download")


def _cmd_train(args) -> int:
    from . import train as T
    given = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    if args.resume:
        out = given.pop("out", None) or T.TrainConfig(**{k: v for k, v in given.items()
                                                          if k in ("model", "dataset")}).out_dir()
        cfg = T.resume_config(out, **given)
    else:
        cfg = T.TrainConfig(**given)
    result = T.train(cfg, log=lambda line: print(line, flush=True))
    if result["history"]:
        last = result["history"][-1]
        print(f"done: test accuracy {100 * last['test_acc']:.2f}% after epoch {last['epoch']}; "
              f"outputs in {result['out']}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------- eval

def _cmd_eval(args) -> int:
    if args.onnx is not None:
        from .cli_interop import cmd_eval_onnx
        return cmd_eval_onnx(args, confusion_table)
    from . import data, models
    from . import devices
    from .train import checkpoint
    from .train import evaluate, model_kwargs_for
    if args.limit_test is not None and args.limit_test < 1:
        raise UsageError(f"--limit-test must be a positive integer, got {args.limit_test}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}")
    ckpt = checkpoint.load(args.checkpoint)
    device = devices.get_device(args.device)
    dataset_name = ckpt.config.get("dataset")
    data_dir = args.data_dir or ckpt.config.get("data_dir")
    test_set = data.load_dataset(dataset_name, "test", data_dir=data_dir)
    kwargs = model_kwargs_for(test_set)
    if kwargs != ckpt.model_kwargs:
        raise checkpoint.CheckpointError(f"checkpoint {ckpt.path}: its model takes {ckpt.model_kwargs}, but the "
                                         f"{dataset_name} test images give {kwargs}")
    model = ckpt.load_into(models.get(ckpt.model_name, **ckpt.model_kwargs)).to(device)
    loader = data.DataLoader(test_set, batch_size=args.batch_size, shuffle=False, seed=0, normalize=True,
                             augment=False, device=device, drop_last=False, limit=args.limit_test)
    loss, acc, confusion = evaluate(model, loader)
    n = int(confusion.sum())
    print(f"{ckpt.model_name} from {ckpt.path} (epoch {ckpt.epoch}) on {dataset_name} test, {n} images, {device}")
    print(f"test accuracy {100 * acc:.2f}%  loss {loss:.4f}")
    print(confusion_table(confusion, list(test_set.classes)))
    return 0


def confusion_table(confusion, classes) -> str:
    """The confusion matrix as text: rows are true classes, columns predicted ones, with per-class recall."""
    k = len(confusion)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    width = max(5, len(str(int(confusion.max()))) + 1)
    label_w = max(len(n) for n in names) + 4
    head = " " * label_w + "".join(f"{i:>{width}}" for i in range(k)) + "  recall"
    lines = ["confusion matrix (rows: true class, columns: predicted class)", head]
    for i, name in enumerate(names):
        total = int(confusion[i].sum())
        recall = f"{100 * confusion[i, i] / total:6.1f}%" if total else "      -"
        lines.append(f"{i:>2} {name:<{label_w - 3}}" + "".join(f"{int(v):>{width}}" for v in confusion[i])
                     + "  " + recall)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ bench

def _cmd_bench(args) -> int:
    from . import bench
    size = channels = None
    if args.input_shape:
        parts = args.input_shape.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"--input-shape must look like 3x32x32 (channels x height x width), "
                             f"got {args.input_shape!r}")
        channels, size = int(parts[0]), (int(parts[1]), int(parts[2]))
    if args.count_ops:
        cases = ([(args.model or "lenet5", args.batch_size or 128)] if args.model or args.batch_size
                 else bench.REFERENCE_CASES)
        print("device ops per training step, counted on the emulated device (a model of CuPy 14.2's kernel "
              "launches, cuBLAS calls, copies and memsets; see README 'Counted device operations'); kernel "
              "compilation and the warm-up step are not counted")
        for model, batch in cases:
            print(bench.format_op_counts(bench.count_step_ops(model, batch, args.device or "emulated",
                                                              input_size=size, in_channels=channels)))
        return 0
    model, batch = args.model or "lenet5", args.batch_size or 128
    for train in (True, False):
        r = bench.benchmark(model, batch, args.device, steps=args.steps, warmup=args.warmup, train=train,
                            input_size=size, in_channels=channels)
        if train:
            print(f"kernel compilation: {r['compile_seconds']:.3f} s in this process, before timing "
                  f"(excluded from the figures below)" if r["device"] != "cpu" else
                  "kernel compilation: none on the CPU")
        print(bench.format_result(r))
    return 0


# ------------------------------------------------------------------------------------------ info, models

def _cmd_info(args) -> int:
    import numpy as np
    from . import __version__
    from . import devices
    print(f"gpucnn {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"numpy {np.__version__}")
    cp = devices.cupy_module()
    print(f"cupy {cp.__version__ if cp is not None else 'not installed'}")
    try:
        import matplotlib
        print(f"matplotlib {matplotlib.__version__}")
    except ImportError:
        print("matplotlib not installed (no curves.png / filters.png; pip install 'gpucnn[plots]')")
    ok, why = devices.cuda_status()
    print(f"CUDA: {'usable' if ok else 'not usable'}: {why}")
    names = ["cpu", "emulated", "emulated:1"]
    if ok:
        names += [f"cuda:{i}" for i in range(cp.cuda.runtime.getDeviceCount())]
    print(f"devices: {', '.join(names)}; auto -> {devices.get_device('auto')}")
    _print_kernels(devices.get_device("cuda:0" if ok else "emulated"))
    return 0


def _print_kernels(device):
    """Where the kernel sources are, and each one compiled now for `device` with its compile time (the CPU
    path needs no kernel: a failure is reported, not raised)."""
    from .devices import kernels
    try:
        info = kernels.info()
    except Exception as e:
        print(f"kernels: unavailable ({type(e).__name__}: {e})")
        return
    print(f"kernels: {len(info['sources'])} sources from the {info['source_origin']}, options "
          f"{' '.join(info['options'])}")
    names = {}
    for launcher, where in info["kernels"].items():
        names.setdefault(where.split(":")[0], []).append(launcher)
    how = ("NVRTC through cupy; a source found in CuPy's kernel cache (~/.cupy/kernel_cache) only loads"
           if device.kind == "cuda" else "g++ for the kernel emulator; builds are cached on disk")
    print(f"compiling every kernel for {device} ({how}):")
    for source in info["sources"]:
        try:
            seconds = kernels.compile_source(source, device)
            result = f"{seconds:.3f} s"
        except Exception as e:
            result = f"FAILED ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        print(f"  {source} ({', '.join(names.get(source, []))}): {result}")


def _cmd_models(args) -> int:
    from . import models
    shapes = ((1, 28), (3, 32))
    rows = [("model", *(f"params {c}x{s}x{s}" for c, s in shapes), "description")]
    for name in models.names():
        counts = []
        for c, s in shapes:
            try:
                counts.append(f"{models.get(name, in_channels=c, input_size=s, num_classes=10).num_params():,}")
            except ValueError:
                counts.append("-")
        doc = (models.MODELS[name].__doc__ or "").strip().splitlines()[0]
        rows.append((name, *counts, doc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:-1], widths[1:])] + [r[-1]]))
    print("(parameter counts for 10 classes)")
    return 0


# ------------------------------------------------------------------------------------------------- main

class _ConsoleHandler(logging.StreamHandler):
    """Notes (INFO) go to stdout with the run's other output, warnings and worse to stderr, so that stderr
    holds nothing but the one error line when a command fails; the stream is looked up at each record
    (tests swap sys.stdout and sys.stderr)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("gpucnn: %(message)s"))
        self._record_level = logging.INFO

    def emit(self, record):
        self._record_level = record.levelno
        super().emit(record)

    @property
    def stream(self):
        return sys.stdout if self._record_level < logging.WARNING else sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging():
    """The "gpucnn" logger at INFO on the console, so notes like the CPU fallback are seen."""
    logger = logging.getLogger("gpucnn")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())


def _cmd_export(args) -> int:
    from .cli_interop import cmd_export
    return cmd_export(args)


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "bench": _cmd_bench, "info": _cmd_info,
            "models": _cmd_models, "export": _cmd_export}


def main(argv=None) -> int:
    """Run the gpucnn command line; returns the exit code (0, or 2 for a user error)."""
    _setup_logging()
    user_errors = _user_errors()
    try:
        args = _build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError(f"choose a command: {', '.join(COMMANDS)} (see gpucnn --help)")
        return COMMANDS[args.command](args)
    except user_errors as e:
        if os.environ.get("GPUCNN_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"gpucnn: error: {message}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("gpucnn: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
