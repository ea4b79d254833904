"""The emulated GPU's NCCL: :class:`EmulatedNcclComm` has the methods of :class:`.cuda.NcclComm` and works on
emulated arrays in place, through MPI between the processes' buffers, so that the device path of a
data-parallel run (collectives on device buffers, under the device's scope) runs where there is no GPU.

It refuses what NCCL refuses (a buffer that is not contiguous, a dtype NCCL does not reduce, an array of another
GPU or another GPU current: :func:`.cuda.check_collective_operand`) and counts each collective as one device
operation (``nccl:<name>``): NCCL runs a kernel on the device and copies nothing to the host, so no transfer is
counted, although the stand-in's buffers travel through MPI on the host.
"""
from __future__ import annotations

import numpy as np

from . import counters, emulated
from .cuda import check_collective_operand


class EmulatedNcclComm:
    """One process's stand-in NCCL communicator on emulated GPU `index`, over `mpi` (an mpi4py communicator, or
    anything with its Allreduce, Allgather, Bcast and Get_size on numpy buffers). Collectives are synchronous
    here: :meth:`marker` gives None (nothing left to wait for)."""

    def __init__(self, mpi, index: int):
        self.mpi, self.index, self.size = mpi, int(index), int(mpi.Get_size())

    def _buffer(self, a, what):
        if not isinstance(a, emulated.EmulatedArray):
            raise TypeError(f"NCCL {what}: expected an array of the emulated GPU, got {type(a).__name__}")
        check_collective_operand(a, self.index, emulated.current(), f"NCCL {what}")
        counters.op(f"nccl:{what}")
        return emulated.buffer(a)

    def all_reduce(self, a):
        """a <- the sum of every process's a, in place."""
        buf = self._buffer(a, "all_reduce")
        out = np.empty_like(buf)
        self.mpi.Allreduce(buf, out)
        buf[...] = out

    def all_gather(self, a):
        """Every process's a stacked: a new array (size, *a.shape) on the same emulated GPU."""
        buf = self._buffer(a, "all_gather")
        out = np.empty((self.size,) + buf.shape, buf.dtype)
        self.mpi.Allgather(buf, out)
        return emulated.EmulatedArray(out, self.index)

    def broadcast(self, a, root: int = 0):
        """a <- process `root`'s a, in place."""
        self.mpi.Bcast(self._buffer(a, "broadcast"), root=int(root))

    def marker(self):
        return None

    def abort(self):
        pass
