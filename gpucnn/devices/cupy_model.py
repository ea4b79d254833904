"""How CuPy 14.2 launches work: what the emulated device counts (in :mod:`.counters`) for each call.

Each cost function takes the call's operands as numpy buffers (device arrays already unwrapped), its result
likewise and whether its first operand was a device array, and records device operations, host syncs and
transfers as CuPy would incur them. Source locations are CuPy v14.2.0's. Calls not listed in COSTS count one
device operation named 'xp.<name>'.
"""
from __future__ import annotations

import functools

import numpy as np

from . import counters


def count_matmul(a, b, out=None):
    """cuBLAS GEMMs and the copies cupy.matmul/dot make (cupy/_core/_routines_linalg.pyx): 2-D operands
    neither C- nor F-contiguous are copied (_mat_to_cublas_contiguous); batched (> 2-D) operands that are not
    C-contiguous are copied (ascontiguousarray); an `out` that is not C-contiguous, or overlaps an operand,
    gets the result through a copy; a vector dot product is one reduction."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 1 and b.ndim == 1:
        counters.op("reduce:dot")
        return
    batched = max(a.ndim, b.ndim) > 2
    for m in (a, b):
        contiguous = m.flags.c_contiguous if batched else (m.flags.c_contiguous or m.flags.f_contiguous)
        if m.ndim >= 2 and not contiguous:
            counters.op("copy")
    counters.op("matmul")
    if out is not None and (not out.flags.c_contiguous or np.may_share_memory(out, a)
                            or np.may_share_memory(out, b)):
        counters.op("copy")


def count_join(arrays, stacked=False):
    """cupy.concatenate/stack (_routines_manipulation.pyx _concatenate): more than 8 arrays of one dtype and
    small total size take one kernel after uploading a table of pointers (and of strides and sizes unless
    all are contiguous and alike); otherwise one copy per array."""
    arrays = [np.asarray(a) for a in arrays]
    if len(arrays) > 8 and len({a.dtype for a in arrays}) == 1 and \
            sum(a.nbytes for a in arrays) < 2 * 2**20 * len(arrays):
        counters.host_to_device("concatenate pointer table")
        alike = len({a.shape for a in arrays}) == 1 and all(a.flags.c_contiguous for a in arrays)
        if not alike:
            counters.host_to_device("concatenate strides")
            counters.host_to_device("concatenate sizes")
        counters.op("kernel:concatenate")
    else:
        counters.op("copy", len(arrays))


def count_copy_if_new(before, after):
    """A copy when `after` is new memory rather than a view of `before`."""
    if not (isinstance(before, np.ndarray) and np.may_share_memory(before, after)):
        counters.op("copy")


def count_fill(value, target):
    """ndarray.fill and assignments of a scalar: cudaMemsetAsync for 0 on a contiguous array, else the fill
    kernel (core.pyx ``fill``)."""
    zero = isinstance(value, (int, float, complex, bool, np.generic, np.ndarray)) and np.ndim(value) == 0 \
        and value == 0
    contiguous = not isinstance(target, np.ndarray) or target.flags.c_contiguous
    counters.op("memset" if zero and contiguous else "fill")


def count_mask():
    """Boolean-mask indexing: a scan and a read of its last element for the result's size
    (_routines_indexing.pyx _prepare_mask_indexing_single: ``n_true = int(mask_scanned[-1])``)."""
    counters.op("kernel:scan")
    counters.device_to_host("boolean mask index")


def index_kind(key, device_type) -> str:
    """'basic' (views), 'fancy' (integer index arrays: a gather or scatter kernel) or 'mask' (boolean) for an
    index `key` whose arrays are host arrays or of `device_type`."""
    items = key if isinstance(key, tuple) else (key,)
    kind = "basic"
    for k in items:
        if isinstance(k, (device_type, np.ndarray)) and k.dtype == np.bool_:
            return "mask"
        if isinstance(k, (device_type, np.ndarray, list)):
            kind = "fancy"
    return kind


# ----------------------------------------------------------------------------------- per-function costs

def _no_cost(args, kwargs, result, on_device):
    pass


def _memset(args, kwargs, result, on_device):
    counters.op("memset")


def _ones(args, kwargs, result, on_device):
    counters.op("fill")


def _full(args, kwargs, result, on_device):
    count_fill(kwargs.get("fill_value", args[1] if len(args) > 1 else 1), result)


def _source(args, kwargs):
    """The first operand of a call (its array), positional or by keyword."""
    return args[0] if args else kwargs.get("a", kwargs.get("object"))


def _maybe_copy(args, kwargs, result, on_device):
    """reshape/ravel/ascontiguousarray/asarray of a device array: a copy only when the result is new memory;
    of host scalars or lists: an upload (host arrays are counted as they are taken)."""
    src = _source(args, kwargs)
    if on_device:
        count_copy_if_new(src, result)
    elif src is not None and not isinstance(src, np.ndarray):
        counters.host_to_device("xp.asarray")


def _array(args, kwargs, result, on_device):
    """xp.array copies (copy=True by default), device arrays too."""
    src = _source(args, kwargs)
    if on_device:
        count_copy_if_new(None if kwargs.get("copy", True) else src, result)
    elif not isinstance(src, np.ndarray):
        counters.host_to_device("xp.array")


def _dot(args, kwargs, result, on_device):
    count_matmul(*args[:2], out=kwargs.get("out"))


def _join(args, kwargs, result, on_device, stacked=False):
    count_join(args[0] if args else kwargs["arrays"], stacked)


def _norm(args, kwargs, result, on_device):
    """cupy.linalg.norm of a vector or a matrix's Frobenius norm: sqrt((x * x).sum()) (cupy/linalg/_norms.py)."""
    for name in ("ufunc:multiply", "reduce:sum", "ufunc:sqrt"):
        counters.op(name)


