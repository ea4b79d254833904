"""A CPU stand-in for ``cupy.RawModule``: runs the project's CUDA C kernels without a GPU.

The ``.cu`` source is compiled as C++ by g++ with a small shim (``__global__`` and friends, thread-local
``blockIdx``/``threadIdx``/``blockDim``/``gridDim``) plus one generated launcher per ``extern "C" __global__``
kernel that runs every thread of every block, one after another. Kernels therefore must not rely on threads
running together (no ``__syncthreads``, no shared memory); grid-stride kernels like ours are fine.

Arguments are checked the way CuPy would pass them, and what CuPy would get silently wrong is refused:
a Python int arrives in CUDA as a 64-bit integer and a Python float as a double, a kernel never sees strides,
a host (numpy) array is not device memory, and an array of another GPU than the one the module was built for
and that is current is not either. Each launch is counted as a device operation (``kernel:<name>``). Built
libraries are cached on disk by source hash.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import counters, emulated
from .emulated import EmulatedArray

CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ("-O2", "-shared", "-fPIC")
CACHE_ENV = "GPUCNN_EMULATOR_CACHE"
LAUNCH_PREFIX = "gpucnn_emulator_launch_"

# CUDA's limits on launch shapes (all compute capabilities >= 3.0).
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)

SHIM = r"""
#include <algorithm>
#include <cmath>
#include <cstring>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __syncthreads() static_assert(false, "the gpucnn emulator runs threads one after another: __syncthreads() is not supported")
#define __shared__ static_assert(false, "the gpucnn emulator does not support __shared__ memory");
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
static thread_local uint3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
static thread_local dim3 blockDim, gridDim;
using std::isnan; using std::isinf; using std::isfinite; using std::min; using std::max;
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline int __float_as_int(float v) { int i; std::memcpy(&i, &v, sizeof i); return i; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, sizeof d); return d; }
inline long long __double_as_longlong(double v) { long long i; std::memcpy(&i, &v, sizeof i); return i; }
// bfloat16 as cuda_bf16.h's __nv_bfloat16: 16 bits of storage (float's top half); from float rounded to nearest
// even (NaN kept quiet), as __float2bfloat16 rounds; to float exactly.
struct __nv_bfloat16 {
  unsigned short x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) {
    unsigned int u; std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) { x = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    x = (unsigned short)(u >> 16);
  }
  __nv_bfloat16(double d) : __nv_bfloat16((float)d) {}
  __nv_bfloat16(int i) : __nv_bfloat16((float)i) {}
  operator float() const { unsigned int u = (unsigned int)x << 16; float f; std::memcpy(&f, &u, sizeof f); return f; }
};
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
template <typename T> inline T atomicAdd(T* address, T value) { T old = *address; *address = old + value; return old; }
template <typename T> inline T atomicCAS(T* address, T compare, T value) {
  T old = *address; if (old == compare) *address = value; return old;
}
"""

# C parameter type -> numpy dtype of the value CUDA reads.
C_TYPES = {
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "int": np.dtype(np.int32), "signed int": np.dtype(np.int32),
    "unsigned int": np.dtype(np.uint32), "unsigned": np.dtype(np.uint32),
    "long long": np.dtype(np.int64), "long long int": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64), "unsigned long long int": np.dtype(np.uint64),
    "short": np.dtype(np.int16), "unsigned short": np.dtype(np.uint16),
    "signed char": np.dtype(np.int8), "unsigned char": np.dtype(np.uint8), "char": np.dtype(np.int8),
    "bool": np.dtype(np.bool_),
}
BF16_C_TYPE = "__nv_bfloat16"   # its numpy dtype is ml_dtypes.bfloat16, imported when a kernel takes one
_NP_TO_C = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.int32): "int",
            np.dtype(np.int64): "long long", np.dtype(np.uint32): "unsigned int",
            np.dtype(np.uint64): "unsigned long long"}

_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s+)?void\s+'
    r'(?:__launch_bounds__\s*\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)')


class CompileError(RuntimeError):
    """g++ refused the source; the message carries its log."""


class KernelNotFoundError(LookupError):
    """get_function() asked for a kernel the source does not define as extern "C" __global__."""


class KernelArgumentError(TypeError):
    """A launch argument that CuPy would pass wrongly (or refuse); the message names kernel, parameter and fix."""


@dataclass(frozen=True)
class Param:
    """One kernel parameter: name, C base type, whether it is a pointer, whether the pointee is const."""
    name: str
    ctype: str
    pointer: bool
    const: bool

    @property
    def dtype(self):
        if self.ctype == BF16_C_TYPE:
            from .precision import bf16_dtype
            return bf16_dtype()
        return None if self.ctype == "void" else C_TYPES[self.ctype]

    def __str__(self):
        return f"{'const ' if self.const else ''}{self.ctype}{'*' if self.pointer else ''} {self.name}"


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    return re.sub(r"//[^\n]*", "", code)


def _parse_param(text: str, kernel: str) -> Param:
    words = text.replace("*", " * ").split()
    if len(words) < 2:
        raise ValueError(f"kernel {kernel}: cannot parse parameter {text.strip()!r} (unnamed parameters are not supported)")
    name, words = words[-1], words[:-1]
    stars = words.count("*")
    if stars > 1:
        raise ValueError(f"kernel {kernel}: parameter {name!r} is a pointer to pointer, not supported")
    const = "const" in words[:words.index("*")] if stars else "const" in words
    base = " ".join(w for w in words if w not in ("const", "*", "__restrict__", "__restrict", "volatile"))
    if base not in C_TYPES and not (stars and base in ("void", BF16_C_TYPE)):
        raise ValueError(f"kernel {kernel}: parameter {name!r} has type {base!r}, which the emulator does not "
                         f"support (supported: {', '.join(sorted(C_TYPES))}, and {BF16_C_TYPE} arrays)")
    return Param(name, base, bool(stars), const)


def parse_kernels(code: str) -> dict[str, tuple[Param, ...]]:
    """The extern "C" __global__ kernels in a CUDA source: name -> parameters, in source order."""
    kernels = {}
    for m in _KERNEL_RE.finditer(_strip_comments(code)):
        name, params = m.group(1), m.group(2).strip()
        plist = () if params in ("", "void") else tuple(_parse_param(p, name) for p in params.split(","))
        kernels[name] = plist
    return kernels


def _launcher(name: str, params: tuple[Param, ...]) -> str:
    args = ", ".join(
        f"static_cast<{p.ctype}*>(*static_cast<void**>(a[{i}]))" if p.pointer
        else f"*static_cast<{p.ctype}*>(a[{i}])"
        for i, p in enumerate(params))
    return (
        f'extern "C" void {LAUNCH_PREFIX}{name}(const unsigned int* g, const unsigned int* b, void** a) {{\n'
        f"  (void)a;\n"
        f"  gridDim = dim3(g[0], g[1], g[2]); blockDim = dim3(b[0], b[1], b[2]);\n"
        f"  for (unsigned int bz = 0; bz < g[2]; ++bz) for (unsigned int by = 0; by < g[1]; ++by)\n"
        f"  for (unsigned int bx = 0; bx < g[0]; ++bx) {{\n"
        f"    blockIdx = {{bx, by, bz}};\n"
        f"    for (unsigned int tz = 0; tz < b[2]; ++tz) for (unsigned int ty = 0; ty < b[1]; ++ty)\n"
        f"    for (unsigned int tx = 0; tx < b[0]; ++tx) {{\n"
        f"      threadIdx = {{tx, ty, tz}};\n"
        f"      {name}({args});\n"
        f"    }}\n"
        f"  }}\n"
        f"}}\n")


def translation_unit(code: str, kernels: dict, filename: str = "kernel.cu") -> str:
    """The C++ g++ compiles: shim, the CUDA source unchanged (line numbers kept), launchers."""
    launchers = "".join(_launcher(n, p) for n, p in kernels.items())
    return f'{SHIM}\n#line 1 "{filename}"\n{code}\n#line 1 "<gpucnn emulator launchers>"\n{launchers}'


# ---------------------------------------------------------------------------------------------- builds

class _Builds:
    """g++ builds done by this process, and the libraries loaded (by source hash)."""

    def __init__(self):
        self.count = 0
        self.libraries: dict[str, ctypes.CDLL] = {}
        self.lock = threading.Lock()


_builds = _Builds()


def build_count() -> int:
    """How many times this process has run g++ (cache hits do not count)."""
    return _builds.count


def clear_loaded():
    """Forget the libraries loaded in this process (the disk cache stays): the next use reloads from disk."""
    with _builds.lock:
        _builds.libraries.clear()


def cache_dir() -> Path:
    """Where built libraries are kept: $GPUCNN_EMULATOR_CACHE, else $XDG_CACHE_HOME (~/.cache)/gpucnn/emulator."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpucnn" / "emulator"


