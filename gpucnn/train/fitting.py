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

Data-parallel (``distributed=True`` in every process of an MPI job, see :mod:`gpucnn.distributed`): the batch
size is the global batch and each process trains on its share of every batch (and of the epoch's crops, flips
and dropout draws), so the run is the single-process run to float rounding; the processes evaluate their shares
of the validation and test data and sum the counts; process 0 alone checks and reads the run folder (broadcasting
the checkpoint to the others) and writes its files and log lines. Checkpoints are those of a single-process run
(the same step, random state and metrics), so ``--resume`` may use another number of processes.
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

# Schedules whose rate at a step depends on the run's planned length (cosine and linear span it; step decays at thirds).
LENGTH_DEPENDENT = ("cosine", "linear", "step")

# Settings that make a run what it is: a resumed run must keep them. The others (epochs, lr, clip, early_stop,
# select, on_nonfinite, limit_test, device, ...) may change when a run is resumed.
RUN_DEFINING = ("model", "dataset", "batch_size", "optimizer", "weight_decay", "decay_all", "schedule", "warmup",
                "seed", "limit_train", "augment", "val_split", "label_smoothing")
# What a setting missing from an older checkpoint meant: before parameter groups every parameter was decayed;
# label smoothing came later, and before it the loss had none.
LEGACY = {"decay_all": True, "label_smoothing": 0.0}
# Settings of how a run is launched, not of the run: never saved with it (a run may resume otherwise).
LAUNCH_ONLY = ("resume", "overwrite", "distributed", "timeout")

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

    for name in ("epochs", "batch_size", "eval_every"):
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
    if not (number(o["label_smoothing"]) and 0 <= o["label_smoothing"] < 1):
        raise ValueError(f"label-smoothing must be a number in [0, 1), got {o['label_smoothing']!r}")
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
        warmup: int = 0, clip: float | None = None, augment=False, label_smoothing: float = 0.0, early_stopping: int | None = None,
        select: str = "loss", test_every_epoch: bool = False, eval_every: int = 1, out=None, resume: bool = False,
        overwrite: bool = False, device=None, seed: int = 0, on_nonfinite: str = "stop",
        limit_train: int | None = None, limit_test: int | None = None, data_dir=None, download: bool = True,
        log=print, log_every: float | None = None, precision: str = "fp32", settings: dict | None = None,
        distributed=False, sync_batch_norm: bool = True) -> History:
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
        0), decay_all (False: biases and normalisation parameters are not decayed), schedule ("cosine",
        "linear", "step", "constant", over the planned run), warmup (steps), clip (max global gradient norm), augment (True or
        "crop", "flip", "crop,flip"), label_smoothing (the loss's epsilon in [0, 1): targets (1 - eps) on the
        label plus eps / classes everywhere, as torch.nn.CrossEntropyLoss(label_smoothing=eps); the reported
        losses include it).
    early_stopping: stop after this many epochs without improvement of the validation metric `select`
        ("loss": lowest validation loss, "acc": highest accuracy). test_every_epoch: score the test split
        each epoch too (with validation data it is otherwise scored once, at the end). eval_every: score the
        validation data (and the test split, where it is scored per epoch) after every eval_every-th epoch and
        after the last one only (1: every epoch); the other epochs' rows have no val_*/test_* columns, and best
        and early stopping consider the scored epochs. Not part of what makes the run: a resumed run may change it.
    out: the run folder (None: write nothing); resume / overwrite an existing run there. device: "cpu",
        "cuda", "emulated", "auto" or None ($GPUCNN_DEVICE, else auto). seed: everything random.
    precision: "fp32", "tf32" (float32 GEMMs on TF32 tensor cores) or "bf16" (mixed precision: bfloat16 GEMM
        operands, float32 master weights, optimizer state and loss); the whole run (training and evaluation)
        runs in it (:func:`gpucnn.precision`); tf32 and bf16 need a GPU device (PrecisionError on the CPU).
    on_nonfinite: "stop" (NumericalFaultError) or "skip" NaN/inf steps. log: called with each line (None:
        silent); log_every: seconds between progress redraws on stderr. settings: more entries for config.json.
    distributed: True (in every process of an MPI job: data-parallel training, see the module doc; a job of one
        process trains as without it), or a communicator from :func:`gpucnn.distributed.init` (to set its
        timeout). sync_batch_norm: with distributed, batch norm normalises over the whole batch (False: each
        process's share, which no longer trains as one process does). `device` "cuda", "emulated" or "auto"
        then means the GPU of the process's rank on its machine.

    Raises ValueError (bad settings, data or model; an existing run without resume/overwrite; PrecisionError,
        a ValueError, for a precision the device cannot run),
    DatasetError, CheckpointError, NumericalFaultError; distributed: DistributedError (no mpi4py or MPI),
    RootFailed (on the other processes when process 0 failed to open the run folder or to read the data).
    """
    log = log or (lambda line: None)
    lower = lambda v: v.strip().lower() if isinstance(v, str) else v
    optimizer, schedule, select, on_nonfinite = map(lower, (optimizer, schedule, select, on_nonfinite))
    _check(dict(epochs=epochs, batch_size=batch_size, limit_train=limit_train, limit_test=limit_test,
                early_stop=early_stopping, eval_every=eval_every, warmup=warmup, lr=lr, weight_decay=weight_decay,
                clip=clip, log_every=log_every, on_nonfinite=on_nonfinite, select=select, schedule=schedule,
                optimizer=optimizer, seed=seed, label_smoothing=label_smoothing))
    _inputs.model_name(model)  # an unknown model name fails before any data is read
    if out is None and resume:
        raise ValueError("resume needs the run folder (out) to resume from")
    comm = _communicator(distributed)
    folder = None if out is None else RunFolder(out, resume=resume, overwrite=overwrite,
                                                writes=comm is None or comm.rank == 0)
    opening = lambda: _open_run(folder, resume)
    saved = opening() if comm is None else comm.on_root(opening)   # process 0 alone reads the folder
    if comm is None:
        dev = devices.get_device(device)
    else:
        comm, dev = comm.for_device(device)
        log = log if comm.rank == 0 else (lambda line: None)
    precision = devices.precision.check(precision, dev)   # refused on the CPU before any data is read
    if not dev.is_gpu:
        devices.keep_host_memory()   # the step's temporaries reuse freed memory (GPUCNN_HOST_MEMORY)
    devices.seed(seed)
    prepare = lambda: _inputs.prepare(train, validation, test, seed=seed, limit_train=limit_train,
                                      limit_test=limit_test, data_dir=data_dir, download=download)
    data = prepare() if comm is None else _prepared_by_root_first(comm, prepare)
    if early_stopping and data.val is None:
        raise ValueError("early-stop needs validation data: add --val-split 0.1 (validation=0.1) or a val split")
    net, name = _inputs.build_model(model, data)
    config = {**{k: v for k, v in (settings or {}).items() if k not in LAUNCH_ONLY},
              "model": name, "dataset": data.identity, "epochs": epochs, "batch_size": batch_size,
              "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "decay_all": bool(decay_all),
              "schedule": schedule, "warmup": warmup, "clip": clip, "augment": augment,
              "label_smoothing": float(label_smoothing), "val_split": data.validation,
              "early_stop": early_stopping, "select": select, "test_every_epoch": bool(test_every_epoch),
              "eval_every": eval_every,
              "seed": seed, "on_nonfinite": on_nonfinite, "limit_train": limit_train, "limit_test": limit_test,
              "device": device, "precision": precision}
    if saved is not None:
        _check_same_run(config, saved, name, data)
    label = (name.rsplit("/", 1)[-1] if name else getattr(model, "__name__", None)) or type(net).__name__
    with devices.precision.precision(precision, dev):
        return _Session(net, name, label, data, config, dev, folder, log, log_every, comm,
                        sync_batch_norm).run(saved)


def _communicator(distributed):
    """The communicator of a data-parallel run of more than one process, or None."""
    if distributed is False or distributed is None:
        return None
    from .. import distributed as dist
    comm = dist.init() if distributed is True else distributed
    if not isinstance(comm, dist.Communicator):
        raise TypeError(f"distributed: expected True, False or a gpucnn.distributed communicator, got "
                        f"{type(distributed).__name__}")
    return comm if comm.size > 1 else None


def _prepared_by_root_first(comm, prepare):
    """prepare() on process 0, then on the others: one process downloads a missing data set (the others then
    find it where they share its folder), and when the data cannot be had, process 0 says why and the others
    stop with RootFailed."""
    first = {}

    def on_root():   # returns None: the data are not broadcast, only whether they could be had
        first["data"] = prepare()

    comm.on_root(on_root)
    return first["data"] if comm.rank == 0 else prepare()


def _open_run(folder, resume):
    """Check the run folder; the checkpoint to resume from, or None."""
    if folder is not None:
        folder.check()
    return load_checkpoint(folder.checkpoint) if resume else None


class _Session:
    """One call of fit once its inputs are settled: the optimizer, loaders and schedule, the epochs, and the
    end (the chosen weights, the final test, results.json and the pictures)."""

    def __init__(self, net, name, label, data, config, dev, folder, log, log_every, comm=None, sync_bn=True):
        c = config
        self.net, self.name, self.label, self.data, self.config = net, name, label, data, c
        self.dev, self.folder, self.log, self.comm, self.sync_bn = dev, folder, log, comm, sync_bn
        self.select, self.patience, self.epochs = c["select"], c["early_stop"], c["epochs"]
        self.opt = make_optimizer(c["optimizer"], c["lr"], c["weight_decay"], c["decay_all"]).resolve(net.params)
        self.train_loader, self.val_loader, self.test_loader = _inputs.loaders(
            data, batch_size=c["batch_size"], seed=c["seed"], augment=c["augment"], device=dev,
            shard=(comm.rank, comm.size) if comm else None)
        self.steps = len(self.train_loader)
        self.sched = optim.make_schedule(c["schedule"], c["lr"], c["epochs"] * self.steps, c["warmup"])
        self.history = History(select=self.select, model=net, out=folder.path if folder else None, device=str(dev),
                               classes=data.classes)
        from ..layers import SoftmaxCrossEntropy
        self.loss_layer = SoftmaxCrossEntropy(label_smoothing=c["label_smoothing"])
        self.progress = Progress(interval=log_every) if comm is None or comm.rank == 0 else None
        self.trainer = Trainer(net, self.opt, self.sched, self.train_loader, loss_layer=self.loss_layer,
                               clip=c["clip"], on_nonfinite=c["on_nonfinite"], progress=self.progress,
                               kept=self._kept, lr_hint=c["lr"])
        self.best_state = None
        self.title = f"{label} on {data.name}"

    def _kept(self) -> str:
        rows = self.history.rows
        return (f"the last good checkpoint (epoch {rows[-1]['epoch']}) is {self.folder.checkpoint}"
                if rows and self.folder else "no checkpoint was written")

    def _contents(self, state, with_optimizer=True) -> dict:
        """What checkpoint.npz (with the optimizer) and best.npz (without) hold after the last epoch."""
        rows = self.history.rows
        return dict(model_name=self.name, model_kwargs=self.data.shape_kwargs, model_state=state,
                    optim_state=self.opt.state_dict() if with_optimizer else None, epoch=rows[-1]["epoch"],
                    step=self.trainer.global_step, rng_state=devices.get_rng_state(), config=self.config,
                    history=[metrics.without_timing(r) for r in rows], data=self.data.meta)

    def run(self, saved) -> History:
        start_epoch = 1
        if saved is not None:
            self.best_state = _restore(saved, self.net, self.opt, self.folder, self.history, self.select)
            self.trainer.global_step, start_epoch = saved.step, saved.epoch + 1
        self.net.to(self.dev)
        if self.comm is not None:
            from ..distributed import DataParallel
            self.trainer.parallel = DataParallel(self.net, self.comm, sync_batch_norm=self.sync_bn)
        if self.folder:
            self.folder.open()
            self.folder.write_json(CONFIG, self.config)
            self.folder.write_metrics(self.history.rows)
        stop = metrics.early_stop_due(self.history.rows, self.select, self.patience)
        self._announce(saved, start_epoch, stop)
        start = last_plot = time.perf_counter()
        for epoch in range(start_epoch, self.epochs + 1):
            if stop:
                break
            stop = self._epoch(epoch)
            if self.folder and time.perf_counter() - last_plot >= PLOT_INTERVAL and epoch < self.epochs and not stop:
                self.folder.pictures(self.history.rows, self.net, self.title, self.log, self.history.best_epoch)
                last_plot = time.perf_counter()
        self.history.stopped_early = stop
        self._finish()
        self.history.seconds = time.perf_counter() - start
        return self.history

    def _epoch(self, epoch) -> bool:
        """Train an epoch, evaluate, save (checkpoint, then best.npz, then the metrics row), log; returns
        whether early stopping is due."""
        h, epochs = self.history, self.epochs
        scored = epoch % self.config["eval_every"] == 0 or epoch == epochs
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # NaN/inf are caught and
            stats = self.trainer.train_epoch(epoch, epochs)                    # reported by the fault check
            val = self._evaluate(self.val_loader, f"epoch {epoch}/{epochs} validation") if scored else None
            tst = (self._evaluate(self.test_loader, f"epoch {epoch}/{epochs} test")
                   if scored and (self.val_loader is None or self.config["test_every_epoch"]) else None)
        h.confusion = (tst or val or (None, None, h.confusion))[2]
        row = _row(epoch, stats, val, tst)
        h.rows.append(row)
        state = self.net.state_dict()
        if self.folder:
            self.folder.save_checkpoint(**self._contents(state))
        if val is not None and h.best_epoch == epoch:
            self.best_state = state
            if self.folder:
                self.folder.save_checkpoint(BEST, **self._contents(state, with_optimizer=False))
        if self.folder:
            self.folder.append_metrics(row)
        self.log(metrics.epoch_line(row, epochs))
        stop = metrics.early_stop_due(h.rows, self.select, self.patience)
        if stop:
            self.log(f"early stop: validation {_metric(self.select)} has not improved for "
                     f"{plural(self.patience, 'epoch')} (best: epoch {h.best_epoch})")
        return stop

    def _evaluate(self, loader, head):
        if loader is None:
            return None
        return evaluate(self.net, loader, self.loss_layer, self.progress, head, num_classes=len(self.data.classes),
                        reduce=self.comm.sum_host if self.comm else None)

    def _finish(self):
        """With validation data: the model takes the chosen epoch's weights and the test split is scored once
        with them; results.json and the pictures are written; the model is left in eval mode."""
        h = self.history
        if not h.rows:
            return
        chosen = h.best_epoch
        if chosen is not None and chosen != h.rows[-1]["epoch"]:
            if self.best_state is not None:
                with devices.device_scope(self.dev):
                    self.net.load_state_dict(self.best_state)
            else:
                self.log(f"the weights of epoch {chosen}, the best, were not kept (best.npz is missing or of "
                         f"another epoch): the model keeps those of epoch {h.rows[-1]['epoch']}")
                chosen = h.rows[-1]["epoch"]
        if self.test_loader is not None and self.val_loader is not None:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                loss, acc, h.confusion = self._evaluate(self.test_loader, "test")
            h.test = {"loss": loss, "acc": acc, "epoch": chosen}
            self.log(f"test (epoch {chosen}'s weights, chosen by validation {_metric(self.select)}): loss "
                     f"{loss:.4f} acc {100 * acc:.2f}%")
        elif h.rows[-1].get("test_acc") is not None:
            last = h.rows[-1]
            h.test = {"loss": last["test_loss"], "acc": last["test_acc"], "epoch": last["epoch"]}
        self.net.eval()
        if self.folder:
            self.folder.write_json(RESULTS, {
                "epochs_run": h.rows[-1]["epoch"], "best_epoch": h.best_epoch, "stopped_early": h.stopped_early,
                "select": self.select if self.val_loader is not None else None, "test": h.test,
                "best": metrics.without_timing(h.best) if h.best else None})
            self.folder.pictures(h.rows, self.net, self.title, self.log, h.best_epoch)

    def _announce(self, saved, start_epoch, stop):
        """The run's first lines: what is trained on what, or where a resumed run stands (and how its schedule
        changes), and how the run is scored when the data has no test split."""
        c, epochs, log = self.config, self.epochs, self.log
        if stop:
            log(f"{self.folder.checkpoint} stopped early at epoch {start_epoch - 1} (no improvement for "
                f"{plural(self.patience, 'epoch')}): nothing to do")
        elif start_epoch > epochs:
            log(f"{self.folder.checkpoint} already holds epoch {start_epoch - 1} of {epochs}: nothing to do")
        elif saved is not None:
            step = saved.step
            log(f"resuming {self.folder.path} at epoch {start_epoch}/{epochs} (global step {step}) on {self.dev}")
            planned = saved.config.get("epochs")
            if planned != epochs and c["schedule"] in LENGTH_DEPENDENT and isinstance(planned, int):
                old = optim.make_schedule(c["schedule"], c["lr"], planned * self.steps, c["warmup"])
                log(f"--epochs {epochs} (the run was planned for {planned}): the {c['schedule']} schedule now "
                    f"spans {plural(epochs, 'epoch')} instead of {planned}, so the learning rate at step {step} "
                    f"goes from {old.lr_at(step):.2e} to {self.sched.lr_at(step):.2e}")
        else:
            decay = self.opt.weight_decay
            groups = " (not on biases and normalisation parameters)" if decay and self.opt.groups else ""
            early = (f", early stop after {plural(self.patience, 'epoch')} without improvement"
                     if self.patience else "")
            where = self.comm.describe() if self.comm else self.dev
            smoothing = f", label smoothing {c['label_smoothing']:g}" if c["label_smoothing"] else ""
            log(f"training {self.label} ({self.net.num_params():,} parameters) on {self.data.name} "
                f"({self.data.describe()}) on {where}: {c['optimizer']} lr {c['lr']:g} {c['schedule']}, weight "
                f"decay {decay:g}{groups}{smoothing}, batch {c['batch_size']}, {plural(epochs, 'epoch')}{early}"
                + (f" -> {self.folder.path}" if self.folder else ""))
            note = self.data.scoring_note()
            if note:
                log(note)


def _metric(select: str) -> str:
    return "loss" if select == "loss" else "accuracy"


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
