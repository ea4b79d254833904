"""The training loop: epochs over a dataset, evaluation after each, metrics, checkpoints, pictures, resume.

A step never waits for the device: the loss sum, the correct count and the first non-finite step are
kept as 0-d device arrays and read back only where something is shown (progress refresh, epoch end).
Numerical faults: with ``on_nonfinite="stop"`` the first step with a NaN/inf loss or gradient is noted on
the device and the run stops at the next read-back with NumericalFaultError, before that epoch's checkpoint
is written; with ``"skip"`` such steps are skipped (no update, batch-norm statistics restored) and counted,
which reads one flag back per step (a host sync per step, on a GPU only in this mode).
Outputs in ``out``: ``metrics.jsonl`` (a row per epoch), ``checkpoint.npz`` (written atomically at each
epoch end, see :mod:`gpucnn.train.checkpoint`), ``curves.png`` and ``filters.png``.

Runs are reproducible: a seed fixes the initial weights, the data order of every epoch (derived from
(seed, epoch)), dropout and augmentation; a resumed run restores the model, the optimizer state, the
global step (which the schedule is a function of) and the host RNG, so on the CPU it is bit-identical to
an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from .. import devices
from .. import models, optim
from . import checkpoint, plots
from ..devices import to_cpu

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
FILTERS = "filters.png"
NONFINITE_MODES = ("stop", "skip")
PLOT_INTERVAL = 60.0  # seconds: pictures are redrawn at an epoch end at most this often, and at the end


# weight_decay=None means this for the optimizer (0 for those not listed): decoupled decay suits AdamW, while
# the same value as an L2 term would be far too strong for SGD.
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05}


def weight_decay_for(cfg) -> float:
    """The weight decay a run uses: cfg.weight_decay, or the optimizer's default from DEFAULT_WEIGHT_DECAY."""
    if cfg.weight_decay is not None:
        return cfg.weight_decay
    return DEFAULT_WEIGHT_DECAY.get(str(cfg.optimizer).lower(), 0.0)


