"""The ``gpucnn`` command: ``train``, ``eval``, ``predict``, ``bench``, ``info``, ``models`` and ``export``
(``bench``, ``info`` and ``models`` live in :mod:`gpucnn.cli_inspect`; ``export`` and ``eval --onnx`` in
:mod:`gpucnn.cli_interop`).

Mistakes a user can make (bad options, missing data, a corrupt checkpoint, no GPU for ``--device cuda``, a
run that diverges; ValueError, OSError and the library's own errors) end with ``gpucnn: error: ...`` on
stderr (one line, or the message's own lines when it lists things) and exit code 2; set GPUCNN_DEBUG=1 to see
their traceback. Anything else is a bug and keeps its traceback.

``gpucnn train --distributed`` runs as one process of an MPI job (``mpiexec -n N gpucnn train --distributed
...``): process 0 prints and writes the run's files; an error of any process, or a collective that times out,
ends the whole job at once (MPI_Abort) with that process's line, ``gpucnn: error: process R of N: ...``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback

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
    from .distributed import DistributedError
    from .interop import MissingDependencyError
    # TypeError is not here: command-line input arrives as strings, so a TypeError is a bug (traceback).
    errors = [UsageError, CudaUnavailableError, checkpoint.CheckpointError, train.NumericalFaultError,
              ValueError, OSError, MissingDependencyError, DistributedError]
    try:
        from .data import DatasetError
        errors.append(DatasetError)
    except ImportError:
        pass
    return tuple(errors)


# ----------------------------------------------------------------------------------------------- parser

def _model_arg(text):
    """A zoo model in any spelling models.get takes ('LeNet-5'), or your own 'file.py:function' /
    'module:function' (checked when the run starts); an unknown zoo name is an error listing the choices."""
    from . import models
    if models.is_spec(text):
        return text
    try:
        return models.canonical_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(models.names())}, or "
                                         f"give your own as path/to/file.py:function or module:function)") from None


def _lower(text):
    return text.strip().lower()


def _dataset_help(default=None) -> str:
    from .data import DATASETS
    tail = f" (default {default})" if default else ""
    return (f"a built-in data set ({', '.join(DATASETS)}) or your own: a path to an .npz file (x_train, y_train[, "
            f"x_test, y_test]) or to a folder of PNG/JPEG images with one subfolder per class{tail}")


def _model_help(default=None) -> str:
    from . import models
    tail = f" (default {default})" if default else ""
    return f"{', '.join(models.names())}, or your own: path/to/file.py:function or module:function{tail}"


def _bench_model_name(text):
    """A network name in any spelling bench takes ('AlexNet-style')."""
    from . import bench
    try:
        return bench.canonical_name(text)
    except ValueError:
        return text


_PRECISION_HELP = ("fp32 (default), tf32 (float32 GEMMs on TF32 tensor cores) or bf16 (mixed precision: bfloat16 "
                   "GEMM operands, float32 weights, optimizer state and loss); tf32 and bf16 need a GPU "
                   "(cuda or emulated)")


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__, bench, cli_interop, optim
    from .devices.precision import PRECISIONS
    from .train import NONFINITE_MODES, TrainConfig
    from .train.metrics import SELECT
    d = TrainConfig()
    parser = _Parser(prog="gpucnn", description="Train and evaluate convolutional networks on the CPU or a "
                                                "CUDA GPU (numpy / cupy).")
    parser.add_argument("--version", action="version", version=f"gpucnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (defaults: LeNet-5 on Fashion-MNIST)",
                       description="Train a model on a data set; --resume continues the run in --out from its "
                                   "checkpoint. Names (models, optimizers, schedules, ...) may be given in any case.")
    t.add_argument("--model", type=_model_arg, metavar="MODEL", help=_model_help(d.model))
    t.add_argument("--dataset", metavar="DATA", help=_dataset_help(d.dataset))
    t.add_argument("--data-dir", help="directory holding a built-in data set's files (default: the data set's "
                                      "standard locations)")
    t.add_argument("--epochs", type=int, help=f"total number of epochs (default {d.epochs})")
    t.add_argument("--batch-size", type=int, help=f"training batch size (default {d.batch_size})")
    t.add_argument("--optimizer", type=_lower, choices=optim.names(), help=f"optimizer (default {d.optimizer})")
    t.add_argument("--lr", type=float, help=f"base learning rate (default {d.lr:g})")
    t.add_argument("--weight-decay", type=float,
                   help="weight decay (default: 0.05 for adamw, whose decay is decoupled; 0 for the others); "
                        "not applied to biases and normalisation parameters (1-D ones) unless --decay-all")
    t.add_argument("--decay-all", action="store_true", default=None,
                   help="apply weight decay to every parameter, biases and normalisation parameters included")
    t.add_argument("--schedule", type=_lower, choices=optim.schedule_names(),
                   help=f"learning-rate schedule over the run (default {d.schedule})")
    t.add_argument("--warmup", type=int, help="linear learning-rate warm-up over this many steps (default 0)")
    t.add_argument("--clip", type=float, help="clip the global gradient norm to this value (default: no clipping)")
    t.add_argument("--augment", action="store_true", default=None,
                   help="random crops and flips of the training images")
    t.add_argument("--label-smoothing", type=float, metavar="EPS",
                   help="label smoothing of the loss: targets 1 - EPS on the label plus EPS / classes on every "
                        "class, as PyTorch's CrossEntropyLoss (default 0)")
    t.add_argument("--val-split", type=float, metavar="F",
                   help="hold out this fraction of the training images (drawn with --seed) as validation data: "
                        "metrics report it, best.npz keeps the best epoch, and the test split is scored once "
                        "at the end")
    t.add_argument("--early-stop", type=int, metavar="N",
                   help="stop after N epochs without improvement of the validation metric (needs validation data)")
    t.add_argument("--select", type=_lower, choices=tuple(SELECT),
                   help="the validation metric that picks the best epoch: loss (lowest, default) or acc (highest)")
    t.add_argument("--test-every-epoch", action="store_true", default=None,
                   help="with validation data, score the test split after every epoch too")
    t.add_argument("--eval-every", type=int, metavar="N",
                   help="score the validation data (or the test split) after every N-th epoch and after the last "
                        "one only (default 1: every epoch); evaluation takes a few seconds an epoch on a CPU")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N or emulated (default: $GPUCNN_DEVICE, else auto: "
                                    "the GPU if usable, otherwise the CPU)")
    t.add_argument("--precision", type=_lower, choices=PRECISIONS, help=_PRECISION_HELP)
    t.add_argument("--seed", type=int, help=f"random seed: weights, data order, dropout (default {d.seed})")
    t.add_argument("--out", help="run folder for config.json, metrics.jsonl, checkpoint.npz, best.npz and the "
                                 "pictures (default runs/<model>-<dataset>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, up to "
                                                         "--epochs in total")
    t.add_argument("--overwrite", action="store_true", default=None,
                   help="delete the run already in --out and start over")
    t.add_argument("--limit-train", type=int, metavar="N", help="train on the first N training images only")
    t.add_argument("--limit-test", type=int, metavar="N", help="evaluate on the first N test images only")
    t.add_argument("--on-nonfinite", type=_lower, choices=NONFINITE_MODES,
                   help="on a NaN/inf loss or gradient: stop with an error (default) or skip the step")
    t.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="fail instead of downloading a dataset that is not found locally")
    t.add_argument("--log-every", type=float, metavar="SECONDS",
                   help="seconds between progress updates (default 0.25 on a terminal, 10 otherwise)")
    t.add_argument("--distributed", action="store_true", default=None,
                   help="data-parallel training: run as one process of an MPI job (mpiexec -n N gpucnn train "
                        "--distributed ...); --batch-size is the global batch, each process trains on its share; "
                        "one process per GPU (cuda:<its rank on the machine>); process 0 writes the run folder")
    t.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="with --distributed: end the job when a process waits this long for the others in a "
                        "collective (default 600)")

    e = sub.add_parser("eval", help="evaluate a checkpoint on a data set (or an exported ONNX file)",
                       description="Accuracy and confusion matrix of a saved model on a split of its data set or "
                                   "of any data set it can take; or of an exported ONNX file on the test split.")
    model_source = e.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--checkpoint", help="a checkpoint.npz or best.npz written by gpucnn train")
    cli_interop.add_eval_onnx_argument(model_source)
    e.add_argument("--dataset", metavar="DATA", help=_dataset_help() + " (default: the run's)")
    e.add_argument("--split", type=_lower, choices=("test", "val", "train"), default="test",
                   help="which split to score (default test; val is carved as the run carved it)")
    e.add_argument("--model", metavar="MODEL", help="rebuild the model with this (" + _model_help() + "); needed "
                                                    "when the run was given a model object")
    e.add_argument("--data-dir", help="directory holding a built-in data set's files")
    e.add_argument("--no-download", dest="download", action="store_false",
                   help="fail instead of downloading a dataset that is not found locally")
    e.add_argument("--device", help="auto, cpu, cuda, cuda:N or emulated")
    e.add_argument("--limit-test", type=int, metavar="N", help="evaluate on the first N images only")
    e.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")

    p = sub.add_parser("predict", help="the most likely classes of images",
                       description="The most likely classes of each image, with their probabilities, normalised "
                                   "as the model was trained.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.npz or best.npz written by gpucnn train")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="PNG or JPEG files, or .npy arrays ((H, W), (C, H, W) or (H, W, C) for one image, 4-D for "
                        "several)")
    p.add_argument("--top", type=int, default=3, help="how many classes to show per image (default 3)")
    p.add_argument("--model", metavar="MODEL", help="rebuild the model with this (see eval --help)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or emulated")

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
    b.add_argument("--precision", type=_lower, choices=PRECISIONS, default="fp32", help=_PRECISION_HELP)
    b.add_argument("--input-shape", metavar="CxHxW",
                   help="input shape (default 1x28x28 for lenet5/simple_convnet, else 3x32x32)")
    b.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")

    sub.add_parser("info", help="versions, devices, CUDA and kernel status")
    sub.add_parser("models", help="the models and their parameter counts")
    cli_interop.add_export_parser(sub, _lower)
    return parser


# ------------------------------------------------------------------------------------------------ train

_TRAIN_FIELDS = ("model", "dataset", "data_dir", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
                 "decay_all", "schedule", "warmup", "clip", "augment", "label_smoothing", "val_split", "early_stop",
                 "select", "test_every_epoch", "eval_every", "device", "precision", "seed", "out", "overwrite",
                 "limit_train", "limit_test", "on_nonfinite", "log_every", "download", "distributed", "timeout")


def _cmd_train(args) -> int:
    from . import train as T
    given = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    comm = _start_job(given)
    if args.resume:
        if given.pop("overwrite", None):
            raise UsageError("--resume continues the run in the folder and --overwrite starts it over: pass one "
                             "of them")
        out = given.pop("out", None) or T.TrainConfig(**{k: v for k, v in given.items()
                                                          if k in ("model", "dataset")}).out_dir()
        read = lambda: T.resume_config(out, **given)
        cfg = comm.on_root(read) if comm is not None else read()   # process 0 alone reads the run folder
    else:
        cfg = T.TrainConfig(**given)
    result = T.train(cfg, log=lambda line: print(line, flush=True))
    if comm is None or comm.rank == 0:
        print(f"done: {result['fit'].summary()}; outputs in {result['out']}", flush=True)
    return 0


def _start_job(given: dict):
    """With --distributed: this process's communicator in its MPI job (None for a job of one process), the
    other processes' notes silenced. Without it, a UsageError when mpiexec started several processes."""
    if not given.get("distributed"):
        started = _launched()[1]
        if started > 1:
            raise UsageError(f"mpiexec started {started} processes of gpucnn train without --distributed: add "
                             f"--distributed for data-parallel training, or start one process")
        if given.get("timeout") is not None:
            raise UsageError("--timeout is for --distributed runs")
        return None
    from . import distributed
    if given.get("timeout") is not None and not given["timeout"] > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {given['timeout']!r}")
    comm = distributed.init(timeout=given.get("timeout") or distributed.DEFAULT_TIMEOUT)
    if comm.rank != 0:
        logging.getLogger("gpucnn").setLevel(logging.WARNING)
    return comm if comm.size > 1 else None


