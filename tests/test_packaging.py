"""The wheel carries the CUDA sources, and an installed copy (outside the checkout) finds and runs them."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy without build/ or *.egg-info/: a stale build folder in the checkout would put modules in
    # the wheel that the package list no longer names
    src = tmp_path_factory.mktemp("src") / "gpucnn"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs",
                                                              "__pycache__", ".pytest_cache", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True, timeout=300)
    (whl,) = out.glob("gpucnn-*.whl")
    return whl


def test_wheel_contains_every_kernel_source(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for cu in sorted((ROOT / "kernels").glob("*.cu*")):   # the sources and the header they share
        assert f"gpucnn/_cu/{cu.name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_wheel_contains_every_module(wheel):
    """Every module of the gpucnn package (subpackages such as gpucnn.interop included) is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gpucnn").rglob("*.py"))
    assert [m for m in modules if m not in names] == []


def test_installed_wheel_loads_its_kernels(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    code = ("import numpy as np, gpucnn\n"
            "from gpucnn.devices import kernels, ops\n"
            "from gpucnn import devices as backend\n"
            "src = kernels.sources()\n"
            "assert all(str(p).startswith(r'%s') for p in src.values()), src\n"
            "x = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)\n"
            "got = backend.to_cpu(ops.im2col(backend.to_device(x, 'emulated'), 3, 2, 1, 2, 1, 0))\n"
            "np.testing.assert_array_equal(got, ops.im2col(x, 3, 2, 1, 2, 1, 0))\n"
            "print(kernels.info()['source_origin'])\n") % site
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                         "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "package" in run.stdout