class NumericalFaultError(RuntimeError):
    """A step produced a NaN or infinite loss or gradient (with on_nonfinite='stop')."""

    def __init__(self, message, epoch, step, global_step):
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults train LeNet-5 on Fashion-MNIST to about 91%
    test accuracy in about two minutes on a 2-core CPU (AdamW, cosine decay, 12 epochs)."""
    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 12
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY for the optimizer
    schedule: str = "cosine"          # "cosine" | "step" | "constant", a function of the global step
    warmup: int = 0                   # linear warm-up over this many steps
    clip: float | None = None         # max global gradient norm, or None
    device: str = "auto"
    seed: int = 0
    out: str | None = None            # default: runs/<model>-<dataset>
    resume: bool = False
    limit_train: int | None = None    # use only the first N training images
    limit_test: int | None = None     # evaluate on the first N test images
    augment: bool | str = False       # True: the dataset's usual ones; or "crop", "flip", "crop,flip"
    on_nonfinite: str = "stop"        # "stop": fail with NumericalFaultError; "skip": skip such steps
    log_every: float | None = None    # seconds between progress updates; None: 0.25 on a tty, 10 otherwise
    download: bool = True             # download the dataset if it is not found locally

    def out_dir(self) -> str:
        from ..data import dataset_spec
        name = f"{models.canonical_name(self.model)}-{dataset_spec(self.dataset).name}"
        return self.out or os.path.join("runs", name)


def _validate(cfg: TrainConfig):
    """ValueError naming the option for any setting out of range."""
    def positive_int(name, allow_none=False):
        v = getattr(cfg, name)
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    positive_int("epochs")
    positive_int("batch_size")
    positive_int("limit_train", allow_none=True)
    positive_int("limit_test", allow_none=True)
    if isinstance(cfg.warmup, bool) or not isinstance(cfg.warmup, int) or cfg.warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {cfg.warmup!r}")
    if not (number(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive number, got {cfg.lr!r}")
    if cfg.weight_decay is not None and not (number(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"weight-decay must be a number >= 0, got {cfg.weight_decay!r}")
    if cfg.clip is not None and not (number(cfg.clip) and cfg.clip > 0):
        raise ValueError(f"clip must be a positive number (a max gradient norm), got {cfg.clip!r}")
    if cfg.log_every is not None and not (number(cfg.log_every) and cfg.log_every >= 0):
        raise ValueError(f"log-every must be a number of seconds >= 0, got {cfg.log_every!r}")
    if cfg.on_nonfinite not in NONFINITE_MODES:
        raise ValueError(f"on-nonfinite must be one of {', '.join(NONFINITE_MODES)}, got {cfg.on_nonfinite!r}")
    if cfg.schedule not in optim.schedule_names():
        raise ValueError(f"unknown schedule {cfg.schedule!r}: expected one of {', '.join(optim.schedule_names())}")
    if str(cfg.optimizer).lower() not in optim.names():
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: expected one of {', '.join(optim.names())}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {cfg.seed!r}")
    models.canonical_name(cfg.model)
    from ..data import dataset_spec
    dataset_spec(cfg.dataset)
    if cfg.out is not None and not str(cfg.out).strip():
        raise ValueError(f"out must be a folder path, got {cfg.out!r}")
    if os.path.exists(cfg.out_dir()) and not os.path.isdir(cfg.out_dir()):
        raise ValueError(f"out {cfg.out_dir()}: exists and is not a folder")


# Settings that make a run what it is: a resumed run must keep them. The others (epochs, lr, clip,
# on_nonfinite, limit_test, device, data_dir, log_every) may change when a run is resumed.
RUN_DEFINING = ("model", "dataset", "batch_size", "optimizer", "weight_decay", "schedule", "warmup", "seed",
                "limit_train", "augment")


def resume_config(out: str, **overrides) -> TrainConfig:
    """The configuration of the run saved in `out` (its checkpoint), with `overrides` applied, resume=True."""
    saved = checkpoint.load(os.path.join(out, CHECKPOINT))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in saved.config.items() if k in fields}
    values.update(overrides, out=out, resume=True)
    return TrainConfig(**values)


def _check_resumable(cfg: TrainConfig, saved: dict, path: str):
    """ValueError unless cfg keeps the run-defining settings of the saved run."""
    from ..data import dataset_spec

    def norm(name, v):
        if v is not None and name == "model":
            return models.canonical_name(v)
        if v is not None and name == "dataset":
            return dataset_spec(v).name
        return v.lower() if name == "optimizer" and isinstance(v, str) else v
    conflicts = [f"{name.replace('_', '-')} {getattr(cfg, name)!r} (the run uses {saved.get(name)!r})"
                 for name in RUN_DEFINING if norm(name, getattr(cfg, name)) != norm(name, saved.get(name))]
    if conflicts:
        raise ValueError(f"--resume: {path} was trained with other settings: {'; '.join(conflicts)}. "
                         f"Keep the run's settings to continue it, or pick another --out to start a new run")


# --------------------------------------------------------------------------------------------- helpers

def _read(*scalars) -> list[float]:
    """Device scalars -> host floats with one device-to-host transfer."""
    xp = devices.get_array_module(*scalars)
    host = to_cpu(xp.stack([xp.asarray(s, dtype=xp.float64) for s in scalars]))
    return [float(v) for v in host]


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, otherwise printed at most every `interval` s."""

    def __init__(self, stream=None, interval: float | None = None):
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = interval if interval is not None else (0.25 if self.tty else 10.0)
        self.last = time.perf_counter()
        self.drawn = False

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.interval

    def show(self, head: str, done: int, total: int, stats: str):
        self.last = time.perf_counter()
        if self.tty:
            filled = 20 * done // max(total, 1)
            self.stream.write(f"\r\033[K{head} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total} {stats}")
            self.drawn = True
        else:
            self.stream.write(f"{head} {done}/{total} {stats}\n")
        self.stream.flush()

    def clear(self):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False
        self.last = time.perf_counter()


def _first_conv_weight(model):
    for name, p in model.params.items():
        if p.ndim == 4:
            return name, p
    return None, None