# ------------------------------------------------------------------------------------------- eval, predict

def _cmd_eval(args) -> int:
    if args.onnx is not None:
        from .cli_interop import cmd_eval_onnx
        return cmd_eval_onnx(args, confusion_table)
    from .data import DataLoader
    from .train import evaluate, inputs
    from .train.predict import data_meta, load_model
    if args.limit_test is not None and args.limit_test < 1:
        raise UsageError(f"--limit-test must be a positive integer, got {args.limit_test}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}")
    model, ckpt = load_model(args.checkpoint, args.model, args.device)
    device = model.device
    cfg, meta = ckpt.config, data_meta(ckpt)
    dataset = args.dataset or cfg.get("dataset")
    if dataset == "arrays":
        raise UsageError(f"{ckpt.path}: the run trained on arrays in memory: pass the data to score with --dataset "
                         f"(a built-in name, an .npz file or an image folder)")
    if args.split == "val" and args.dataset is None and cfg.get("val_split") is None:
        raise UsageError(f"--split val: the run in {ckpt.path} had no validation data; use --split test or train")
    fraction = cfg.get("val_split") if isinstance(cfg.get("val_split"), float) else None   # carved as the run did
    data = inputs.prepare(dataset, fraction if args.split == "val" else None,
                          "auto" if args.split == "test" else None, seed=cfg.get("seed", 0),
                          limit_train=cfg.get("limit_train") if args.split != "test" else None,
                          data_dir=args.data_dir or cfg.get("data_dir"),
                          download=args.download and cfg.get("download", True))
    split = {"test": data.test, "val": data.val, "train": data.train}[args.split]
    if split is None:
        raise UsageError(f"{data.name} has no {args.split} split; pick another with --split")
    split = split.subset(args.limit_test)
    want = tuple(int(v) for v in meta["image_shape"])
    if split.image_shape != want or len(data.classes) > len(meta["classes"]):
        raise UsageError(f"{ckpt.path}: the model takes {'x'.join(map(str, want))} images of "
                         f"{len(meta['classes'])} classes, but {data.name} has {'x'.join(map(str, split.image_shape))}"
                         f" images of {len(data.classes)} classes")
    loader = DataLoader(split, batch_size=args.batch_size, shuffle=False, seed=0, normalize=True, augment=False,
                        device=device, drop_last=False, mean=meta["mean"], std=meta["std"])
    loss, acc, confusion = evaluate(model, loader)
    label = ckpt.model_name.rsplit("/", 1)[-1] or args.model or "model"
    print(f"{label} from {ckpt.path} (epoch {ckpt.epoch}) on {data.name} {args.split}, "
          f"{int(confusion.sum())} images, {device}")
    print(f"{args.split} accuracy {100 * acc:.2f}%  loss {loss:.4f}")
    print(confusion_table(confusion, list(meta["classes"])))
    return 0


