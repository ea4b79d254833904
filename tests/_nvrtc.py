"""Test helper: NVIDIA's runtime compiler (NVRTC) through ctypes, no GPU needed.

Finds libnvrtc.so.13 in the nvidia-cuda-nvrtc wheel (site-packages/nvidia/cu13/lib) or on the loader path.
`compile_ptx` compiles CUDA C to PTX the way CuPy's RawModule would and raises NvrtcError carrying the log.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

LIBNAME = "libnvrtc.so.13"

# What cupy.RawModule adds on its own (cupy/_core/core.pyx assemble_cupy_compiler_options and
# cupy/cuda/compiler.py, CuPy 14): -ftz=true always, --device-as-default-execution-space (no jitify),
# -arch=sm_XX of the device (cubin; -arch=compute_XX with CUPY_COMPILE_WITH_PTX=1), and include paths
# (CCCL, cupy/_core/include, $CUDA_PATH/include or the CUDA headers' wheel). Of those our kernels use one header,
# cuda_bf16.h (the bf16 variants), which NVRTC 13 does not build in: it is taken from the nvidia-cuda-runtime wheel
# (site-packages/nvidia/cu13/include), as CuPy takes it from the CUDA headers for its own bfloat16 support.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def cuda_include_dir():
    """The CUDA headers' folder of the nvidia-cuda-runtime wheel (holding cuda_bf16.h), or None."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "cu13" / "include"
        if (path / "cuda_bf16.h").exists():
            return path
    return None


INCLUDE_OPTIONS = (f"-I{cuda_include_dir()}",) if cuda_include_dir() else ()


class NvrtcError(RuntimeError):
    """NVRTC failed; the message carries the program log."""


def _candidates():
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        yield Path(root) / "cu13" / "lib" / LIBNAME
    yield Path(LIBNAME)


@functools.lru_cache(maxsize=None)
def library():
    """(ctypes library or None, why it is missing)."""
    tried = []
    for path in _candidates():
        if path.is_absolute() and not path.exists():
            tried.append(str(path))
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib, ""
    return None, (f"{LIBNAME} not found (tried {', '.join(tried)}); "
                  f"install it with: pip install nvidia-cuda-nvrtc")


def version() -> tuple[int, int]:
    lib = library()[0]
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _check(lib, status, what, log=""):
    if status != 0:
        msg = lib.nvrtcGetErrorString(status).decode()
        raise NvrtcError(f"{what} failed: {msg}" + (f"\n{log}" if log else ""))


def compile_ptx(code: str, options=(), name: str = "kernel.cu") -> tuple[str, str]:
    """(ptx, log) for a CUDA source; raises NvrtcError with the log when compilation fails."""
    lib, why = library()
    if lib is None:
        raise NvrtcError(why)
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace")
        _check(lib, status, f"nvrtcCompileProgram({name})", log)
        _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return ptx.value.decode(), log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
