"""Every kernels/*.cu compiles with NVIDIA's NVRTC, as CuPy would compile it, with no error and no warning.

No GPU is needed: NVRTC (pip package nvidia-cuda-nvrtc) compiles to PTX/cubin on the CPU. Skipped with the
reason when libnvrtc.so.13 is absent.
"""
import re

import pytest

import _nvrtc
from gpucnn import devices as backend
from gpucnn.devices import emulator, kernels

lib, why = _nvrtc.library()
pytestmark = pytest.mark.skipif(lib is None, reason=f"NVRTC unavailable: {why}")
if lib is not None and _nvrtc.cuda_include_dir() is None:   # the bf16 variants include cuda_bf16.h: required, not skipped
    raise ImportError("cuda_bf16.h not found: install the nvidia-cuda-runtime wheel (pip install "
                      "'nvidia-cuda-runtime>=13', in gpucnn's test extra)")

ARCHS = (75, 80, 90)
SOURCES = sorted(kernels.sources())


def cupy_options(arch: str):
    """Our options plus what cupy.RawModule adds (see tests/_nvrtc.py and gpucnn/kernels.py)."""
    return kernels.OPTIONS + _nvrtc.CUPY_ADDED_OPTIONS + _nvrtc.INCLUDE_OPTIONS + (f"-arch={arch}",)


def expected_kernels(source):
    return {f"{base}_{s}" for name, (src, base) in kernels.KERNELS.items() if src == source
            for s in ("f32", "f64") + (("bf16",) if name in kernels.BF16_KERNELS else ())}


def assert_clean(log, what):
    assert "warning" not in log.lower(), f"{what} compiled with warnings:\n{log}"
    assert log.strip() == "", f"{what}: NVRTC said something:\n{log}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_to_ptx_with_every_kernel_entry(source, arch):
    code = kernels.source_code(source)
    ptx, log = _nvrtc.compile_ptx(code, cupy_options(f"compute_{arch}"), source)
    assert_clean(log, f"{source} for compute_{arch}")
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
    assert entries == expected_kernels(source)
    assert entries == set(emulator.parse_kernels(code)), "the emulator's parser must see the same kernels"
    assert entries == set(emulator.parse_kernels(kernels.sources()[source].read_text())), "and in the file alone"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_to_cubin_as_cupy_does_by_default(source, arch):
    code = kernels.source_code(source)
    _, log = _nvrtc.compile_ptx(code, cupy_options(f"sm_{arch}"), source)
    assert_clean(log, f"{source} for sm_{arch}")


def test_every_source_holds_kernels_the_launchers_use():
    used = {src for src, _ in kernels.KERNELS.values()}
    assert used == set(SOURCES)


BROKEN = 'extern "C" __global__ void k(int* x) {\n  x[0] = undefined_thing;\n}\n'


def test_broken_source_reports_the_nvrtc_log():
    with pytest.raises(_nvrtc.NvrtcError) as e:
        _nvrtc.compile_ptx(BROKEN, cupy_options("compute_75"), "broken.cu")
    assert 'broken.cu(2): error: identifier "undefined_thing" is undefined' in str(e.value)


class NvrtcModule:
    """A cupy.RawModule stand-in backed by NVRTC: compiles (lazily, like CuPy) and raises with the log."""

    def __init__(self, code, options):
        self.code, self.options = code, options

    def compile(self):
        _nvrtc.compile_ptx(self.code, self.options + _nvrtc.CUPY_ADDED_OPTIONS + ("-arch=compute_75",), "kern.cu")


def test_kernels_module_surfaces_the_compiler_log(monkeypatch):
    monkeypatch.setattr(kernels, "_cache", kernels._Cache())
    monkeypatch.setattr(kernels, "_read_source", lambda name: BROKEN)
    monkeypatch.setattr(backend.core, "compile_module", lambda code, options, device: NvrtcModule(code, options))
    with pytest.raises(kernels.KernelCompileError) as e:
        kernels.get_function("broken.cu", "k", backend.Device("cuda", 0))
    msg = str(e.value)
    assert "kernels/broken.cu" in msg and "cuda:0" in msg
    assert 'error: identifier "undefined_thing" is undefined' in msg
