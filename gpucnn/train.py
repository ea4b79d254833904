"""The training loop: epochs over a dataset, evaluation after each, metrics, checkpoints, pictures, resume.

A step never waits for the device: the loss sum, the correct count and the first non-finite step are
kept as 0-d device arrays and read back only where something is shown (progress refresh, epoch end).
Outputs in ``out``: ``metrics.jsonl`` (a row per epoch), ``checkpoint.npz`` (written atomically at each
epoch end, see :mod:`gpucnn.checkpoint`), ``curves.png`` and ``filters.png``.

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

from . import backend, checkpoint, models, optim, plots
from .backend import to_cpu

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
FILTERS = "filters.png"
NONFINITE_MODES = ("stop", "skip")
PLOT_INTERVAL = 60.0  # seconds: pictures are redrawn at an epoch end at most this often, and at the end


class NumericalFaultError(RuntimeError):
    """A step produced a NaN or infinite loss or gradient (with on_nonfinite='stop')."""

    def __init__(self, message, epoch, step, global_step):
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults train LeNet-5 on Fashion-MNIST to about 90%
    test accuracy in a few minutes on a 2-core CPU."""
    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 8
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 2e-3
    weight_decay: float = 0.0
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
        return self.out or os.path.join("runs", f"{models.canonical_name(self.model)}-{self.dataset}")


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
    if not (number(cfg.weight_decay) and cfg.weight_decay >= 0):
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
    def norm(name, v):
        return models.canonical_name(v) if name == "model" and v is not None else v
    conflicts = [f"{name.replace('_', '-')} {getattr(cfg, name)!r} (the run uses {saved.get(name)!r})"
                 for name in RUN_DEFINING if norm(name, getattr(cfg, name)) != norm(name, saved.get(name))]
    if conflicts:
        raise ValueError(f"--resume: {path} was trained with other settings: {'; '.join(conflicts)}. "
                         f"Keep the run's settings to continue it, or pick another --out to start a new run")


# --------------------------------------------------------------------------------------------- helpers

