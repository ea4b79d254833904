"""``gpucnn.fit``: train any model on any data, with validation, early stopping, the best checkpoint, resume
and pictures; the command line's ``gpucnn train`` runs through it.

Runs are reproducible: the seed fixes the initial weights, the validation split, the data order of every
epoch (derived from (seed, epoch)), dropout and augmentation; a resumed run restores the model, the optimizer
state, the global step (which the schedule is a function of) and the host RNG, so on the CPU it is
bit-identical to an uninterrupted run, and two identical runs write byte-identical checkpoints.

At each epoch's end, in this order: checkpoint.npz (atomically), best.npz when the validation metric improved,
a metrics.jsonl row, a log line; a numerical fault stops the run before its epoch is saved (see
:mod:`.loop`). With validation data, the model selected is the epoch with the lowest validation loss (or the
highest accuracy, ``select="acc"``), early stopping counts epochs without improvement of that metric, and the
test split is scored once at the end with the selected weights (and each epoch on request); without it, the
test split is scored each epoch as the run's only measure.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .. import devices, optim
from . import inputs as _inputs
from . import metrics
from .checkpoint import CheckpointError, load as load_checkpoint
from .loop import NONFINITE_MODES, Trainer, evaluate
from .metrics import History, plural
from .progress import Progress
from .run_folder import BEST, CONFIG, RESULTS, RunFolder

DEFAULTS = {"epochs": 12, "batch_size": 128, "optimizer": "adamw", "lr": 2e-3, "schedule": "cosine"}

# weight_decay=None means this for the optimizer (0 for those not listed): decoupled decay suits AdamW, while
# the same value as an L2 term would be far too strong for SGD.
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05}

# Schedules whose rate at a step depends on the run's planned length (cosine spans it; step decays at thirds).
LENGTH_DEPENDENT = ("cosine", "step")

# Settings that make a run what it is: a resumed run must keep them. The others (epochs, lr, clip, early_stop,
# select, on_nonfinite, limit_test, device, ...) may change when a run is resumed.
RUN_DEFINING = ("model", "dataset", "batch_size", "optimizer", "weight_decay", "decay_all", "schedule", "warmup",
                "seed", "limit_train", "augment", "val_split")
# What a setting missing from an older checkpoint meant: before parameter groups every parameter was decayed.
LEGACY = {"decay_all": True}

PLOT_INTERVAL = 60.0  # seconds: pictures are redrawn at an epoch end at most this often, and at the end


def weight_decay_for(optimizer: str, weight_decay: float | None) -> float:
    """The weight decay a run uses: the one given, or the optimizer's default from DEFAULT_WEIGHT_DECAY."""
    if weight_decay is not None:
        return weight_decay
    return DEFAULT_WEIGHT_DECAY.get(str(optimizer).lower(), 0.0)


def make_optimizer(name: str, lr: float, weight_decay: float | None, decay_all: bool = False):
    """The optimizer of a run: with weight decay, parameters with at most one dimension (biases, batch-norm
    gamma and beta: :func:`gpucnn.optim.no_weight_decay`) are in a group without it, unless `decay_all`."""
    wd = weight_decay_for(name, weight_decay)
    groups = None if decay_all or not wd else [{"params": optim.no_weight_decay, "weight_decay": 0.0}]
    return optim.get(name, lr=lr, weight_decay=wd, groups=groups)