def _cmd_predict(args) -> int:
    from .train.predict import data_meta, load_model, predict, prepare_images, read_images
    if args.top < 1:
        raise UsageError(f"--top must be a positive integer, got {args.top}")
    model, ckpt = load_model(args.checkpoint, args.model, args.device)
    meta = data_meta(ckpt)
    classes = list(meta["classes"])
    for path in args.images:
        images = prepare_images(read_images(path), meta, path)
        for i, top in enumerate(predict(model, images, min(args.top, len(classes)))):
            where = path if len(images) == 1 else f"{path}[{i}]"
            print(f"{where}: " + ", ".join(f"{classes[k]} ({k}) {100 * p:.2f}%" for k, p in top))
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


# ------------------------------------------------------------------------------------- bench, info, models

def _cmd_bench(args) -> int:
    from .cli_inspect import cmd_bench
    return cmd_bench(args)


def _cmd_info(args) -> int:
    from .cli_inspect import cmd_info
    return cmd_info(args)


def _cmd_models(args) -> int:
    from .cli_inspect import cmd_models
    return cmd_models(args)


# ------------------------------------------------------------------------------------------------- main

def error_text(e: BaseException) -> str:
    """An error's message as the command prints it: its own line breaks kept (a list of places stays a list),
    trailing spaces and blank lines dropped."""
    lines = [line.rstrip() for line in str(e).strip("\n").splitlines()]
    return "\n".join(line for line in lines if line) or type(e).__name__


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


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict, "bench": _cmd_bench,
            "info": _cmd_info, "models": _cmd_models, "export": _cmd_export}