def _read(*scalars) -> list[float]:
    """Device scalars -> host floats with one device-to-host transfer."""
    xp = backend.get_array_module(*scalars)
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

    The confusion matrix is a host int64 array, rows = true class, columns = predicted class. Sums stay on
    the device until the end: one device-to-host transfer in all.
    """
    from .layers import SoftmaxCrossEntropy
    loss_layer = loss_layer or SoftmaxCrossEntropy()
    loss_sum = counts = None
    n = 0
    k = None
    for x, y in loader:
        logits = model.forward(x, train=False)
        xp = backend.get_array_module(logits)
        if counts is None:
            k = int(logits.shape[1])
            loss_sum = xp.zeros((), dtype=xp.float64)
            counts = xp.zeros(k * k, dtype=xp.int64)
        loss_sum += loss_layer.forward(logits, y) * x.shape[0]
        counts += xp.bincount(y.astype(xp.int64) * k + xp.argmax(logits, axis=1), minlength=k * k)
        n += int(x.shape[0])
    if counts is None:
        raise ValueError("evaluate: the loader yielded no batches")
    xp = backend.get_array_module(counts)
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
    from . import data
    train_set = data.load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, download=cfg.download)
    test_set = data.load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir, download=cfg.download)
    train_loader = data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                   normalize=True, augment=augmentations(cfg.augment, train_set.name),
                                   device=device, drop_last=False, limit=cfg.limit_train)
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
    "test_acc", "test_loss", "confusion"} (test_* and confusion from the last epoch run).
    Raises NumericalFaultError (on_nonfinite='stop'), DatasetError, CheckpointError, ValueError.
    """
    _validate(config)
    out = config.out_dir()
    config = dataclasses.replace(config, out=out)
    ckpt_path = os.path.join(out, CHECKPOINT)
    saved = None
    if config.resume:
        saved = checkpoint.load(ckpt_path)
        _check_resumable(config, saved.config, ckpt_path)
    device = backend.get_device(config.device)
    os.makedirs(out, exist_ok=True)
    checkpoint.remove_stale_temps(out)

    backend.seed(config.seed)
    train_set, train_loader, test_loader = _loaders(config, device)
    model_name = models.canonical_name(config.model)
    kwargs = model_kwargs_for(train_set)
    model = models.get(model_name, **kwargs)
    opt = optim.get(config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_loader)
    schedule = optim.make_schedule(config.schedule, config.lr, config.epochs * steps_per_epoch, config.warmup)
    from .layers import SoftmaxCrossEntropy
    loss_layer = SoftmaxCrossEntropy()

    history: list[dict] = []
    start_epoch, global_step = 1, 0
    if saved is not None:
        if saved.model_name != model_name or saved.model_kwargs != kwargs:
            raise checkpoint.CheckpointError(
                f"checkpoint {ckpt_path}: holds {saved.model_name}({saved.model_kwargs}), but the run builds "
                f"{model_name}({kwargs})")
        saved.load_into(model)
        if saved.optim_state is not None:
            opt.load_state_dict(saved.optim_state)
        if saved.rng_state is not None:
            backend.set_rng_state(saved.rng_state)
        history = [row for row in saved.history if row["epoch"] <= saved.epoch]
        start_epoch, global_step = saved.epoch + 1, saved.step
    model.to(device)
    metrics_path = os.path.join(out, METRICS)
    _write_metrics(metrics_path, history)

    xp = device.xp
    dataset_desc = (f"{train_set.name} ({train_loader.num_examples} train / {test_loader.num_examples} test "
                    f"images {'x'.join(str(s) for s in train_set.images.shape[1:])})")
    if start_epoch > config.epochs:
        log(f"{ckpt_path} already holds epoch {start_epoch - 1} of {config.epochs}: nothing to do")
    elif saved is not None:
        log(f"resuming {out} at epoch {start_epoch}/{config.epochs} (global step {global_step}) on {device}")
    else:
        log(f"training {model_name} ({model.num_params():,} parameters) on {dataset_desc} on {device}: "
            f"{config.optimizer} lr {config.lr:g} {config.schedule}, batch {config.batch_size}, "
            f"{config.epochs} epochs -> {out}")

    progress = Progress(interval=config.log_every)
    first_bad = xp.full((), -1, dtype=xp.int64)  # the first global step with a non-finite loss or gradient
    run_start = time.perf_counter()
    last_plot = time.perf_counter()
    result_eval = (None, None, None)

    def fault_check(epoch, epoch_first_step, bad):
        if bad < 0:
            return
        bad = int(bad)
        step_in_epoch = bad - epoch_first_step + 1
        if history:
            kept = f"the last good checkpoint (epoch {history[-1]['epoch']}) is {ckpt_path}"
        else:
            kept = "no checkpoint was written"
        raise NumericalFaultError(
            f"non-finite loss or gradient (NaN or inf) at epoch {epoch}, step {step_in_epoch} (global step "
            f"{bad + 1}); stopped without saving epoch {epoch}: {kept}. Try a lower --lr (it was "
            f"{config.lr:g}), --clip, or --on-nonfinite skip", epoch, step_in_epoch, bad + 1)

    for epoch in range(start_epoch, config.epochs + 1):
        train_loader.set_epoch(epoch)
        loss_sum = xp.zeros((), dtype=xp.float64)
        correct = xp.zeros((), dtype=xp.int64)
        seen = counted = skipped = 0
        epoch_first_step = global_step
        t0 = time.perf_counter()
        lr = opt.lr
        for x, y in train_loader:
            lr = schedule.apply(opt, global_step)
            logits = model.forward(x, train=True)
            loss = loss_layer.forward(logits, y)
            model.backward(loss_layer.backward())
            grads = model.grads
            ok = xp.isfinite(loss) & optim.grads_finite(grads)
            n = int(x.shape[0])
            if config.on_nonfinite == "skip" and not bool(ok):  # skip mode: one host sync per step
                skipped += 1
            else:
                if config.on_nonfinite == "stop":
                    first_bad = xp.where(ok | (first_bad >= 0), first_bad, global_step)
                if config.clip is not None:
                    optim.clip_grad_norm(grads, config.clip)
                opt.update(model.params, grads)
                loss_sum += loss * n
                correct += (xp.argmax(logits, axis=1) == y).sum()
                counted += n
            seen += n
            global_step += 1
            if progress.due():
                total_loss, total_correct, bad = _read(loss_sum, correct, first_bad)
                fault_check(epoch, epoch_first_step, bad)
                elapsed = time.perf_counter() - t0
                progress.show(f"epoch {epoch}/{config.epochs}", global_step - epoch_first_step, steps_per_epoch,
                              f"loss {total_loss / max(counted, 1):.4f} "
                              f"acc {100 * total_correct / max(counted, 1):.2f}% {seen / max(elapsed, 1e-9):.0f} img/s")
        total_loss, total_correct, bad = _read(loss_sum, correct, first_bad)
        train_seconds = time.perf_counter() - t0
        progress.clear()
        fault_check(epoch, epoch_first_step, bad)

        test_loss, test_acc, confusion = evaluate(model, test_loader, loss_layer)
        result_eval = (test_loss, test_acc, confusion)
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "train_loss": total_loss / counted if counted else None,
            "train_acc": total_correct / counted if counted else None,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": round(seconds, 3),
            "images_per_second": round(seen / max(train_seconds, 1e-9), 1),
            "lr": lr,
            "skipped_steps": skipped,
        }
        history.append(row)
        checkpoint.save(ckpt_path, model_name=model_name, model_kwargs=kwargs, model_state=model.state_dict(),
                        optim_state=opt.state_dict(), epoch=epoch, step=global_step,
                        rng_state=backend.get_rng_state(), config=dataclasses.asdict(config), history=history)
        _append_metrics(metrics_path, row)
        train_text = ("train loss -      acc -     " if row["train_loss"] is None else
                      f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%")
        log(f"epoch {epoch}/{config.epochs}  {train_text}  test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  "
            f"lr {lr:.2e}  {seconds:.1f} s  {row['images_per_second']:.0f} img/s"
            + (f"  skipped {skipped} non-finite steps" if skipped else ""))
        if time.perf_counter() - last_plot >= PLOT_INTERVAL and epoch < config.epochs:
            _pictures(out, model, history, model_name, config, log)
            last_plot = time.perf_counter()

    if history:
        _pictures(out, model, history, model_name, config, log)
    test_loss, test_acc, confusion = result_eval
    return {"config": dataclasses.asdict(config), "history": history, "out": out, "checkpoint": ckpt_path,
            "model": model, "device": str(device), "seconds": time.perf_counter() - run_start,
            "test_loss": test_loss, "test_acc": test_acc, "confusion": confusion}


_warned_no_matplotlib = False


def _pictures(out, model, history, model_name, config, log):
    """curves.png and filters.png, or one log line if matplotlib is missing."""
    global _warned_no_matplotlib
    if not plots.available():
        if not _warned_no_matplotlib:
            log("matplotlib is not installed: skipping curves.png and filters.png (pip install 'gpucnn[plots]')")
            _warned_no_matplotlib = True
        return
    title = f"{model_name} on {config.dataset}"
    plots.plot_curves(history, os.path.join(out, CURVES), title=title)
    name, w = _first_conv_weight(model)
    if w is not None:
        plots.plot_filters(to_cpu(w), os.path.join(out, FILTERS), title=f"{title}: first conv layer ({name})")