def _check(o: dict):
    """ValueError naming the option for any setting out of range."""
    def positive_int(name, allow_none=False):
        v = o[name]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for name in ("epochs", "batch_size"):
        positive_int(name)
    for name in ("limit_train", "limit_test", "early_stop"):
        positive_int(name, allow_none=True)
    if isinstance(o["warmup"], bool) or not isinstance(o["warmup"], int) or o["warmup"] < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {o['warmup']!r}")
    if not (number(o["lr"]) and o["lr"] > 0):
        raise ValueError(f"lr must be a positive number, got {o['lr']!r}")
    if o["weight_decay"] is not None and not (number(o["weight_decay"]) and o["weight_decay"] >= 0):
        raise ValueError(f"weight-decay must be a number >= 0, got {o['weight_decay']!r}")
    if o["clip"] is not None and not (number(o["clip"]) and o["clip"] > 0):
        raise ValueError(f"clip must be a positive number (a max gradient norm), got {o['clip']!r}")
    if o["log_every"] is not None and not (number(o["log_every"]) and o["log_every"] >= 0):
        raise ValueError(f"log-every must be a number of seconds >= 0, got {o['log_every']!r}")
    choices = {"on_nonfinite": NONFINITE_MODES, "select": tuple(metrics.SELECT),
               "schedule": optim.schedule_names(), "optimizer": optim.names()}
    for name, allowed in choices.items():
        if o[name] not in allowed:
            what = f"unknown {name}" if name in ("schedule", "optimizer") else f"{name.replace('_', '-')} must be"
            raise ValueError(f"{what} {o[name]!r}: expected one of {', '.join(allowed)}" if name in (
                "schedule", "optimizer") else f"{what} one of {', '.join(allowed)}, got {o[name]!r}")
    if isinstance(o["seed"], bool) or not isinstance(o["seed"], int) or o["seed"] < 0:
        raise ValueError(f"seed must be an integer >= 0, got {o['seed']!r}")


