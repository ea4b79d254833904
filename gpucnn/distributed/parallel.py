"""The data-parallel wrapper: :class:`DataParallel` (one process's share of each step, gradients summed with one
all-reduce per bucket, synchronised batch norm) and :class:`Buckets` (named arrays as contiguous buffers for
collectives). See the package doc (gpucnn.distributed)."""
from __future__ import annotations

import contextlib

from .. import devices
from ..data.loader import shard_bounds
from ..devices import get_array_module
from ..devices.core import device_scope
from ..layers.normalization import _BatchNorm
from .communicators import Communicator

from ..devices.flat import owner as _flat_owner


class Buckets:
    """Named arrays as contiguous buffers for collectives: the arrays' one flat buffer when they are all views of
    one (``gpucnn.devices.flat``: packing then copies nothing), else one buffer per dtype and device, the
    arrays in order (a bucket), filled by :meth:`pack` and read back by :meth:`unpack` (one device copy per
    array each way).

    One bucket per dtype rather than several of a bounded size: the gradients are reduced after the whole
    backward pass (there is no overlap with it to win by reducing early buckets first), and one collective per
    step pays the per-collective latency once, which dominates for models of LeNet's size (measured: see the
    README's data-parallel section, 1.33 ms per step for LeNet-5's 10 arrays one by one against 1.04 ms for one
    bucket, 2 processes on a 2-core machine).
    """

    def __init__(self, arrays: dict):
        self.arrays = dict(arrays)
        flat = _flat_owner(self.arrays)
        self._layout = []   # (bucket, [(name, start, stop)])
        if flat is not None:
            self.buckets = [flat.buffer]
            return
        groups: dict = {}
        for name, a in self.arrays.items():
            groups.setdefault((a.dtype.name, devices.device_of(a)), []).append(name)
        for names in groups.values():
            first = self.arrays[names[0]]
            xp = get_array_module(first)
            spans, start = [], 0
            for name in names:
                spans.append((name, start, start + int(self.arrays[name].size)))
                start += int(self.arrays[name].size)
            with device_scope(first):
                self._layout.append((xp.empty(start, first.dtype), spans))
        self.buckets = [bucket for bucket, _ in self._layout]

    def holds(self, arrays: dict) -> bool:
        """Whether `arrays` are the very arrays these buckets were made for."""
        return len(arrays) == len(self.arrays) and all(self.arrays.get(k) is v for k, v in arrays.items())

    def pack(self):
        """Copy the arrays into their buckets; returns the buckets."""
        for bucket, spans in self._layout:
            with device_scope(bucket):
                for name, start, stop in spans:
                    bucket[start:stop] = self.arrays[name].reshape(-1)
        return self.buckets

    def unpack(self):
        """Copy the buckets back into the arrays (in place)."""
        for bucket, spans in self._layout:
            with device_scope(bucket):
                for name, start, stop in spans:
                    a = self.arrays[name]
                    a[...] = bucket[start:stop].reshape(a.shape)


# ------------------------------------------------------------------------------------------ data parallel

class _BatchStats:
    """What a synchronised batch-norm layer reads (see gpucnn.layers.normalization._BatchNorm.synchronise): every
    process's example count in the current step, this process's rank and the all-gather."""

    def __init__(self, comm):
        self.comm, self.counts, self.rank = comm, None, comm.rank

    def allgather(self, a):
        return self.comm.allgather(a)


class DataParallel:
    """One process's share of data-parallel training of `model` over `comm` (its device's communicator).

    Made, it sets every parameter and buffer to process 0's (one broadcast). Then, each step of a batch of
    ``total`` examples (every process's share together, :func:`gpucnn.data.loader.shard_bounds`):

    - :meth:`batch_share` gives this process's count n and its share ``n / total`` of the loss: the trainer
      scales the loss gradient by it, so that each process back-propagates the single-process gradient of its
      examples (the mean over the whole batch), and the gradients of the processes *sum* to the single-process
      gradient, an uneven last batch included. A process whose share is empty runs the batch's first example
      with share 0 (the loader pads it) and counts nothing.
    - :meth:`reduce_gradients` sums the gradients over processes with one all-reduce per bucket (one per step
      with a flat gradient buffer, see :class:`Buckets`). A process whose loss is not finite puts a NaN into its
      gradients first, so the reduced gradients, the same on every process, carry the non-finite decision.
    - within :meth:`training`, batch-norm layers normalise over the whole batch (``sync_batch_norm``, the
      default: per-process statistics would differ from one process's, and batch norm would then not train as
      one process does), and dropout draws for the whole batch and keeps this process's rows
      (:func:`gpucnn.devices.batch_rows`), so the host and device random generators of every process stay in
      the state one process's would have.
    """

    def __init__(self, model, comm: Communicator, *, sync_batch_norm: bool = True):
        self.model, self.comm = model, comm
        self._stats = _BatchStats(comm) if sync_batch_norm and comm.size > 1 else None
        self._grads = None
        self.broadcast_parameters()

    def broadcast_parameters(self):
        """Every parameter and buffer of the model <- process 0's."""
        if self.comm.size == 1:
            return
        arrays = {**{f"p:{k}": v for k, v in self.model.params.items()},
                  **{f"b:{k}": v for k, v in self.model.buffers.items()}}
        if not arrays:
            return
        buckets = Buckets(arrays)
        for bucket in buckets.pack():
            self.comm.broadcast(bucket, 0)
        buckets.unpack()

    @contextlib.contextmanager
    def training(self):
        """An epoch of training: batch-norm layers synchronised, dropout drawing for the whole batch."""
        norms = [layer for layer in _layers(self.model) if isinstance(layer, _BatchNorm)] if self._stats else []
        for layer in norms:
            layer.synchronise(self._stats)
        try:
            yield self
        finally:
            for layer in norms:
                layer.synchronise(None)
            devices.batch_rows(None)

    def batch_share(self, total: int) -> tuple[int, float]:
        """(examples this process counts in a step of `total`, its share of the step's loss); sets the step's
        counts for synchronised batch norm and the rows dropout keeps."""
        rank, size = self.comm.rank, self.comm.size
        if size == 1:
            return total, 1.0
        start, stop = shard_bounds(total, rank, size)
        if self._stats is not None:
            self._stats.counts = [b - a for a, b in (shard_bounds(total, r, size) for r in range(size))]
        devices.batch_rows((total, start, stop) if stop > start else (total, 0, 1))
        return stop - start, (stop - start) / total

    def reduce_gradients(self, grads: dict, loss=None, counted: int = 1) -> dict:
        """The gradients summed over every process, in place (one all-reduce per bucket); `loss` and `counted`
        (this process's examples in the step): a process that counts examples and whose loss is not finite
        makes the reduced gradients NaN. Returns `grads`."""
        if self.comm.size == 1:
            return grads
        if self._grads is None or not self._grads.holds(grads):
            self._grads = Buckets(grads)
        buckets = self._grads.pack()
        if loss is not None and counted:
            first = buckets[0][:1]
            with device_scope(first):
                xp = get_array_module(first)
                first[...] = xp.where(xp.isfinite(loss), first, xp.nan)
        for bucket in buckets:
            self.comm.allreduce(bucket)
        self._grads.unpack()
        return grads

    def sum(self, *values) -> list[float]:
        """Host numbers summed over every process (the step loop's loss sums and counts)."""
        return [float(v) for v in self.comm.sum_host(values)]


def _layers(layer):
    yield layer
    for child in layer.children():
        yield from _layers(child)
