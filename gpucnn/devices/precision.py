"""Numerical precision of the GEMMs and activations: ``fp32`` (the default), ``tf32`` and ``bf16``.

- ``fp32``: every product in float32 (cuBLAS's CUBLAS_COMPUTE_32F).
- ``tf32``: cuBLAS may run float32 GEMMs on TF32 tensor cores (operands rounded to a 10-bit mantissa, products
  summed in float32); arrays stay float32. On CUDA two switches are set, because CuPy 14 honours each on a
  different path (cupy/_core/_routines_linalg.pyx, v14): 2-D products (``dot``, 2-D ``matmul``) go through
  ``tensordot_core_v11``, which reads the process-wide compute type of float32 at every call
  (``get_compute_type``; ``set_compute_type(float32, COMPUTE_TYPE_TF32)`` gives CUBLAS_COMPUTE_32F_FAST_TF32;
  the CUPY_TF32 environment variable only sets its first value); batched products (> 2-D ``matmul``) call
  ``gemmStridedBatchedEx`` with compute type CUDA_R_32F, which follows the cuBLAS handle's math mode:
  ``cublas.setMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH)`` on the current device's handle. The emulated GPU
  rounds the operands of its float32 products to TF32 (round to nearest even; see :func:`.emulated.round_tf32`) and
  multiplies in float32.
- ``bf16``: mixed precision. The layers' GEMM operands (im2col columns, the weights' copies, activations and
  gradients entering a product) are bfloat16 (``ml_dtypes.bfloat16``, which CuPy 14 takes), products are
  summed in float32 (cuBLAS CUBLAS_COMPUTE_32F for bf16 matrices) and rounded to bfloat16; master weights,
  gradients, optimizer state, batch-norm statistics, the elementwise passes, reductions and the loss stay
  float32. No loss scaling: bfloat16 has float32's 8-bit exponent, so gradients do not underflow where
  float32's would not (loss scaling exists for float16's 5-bit exponent: Micikevicius et al., "Mixed Precision
  Training", ICLR 2018, section 3.2; PyTorch's autocast docs: "bfloat16 ... does not need gradient scaling").

The CPU computes in float32 only: ``tf32`` and ``bf16`` are refused there (:class:`PrecisionError`). numpy
with ml_dtypes could emulate bf16 GEMMs but runs them about 5x slower than float32 (512x512 product: 13.7 ms
against 2.7 ms, 2-core machine, under load), which would make a CPU run slower for no gain.

The setting is a scope, as torch.autocast is: ``with gpucnn.precision("bf16", device): ...`` (``fit(...,
precision=...)`` and ``gpucnn train --precision`` run the whole run in one). It is a property of how steps run,
not of a model (the master weights are float32 in every precision), so it is not stored in a layer.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import core, cuda, emulated
from .emulated import round_tf32  # noqa: F401 (the TF32 rounding the emulated GPU applies)

PRECISIONS = ("fp32", "tf32", "bf16")


class PrecisionError(ValueError):
    """A precision the device cannot run (tf32 or bf16 on the CPU), or an unknown precision name."""


_local = threading.local()


def get_precision() -> str:
    """The precision of the current scope: 'fp32', 'tf32' or 'bf16' (fp32 outside any scope)."""
    return getattr(_local, "name", "fp32")


def check(name, device=None) -> str:
    """The precision name, lower-cased, after checking it exists and `device` can run it.

    Raises PrecisionError for an unknown name or for tf32/bf16 on the CPU."""
    text = str(name).strip().lower() if isinstance(name, str) else name
    if text not in PRECISIONS:
        raise PrecisionError(f"unknown precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    dev = core.get_device(device)
    if text != "fp32" and not dev.is_gpu:
        raise PrecisionError(f"precision {text!r} needs a GPU device (cuda or emulated), got device {dev}: the CPU "
                             f"computes in float32 only (use precision 'fp32' there)")
    return text


def bf16_dtype():
    """numpy's dtype of bfloat16 (from ml_dtypes, imported only when asked: the core needs numpy only).

    Raises PrecisionError naming the package when ml_dtypes is not installed, or numpy is older than 2.1.2
    (CuPy 14 enables bfloat16 only from there: cupy/_core/_scalar.pyx ``_setup_type_dict``)."""
    if np.lib.NumpyVersion(np.__version__) < "2.1.2":
        raise PrecisionError(f"precision 'bf16' needs numpy >= 2.1.2 (CuPy takes bfloat16 arrays only from there), "
                             f"got numpy {np.__version__}")
    try:
        import ml_dtypes
    except ImportError as e:
        raise PrecisionError(f"precision 'bf16' needs the ml_dtypes package ({e}); install it with "
                             f"pip install 'gpucnn[bf16]'") from None
    return np.dtype(ml_dtypes.bfloat16)


def gemm_dtype(x):
    """The dtype a layer's GEMM operands take for input `x` in the current scope: bfloat16 for a float32 array on
    a GPU in a bf16 scope, else x's dtype (float64, used for gradient checks, is never lowered; the CPU computes
    in float32, see the module doc)."""
    if get_precision() == "bf16" and np.dtype(x.dtype) == np.float32 and core.is_gpu_array(x):
        return bf16_dtype()
    return np.dtype(x.dtype)


def lowered(a, dtype):
    """`a` as `dtype` (one cast on the device), or `a` itself when it is of that dtype already."""
    return a if np.dtype(a.dtype) == np.dtype(dtype) else a.astype(dtype)


# ------------------------------------------------------------------------------------------------ scopes

def _set_cuda_tf32(device, on: bool):
    """TF32 for float32 GEMMs on CUDA device `device`: CuPy's compute type (2-D products, process-wide) and the
    current thread's cuBLAS handle math mode on that device (batched products); see the module doc."""
    cp = cuda.cupy_module()
    from cupy._core import _routines_linalg as linalg
    from cupy_backends.cuda.libs import cublas
    with cp.cuda.Device(device.index):
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if on else linalg.COMPUTE_TYPE_DEFAULT)
        cublas.setMathMode(cp.cuda.device.get_cublas_handle(),
                           cublas.CUBLAS_TF32_TENSOR_OP_MATH if on else cublas.CUBLAS_DEFAULT_MATH)


def _set_device_tf32(device, on: bool):
    if device.kind == "cuda":
        _set_cuda_tf32(device, on)
    elif device.is_gpu:
        emulated.set_tf32(device.index, on)


@contextlib.contextmanager
def precision(name, device=None):
    """Run the code inside in precision `name` ('fp32', 'tf32', 'bf16') on `device` (default: $GPUCNN_DEVICE,
    else auto); the previous precision and device settings come back on exit.

    tf32 switches the device's float32 GEMMs to TF32 (see the module doc); bf16 makes the layers' GEMM operands
    bfloat16 (:func:`gemm_dtype`). Raises PrecisionError for an unknown name or tf32/bf16 on the CPU, and
    for bf16 without ml_dtypes."""
    dev = core.get_device(device)
    name = check(name, dev)
    if name == "bf16":
        bf16_dtype()
    before = get_precision()
    if name == "tf32":
        _set_device_tf32(dev, True)
    _local.name = name
    try:
        yield name
    finally:
        _local.name = before
        if name == "tf32" and before != "tf32":
            _set_device_tf32(dev, False)
