"""The one module that loads and launches the custom CUDA kernels (``kernels/*.cu``).

Each source is compiled once per device and cached for the process (cupy.RawModule on a GPU, the g++
emulator on the ``emulated`` device, both via :func:`gpucnn.devices.core.compile_module`). The launchers below
mirror the numpy twins in :mod:`gpucnn.devices.twins`: same arguments, same results. They allocate with ``xp.empty``
(every kernel writes each output element exactly once), pass scalars with the exact C types of the kernel
signatures (``long long`` totals as np.int64, shapes as np.int32), and launch grid-stride kernels with
256-thread blocks.

Compile options: ours are ``--std=c++17``; cupy.RawModule itself adds ``-ftz=true`` (denormals flush to
zero in float32), ``--device-as-default-execution-space``, ``-arch=sm_XX`` of the device (cubin; or
``-arch=compute_XX`` with CUPY_COMPILE_WITH_PTX=1) and include paths for CCCL and its own headers
(cupy/_core/core.pyx ``assemble_cupy_compiler_options``, cupy/cuda/compiler.py). tests/test_nvrtc.py
compiles every source with the same options for compute 7.5, 8.0 and 9.0.
"""
from __future__ import annotations

import importlib.resources
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from . import core
from .twins import out_size, pad_pair

OPTIONS = ("--std=c++17",)
BLOCK = 256
MAX_BLOCKS = 65535          # grid-stride loops cover whatever a capped grid does not
_INT32_MAX = 2**31 - 1

# Public launcher -> (source file, kernel base name); the kernel is <base>_f32 or <base>_f64.
KERNELS = {
    "im2col": ("im2col.cu", "im2col"),
    "col2im": ("im2col.cu", "col2im"),
    "maxpool_forward": ("pooling.cu", "maxpool_forward"),
    "maxpool_backward": ("pooling.cu", "maxpool_backward"),
    "avgpool_forward": ("pooling.cu", "avgpool_forward"),
    "avgpool_backward": ("pooling.cu", "avgpool_backward"),
    # the fused passes (launchers in .fused, twins in .fused_twins)
    "bias_act": ("activation.cu", "bias_act"),
    "relu_backward": ("activation.cu", "relu_backward"),
    "xent_forward": ("loss.cu", "xent_forward"),
    "xent_reduce": ("loss.cu", "xent_reduce"),
    "xent_backward": ("loss.cu", "xent_backward"),
    "lrn_forward": ("lrn.cu", "lrn_forward"),
    "lrn_backward": ("lrn.cu", "lrn_backward"),
    # the training step's (launchers in .step_kernels, twins in .step_twins)
    "sgd_step": ("optim.cu", "sgd_step"),
    "adagrad_step": ("optim.cu", "adagrad_step"),
    "rmsprop_step": ("optim.cu", "rmsprop_step"),
    "adam_step": ("optim.cu", "adam_step"),
    "nonfinite_check": ("check.cu", "nonfinite_check"),
    "accumulate_metrics": ("check.cu", "accumulate_metrics"),
    "gather_batch": ("data.cu", "gather_batch"),
}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
# Launchers with a bfloat16 variant (<base>_bf16: bfloat16 in, float32 sums and, after a GEMM, float32 out; see
# gpucnn.devices.precision); the others take float32 and float64 only.
BF16_KERNELS = ("im2col", "col2im", "bias_act")


def is_bf16(dtype) -> bool:
    """Whether `dtype` is bfloat16 (ml_dtypes'; checked by name, so ml_dtypes is not imported)."""
    return np.dtype(dtype).name == "bfloat16"


def suffix(dtype) -> str:
    """The kernel name suffix of a dtype: 'f32', 'f64' or 'bf16'."""
    return "bf16" if is_bf16(dtype) else _SUFFIX[np.dtype(dtype)]


class KernelCompileError(RuntimeError):
    """A kernel source did not compile; the message carries the compiler's log."""


# ------------------------------------------------------------------------------------------- sources

def _locate() -> tuple[dict[str, Path], str]:
    """(kernel sources by file name, 'package' or 'checkout').

    An installed wheel ships them as the package gpucnn._cu (pyproject maps kernels/ there); a source
    checkout has them in <repo>/kernels next to the gpucnn package.
    """
    try:
        found = {p.name: Path(str(p)) for p in importlib.resources.files("gpucnn._cu").iterdir()
                 if p.name.endswith(".cu")}
        if found:
            return dict(sorted(found.items())), "package"
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    checkout = Path(__file__).resolve().parents[2] / "kernels"
    found = {p.name: p for p in sorted(checkout.glob("*.cu"))}
    if not found:
        raise FileNotFoundError(
            f"gpucnn's CUDA kernel sources were not found: neither the package gpucnn._cu nor {checkout} "
            f"holds any .cu file. Reinstall gpucnn (pip install --force-reinstall gpucnn)")
    return found, "checkout"


