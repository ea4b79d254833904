"""A run as the command line describes it: :class:`TrainConfig` (names and paths for the model and the data,
every setting a plain value), :func:`resume_config` (a saved run's settings) and :func:`train`, which runs a
config through :func:`gpucnn.fit`."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .. import models
from .checkpoint import load as load_checkpoint
from .fitting import DEFAULTS, LAUNCH_ONLY, LEGACY, fit
from .run_folder import CHECKPOINT


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults train LeNet-5 on Fashion-MNIST to about 91%
    test accuracy in about two minutes on a 2-core CPU (AdamW, cosine decay, 12 epochs)."""
    model: str = "lenet5"             # a zoo name, "path/to/file.py:function" or "module:function"
    dataset: str = "fashion-mnist"    # a built-in name, or a path to an .npz file or an image folder
    data_dir: str | None = None
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    optimizer: str = DEFAULTS["optimizer"]
    lr: float = DEFAULTS["lr"]
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY for the optimizer
    decay_all: bool = False           # False: no weight decay on biases and normalisation parameters
    schedule: str = DEFAULTS["schedule"]  # "cosine" | "linear" | "step" | "constant": a function of the global step
    warmup: int = 0                   # linear warm-up over this many steps
    clip: float | None = None         # max global gradient norm, or None
    device: str = "auto"
    precision: str = "fp32"           # "fp32", "tf32" or "bf16" (GPU only): see gpucnn.devices.precision
    seed: int = 0
    out: str | None = None            # default: runs/<model>-<dataset>
    resume: bool = False
    overwrite: bool = False           # delete the run already in `out` and start over
    limit_train: int | None = None    # use only the first N training images
    limit_test: int | None = None     # evaluate on the first N test images
    val_split: float | None = None    # this fraction of the training images (drawn with the seed) validates
    early_stop: int | None = None     # stop after N epochs without improvement of the validation metric
    select: str = "loss"              # the validation metric that picks best.npz: "loss" or "acc"
    test_every_epoch: bool = False    # with validation data, score the test split every epoch too
    eval_every: int = 1               # score validation/test after every N-th epoch and the last one
    augment: bool | str = False       # True: the dataset's usual ones; or "crop", "flip", "crop,flip"
    label_smoothing: float = 0.0      # the loss's epsilon: targets (1 - eps) one-hot + eps / classes
    on_nonfinite: str = "stop"        # "stop": fail with NumericalFaultError; "skip": skip such steps
    log_every: float | None = None    # seconds between progress updates; None: 0.25 on a tty, 10 otherwise
    download: bool = True             # download the dataset if it is not found locally
    distributed: bool = False         # one process of a data-parallel MPI job (mpiexec -n N ...)
    timeout: float | None = None      # distributed: seconds to wait in a collective (None: DEFAULT_TIMEOUT)

    def out_dir(self) -> str:
        """The run folder: `out`, or runs/<model>-<dataset> with short names ("my_net" for my_net.py:build)."""
        if self.out is not None:
            return self.out
        return os.path.join("runs", f"{model_label(self.model)}-{dataset_label(self.dataset)}")


def model_label(model: str) -> str:
    """A short name of a model argument: the zoo's name, a file's stem, or a module function's name."""
    if not models.is_spec(model):
        return models.canonical_name(model)
    where, _, func = str(model).rpartition(":")
    return os.path.basename(where).removesuffix(".py") if where.endswith(".py") else func


def dataset_label(dataset: str) -> str:
    """A short name of a data set argument: the built-in's name, or the file's or folder's name."""
    from ..data import dataset_spec, is_own_data
    if is_own_data(dataset):
        return os.path.basename(os.path.normpath(os.fspath(dataset))).removesuffix(".npz") or "data"
    return dataset_spec(dataset).name


def resume_config(out: str, **overrides) -> TrainConfig:
    """The configuration of the run saved in `out` (its checkpoint), with `overrides` applied, resume=True."""
    saved = load_checkpoint(os.path.join(out, CHECKPOINT))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in {**LEGACY, **saved.config}.items() if k in fields and k not in LAUNCH_ONLY}
    values.update(overrides, out=out, resume=True, overwrite=False)
    return TrainConfig(**values)


def train(config: TrainConfig, log=print) -> dict:
    """Train per `config` (resuming from its out dir if config.resume); `log` receives one line per event.

    Returns {"config", "history" (metrics rows), "out", "checkpoint", "model", "device", "seconds",
    "test_acc", "test_loss", "confusion", "fit" (the History)}: test_* are the final test score (None without a
    test split), confusion that of the last evaluation. Raises NumericalFaultError (on_nonfinite='stop'),
    DatasetError, CheckpointError, ValueError.
    """
    cfg = config
    model_label(cfg.model)      # an unknown model or data set name fails here, naming the choices
    dataset_label(cfg.dataset)
    if cfg.out is not None and not str(cfg.out).strip():
        raise ValueError(f"out must be a folder path, got {cfg.out!r}")
    cfg = dataclasses.replace(cfg, out=cfg.out_dir())
    # val_split is a fraction, or (recorded by a run) how other validation data came: a file's own val split,
    # which fit finds again by itself
    validation = cfg.val_split if isinstance(cfg.val_split, (int, float)) else None
    distributed = False
    if cfg.distributed:
        from .. import distributed as dist
        distributed = dist.init(timeout=cfg.timeout if cfg.timeout is not None else dist.DEFAULT_TIMEOUT)
    history = fit(cfg.model, cfg.dataset, validation=validation, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, decay_all=cfg.decay_all,
                  schedule=cfg.schedule, warmup=cfg.warmup, clip=cfg.clip, augment=cfg.augment,
                  label_smoothing=cfg.label_smoothing,
                  early_stopping=cfg.early_stop, select=cfg.select, test_every_epoch=cfg.test_every_epoch,
                  eval_every=cfg.eval_every,
                  out=cfg.out, resume=cfg.resume, overwrite=cfg.overwrite, device=cfg.device, seed=cfg.seed,
                  on_nonfinite=cfg.on_nonfinite, precision=cfg.precision, limit_train=cfg.limit_train,
                  limit_test=cfg.limit_test,
                  data_dir=cfg.data_dir, download=cfg.download, log=log, log_every=cfg.log_every,
                  settings=dataclasses.asdict(cfg), distributed=distributed)
    test = history.test or {}
    return {"config": dataclasses.asdict(cfg), "history": history.rows, "out": cfg.out,
            "checkpoint": os.path.join(cfg.out, CHECKPOINT), "model": history.model, "device": history.device,
            "seconds": history.seconds, "test_loss": test.get("loss"), "test_acc": test.get("acc"),
            "confusion": history.confusion, "fit": history}
