"""Host memory for the CPU device's arrays: freed memory kept for the next step instead of given back.

A training step on the CPU allocates and frees the same large temporaries every step: activations, their
gradients, GEMM operands, 0.1-10 MB each. With glibc's default settings those memory blocks do not stay with
the process. A block above the mmap threshold is a mapping of its own, returned to the system when freed; the
threshold rises as large blocks are freed, but setting any malloc tunable fixes it at its start value of
128 KiB. And freed memory at the top of the heap goes back to the system once it exceeds the trim
threshold. Either way, the next step's arrays land on fresh pages that the kernel must fault in and zero one
by one. That costs about as much as filling them. numpy keeps no cache of large blocks (NEP 49 leaves that to
the allocator).

:func:`keep_host_memory` makes glibc keep them: every block up to 32 MiB (glibc's largest mmap threshold) comes
from the heap, and up to 1 GiB of freed heap stays with the process. These are ``mallopt(M_MMAP_THRESHOLD)`` and
``mallopt(M_TRIM_THRESHOLD)`` (glibc manual, "Malloc Tunable Parameters"). Measured with
``benchmarks/host_memory.py`` on a 2-core AMD EPYC: small_vgg's training step at batch 64 on one thread
80.2 against 72.9 ms (1.10x), lenet5's at batch 128 1.06x (medians of 5 and 3 rounds). The process then holds on to its
largest step's memory, which it would allocate again at the next step anyway.

:func:`gpucnn.fit` (and so ``gpucnn train``) and ``gpucnn bench`` call it when they run on the CPU. Set
``GPUCNN_HOST_MEMORY=system`` to leave the allocator's settings alone. Elsewhere than glibc (macOS, Windows,
musl) it does nothing and returns False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "GPUCNN_HOST_MEMORY"
M_TRIM_THRESHOLD = -1     # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20   # glibc's HEAP_MAX_SIZE / 2 on 64-bit systems: the largest it accepts
TRIM_THRESHOLD = 2**30

_state = {"kept": None}


def _libc():
    """glibc as a ctypes library, or None on any other C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_host_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse (see the module doc). Returns whether
    the settings are in force: False where the C library is not glibc, where ``GPUCNN_HOST_MEMORY=system``, or
    where glibc refused them. Applies to the whole process. Calling it again changes nothing. Raises nothing."""
    if _state["kept"] is not None:
        return _state["kept"]
    kept = False
    if os.environ.get(ENV, "").strip().lower() != "system":
        libc = _libc()
        if libc is not None:
            # mallopt returns 1 on success, 0 on error (an out-of-range value).
            kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["kept"] = kept
    return kept
