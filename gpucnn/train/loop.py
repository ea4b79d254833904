"""The step loop: an epoch of forward, backward and update steps (:class:`Trainer`), and evaluation.

A step never waits for the device: the loss sum, the correct count and the first non-finite step are kept
as 0-d device arrays and read back (:func:`.metrics.read`) only where something is shown (a progress redraw,
the epoch's end). Numerical faults: with ``on_nonfinite="stop"`` the first step with a NaN/inf loss or
gradient is noted on the device and the epoch stops at the next read-back with NumericalFaultError; with
``"skip"`` such steps are skipped (no update, batch-norm statistics restored) and counted, which reads one
flag back per step (a host sync per step, on a GPU only in this mode).

The loop sets the model's mode itself: ``model.train()`` for an epoch; :func:`evaluate` runs every batch in
eval mode (``forward(x, train=False)``) and leaves the model's own mode as it was.
"""
from __future__ import annotations

import time

import numpy as np

from .. import devices, optim
from ..devices import ops
from . import metrics


class NumericalFaultError(RuntimeError):
    """A step produced a NaN or infinite loss or gradient (with on_nonfinite='stop')."""

    def __init__(self, message, epoch, step, global_step):
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step


NONFINITE_MODES = ("stop", "skip")


def evaluate(model, loader, loss_layer=None, progress=None, head: str = "evaluation"):
    """(mean loss, accuracy, confusion matrix) of the model on every batch of the loader, in eval mode.

    Every batch runs as ``model.forward(x, train=False)`` (running statistics, no dropout), whatever the
    model's own mode, which is left as it was; `model` may be any object with that method (an ONNX session
    wrapper, say). The confusion
    matrix is a host int64 array, rows = true class, columns = predicted class. The sums and counts stay on the
    device until the end: one device-to-host transfer (and host sync) per evaluation. The counts are scattered
    with ``add.at`` (integer atomics on a GPU: exact and order-independent), not with ``bincount``, which reads
    back twice per call on CuPy (cupy/_statistics/histogram.py). `progress` (a :class:`.progress.Progress`)
    shows the phase as `head`, without reading the device. ValueError when the loader yields no batch.
    """
    from ..layers import SoftmaxCrossEntropy
    loss_layer = loss_layer or SoftmaxCrossEntropy()
    loss_sum = counts = ones = None
    n = k = 0
    if progress is not None:
        progress.begin(head, len(loader))
    try:
        for i, (x, y) in enumerate(loader):
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
            if progress is not None and progress.due():
                progress.show(i + 1)
    finally:
        if progress is not None:
            progress.clear()
    if counts is None:
        raise ValueError("evaluate: the loader yielded no batches")
    with devices.device_scope(counts):
        host = devices.to_cpu(xp.concatenate([counts.astype(xp.float64), loss_sum[None]]))
    confusion = host[:-1].astype(np.int64).reshape(k, k)
    return float(host[-1]) / n, float(np.trace(confusion)) / n, confusion


class EpochSums:
    """What :meth:`Trainer.step` adds to: what an epoch sums on the device (the loss times batch size, the correct count, the first non-finite
    global step or -1) and on the host (examples seen, counted, skipped)."""

    def __init__(self, xp):
        self.xp = xp
        self.loss = xp.zeros((), dtype=xp.float64)
        self.correct = xp.zeros((), dtype=xp.int64)
        self.first_bad = xp.full((), -1, dtype=xp.int64)
        self.seen = self.counted = self.skipped = 0