def _cxx_flags(options) -> list[str]:
    """g++ flags from CUDA compile options: -std and -D/-U carry over; GPU-only options (-ftz, -arch) do not."""
    flags, std = [], "-std=c++17"
    options = list(options)
    for k, o in enumerate(options):
        if o.startswith(("--std=", "-std=")):
            std = "-std=" + o.split("=", 1)[1]
        elif o.startswith(("-D", "-U")) and len(o) > 2:
            flags.append(o)
        elif o in ("-D", "-U") and k + 1 < len(options):
            flags.append(o + options[k + 1])
    return [std, *flags]


@functools.lru_cache(maxsize=None)
def _compiler_id() -> str:
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise CompileError(f"the gpucnn emulator needs a C++ compiler ({CXX}) to run kernels on the emulated "
                           f"device: {e}. Install g++ (e.g. apt-get install g++) or set $CXX") from e


def _build(unit: str, flags: list[str], filename: str) -> ctypes.CDLL:
    key = hashlib.sha256("\0".join([unit, *flags, *CXXFLAGS, _compiler_id()]).encode()).hexdigest()[:32]
    with _builds.lock:
        lib = _builds.libraries.get(key)
        if lib is not None:
            return lib
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        so = directory / f"{Path(filename).stem}-{key}.so"
        if not so.exists():
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                src, out = Path(tmp) / "unit.cpp", Path(tmp) / "unit.so"
                src.write_text(unit)
                cmd = [CXX, *CXXFLAGS, *flags, str(src), "-o", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                _builds.count += 1
                if proc.returncode != 0:
                    log = proc.stderr.replace(str(src), filename)
                    raise CompileError(f"{filename}: g++ failed to compile the kernel source for the emulated "
                                       f"device (exit {proc.returncode}):\n{log}")
                os.replace(out, so)
        lib = ctypes.CDLL(str(so))
        _builds.libraries[key] = lib
        return lib


# ---------------------------------------------------------------------------------------- RawModule

class RawModule:
    """cupy.RawModule look-alike: ``RawModule(code=..., options=...)``, ``get_function(name)``.

    Like CuPy it compiles lazily (on compile() or the first get_function()).
    """

    def __init__(self, code: str | None = None, *, path: str | None = None, options: tuple = (),
                 name: str = "kernel.cu", device: int | None = None, **unsupported):
        if unsupported:
            raise TypeError(f"emulator RawModule: unsupported arguments {sorted(unsupported)}")
        if (code is None) == (path is None):
            raise TypeError("emulator RawModule: pass exactly one of code= or path=")
        if path is not None:
            code, name = Path(path).read_text(), Path(path).name
        self.code = code
        self.options = tuple(options)
        self.name = name
        self.kernels = parse_kernels(code)
        self.device = emulated.current() if device is None else int(device)   # cupy: the current device
        self._lib = None
        self._functions = {}

    def compile(self, log_stream=None):
        """Build (or load from the cache) the shared library now; raises CompileError with g++'s log."""
        if self._lib is None:
            unit = translation_unit(self.code, self.kernels, self.name)
            self._lib = _build(unit, _cxx_flags(self.options), self.name)

    def get_function(self, name: str) -> "Function":
        fn = self._functions.get(name)
        if fn is not None:
            return fn
        if name not in self.kernels:
            raise KernelNotFoundError(
                f"{self.name}: no extern \"C\" __global__ kernel named {name!r} "
                f"(found: {', '.join(sorted(self.kernels)) or 'none'})")
        self.compile()
        fn = Function(name, self.kernels[name], getattr(self._lib, LAUNCH_PREFIX + name), self.device)
        self._functions[name] = fn
        return fn


def _dims(value, what: str, kernel: str, limits) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if (not isinstance(dims, tuple) or not 1 <= len(dims) <= 3
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims)):
        raise TypeError(f"kernel {kernel}: {what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, d, lim in zip("xyz", dims, limits):
        if not 1 <= d <= lim:
            raise ValueError(f"kernel {kernel}: {what}.{axis} = {d} is outside CUDA's range 1..{lim}")
    return dims


class Function:
    """A launchable kernel: ``fn(grid, block, args)`` as with cupy.RawKernel / RawModule.get_function."""

    def __init__(self, name: str, params: tuple[Param, ...], entry, device: int = 0):
        self.name = name
        self.params = params
        self.device = device
        self._entry = entry
        self._entry.restype = None
        self._entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(str(p) for p in self.params)})"

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        grid = _dims(grid, "grid", self.name, MAX_GRID)
        block = _dims(block, "block", self.name, MAX_BLOCK)
        if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"kernel {self.name}: block {block} has more than {MAX_THREADS_PER_BLOCK} threads")
        if shared_mem:
            raise ValueError(f"kernel {self.name}: the emulator does not support dynamic shared memory")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel {self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise KernelArgumentError(
                f"kernel {self.signature}: expected {len(self.params)} arguments, got {len(args)}")
        if emulated.current() != self.device:
            raise ValueError(f"kernel {self.name} was loaded on emulated GPU {self.device} but GPU "
                             f"{emulated.current()} is current (cupy would launch it in the wrong context); launch "
                             f"it inside gpucnn.devices.device_scope(array)")
        keep = [self._convert(p, a) for p, a in zip(self.params, args)]
        counters.op(f"kernel:{self.name}")
        argv = (ctypes.c_void_p * max(1, len(keep)))(*[ctypes.addressof(k) for k in keep])
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        self._entry(g, b, argv)

    def _refuse(self, p: Param, message: str):
        raise KernelArgumentError(f"kernel {self.name}, parameter {p.name} ({p}): {message}")

    def _convert(self, p: Param, a):
        """The argument as the ctypes object whose address the launcher reads; refuses what CuPy gets wrong."""
        if p.pointer:
            return self._pointer(p, a)
        if isinstance(a, (np.ndarray, EmulatedArray)):
            self._refuse(p, f"got an array of shape {a.shape}; a scalar parameter needs a numpy scalar "
                            f"(pass np.{p.dtype.name}(...))")
        if isinstance(a, np.generic):    # first: np.float64 is also a Python float
            if a.dtype != p.dtype:
                self._refuse(p, f"got np.{a.dtype.name} {a!r}, but the kernel reads {p.ctype} "
                                f"({p.dtype.itemsize} bytes); pass np.{p.dtype.name}(...)")
        elif isinstance(a, bool):
            self._refuse(p, f"got Python bool {a!r}; pass np.{p.dtype.name}(...)")
        elif isinstance(a, int):
            if p.dtype != np.dtype(np.int64):
                self._refuse(p, f"got Python int {a!r}, which CuPy passes as a 64-bit integer (long long); "
                                f"pass np.{p.dtype.name}(...)")
            if not -2**63 <= a < 2**63:
                self._refuse(p, f"Python int {a} does not fit in 64 bits")
        elif isinstance(a, float):
            if p.dtype != np.dtype(np.float64):
                self._refuse(p, f"got Python float {a!r}, which CuPy passes as a double; "
                                f"pass np.{p.dtype.name}(...)")
        else:
            self._refuse(p, f"got {type(a).__name__}; pass np.{p.dtype.name}(...)")
        value = np.array(a, dtype=p.dtype)
        return (ctypes.c_char * value.nbytes).from_buffer_copy(value.tobytes())

    def _pointer(self, p: Param, a):
        if not isinstance(a, EmulatedArray):
            if isinstance(a, np.ndarray):
                self._refuse(p, f"got a host (numpy) array of shape {a.shape}; CuPy refuses host arrays. "
                                f"Move it with gpucnn.to_device(x, 'emulated')")
            self._refuse(p, f"got {type(a).__name__} {a!r}; a pointer parameter needs a device array")
        if p.dtype is not None and a.dtype != p.dtype:
            want = _NP_TO_C.get(a.dtype, BF16_C_TYPE if a.dtype.name == "bfloat16" else a.dtype.name)
            self._refuse(p, f"got a {a.dtype.name} array ({want}*), but the kernel reads {p.ctype}*; "
                            f"pass a {p.dtype.name} array")
        if not a.flags.c_contiguous:
            self._refuse(p, f"got a non-contiguous array (shape {a.shape}, strides {a.strides}); kernels "
                            f"ignore strides. Pass xp.ascontiguousarray(x)")
        if not p.const and not a.flags.writeable:
            self._refuse(p, "got a read-only array for a pointer the kernel writes through")
        if emulated.index_of(a) != self.device:
            self._refuse(p, f"got an array of emulated GPU {emulated.index_of(a)}, but the kernel runs on GPU "
                            f"{self.device}")
        return ctypes.c_void_p(emulated.buffer(a).ctypes.data)