def _nonzero(args, kwargs, result, on_device):
    """nonzero/argwhere/flatnonzero/where(cond): a scan, a read of its total, a scatter
    (_routines_indexing.pyx _ndarray_argwhere: ``int(scan_index[-1])  # synchronize!``)."""
    counters.op("kernel:scan")
    counters.device_to_host("nonzero")
    counters.op("kernel:nonzero")


def _where(args, kwargs, result, on_device):
    if len(args) + len(kwargs) == 1:
        _nonzero(args, kwargs, result, on_device)
    else:
        counters.op("xp.where")


def _bincount(args, kwargs, result, on_device):
    """cupy.bincount (cupy/_statistics/histogram.py): `(x < 0).any()` and `int(cupy.max(x))` both read back."""
    counters.op("ufunc:less")
    counters.op("reduce:any")
    counters.device_to_host("bincount: (x < 0).any()")
    counters.op("reduce:max")
    counters.device_to_host("bincount: int(x.max())")
    counters.op("memset")
    counters.op("kernel:bincount")


def _syncing(label):
    def cost(args, kwargs, result, on_device):
        counters.op(f"xp.{label}")
        counters.device_to_host(label)
    return cost


def _reduction(name):
    return lambda args, kwargs, result, on_device: counters.op(f"reduce:{name}")


_VIEWS = ("transpose", "swapaxes", "moveaxis", "rollaxis", "expand_dims", "squeeze", "broadcast_to",
          "broadcast_arrays", "atleast_1d", "atleast_2d", "atleast_3d", "split", "array_split", "hsplit",
          "vsplit", "diagonal", "real", "imag", "shape", "ndim", "size", "result_type", "promote_types",
          "can_cast", "min_scalar_type", "iscomplexobj", "isrealobj", "isscalar", "empty", "empty_like",
          "may_share_memory", "shares_memory")
_REDUCTIONS = ("sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "all", "any", "prod", "nansum",
               "nanmax", "nanmin", "count_nonzero", "std", "var", "average", "trace", "ptp", "median", "cumsum",
               "cumprod")

COSTS = {
    **{n: _no_cost for n in _VIEWS},
    **{n: _reduction(n) for n in _REDUCTIONS},
    "zeros": _memset, "zeros_like": _memset, "ones": _ones, "ones_like": _ones, "full": _full,
    "full_like": _full,
    "asarray": _maybe_copy, "asanyarray": _maybe_copy, "ascontiguousarray": _maybe_copy,
    "asfortranarray": _maybe_copy, "reshape": _maybe_copy, "ravel": _maybe_copy, "array": _array,
    "copyto": lambda args, kwargs, result, on_device: counters.op("copy"), "copy": _array,
    "dot": _dot, "concatenate": _join, "vstack": _join, "hstack": _join,
    "stack": functools.partial(_join, stacked=True), "norm": _norm, "nonzero": _nonzero, "argwhere": _nonzero,
    "flatnonzero": _nonzero, "where": _where, "bincount": _bincount, "unique": _syncing("unique"),
    "compress": _syncing("compress"), "extract": _syncing("extract"), "histogram": _syncing("histogram"),
}

# The constructors take host data (an upload); every other call refuses it.
HOST_INPUT_OK = frozenset({"asarray", "asanyarray", "ascontiguousarray", "asfortranarray", "array"})
