"""Weight initialisers: host (numpy) arrays drawn from the library's seeded generator (gpucnn.seed).

Layers draw their weights here on the CPU and move them with ``.to(device)``, so a seed gives the same
network on every device. fan_in of a conv weight (out, in, kh, kw) is in*kh*kw, its fan_out out*kh*kw.
"""
from __future__ import annotations

import math

import numpy as np

from ..devices import host_rng

__all__ = ["he_normal", "xavier_uniform", "zeros", "fans", "initialise", "INITS"]


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight: Affine (in, out) or conv (out, in, kh, kw)."""
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    receptive = int(np.prod(shape[2:]))
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def he_normal(shape, fan_in: int, dtype=np.float32) -> np.ndarray:
    """N(0, 2/fan_in): He et al. 2015, keeps activation variance constant through ReLUs."""
    std = math.sqrt(2.0 / fan_in)
    return (host_rng().standard_normal(shape) * std).astype(dtype)


def xavier_uniform(shape, fan_in: int, fan_out: int, dtype=np.float32) -> np.ndarray:
    """U(-a, a) with a = sqrt(6/(fan_in+fan_out)): Glorot & Bengio 2010, for tanh/sigmoid networks."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return host_rng().uniform(-limit, limit, size=shape).astype(dtype)


def zeros(shape, dtype=np.float32) -> np.ndarray:
    """Biases start at zero."""
    return np.zeros(shape, dtype=dtype)


INITS = ("he", "xavier")


def initialise(name: str, shape, dtype=np.float32) -> np.ndarray:
    """A weight of `shape` from the initialiser named `name` ('he' or 'xavier')."""
    fan_in, fan_out = fans(shape)
    if name == "he":
        return he_normal(shape, fan_in, dtype)
    if name == "xavier":
        return xavier_uniform(shape, fan_in, fan_out, dtype)
    raise ValueError(f"unknown init {name!r}: expected one of {', '.join(map(repr, INITS))}")