def _write_metrics(path, history):
    """Rewrite metrics.jsonl from the history (atomically): used when a run starts or resumes."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def _append_metrics(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------ evaluation

def evaluate(model, loader, loss_layer=None):
    """(mean loss, accuracy, confusion matrix) of the model on every batch of the loader, in eval mode.

    The confusion matrix is a host int64 array, rows = true class, columns = predicted class. The sums and
    counts stay on the device until the end: one device-to-host transfer (and host sync) per evaluation. The
    counts are scattered with ``add.at`` (integer atomics on a GPU: exact and order-independent), not with
    ``bincount``, which reads back twice per call on CuPy (cupy/_statistics/histogram.py).
    """
    from ..layers import SoftmaxCrossEntropy
    loss_layer = loss_layer or SoftmaxCrossEntropy()
    loss_sum = counts = ones = None
    n = 0
    k = None
    for x, y in loader:
        with devices.device_scope(x):
            logits = model.forward(x, train=False)
            xp = devices.get_array_module(logits)
            if counts is None:
                k = int(logits.shape[1])
                loss_sum = xp.zeros((), dtype=xp.float64)
                counts = xp.zeros(k * k, dtype=xp.int64)
            if ones is None or ones.shape[0] < x.shape[0]:
                ones = xp.ones(int(x.shape[0]), dtype=xp.int64)
            loss_sum += loss_layer.forward(logits, y) * x.shape[0]
            xp.add.at(counts, y.astype(xp.int64) * k + xp.argmax(logits, axis=1), ones[:x.shape[0]])
        n += int(x.shape[0])
    if counts is None:
        raise ValueError("evaluate: the loader yielded no batches")
    with devices.device_scope(counts):
        host = to_cpu(xp.concatenate([counts.astype(xp.float64), loss_sum[None]]))
    confusion = host[:-1].astype(np.int64).reshape(k, k)
    return float(host[-1]) / n, float(np.trace(confusion)) / n, confusion


# --------------------------------------------------------------------------------------------- training

def augmentations(augment, dataset: str) -> tuple:
    """config.augment -> the DataLoader's augmentation names (True: random crops, plus flips except for digits)."""
    if augment is True:
        return ("crop",) if dataset == "mnist" else ("crop", "flip")
    if not augment:
        return ()
    return tuple(a.strip() for a in str(augment).split(",") if a.strip())


def _loaders(cfg: TrainConfig, device):
    from .. import data
    train_set = data.load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, download=cfg.download)
    test_set = data.load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir, download=cfg.download)
    train_loader = data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                   normalize=True, augment=augmentations(cfg.augment, train_set.name),
                                   device=device, drop_last=False, limit=cfg.limit_train)
    # A last batch of one sample has no batch statistics (BatchNorm refuses it): it is left out of training.
    train_loader.drop_last = train_loader.num_examples % cfg.batch_size == 1 and train_loader.num_examples > 1
    test_loader = data.DataLoader(test_set, batch_size=max(cfg.batch_size, 256), shuffle=False, seed=cfg.seed,
                                  normalize=True, augment=False, device=device, drop_last=False,
                                  limit=cfg.limit_test)
    return train_set, train_loader, test_loader


def model_kwargs_for(dataset) -> dict:
    """in_channels, input_size and num_classes of a dataset, as the model constructors take them."""
    _, c, h, w = dataset.images.shape
    return {"in_channels": int(c), "input_size": [int(h), int(w)], "num_classes": len(dataset.classes)}


def train(config: TrainConfig, log=print) -> dict:
    """Train per `config` (resuming from its out dir if config.resume); `log` receives one line per event.

    Returns {"config", "history" (metrics rows), "out", "checkpoint", "model", "device", "seconds",
    "test_acc", "test_loss", "confusion"} (test_* and confusion of the last epoch run in this call).
    Raises NumericalFaultError (on_nonfinite='stop'), DatasetError, CheckpointError, ValueError.
    """
    run = _Run(config, log)
    start = time.perf_counter()
    last_plot = start
    result = (None, None, None)
    for epoch in range(run.start_epoch, run.config.epochs + 1):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                devices.device_scope(run.device):                              # NaN/inf are caught and
            train_stats = run.train_epoch(epoch)                               # reported by the fault check
            result = evaluate(run.model, run.test_loader, run.loss_layer)
        run.end_epoch(epoch, train_stats, result)
        if time.perf_counter() - last_plot >= PLOT_INTERVAL and epoch < run.config.epochs:
            _pictures(run, log)
            last_plot = time.perf_counter()
    if run.history:
        _pictures(run, log)
    test_loss, test_acc, confusion = result
    return {"config": dataclasses.asdict(run.config), "history": run.history, "out": run.out,
            "checkpoint": run.ckpt_path, "model": run.model, "device": str(run.device),
            "seconds": time.perf_counter() - start, "test_loss": test_loss, "test_acc": test_acc,
            "confusion": confusion}


