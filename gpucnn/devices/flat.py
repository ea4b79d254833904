"""Flat buffers: several named arrays of one dtype on one device as views into one contiguous buffer, so that a
multi-tensor kernel updates all of them in one launch (:mod:`gpucnn.optim` for parameters, gradients and
optimizer state) and a reduction checks all of them in one pass.

A :class:`FlatArrays` knows its views; :func:`owner` finds the FlatArrays whose views a dict of arrays is made
of (by identity: the layers hold the very view objects), so code handed plain dicts (``opt.update(model.params,
model.grads)``) can tell that they are flat and where each one lies. The registry holds FlatArrays weakly: one
lives as long as whoever made it keeps it (a model keeps its own).
"""
from __future__ import annotations

import weakref

import numpy as np

from . import core

__all__ = ["FlatArrays", "owner"]

_owners: "weakref.WeakValueDictionary[int, FlatArrays]" = weakref.WeakValueDictionary()


class FlatArrays:
    """Named arrays as views into one contiguous 1-D buffer, in the order given.

    ``FlatArrays(arrays)`` allocates the buffer on the arrays' device and copies each array into its view (one
    device copy each, once); ``FlatArrays.full(arrays, value)`` takes only their layout (one fill), and
    ``full_like(other, value)`` another FlatArrays' layout. ``buffer`` (1-D), ``views`` (name -> array of the original shape),
    ``offsets`` (name -> (start, stop) in elements), ``names`` (in buffer order). Raises ValueError for arrays of
    several dtypes or devices, or none.
    """

    def __init__(self, arrays: dict, *, _buffer=None):
        if not arrays:
            raise ValueError("FlatArrays: no arrays given")
        first = next(iter(arrays.values()))
        dtypes = {np.dtype(a.dtype) for a in arrays.values()}
        places = {core.device_of(a) for a in arrays.values()}
        if len(dtypes) > 1 or len(places) > 1:
            raise ValueError(f"FlatArrays: expected arrays of one dtype on one device, got dtypes "
                             f"{sorted(map(str, dtypes))} on {sorted(map(str, places))}")
        self.names = list(arrays)
        self.shapes = {n: tuple(a.shape) for n, a in arrays.items()}
        self.offsets, start = {}, 0
        for n in self.names:
            size = int(np.prod(self.shapes[n], dtype=np.int64))
            self.offsets[n] = (start, start + size)
            start += size
        self.device, self.dtype = places.pop(), dtypes.pop()
        xp = core.get_array_module(first)
        with core.device_scope(first):
            self.buffer = xp.empty(start, dtype=self.dtype) if _buffer is None else _buffer
            self.views = {n: self.buffer[a:b].reshape(self.shapes[n]) for n, (a, b) in self.offsets.items()}
            if _buffer is None:
                for n, a in arrays.items():
                    self.views[n][...] = a
        for v in self.views.values():
            _owners[id(v)] = self

    @classmethod
    def full(cls, arrays: dict, value) -> "FlatArrays":
        """A new FlatArrays laid out for `arrays` (names, shapes, dtype, device), every element `value`; the
        arrays' values are not copied."""
        first = next(iter(arrays.values()))
        xp = core.get_array_module(first)
        size = sum(int(np.prod(a.shape, dtype=np.int64)) for a in arrays.values())
        with core.device_scope(first):
            buffer = xp.full(size, value, dtype=first.dtype)
        return cls(arrays, _buffer=buffer)

    @classmethod
    def full_like(cls, other: "FlatArrays", value) -> "FlatArrays":
        """A new FlatArrays of `other`'s layout, every element `value`."""
        return cls.full({n: other.views[n] for n in other.names}, value)

    @property
    def size(self) -> int:
        return int(self.buffer.size)

    def span(self, names) -> tuple[int, int] | None:
        """(start, stop) when `names` lie back to back in this order, else None."""
        start = stop = None
        for n in names:
            a, b = self.offsets[n]
            if stop is not None and a != stop:
                return None
            start = a if start is None else start
            stop = b
        return None if start is None else (start, stop)

    def holds(self, arrays: dict) -> bool:
        """Whether `arrays` are exactly this buffer's views, name for name (the same objects, all of them)."""
        return len(arrays) == len(self.views) and all(self.views.get(n) is a for n, a in arrays.items())

    def __repr__(self):
        return f"FlatArrays({len(self.names)} arrays, {self.size} {self.dtype} on {self.device})"


def owner(arrays: dict) -> FlatArrays | None:
    """The FlatArrays whose views `arrays` (name -> array) are, all of them and nothing else, or None."""
    if not arrays:
        return None
    flat = _owners.get(id(next(iter(arrays.values()))))
    return flat if flat is not None and flat.holds(arrays) else None