def sources() -> dict[str, Path]:
    """Kernel source files by name, e.g. {'im2col.cu': Path(...), 'pooling.cu': Path(...)}."""
    return _locate()[0]


HEADER = "windows.cuh"   # what every source shares: the grid-stride loop and the window-tap walk


def source_code(name: str) -> str:
    """The code compiled for kernel source `name`: the shared header kernels/windows.cuh, then the file, its
    line numbers kept (#line) so that compiler messages point into it. No include path is needed."""
    found = sources()
    if name not in found:
        raise FileNotFoundError(f"kernel source {name} not found (have {', '.join(found)})")
    header = found[name].parent / HEADER
    return f'#line 1 "{HEADER}"\n{header.read_text()}\n#line 1 "{name}"\n{found[name].read_text()}'


def _read_source(name: str) -> str:
    return source_code(name)


# ------------------------------------------------------------------------------------------- modules

class _Cache:
    def __init__(self):
        self.modules = {}      # (source, device) -> compiled module
        self.functions = {}    # (source, kernel, device) -> launchable function
        self.counts = Counter()  # (source, str(device)) -> compilations started
        self.seconds = {}      # (source, str(device)) -> seconds the compilation took
        self.lock = threading.Lock()


_cache = _Cache()


def _module(source: str, device: core.Device):
    key = (source, device)
    mod = _cache.modules.get(key)
    if mod is not None:
        return mod
    with _cache.lock:
        mod = _cache.modules.get(key)
        if mod is None:
            code = _read_source(source)
            _cache.counts[(source, str(device))] += 1
            start = time.perf_counter()
            try:
                mod = core.compile_module(code, OPTIONS, device)
                compile_now = getattr(mod, "compile", None)   # cupy compiles lazily: surface errors here
                if compile_now is not None:
                    compile_now()
            except Exception as e:
                raise KernelCompileError(
                    f"kernels/{source} did not compile for device {device} with options {OPTIONS}: "
                    f"{type(e).__name__}: {e}") from e
            _cache.seconds[(source, str(device))] = time.perf_counter() - start
            _cache.modules[key] = mod
    return mod


def get_function(source: str, kernel: str, device: core.Device):
    """The compiled kernel `kernel` from `source` on `device` (compiling the source on first use)."""
    key = (source, kernel, device)
    fn = _cache.functions.get(key)
    if fn is None:
        fn = _module(source, device).get_function(kernel)
        _cache.functions[key] = fn
    return fn


def compile_counts() -> dict[tuple[str, str], int]:
    """How many times each (source, device) was compiled in this process; 1 each once warm."""
    return dict(_cache.counts)


def compile_seconds() -> dict[tuple[str, str], float]:
    """Seconds each (source, device) took to compile in this process (wall clock; on CUDA it includes
    loading the module, and a source CuPy finds in its kernel cache, ~/.cupy/kernel_cache, loads in ms)."""
    return dict(_cache.seconds)


def compile_source(source: str, device) -> float:
    """Compile kernel source `source` (e.g. 'im2col.cu') for `device` unless this process has; returns the
    seconds its compilation took. Raises KernelCompileError with the compiler's log."""
    device = core.get_device(device)
    _module(source, device)
    return _cache.seconds[(source, str(device))]


def compile_all(device) -> dict[str, float]:
    """Compile every kernel source for `device` now (before benchmarks time anything); {source: seconds}."""
    return {source: compile_source(source, device) for source in sources()}


def info() -> dict:
    """Where the sources were found and what was compiled on which device (for `gpucnn info`)."""
    try:
        found, origin = _locate()
    except FileNotFoundError as e:
        found, origin = {}, f"missing ({e})"
    return {
        "source_origin": origin,
        "sources": {name: str(path) for name, path in found.items()},
        "options": list(OPTIONS),
        "kernels": {name: f"{src}:{base}_f32/_f64" + ("/_bf16" if name in BF16_KERNELS else "")
                    for name, (src, base) in KERNELS.items()},
        "compiled": [{"source": s, "device": d, "times": n, "seconds": round(_cache.seconds.get((s, d), 0.0), 4)}
                     for (s, d), n in sorted(_cache.counts.items())],
    }


# ------------------------------------------------------------------------------------------- launching

def _device_scope(array):
    """Launch on the array's own GPU: cupy launches on the current device, whatever the arrays' device."""
    return core.device_scope(array)


