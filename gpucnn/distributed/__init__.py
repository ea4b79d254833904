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
from .communicators import (DEFAULT_TIMEOUT, EXIT_ABORT, Communicator, DistributedError, MpiCommunicator,
                            NcclCommunicator, RootFailed, active, init, local_device)
from .parallel import Buckets, DataParallel
from .watchdog import Watchdog

__all__ = ["Communicator", "MpiCommunicator", "NcclCommunicator", "DataParallel", "Buckets", "Watchdog",
           "DistributedError", "RootFailed", "init", "active", "local_device", "DEFAULT_TIMEOUT", "EXIT_ABORT"]