def fit(model, train, *, validation=None, test="auto", epochs: int = DEFAULTS["epochs"],
        batch_size: int = DEFAULTS["batch_size"], optimizer: str = DEFAULTS["optimizer"], lr: float = DEFAULTS["lr"],
        weight_decay: float | None = None, decay_all: bool = False, schedule: str = DEFAULTS["schedule"],
        warmup: int = 0, clip: float | None = None, augment=False, early_stopping: int | None = None,
        select: str = "loss", test_every_epoch: bool = False, out=None, resume: bool = False,
        overwrite: bool = False, device=None, seed: int = 0, on_nonfinite: str = "stop",
        limit_train: int | None = None, limit_test: int | None = None, data_dir=None, download: bool = True,
        log=print, log_every: float | None = None, settings: dict | None = None) -> History:
    """Train `model` on `train` and return its :class:`~gpucnn.train.metrics.History`.

    model: a Layer (trained in place), a zoo name ("lenet5"), "path/to/file.py:function", "module:function" or
        a function; functions get those of in_channels, input_size ((h, w)) and num_classes they take.
    train: (images, labels) arrays (numpy or on a device; images (N, C, H, W), (N, H, W, C) or (N, H, W), uint8
        or float, labels int 0..K-1), a :class:`gpucnn.data.Dataset`, a built-in data set's name, or a path to
        an .npz file or an image folder (see :mod:`gpucnn.data.files`).
    validation: a fraction of `train` carved out with the seed (0.1), data as `train`, or None (a file's own
        val split if it has one). test: data as `train`, None, or "auto" (the test split of the data set named
        by `train`, if any).
    epochs, batch_size, optimizer (:func:`gpucnn.optim.names`), lr, weight_decay (None: 0.05 for adamw, else
        0), decay_all (False: biases and normalisation parameters are not decayed), schedule ("cosine", "step",
        "constant", over the planned run), warmup (steps), clip (max global gradient norm), augment (True or
        "crop", "flip", "crop,flip").
    early_stopping: stop after this many epochs without improvement of the validation metric `select`
        ("loss": lowest validation loss, "acc": highest accuracy). test_every_epoch: score the test split
        each epoch too (with validation data it is otherwise scored once, at the end).
    out: the run folder (None: write nothing); resume / overwrite an existing run there. device: "cpu",
        "cuda", "emulated", "auto" or None ($GPUCNN_DEVICE, else auto). seed: everything random.
    on_nonfinite: "stop" (NumericalFaultError) or "skip" NaN/inf steps. log: called with each line (None:
        silent); log_every: seconds between progress redraws on stderr. settings: more entries for config.json.

    Raises ValueError (bad settings, data or model; an existing run without resume/overwrite),
    DatasetError, CheckpointError, NumericalFaultError.
    """
    log = log or (lambda line: None)
    lower = lambda v: v.strip().lower() if isinstance(v, str) else v
    optimizer, schedule, select, on_nonfinite = map(lower, (optimizer, schedule, select, on_nonfinite))
    _check(dict(epochs=epochs, batch_size=batch_size, limit_train=limit_train, limit_test=limit_test,
                early_stop=early_stopping, warmup=warmup, lr=lr, weight_decay=weight_decay, clip=clip,
                log_every=log_every, on_nonfinite=on_nonfinite, select=select, schedule=schedule,
                optimizer=optimizer, seed=seed))
    _inputs.model_name(model)  # an unknown model name fails before any data is read
    folder = None
    if out is not None:
        folder = RunFolder(out, resume=resume, overwrite=overwrite)
        folder.check()
    elif resume:
        raise ValueError("resume needs the run folder (out) to resume from")
    saved = load_checkpoint(folder.checkpoint) if resume else None

    dev = devices.get_device(device)
    devices.seed(seed)
    data = _inputs.prepare(train, validation, test, seed=seed, limit_train=limit_train, limit_test=limit_test,
                           data_dir=data_dir, download=download)
    if early_stopping and data.val is None:
        raise ValueError("early-stop needs validation data: add --val-split 0.1 (validation=0.1) or a val split")
    net, name = _inputs.build_model(model, data)
    config = {**{k: v for k, v in (settings or {}).items() if k not in ("resume", "overwrite")},
              "model": name, "dataset": data.identity, "epochs": epochs, "batch_size": batch_size,
              "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "decay_all": bool(decay_all),
              "schedule": schedule, "warmup": warmup, "clip": clip, "augment": augment, "val_split": data.validation,
              "early_stop": early_stopping, "select": select, "test_every_epoch": bool(test_every_epoch),
              "seed": seed, "on_nonfinite": on_nonfinite, "limit_train": limit_train, "limit_test": limit_test,
              "device": device}
    opt = make_optimizer(optimizer, lr, weight_decay, decay_all).resolve(net.params)
    train_loader, val_loader, test_loader = _inputs.loaders(data, batch_size=batch_size, seed=seed, augment=augment,
                                                            device=dev)
    steps = len(train_loader)
    sched = optim.make_schedule(schedule, lr, epochs * steps, warmup)
    history = History(select=select, model=net, out=folder.path if folder else None, device=str(dev),
                      classes=data.classes)
    start_epoch, step, best_state = 1, 0, None
    if saved is not None:
        _check_same_run(config, saved, name, data)
        step, best_state = saved.step, _restore(saved, net, opt, folder, history, select)
        start_epoch = saved.epoch + 1
    net.to(dev)

    from ..layers import SoftmaxCrossEntropy
    loss_layer = SoftmaxCrossEntropy()
    progress = Progress(interval=log_every)

    def kept():
        return (f"the last good checkpoint (epoch {history.rows[-1]['epoch']}) is {folder.checkpoint}"
                if history.rows and folder else "no checkpoint was written")
    trainer = Trainer(net, opt, sched, train_loader, loss_layer=loss_layer, clip=clip, on_nonfinite=on_nonfinite,
                      progress=progress, kept=kept, lr_hint=lr, global_step=step)

    def contents(state, with_optimizer=True):
        return dict(model_name=name, model_kwargs=data.shape_kwargs, model_state=state,
                    optim_state=opt.state_dict() if with_optimizer else None, epoch=history.rows[-1]["epoch"],
                    step=trainer.global_step, rng_state=devices.get_rng_state(), config=config,
                    history=[metrics.without_timing(r) for r in history.rows], data=data.meta)

    if folder:
        folder.open()
        folder.write_json(CONFIG, config)
        folder.write_metrics(history.rows)
    stop = metrics.early_stop_due(history.rows, select, early_stopping)
    label = (name.rsplit("/", 1)[-1] if name else getattr(model, "__name__", None)) or type(net).__name__
    _announce(log, saved, folder, start_epoch, epochs, stop, net, label, data, dev, config,
              opt, sched, schedule, step, epochs * steps)

    start = last_plot = time.perf_counter()
    last_eval = None
    title = f"{label} on {data.name}"
    for epoch in range(start_epoch, epochs + 1):
        if stop:
            break
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # NaN/inf are caught and
            stats = trainer.train_epoch(epoch, epochs)                         # reported by the fault check
            val = (evaluate(net, val_loader, loss_layer, progress, f"epoch {epoch}/{epochs} validation")
                   if val_loader else None)
            tst = (evaluate(net, test_loader, loss_layer, progress, f"epoch {epoch}/{epochs} test")
                   if test_loader and (val is None or test_every_epoch) else None)
        last_eval = tst or val or last_eval
        row = _row(epoch, stats, val, tst)
        history.rows.append(row)
        state = net.state_dict()
        if folder:
            folder.save_checkpoint(**contents(state))
        if val is not None and history.best_epoch == epoch:
            best_state = state
            if folder:
                folder.save_checkpoint(BEST, **contents(state, with_optimizer=False))
        if folder:
            folder.append_metrics(row)
        log(metrics.epoch_line(row, epochs))
        stop = metrics.early_stop_due(history.rows, select, early_stopping)
        if stop:
            log(f"early stop: validation {'loss' if select == 'loss' else 'accuracy'} has not improved for "
                f"{plural(early_stopping, 'epoch')} (best: epoch {history.best_epoch})")
        if folder and time.perf_counter() - last_plot >= PLOT_INTERVAL and epoch < epochs and not stop:
            folder.pictures(history.rows, net, title, log)
            last_plot = time.perf_counter()

    history.stopped_early = stop
    if val_loader is not None and best_state is not None and history.best_epoch != history.rows[-1]["epoch"]:
        net.load_state_dict(best_state)        # the selected epoch's weights
    if test_loader is not None and val_loader is not None and history.rows:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, acc, confusion = evaluate(net, test_loader, loss_layer, progress, "test")
        history.test = {"loss": loss, "acc": acc, "epoch": history.best_epoch}
        last_eval = (loss, acc, confusion)
        log(f"test (epoch {history.best_epoch}'s weights, chosen by validation "
            f"{'loss' if select == 'loss' else 'accuracy'}): loss {loss:.4f} acc {100 * acc:.2f}%")
    elif test_loader is not None and history.rows and history.rows[-1].get("test_acc") is not None:
        last = history.rows[-1]
        history.test = {"loss": last["test_loss"], "acc": last["test_acc"], "epoch": last["epoch"]}
    history.confusion = None if last_eval is None else last_eval[2]
    net.eval()
    history.seconds = time.perf_counter() - start
    if folder and history.rows:
        folder.write_json(RESULTS, {"epochs_run": history.rows[-1]["epoch"], "best_epoch": history.best_epoch,
                                    "select": select if val_loader is not None else None,
                                    "stopped_early": stop, "test": history.test,
                                    "best": metrics.without_timing(history.best) if history.best else None})
        folder.pictures(history.rows, net, title, log)
    return history


