"""Test helper: PyTorch as the oracle of a layer's forward pass and every gradient, on any device.

A layer runs on the device given (cpu, emulated or cuda) with host inputs moved there, its results come back
with to_cpu, and each is compared with torch.nn.functional on the CPU in float32: max|ours - torch| <=
tol * max(1, max|torch|), tol being the "torch" tolerance of the device and dtype in tests/tolerances.py
(2e-4 of the output's scale for float32 on cpu and emulated).
"""
import zlib

import numpy as np
import torch

import tolerances
from gpucnn import devices as backend


def on(device, a):
    """A host array moved to `device`."""
    return backend.to_device(np.asarray(a), device)


def assert_close(ours, ref, what="", device="cpu", tol=None):
    """ours (host or device array) equals ref (tensor or array) within tol of ref's scale (default: the "torch"
    tolerance of `device` for ref's dtype), same shape and dtype; infinities and NaNs must sit in the same
    places."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ours = np.asarray(backend.to_cpu(ours))
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != torch {ref.shape}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != torch {ref.dtype}"
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(ours), finite, err_msg=f"{what}: non-finite values differ")
    np.testing.assert_array_equal(ours[~finite], ref[~finite], err_msg=f"{what}: non-finite values differ")
    if not finite.any():
        return
    tol = tolerances.tolerance("torch", device, ref.dtype) if tol is None else tol
    err = float(np.max(np.abs(ours[finite] - ref[finite])))
    scale = max(1.0, float(np.max(np.abs(ref[finite]))))
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


def case_rng(case):
    """A generator seeded from a case's description (stable across runs, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(case).encode()))


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def leaf(a):
    return torch.tensor(a, requires_grad=True)


def against_torch(layer, x, torch_fn, rng, device="cpu", train=True, grads=()):
    """Forward and backward of `layer` on `device` and of torch_fn(x as a leaf) with one random dout: y and dx
    must agree, and each (name, tensor[, to_ours]) of `grads` gives the torch leaf whose gradient
    layer.grads[name] must equal (after to_ours, e.g. a transpose). Returns (y, dx) on the host."""
    xt = leaf(x)
    yt = torch_fn(xt)
    dout = randn(rng, *yt.shape)
    yt.backward(torch.tensor(dout))
    layer.to(device)
    y = layer.forward(backend.to_device(x, device), train=train)
    dx = layer.backward(backend.to_device(dout, device))
    for a in (y, dx, *layer.grads.values()):
        assert backend.device_of(a) == backend.get_device(device), f"a result left {device}"
    assert_close(y, yt, "y", device=device)
    assert_close(dx, xt.grad, "dx", device=device)
    for name, tensor, *to_ours in grads:
        want = tensor.grad if not to_ours else to_ours[0](tensor.grad)
        assert_close(layer.grads[name], want, f"d{name}", device=device)
    return backend.to_cpu(y), backend.to_cpu(dx)
