"""The tests' tolerances, per kind of comparison, device kind and dtype: the one place they are written down.

Why they differ by device. On ``cpu`` and ``emulated`` all arithmetic is numpy's (and g++'s for the kernels)
on the same host, so the GPU branch of a layer differs from the CPU branch only where it computes differently
by design (kernels versus twins, chunking, Winograd). On ``cuda`` cuBLAS picks its own GEMM blocking (and
CuPy's default, CUPY_TF32=0, keeps float32 GEMMs in float32), CuPy's reductions sum in another order (CUB),
NVRTC contracts a*b+c into fused multiply-adds and CuPy compiles with -ftz=true (float32 denormals flush to
zero; the tests' data has none): results agree to rounding, not to the bit. The CUDA numbers are the CPU
ones widened for that, by the factors below; they are estimates until benchmarks/gpu_acceptance.sh has run
on a GPU (see the README), not measurements.

Bit-identity is asserted (kind "exact") only where it is a property of the design: gathers and copies
(im2col; col2im, max-pool backward and avg-pool backward gather each pixel's terms in a fixed order with
additions only; max-pool forward and its argmax), and a computation repeated on one device in one process.
"""
from __future__ import annotations

import numpy as np

from gpucnn import devices as backend

CUDA_WIDENING = {"torch": 5.0, "torch64": 100.0, "step": 10.0, "optim": 10.0}

# kind -> dtype -> tolerance on cpu/emulated (see each kind's metric in `check`)
TOLERANCES = {
    # a kernel against its numpy twin: |got - ref| <= tol * (1 + |ref|) elementwise (llm.c's dev/cuda checks);
    # the same on CUDA: the kernel is the same arithmetic, one rounding per operation
    "kernel": {np.float32: 2e-6, np.float64: 1e-14},
    # a layer (float32) against PyTorch on the CPU: max|ours - torch| <= tol * max(1, max|torch|)
    "torch": {np.float32: 2e-4, np.float64: 1e-12},
    # float64 transforms (Winograd) against PyTorch: max abs error
    "torch64": {np.float64: 1e-12},
    # analytic against central finite differences in float64: max error <= tol * max(1, max|numeric|); the
    # finite difference's own error (~1e-9) dominates any device's rounding, so the same everywhere
    "grad": {np.float64: 1e-6},
    # a device's result against the CPU's after the same steps: |got - want| <= atol + rtol * |want|
    "step": {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-12)},
    # an optimizer's parameters after 10 updates against torch.optim's, same metric as "step"
    "optim": {np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-13)},
}


def tolerance(kind: str, device, dtype=np.float32):
    """The tolerance of a comparison of `kind` for results on `device` ('cpu', 'emulated', 'cuda:0', a Device)."""
    dtype = np.dtype(dtype).type
    table = TOLERANCES[kind]
    tol = table.get(dtype, table.get(np.float32))
    if backend.get_device(device).kind == "cuda" and kind in CUDA_WIDENING:
        w = CUDA_WIDENING[kind]
        return tuple(t * w for t in tol) if isinstance(tol, tuple) else tol * w
    return tol


def host(a):
    """A host copy of any array (device arrays are read back)."""
    return np.asarray(backend.to_cpu(a)) if hasattr(a, "dtype") else np.asarray(a)


def assert_exact(got, want, what=""):
    """Bit-identical, NaNs and signed zeros included (only where the design guarantees it)."""
    got, want = host(got), host(want)
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    assert got.tobytes() == want.tobytes(), f"{what}: not bit-identical"


def assert_close(got, want, device, what="", tol="step"):
    """got (on `device`) against want (host reference) with the tolerance of kind `tol` for that device."""
    got, want = host(got), host(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if tol == "exact":
        return assert_exact(got, want, what)
    t = tolerance(tol, device, want.dtype if want.dtype.kind == "f" else np.float32)
    if tol in ("step", "optim"):
        rtol, atol = t
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{what} on {device}")
        return
    if tol in ("torch", "grad"):
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        assert err <= t * scale, f"{what} on {device}: max abs error {err:.3g} > {t:g} * {scale:.3g}"
        return
    if tol == "torch64":
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        assert err <= t, f"{what} on {device}: max abs error {err:.3g} > {t:g}"
        return
    if tol == "kernel":
        with np.errstate(invalid="ignore"):
            bad = ~((np.abs(got - want) <= t * (1 + np.abs(want))) | (np.isnan(want) & np.isnan(got))
                    | (got == want))
        assert not bad.any(), (f"{what} on {device}: {bad.sum()} of {bad.size} differ, e.g. got {got[bad][:5]} "
                               f"want {want[bad][:5]}")
        return
    raise ValueError(f"unknown tolerance kind {tol!r}")
