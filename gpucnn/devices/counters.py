"""Counts of the work a GPU would do, recorded by the emulated device: device operations, host syncs and
transfers between host and device.

A *device operation* is one call that would launch a CUDA kernel, a cuBLAS routine, a device-to-device copy or
a memset on CuPy 14.2: each ufunc call, each reduction, each matrix product (plus the copies CuPy makes of
operands cuBLAS cannot take), each copy (``astype``/``ascontiguousarray``/``copy`` when they copy, assignments
between device arrays), each fancy-indexing gather or scatter, each creation with a fill (``zeros``/
``zeros_like``, and ``fill``/``full`` of 0 on a contiguous array, are counted as ``memset``: CuPy issues
``cudaMemsetAsync`` for them, ``ndarray.fill`` in cupy/_core/core.pyx; ``ones``/``full`` launch its fill
kernel) and each RawKernel launch (``kernel:<name>``). Views (reshape without a copy, transpose, slicing) and
``empty`` cost nothing. Where CuPy's own count depends on run-time choices (CUB may split a whole-array
reduction into two launches, cuBLAS may run more than one kernel per GEMM) one is counted: the numbers are a
model of CuPy's launches, exact in what the library asks for, a lower bound of what the driver sees.

A *host sync* is a wait of the host for the device: every device-to-host read (``.get()``, ``cupy.asnumpy``,
``float()``/``int()``/``bool()``/``.item()``/``repr()`` of an array, ``gpucnn.to_cpu``), the reads hidden
inside library calls (``bincount``: two, ``nonzero``/``argwhere``/``flatnonzero``/``where(cond)``/``unique``/
``compress``/boolean-mask indexing: one each; cupy/_statistics/histogram.py, cupy/_core/_routines_indexing.pyx
"# synchronize!") and explicit synchronisation (``gpucnn.devices.synchronize``, the end of a
``DeviceTimer``). ``by_sync`` names where each one came from.

Transfers: ``host_to_device`` counts host-to-device copies (``to_device``, ``xp.asarray`` of host data, host
index arrays and host values in fancy indexing, the pointer table CuPy uploads to concatenate more than 8 small
arrays); ``device_to_host`` counts device-to-host copies (each is also a sync).

Only the emulated device records anything: on CUDA these counters stay at zero (measure there with Nsight).
"""
from __future__ import annotations

import contextlib
from collections import Counter

__all__ = ["DeviceOpCounts", "count_device_ops", "transfer_stats"]


class DeviceOpCounts:
    """Counts of device operations, host syncs and transfers (see the module documentation for what each
    counts). ``ops`` equals ``sum(by_op.values())`` and ``syncs`` equals ``sum(by_sync.values())``."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Start again from zero."""
        self.ops = 0
        self.by_op = Counter()
        self.syncs = 0
        self.by_sync = Counter()
        self.host_to_device = 0
        self.device_to_host = 0

    def as_dict(self) -> dict:
        """The counts as plain Python values (JSON-serialisable)."""
        return {"ops": self.ops, "by_op": dict(self.by_op), "syncs": self.syncs, "by_sync": dict(self.by_sync),
                "host_to_device": self.host_to_device, "device_to_host": self.device_to_host}

    def __repr__(self):
        return (f"DeviceOpCounts(ops={self.ops}, syncs={self.syncs}, host_to_device={self.host_to_device}, "
                f"device_to_host={self.device_to_host})")


# Process totals since the last transfer_stats.reset(), and the counters of open count_device_ops() blocks.
transfer_stats = DeviceOpCounts()
_open: list[DeviceOpCounts] = []


def _all():
    yield transfer_stats
    yield from _open


def op(name: str, n: int = 1):
    """Record `n` device operations named `name` (e.g. 'ufunc:add', 'matmul', 'kernel:im2col_f32')."""
    for c in _all():
        c.ops += n
        c.by_op[name] += n


def sync(where: str):
    """Record a host wait for the device that moves no data (synchronize, the end of a DeviceTimer)."""
    for c in _all():
        c.syncs += 1
        c.by_sync[where] += 1


def device_to_host(where: str):
    """Record a device-to-host copy: a transfer and a host sync."""
    for c in _all():
        c.device_to_host += 1
        c.syncs += 1
        c.by_sync[where] += 1


def host_to_device(where: str = "upload"):
    """Record a host-to-device copy."""
    for c in _all():
        c.host_to_device += 1


@contextlib.contextmanager
def count_device_ops():
    """Count what the code in the block does on the emulated device::

        with gpucnn.devices.count_device_ops() as counts:
            train_step()
        counts.ops, counts.by_op.most_common(5), counts.syncs, counts.host_to_device, counts.device_to_host

    Blocks may nest (each counts everything inside it). Not thread-safe: count one thread at a time.
    """
    counts = DeviceOpCounts()
    _open.append(counts)
    try:
        yield counts
    finally:
        _open.remove(counts)