class Trainer:
    """Steps of one model over a loader: forward, loss, backward, :meth:`gradients_ready`, the non-finite
    check, clipping and the optimizer's update, at the rate the schedule gives for the global step.

    `loader` is anything with ``set_epoch(e)``, ``len()`` (steps per epoch) and iteration yielding ``(x, y)``
    on the model's device (the :class:`gpucnn.data.loader.Loader` interface). `kept` returns the sentence a
    fault report ends with (which checkpoint survives).
    """

    def __init__(self, model, optimizer, schedule, loader, *, loss_layer, clip=None, on_nonfinite="stop",
                 progress=None, kept=lambda: "", lr_hint: float | None = None, global_step: int = 0):
        self.model, self.opt, self.schedule, self.loader = model, optimizer, schedule, loader
        self.loss_layer, self.clip, self.progress, self.kept = loss_layer, clip, progress, kept
        self.skip_mode = on_nonfinite == "skip"
        self.lr_hint = lr_hint
        self.global_step = global_step

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def gradients_ready(self, grads: dict) -> dict:
        """The one point where a step's gradients are complete and not yet used: a data-parallel trainer
        averages them across processes here (one all-reduce per step). Returns the gradients to use."""
        return grads

    def train_epoch(self, epoch: int, epochs: int) -> dict:
        """One pass over the training data in training mode, with the model's GPU current (cuda:N); numbers
        are read back only at progress redraws and at the end. Returns {"loss", "acc" (None when no step
        counted), "seen", "skipped", "lr", "started", "seconds"}."""
        with devices.device_scope(self.model.device):
            return self._epoch(epoch, epochs)

    def _epoch(self, epoch: int, epochs: int) -> dict:
        model = self.model
        self.prepare()
        xp = devices.get_array_module(*model.params.values())
        sums = EpochSums(xp)
        model.train()
        self.loader.set_epoch(epoch)
        first_step = self.global_step
        t0 = time.perf_counter()
        lr = self.opt.lr
        if self.progress is not None:
            self.progress.begin(f"epoch {epoch}/{epochs}", self.steps_per_epoch)
        for x, y in self.loader:
            lr = self.step(x, y, sums)
            if self.progress is not None and self.progress.due():
                total_loss, total_correct, bad = metrics.read(sums.loss, sums.correct, sums.first_bad)
                self._fault_check(epoch, first_step, bad)
                self.progress.show(self.global_step - first_step,
                                   f"loss {total_loss / max(sums.counted, 1):.4f} "
                                   f"acc {100 * total_correct / max(sums.counted, 1):.2f}% "
                                   f"{sums.seen / max(time.perf_counter() - t0, 1e-9):.0f} img/s")
        total_loss, total_correct, bad = metrics.read(sums.loss, sums.correct, sums.first_bad)
        if self.progress is not None:
            self.progress.clear()
        self._fault_check(epoch, first_step, bad)
        counted = sums.counted
        return {"loss": total_loss / counted if counted else None,
                "acc": total_correct / counted if counted else None,
                "seen": sums.seen, "skipped": sums.skipped, "lr": lr, "started": t0,
                "seconds": time.perf_counter() - t0}

    def prepare(self):
        """Put the model's parameters and gradients into flat buffers laid out by the optimizer's groups
        (once, and again after the model moved), so that an update is one launch per group and the
        non-finite check one pass."""
        model = self.model
        if devices.flat.owner(model.params) is None and model.params:
            model.flatten_parameters(self.opt.flat_order(model.params))

    def step(self, x, y, sums: "EpochSums"):
        """One training step on batch (x, y): the rate for the global step, forward, loss, backward,
        :meth:`gradients_ready`, the non-finite check, clipping, the update and the epoch's sums, all on the
        device (one kernel each for the check and the sums); returns the rate used. In skip mode the check's
        flag is read back (one host sync) and a bad step is undone: no update, batch statistics restored."""
        model = self.model
        lr = self.schedule.apply(self.opt, self.global_step)
        if self.skip_mode:  # a skipped step must not leave its batch statistics behind either
            kept_buffers = {k: v.copy() for k, v in model.buffers.items()}
        logits = model(x)
        loss = self.loss_layer.forward(logits, y)
        model.backward(self.loss_layer.backward())
        grads = self.gradients_ready(model.grads)
        n = int(x.shape[0])
        if self.skip_mode and not bool(optim.grads_finite(grads, loss)):  # one host sync per step
            sums.skipped += 1
            for k, v in model.buffers.items():
                v[...] = kept_buffers[k]
        else:
            if not self.skip_mode:
                self.note_nonfinite(grads, loss, sums)
            if self.clip is not None:
                optim.clip_grad_norm(grads, self.clip)
            self.opt.update(model.params, grads)
            self.accumulate(logits, y, loss, n, sums)
        sums.seen += n
        self.global_step += 1
        return lr

    def note_nonfinite(self, grads, loss, sums: "EpochSums"):
        """sums.first_bad becomes this global step if the loss or a gradient is NaN or infinite (and no step
        before was): one kernel over the flat gradients, no sync."""
        optim.note_nonfinite(grads, loss, sums.first_bad, self.global_step)

    def accumulate(self, logits, y, loss, n, sums: "EpochSums"):
        """The step's loss times its batch size and its correct count added to the epoch's sums: one kernel."""
        ops.accumulate_metrics(logits, y, loss, n, sums.loss, sums.correct)
        sums.counted += n

    def _fault_check(self, epoch, first_step, bad):
        """NumericalFaultError if a step of this epoch had a NaN/inf (bad = its global step, or -1)."""
        if bad < 0:
            return
        bad = int(bad)
        step = bad - first_step + 1
        if self.progress is not None:
            self.progress.clear()
        hint = f" (it was {self.lr_hint:g})" if self.lr_hint is not None else ""
        raise NumericalFaultError(
            f"non-finite loss or gradient (NaN or inf) at epoch {epoch}, step {step} (global step {bad + 1}); "
            f"stopped without saving epoch {epoch}: {self.kept()}. Try a lower --lr{hint}, --clip, or "
            f"--on-nonfinite skip", epoch, step, bad + 1)