def _launch_config(total: int, launch):
    if launch is not None:
        return launch
    return (min((total + BLOCK - 1) // BLOCK, MAX_BLOCKS),), (BLOCK,)


def launch(op: str, dtype, like, total: int, args, launch=None):
    """Launch kernel `op` (a KERNELS name) in its variant for `dtype` (the name's _f32/_f64/_bf16 suffix) on the
    device of array `like`, with arguments (np.int64(total), *args) already in the kernel's C types, on a grid
    of `total` threads (capped, the kernels' grid-stride loops cover the rest) or the given (grid, block)
    `launch`. Nothing is launched for total == 0."""
    if total == 0:
        return
    source, base = KERNELS[op]
    fn = get_function(source, f"{base}_{suffix(dtype)}", core.device_of(like))
    grid, block = _launch_config(total, launch)
    fn(grid, block, (np.int64(total), *args))


def _run(op: str, array, total: int, inputs, geometry, outputs, launch_config):
    """Launch the `op` kernel for `array`'s dtype and device: (total, *inputs, *geometry, *outputs)."""
    launch(op, array.dtype, array, total, (*inputs, *(np.int32(g) for g in geometry), *outputs), launch_config)


def _geometry(what, shape, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    """(n, c, h, w, top, left, oh, ow) of an (N, C, H, W) `shape` under a window (padding ph, pw an int or a
    (before, after) pair; see twins), after checking both; raises ValueError naming the operation."""
    if len(shape) != 4:
        raise ValueError(f"{what}: expected an (N, C, H, W) shape, got {tuple(shape)}")
    n, c, h, w = (int(s) for s in shape)
    (top, bottom), (left, right) = pad_pair(ph), pad_pair(pw)
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(top, left) < 0:
        raise ValueError(f"{what}: kernel {kh}x{kw}, stride {sh}x{sw} and dilation {dh}x{dw} must be >= 1 and "
                         f"leading padding {top}x{left} >= 0")
    oh, ow = out_size(h, kh, sh, ph, dh, ceil_mode), out_size(w, kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"{what}: a {kh}x{kw} window (dilation {dh}x{dw}) with padding {(top, bottom)}x"
                         f"{(left, right)} does not fit a {h}x{w} input")
    reach = max((oh - 1) * sh + (kh - 1) * dh, (ow - 1) * sw + (kw - 1) * dw) + 1
    if max(h * w, oh * ow, h + top, w + left, reach, kh * kw) > _INT32_MAX:
        raise ValueError(f"{what}: a {h}x{w} image plane is too large for the kernels (int32 per-plane indices)")
    return n, c, h, w, top, left, oh, ow


def _check_float(what, *arrays):
    bf16 = what in BF16_KERNELS
    for a in arrays:
        if np.dtype(a.dtype) not in _SUFFIX and not (bf16 and is_bf16(a.dtype)):
            raise TypeError(f"{what}: kernels take float32 or float64 arrays{', or bfloat16' if bf16 else ''}, "
                            f"got {a.dtype}")


def _check_groups(what, c, groups):
    if not isinstance(groups, (int, np.integer)) or groups < 1 or c % groups:
        raise ValueError(f"{what}: groups must be a positive divisor of the channel count {c}, got {groups!r}")
    return int(groups)


def im2col(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, groups=1, *, launch=None):
    """(N, C, H, W) -> contiguous columns (N, out_h, out_w, kh, kw, C), or (G, N, out_h, out_w, kh, kw, C/G)
    for groups G > 1; see twins.im2col.

    The kernel reads x in place (NCHW) and writes the channels-last columns: no transpose on the device.
    """
    _check_float("im2col", x)
    n, c, h, w, top, left, oh, ow = _geometry("im2col", x.shape, kh, kw, sh, sw, ph, pw, dh, dw)
    g = _check_groups("im2col", c, groups)
    xp = core.get_array_module(x)
    with _device_scope(x):
        x = xp.ascontiguousarray(x)
        col = xp.empty((g, n, oh, ow, kh, kw, c // g), dtype=x.dtype)
        _run("im2col", x, col.size, (x,), (n, c, g, h, w, kh, kw, sh, sw, top, left, dh, dw, oh, ow), (col,),
             launch)
    return col[0] if g == 1 else col


def col2im(col, x_shape, sh, sw, ph, pw, dh=1, dw=1, *, launch=None):
    """Adjoint of im2col: (N, out_h, out_w, kh, kw, C) or (G, N, out_h, out_w, kh, kw, C/G) -> (N, C, H, W);
    see twins.col2im. bfloat16 columns give a float32 image (their taps summed in float32).

    The kernel gathers each NCHW pixel from the channels-last columns: no transpose on the device.
    """
    _check_float("col2im", col)
    if col.ndim not in (6, 7):
        raise ValueError(f"col2im: expected columns (N, out_h, out_w, kh, kw, C) or (G, N, out_h, out_w, kh, kw, "
                         f"C/G), got shape {col.shape}")
    g = int(col.shape[0]) if col.ndim == 7 else 1
    kh, kw = int(col.shape[-3]), int(col.shape[-2])
    n, c, h, w, top, left, oh, ow = _geometry("col2im", x_shape, kh, kw, sh, sw, ph, pw, dh, dw)
    expected = (n, oh, ow, kh, kw, c) if col.ndim == 6 else (g, n, oh, ow, kh, kw, c // max(g, 1))
    if tuple(col.shape) != expected or c % g:
        raise ValueError(f"col2im: columns of shape {col.shape} do not match image {tuple(x_shape)} with "
                         f"stride {sh}x{sw}, padding {ph}x{pw}, dilation {dh}x{dw} (expected {expected})")
    xp = core.get_array_module(col)
    with _device_scope(col):
        col = xp.ascontiguousarray(col)
        x = xp.empty((n, c, h, w), dtype=np.float32 if is_bf16(col.dtype) else col.dtype)
        _run("col2im", col, x.size, (col,), (n, c, g, h, w, kh, kw, sh, sw, top, left, dh, dw, oh, ow), (x,), launch)
    return x


def maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False, *, launch=None):
    """Max over each window -> (y, argmax int32 offset i*kw+j, -1 for a window without input); see
    twins.maxpool_forward."""
    _check_float("maxpool_forward", x)
    n, c, h, w, top, left, oh, ow = _geometry("maxpool_forward", x.shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    xp = core.get_array_module(x)
    with _device_scope(x):
        x = xp.ascontiguousarray(x)
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        argmax = xp.empty((n, c, oh, ow), dtype=np.int32)
        _run("maxpool_forward", x, n * c * oh * ow, (x,), (h, w, kh, kw, sh, sw, top, left, dh, dw, oh, ow),
             (y, argmax), launch)
    return y, argmax


def _check_pooled(what, dy, x_shape, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    n, c, h, w, top, left, oh, ow = _geometry(what, x_shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    if tuple(dy.shape) != (n, c, oh, ow):
        raise ValueError(f"{what}: gradient of shape {dy.shape} does not match input {tuple(x_shape)} pooled "
                         f"{kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw}, dilation {dh}x{dw}, ceil_mode "
                         f"{ceil_mode} (expected {(n, c, oh, ow)})")
    return n, c, h, w, top, left, oh, ow


def maxpool_backward(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False, *, launch=None):
    """Gradient of maxpool_forward, gathered per input pixel; see twins.maxpool_backward."""
    _check_float("maxpool_backward", dy)
    n, c, h, w, top, left, oh, ow = _check_pooled("maxpool_backward", dy, x_shape, kh, kw, sh, sw, ph, pw, dh, dw,
                                                  ceil_mode)
    if tuple(argmax.shape) != tuple(dy.shape) or np.dtype(argmax.dtype) != np.int32:
        raise TypeError(f"maxpool_backward: argmax must be int32 of shape {dy.shape} (from maxpool_forward), "
                        f"got {argmax.dtype} of shape {argmax.shape}")
    xp = core.get_array_module(dy, argmax)
    with _device_scope(dy):
        dy, argmax = xp.ascontiguousarray(dy), xp.ascontiguousarray(argmax)
        dx = xp.empty((n, c, h, w), dtype=dy.dtype)
        _run("maxpool_backward", dy, n * c * h * w, (dy, argmax),
             (h, w, kh, kw, sh, sw, top, left, dh, dw, oh, ow), (dx,), launch)
    return dx


def avgpool_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, *, launch=None):
    """Mean over each window (divisor per twins.avgpool_divisors); see twins.avgpool_forward."""
    _check_float("avgpool_forward", x)
    n, c, h, w, top, left, oh, ow = _geometry("avgpool_forward", x.shape, kh, kw, sh, sw, ph, pw,
                                              ceil_mode=ceil_mode)
    xp = core.get_array_module(x)
    with _device_scope(x):
        x = xp.ascontiguousarray(x)
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        _run("avgpool_forward", x, n * c * oh * ow, (x,),
             (h, w, kh, kw, sh, sw, top, left, oh, ow, int(bool(count_include_pad))), (y,), launch)
    return y


def avgpool_backward(dy, x_shape, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, *, launch=None):
    """Gradient of avgpool_forward, gathered per input pixel; see twins.avgpool_backward."""
    _check_float("avgpool_backward", dy)
    n, c, h, w, top, left, oh, ow = _check_pooled("avgpool_backward", dy, x_shape, kh, kw, sh, sw, ph, pw,
                                                  ceil_mode=ceil_mode)
    xp = core.get_array_module(dy)
    with _device_scope(dy):
        dy = xp.ascontiguousarray(dy)
        dx = xp.empty((n, c, h, w), dtype=dy.dtype)
        _run("avgpool_backward", dy, n * c * h * w, (dy,),
             (h, w, kh, kw, sh, sw, top, left, oh, ow, int(bool(count_include_pad))), (dx,), launch)
    return dx