class _Run:
    """One training run's state: data, model, optimizer, schedule, step counters and history."""

    def __init__(self, config: TrainConfig, log):
        _validate(config)
        self.log = log
        self.out = config.out_dir()
        self.config = config = dataclasses.replace(config, out=self.out)
        self.ckpt_path = os.path.join(self.out, CHECKPOINT)
        saved = None
        if config.resume:
            saved = checkpoint.load(self.ckpt_path)
            _check_resumable(config, saved.config, self.ckpt_path)
        self.device = devices.get_device(config.device)
        devices.seed(config.seed)
        self.train_set, self.train_loader, self.test_loader = _loaders(config, self.device)
        self.model_name = models.canonical_name(config.model)
        self.model_kwargs = model_kwargs_for(self.train_set)
        self.model = models.get(self.model_name, **self.model_kwargs)
        self.opt = optim.get(config.optimizer, lr=config.lr, weight_decay=weight_decay_for(config))
        self.steps_per_epoch = len(self.train_loader)
        self.schedule = optim.make_schedule(config.schedule, config.lr, config.epochs * self.steps_per_epoch,
                                            config.warmup)
        from ..layers import SoftmaxCrossEntropy
        self.loss_layer = SoftmaxCrossEntropy()
        self.history: list[dict] = []
        self.start_epoch, self.global_step = 1, 0
        if saved is not None:
            self._restore(saved)
        self.model.to(self.device)
        os.makedirs(self.out, exist_ok=True)  # only now: a run that cannot start leaves nothing behind
        checkpoint.remove_stale_temps(self.out)
        self.metrics_path = os.path.join(self.out, METRICS)
        _write_metrics(self.metrics_path, self.history)

        self.xp = self.device.xp
        self.progress = Progress(interval=config.log_every)
        self.skip_mode = config.on_nonfinite == "skip"
        with devices.device_scope(self.device):
            self.first_bad = self.xp.full((), -1, dtype=self.xp.int64)  # first global step with a NaN/inf
        self._announce(saved)

    def _restore(self, saved):
        if saved.model_name != self.model_name or saved.model_kwargs != self.model_kwargs:
            raise checkpoint.CheckpointError(
                f"checkpoint {self.ckpt_path}: holds {saved.model_name}({saved.model_kwargs}), but the run "
                f"builds {self.model_name}({self.model_kwargs})")
        try:
            saved.load_into(self.model)
            if saved.optim_state is not None:
                self.opt.load_state_dict(saved.optim_state)
            if saved.rng_state is not None:
                devices.set_rng_state(saved.rng_state)
            self.history = [row for row in saved.history if row["epoch"] <= saved.epoch]
        except checkpoint.CheckpointError:
            raise
        except (ValueError, TypeError, KeyError) as e:   # a well-formed file whose contents do not fit
            raise checkpoint.CheckpointError(f"checkpoint {self.ckpt_path}: unusable contents "
                                             f"({type(e).__name__}: {e})") from None
        self.start_epoch, self.global_step = saved.epoch + 1, saved.step

    def _announce(self, saved):
        cfg = self.config
        if self.start_epoch > cfg.epochs:
            self.log(f"{self.ckpt_path} already holds epoch {self.start_epoch - 1} of {cfg.epochs}: nothing to do")
        elif saved is not None:
            self.log(f"resuming {self.out} at epoch {self.start_epoch}/{cfg.epochs} (global step "
                     f"{self.global_step}) on {self.device}")
        else:
            shape = "x".join(str(s) for s in self.train_set.images.shape[1:])
            self.log(f"training {self.model_name} ({self.model.num_params():,} parameters) on {self.train_set.name} "
                     f"({self.train_loader.num_examples} train / {self.test_loader.num_examples} test images "
                     f"{shape} from {self.train_set.source}) on {self.device}: {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, weight decay "
                     f"{weight_decay_for(cfg):g}, batch "
                     f"{cfg.batch_size}, {cfg.epochs} epochs -> {self.out}")

    def train_epoch(self, epoch) -> dict:
        """One pass over the training data; metrics are read back only at progress updates and at the end."""
        xp, model, cfg = self.xp, self.model, self.config
        self.train_loader.set_epoch(epoch)
        loss_sum = xp.zeros((), dtype=xp.float64)
        correct = xp.zeros((), dtype=xp.int64)
        seen = counted = skipped = 0
        first_step = self.global_step
        t0 = time.perf_counter()
        lr = self.opt.lr
        for x, y in self.train_loader:
            lr = self.schedule.apply(self.opt, self.global_step)
            if self.skip_mode:  # a skipped step must not leave its batch statistics behind either
                kept_buffers = {k: v.copy() for k, v in model.buffers.items()}
            logits = model.forward(x, train=True)
            loss = self.loss_layer.forward(logits, y)
            model.backward(self.loss_layer.backward())
            grads = model.grads
            ok = xp.isfinite(loss) & optim.grads_finite(grads)
            n = int(x.shape[0])
            if self.skip_mode and not bool(ok):  # skip mode reads `ok` back: one host sync per step
                skipped += 1
                for k, v in model.buffers.items():
                    v[...] = kept_buffers[k]
            else:
                if not self.skip_mode:
                    self.first_bad = xp.where(ok | (self.first_bad >= 0), self.first_bad, self.global_step)
                if cfg.clip is not None:
                    optim.clip_grad_norm(grads, cfg.clip)
                self.opt.update(model.params, grads)
                loss_sum += loss * n
                correct += (xp.argmax(logits, axis=1) == y).sum()
                counted += n
            seen += n
            self.global_step += 1
            if self.progress.due():
                total_loss, total_correct, bad = _read(loss_sum, correct, self.first_bad)
                self._fault_check(epoch, first_step, bad)
                done = self.global_step - first_step
                self.progress.show(f"epoch {epoch}/{cfg.epochs}", done, self.steps_per_epoch,
                                   f"loss {total_loss / max(counted, 1):.4f} "
                                   f"acc {100 * total_correct / max(counted, 1):.2f}% "
                                   f"{seen / max(time.perf_counter() - t0, 1e-9):.0f} img/s")
        total_loss, total_correct, bad = _read(loss_sum, correct, self.first_bad)
        self.progress.clear()
        self._fault_check(epoch, first_step, bad)
        return {"loss": total_loss / counted if counted else None,
                "acc": total_correct / counted if counted else None,
                "seen": seen, "skipped": skipped, "lr": lr, "started": t0, "seconds": time.perf_counter() - t0}

    def _fault_check(self, epoch, first_step, bad):
        """NumericalFaultError if a step of this epoch had a NaN/inf (bad = its global step, or -1)."""
        if bad < 0:
            return
        bad = int(bad)
        step = bad - first_step + 1
        kept = (f"the last good checkpoint (epoch {self.history[-1]['epoch']}) is {self.ckpt_path}"
                if self.history else "no checkpoint was written")
        raise NumericalFaultError(
            f"non-finite loss or gradient (NaN or inf) at epoch {epoch}, step {step} (global step {bad + 1}); "
            f"stopped without saving epoch {epoch}: {kept}. Try a lower --lr (it was {self.config.lr:g}), "
            f"--clip, or --on-nonfinite skip", epoch, step, bad + 1)

    def end_epoch(self, epoch, stats, evaluation):
        """Record the epoch's metrics, write the checkpoint (atomically) and metrics.jsonl, log a line."""
        test_loss, test_acc, _ = evaluation
        seconds = time.perf_counter() - stats["started"]
        row = {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"], "test_loss": test_loss,
               "test_acc": test_acc, "seconds": round(seconds, 3),
               "images_per_second": round(stats["seen"] / max(stats["seconds"], 1e-9), 1), "lr": stats["lr"],
               "skipped_steps": stats["skipped"]}
        self.history.append(row)
        checkpoint.save(self.ckpt_path, model_name=self.model_name, model_kwargs=self.model_kwargs,
                        model_state=self.model.state_dict(), optim_state=self.opt.state_dict(), epoch=epoch,
                        step=self.global_step, rng_state=devices.get_rng_state(),
                        config=dataclasses.asdict(self.config), history=self.history)
        _append_metrics(self.metrics_path, row)
        train_text = ("train loss - acc -" if row["train_loss"] is None else
                      f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%")
        self.log(f"epoch {epoch}/{self.config.epochs}  {train_text}  test loss {test_loss:.4f} acc "
                 f"{100 * test_acc:.2f}%  lr {row['lr']:.2e}  {seconds:.1f} s  {row['images_per_second']:.0f} img/s"
                 + (f"  skipped {stats['skipped']} non-finite steps" if stats["skipped"] else ""))


_warned_no_matplotlib = False


def _pictures(run: _Run, log):
    """curves.png and filters.png, or one log line if matplotlib is missing."""
    global _warned_no_matplotlib
    if not plots.available():
        if not _warned_no_matplotlib:
            log("matplotlib is not installed: skipping curves.png and filters.png (pip install 'gpucnn[plots]')")
            _warned_no_matplotlib = True
        return
    title = f"{run.model_name} on {run.train_set.name}"
    plots.plot_curves(run.history, os.path.join(run.out, CURVES), title=title)
    name, w = _first_conv_weight(run.model)
    if w is not None:
        plots.plot_filters(to_cpu(w), os.path.join(run.out, FILTERS), title=f"{title}, first conv layer ({name})")