def main(argv=None) -> int:
    """Run the gpucnn command line; returns the exit code (0, or 2 for a user error)."""
    _setup_logging()
    user_errors = _user_errors()
    try:
        try:
            args = _build_parser().parse_args(argv)
        except SystemExit as e:   # --help and --version end here, having printed
            return e.code if isinstance(e.code, int) else 0
        if args.command is None:
            raise UsageError(f"choose a command: {', '.join(COMMANDS)} (see gpucnn --help)")
        return COMMANDS[args.command](args)
    except user_errors as e:
        if os.environ.get("GPUCNN_DEBUG"):
            _end_job(1, e)
            raise
        return _end_job(EXIT_USAGE, e, error_text(e))
    except KeyboardInterrupt as e:
        return _end_job(130, e)
    except Exception as e:   # a bug: its traceback, and in a data-parallel job the job's end
        _end_job(1, e)
        raise


def _launched() -> tuple[int, int]:
    """(rank, size) of this process as mpiexec started it (MPICH's and Open MPI's variables), (0, 1) alone: known
    before MPI is initialised."""
    read = lambda *names: max(int(os.environ.get(v) or 0) for v in names)
    return read("PMI_RANK", "OMPI_COMM_WORLD_RANK"), max(1, read("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))


def _end_job(code: int, error: BaseException, message: str | None = None) -> int:
    """Print ``gpucnn: error: <message>`` (or ``gpucnn: interrupted``) on stderr and return `code`; in a
    data-parallel job of several processes, end the whole job instead (MPI_Abort: a process that stopped alone
    would leave the others waiting), the line naming the process. Without a message (a bug) only the job's end
    is seen to here: the traceback shows it."""
    dist = sys.modules.get("gpucnn.distributed")
    comm = dist.active() if dist is not None else None
    where = f"process {comm.rank} of {comm.size}" if comm is not None and comm.size > 1 else None
    if isinstance(error, KeyboardInterrupt):
        line = "gpucnn: interrupted" + (f" ({where})" if where else "") + "\n"
    else:
        line = None if message is None else "gpucnn: error: " + (f"{where}: " if where else "") + message + "\n"
    if where is None:
        # a usage error (the arguments, before MPI starts) is every process's: process 0 alone says it
        if line is not None and not (isinstance(error, UsageError) and _launched()[0] > 0):
            sys.stderr.write(line)
        return code
    if line is None:
        traceback.print_exc()
    elif isinstance(error, dist.RootFailed):
        time.sleep(10)   # process 0 says why and ends the job: this one waits to be ended with it
    else:
        if comm.rank != 0:   # when every process fails alike, process 0's line is the one shown
            time.sleep(1)
        sys.stderr.write(line)
    comm.abort(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