def _row(epoch, stats, val, tst) -> dict:
    """The metrics.jsonl row of an epoch (see :mod:`.metrics`)."""
    seconds = time.perf_counter() - stats["started"]
    row = {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"]}
    for split, result in (("val", val), ("test", tst)):
        if result is not None:
            row[f"{split}_loss"], row[f"{split}_acc"] = result[0], result[1]
    row.update({"seconds": round(seconds, 3),
                "images_per_second": round(stats["seen"] / max(stats["seconds"], 1e-9), 1), "lr": stats["lr"],
                "skipped_steps": stats["skipped"]})
    return row


def _check_same_run(config: dict, saved, name: str, data):
    """ValueError unless the run keeps the saved run's run-defining settings; CheckpointError when the
    checkpoint holds another model."""
    path = saved.path
    old = {**LEGACY, **saved.config}
    norm = lambda v: v.lower() if isinstance(v, str) else v
    conflicts = [f"{k.replace('_', '-')} {config.get(k)!r} (the run uses {old.get(k)!r})"
                 for k in RUN_DEFINING if k in old and norm(config.get(k)) != norm(old.get(k))]
    if conflicts:
        raise ValueError(f"--resume: {path} was trained with other settings: {'; '.join(conflicts)}. "
                         f"Keep the run's settings to continue it, or pick another --out to start a new run")
    if (saved.model_name and name and saved.model_name != name) or saved.model_kwargs != data.shape_kwargs:
        raise CheckpointError(f"checkpoint {path}: holds {saved.model_name or 'a model'}({saved.model_kwargs}), "
                              f"but the run builds {name or 'a model'}({data.shape_kwargs})")


def _restore(saved, net, opt, folder, history, select):
    """Load the checkpoint into the model, optimizer and RNG and its rows into the history; returns the best
    epoch's weights (from the checkpoint itself or best.npz) or None."""
    try:
        saved.load_into(net)
        if saved.optim_state is not None:
            opt.load_state_dict(saved.optim_state)
        if saved.rng_state is not None:
            devices.set_rng_state(saved.rng_state)
        history.rows = [row for row in saved.history if row["epoch"] <= saved.epoch]
        best = metrics.best_row(history.rows, select)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as e:   # a well-formed file whose contents do not fit
        raise CheckpointError(f"checkpoint {saved.path}: unusable contents ({type(e).__name__}: {e})") from None
    history.rows = metrics.with_timing(history.rows, folder.read_metrics())
    if best is None:
        return None
    if best["epoch"] == saved.epoch:
        return saved.model_state
    try:
        kept = load_checkpoint(folder.best)
    except CheckpointError:
        kept = None
    return kept.model_state if kept is not None and kept.epoch == best["epoch"] else None


def _announce(log, saved, folder, start_epoch, epochs, stop, net, label, data, dev, config, opt, sched, schedule,
              step, sched_total):
    """The run's first lines: what is trained on what, or where a resumed run stands (and how its schedule
    changes), and how the run is scored when the data has no test split."""
    out = f" -> {folder.path}" if folder else ""
    if stop:
        log(f"{folder.checkpoint} stopped early at epoch {start_epoch - 1} (no improvement for "
            f"{plural(config['early_stop'], 'epoch')}): nothing to do")
        return
    if start_epoch > epochs:
        log(f"{folder.checkpoint} already holds epoch {start_epoch - 1} of {epochs}: nothing to do")
        return
    if saved is not None:
        log(f"resuming {folder.path} at epoch {start_epoch}/{epochs} (global step {step}) on {dev}")
        planned = saved.config.get("epochs")
        if planned != epochs and schedule in LENGTH_DEPENDENT and isinstance(planned, int):
            steps_per_epoch = sched_total // epochs
            old = optim.make_schedule(schedule, config["lr"], planned * steps_per_epoch, config["warmup"])
            log(f"--epochs {epochs} (the run was planned for {planned}): the {schedule} schedule now spans "
                f"{plural(epochs, 'epoch')} instead of {planned}, so the learning rate at step {step} goes from "
                f"{old.lr_at(step):.2e} to {sched.lr_at(step):.2e}")
        return
    decay = opt.weight_decay
    groups = " (not on biases and normalisation parameters)" if decay and opt.groups else ""
    log(f"training {label} ({net.num_params():,} parameters) on {data.name} ({data.describe()}) on {dev}: "
        f"{config['optimizer']} lr {config['lr']:g} {schedule}, weight decay {decay:g}{groups}, batch "
        f"{config['batch_size']}, {plural(epochs, 'epoch')}"
        + (f", early stop after {plural(config['early_stop'], 'epoch')} without improvement"
           if config["early_stop"] else "") + out)
    note = data.scoring_note()
    if note:
        log(note)
