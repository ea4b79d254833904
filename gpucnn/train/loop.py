"""The step loop: an epoch of forward, backward and update steps (:class:`Trainer`), and evaluation.

A step never waits for the device: the loss sum, the correct count and the first non-finite step are kept
as 0-d device arrays and read back (:func:`.metrics.read`) only where something is shown (a progress redraw,
the epoch's end). Numerical faults: with ``on_nonfinite="stop"`` the first step with a NaN/inf loss or
gradient is noted on the device and the epoch stops at the next read-back with NumericalFaultError; with
``"skip"`` such steps are skipped (no update, batch-norm statistics restored) and counted, which reads one
flag back per step (a host sync per step, on a GPU only in this mode).

The loop sets the model's mode itself: ``model.train()`` for an epoch; :func:`evaluate` runs every batch in
eval mode (``forward(x, train=False)``) and leaves the model's own mode as it was.

Data-parallel training (``parallel``, a :class:`gpucnn.distributed.DataParallel`): each process steps through
its share of every batch (a sharded loader), back-propagates its share of the loss, and the gradients are summed
over the processes at :meth:`Trainer.gradients_ready`; the epoch's sums and counts are summed after the one
read-back, and the fault check runs only there (the same decision on every process), not at progress redraws,
which only process 0 shows, with its own share's numbers.
"""
from __future__ import annotations

import contextlib
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


def evaluate(model, loader, loss_layer=None, progress=None, head: str = "evaluation", reduce=None,
             num_classes: int | None = None):
    """(mean loss, accuracy, confusion matrix) of the model on every batch of the loader, in eval mode.

    Every batch runs as ``model.forward(x, train=False)`` (running statistics, no dropout), whatever the
    model's own mode, which is left as it was; `model` may be any object with that method (an ONNX session
    wrapper, say). The confusion
    matrix is a host int64 array, rows = true class, columns = predicted class. The sums and counts stay on the
    device until the end: one device-to-host transfer (and host sync) per evaluation. The counts are scattered
    with ``add.at`` (integer atomics on a GPU: exact and order-independent), not with ``bincount``, which reads
    back twice per call on CuPy (cupy/_statistics/histogram.py). `progress` (a :class:`.progress.Progress`)
    shows the phase as `head`, without reading the device. ValueError when the loader yields no batch.

    `reduce` (a data-parallel run's ``Communicator.sum_host``): the sums and counts read back are summed over
    the processes, each of which evaluated its share; a process whose loader yields nothing adds zeros, which
    needs `num_classes`.
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
    if counts is not None:
        with devices.device_scope(counts):
            host = devices.to_cpu(xp.concatenate([counts.astype(xp.float64), loss_sum[None]]))
    elif reduce is not None and num_classes is not None:
        k = int(num_classes)
        host = np.zeros(k * k + 1)
    else:
        raise ValueError("evaluate: the loader yielded no batches")
    host = np.append(host, n)
    if reduce is not None:
        host = reduce(host)
    n = int(host[-1])
    if n == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    confusion = host[:-2].astype(np.int64).reshape(k, k)
    return float(host[-2]) / n, float(np.trace(confusion)) / n, confusion


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
    fault report ends with (which checkpoint survives). `parallel`: a :class:`gpucnn.distributed.DataParallel`
    for one process of a data-parallel run (its loader then yields this process's share of each batch and
    has ``batch_sizes()``, the whole batches' sizes: a sharded :class:`gpucnn.data.DataLoader`).
    """

    def __init__(self, model, optimizer, schedule, loader, *, loss_layer, clip=None, on_nonfinite="stop",
                 progress=None, kept=lambda: "", lr_hint: float | None = None, global_step: int = 0,
                 parallel=None):
        self.model, self.opt, self.schedule, self.loader = model, optimizer, schedule, loader
        self.loss_layer, self.clip, self.progress, self.kept = loss_layer, clip, progress, kept
        self.skip_mode = on_nonfinite == "skip"
        self.lr_hint = lr_hint
        self.global_step = global_step
        self.parallel = parallel

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def gradients_ready(self, grads: dict, loss=None, counted: int = 1) -> dict:
        """The one point where a step's gradients are complete and not yet used: a data-parallel trainer sums
        them over the processes here (one all-reduce per step), the step's loss and this process's count of
        examples carrying the non-finite decision (see DataParallel.reduce_gradients). Returns the gradients
        to use."""
        if self.parallel is None:
            return grads
        return self.parallel.reduce_gradients(grads, loss, counted)

    def train_epoch(self, epoch: int, epochs: int) -> dict:
        """One pass over the training data in training mode, with the model's GPU current (cuda:N); numbers
        are read back only at progress redraws and at the end. Returns {"loss", "acc" (None when no step
        counted), "seen", "skipped", "lr", "started", "seconds"}."""
        parallel = self.parallel.training() if self.parallel is not None else contextlib.nullcontext()
        with devices.device_scope(self.model.device), parallel:
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
        totals = self.loader.batch_sizes() if self.parallel is not None else None
        for i, (x, y) in enumerate(self.loader):
            lr = self.step(x, y, sums, None if totals is None else totals[i])
            if self.progress is not None and self.progress.due():
                total_loss, total_correct, bad = metrics.read(sums.loss, sums.correct, sums.first_bad)
                if self.parallel is None:
                    self._fault_check(epoch, first_step, bad)
                self.progress.show(self.global_step - first_step,
                                   f"loss {total_loss / max(sums.counted, 1):.4f} "
                                   f"acc {100 * total_correct / max(sums.counted, 1):.2f}% "
                                   f"{sums.seen / max(time.perf_counter() - t0, 1e-9):.0f} img/s")
        total_loss, total_correct, bad = metrics.read(sums.loss, sums.correct, sums.first_bad)
        if self.parallel is not None:
            total_loss, total_correct, counted, seen = self.parallel.sum(total_loss, total_correct, sums.counted,
                                                                         sums.seen)
            sums.counted, sums.seen = int(counted), int(seen)
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

    def step(self, x, y, sums: "EpochSums", total: int | None = None):
        """One training step on batch (x, y): the rate for the global step, forward, loss, backward,
        :meth:`gradients_ready`, the non-finite check, clipping, the update and the epoch's sums, all on the
        device (one kernel each for the check and the sums); returns the rate used. In skip mode the check's
        flag is read back (one host sync) and a bad step is undone: no update, batch statistics restored.
        `total`: with ``parallel``, the size of the whole batch whose share (x, y) is."""
        model = self.model
        lr = self.schedule.apply(self.opt, self.global_step)
        # n: the examples this process counts; share: its part of the step's loss (see DataParallel)
        n, share = (int(x.shape[0]), 1.0) if self.parallel is None else self.parallel.batch_share(total)
        if self.skip_mode:  # a skipped step must not leave its batch statistics behind either
            kept_buffers = {k: v.copy() for k, v in model.buffers.items()}
        logits = model(x)
        loss = self.loss_layer.forward(logits, y)
        dout = self.loss_layer.backward()
        model.backward(dout if share == 1 else dout * share)
        grads = self.gradients_ready(model.grads, loss, n)
        counted_loss = loss if n else None   # a process running padding counts no loss (its gradients are 0)
        if self.skip_mode and not bool(optim.grads_finite(grads, counted_loss)):  # one host sync per step
            sums.skipped += 1
            for k, v in model.buffers.items():
                v[...] = kept_buffers[k]
        else:
            if not self.skip_mode:
                self.note_nonfinite(grads, counted_loss, sums)
            if self.clip is not None:
                optim.clip_grad_norm(grads, self.clip)
            self.opt.update(model.params, grads)
            if n:
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
