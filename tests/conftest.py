"""Shared test setup: the `gpu` marker and the device fixtures tests are parametrised with.

`any_device` (cpu, emulated, cuda) for everything that runs on any device; `gpu_device` (emulated, cuda) for
what only a GPU runs, such as the kernels; `device` (cpu, cuda). The cuda cases carry the `gpu` marker and are
skipped, with the reason, where no GPU is usable; `pytest -m gpu` selects them on a GPU machine. Tolerances
per device and dtype are in tolerances.py.
"""
import pytest

from _devices import poison_empty
from gpucnn import devices as backend

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


def pytest_collection_modifyitems(config, items):
    ok, why = backend.cuda_status()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs a real CUDA GPU: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_device_env(monkeypatch):
    """Tests never inherit a device choice from the caller's environment."""
    monkeypatch.delenv(backend.DEVICE_ENV, raising=False)
    backend.seed(0)


@pytest.fixture(params=["cpu", CUDA])
def device(request):
    """Each test using it runs on the CPU, and on a real GPU where there is one."""
    return backend.get_device(request.param)


@pytest.fixture(params=["cpu", "emulated", CUDA])
def any_device(request):
    """cpu, the emulated GPU (kernels run by the CPU emulator), and a real GPU where there is one."""
    return backend.get_device(request.param)


@pytest.fixture(params=["emulated", CUDA])
def gpu_device(request):
    """The emulated GPU, and a real GPU where there is one."""
    return backend.get_device(request.param)


@pytest.fixture
def kernel_device(gpu_device, monkeypatch):
    """gpu_device whose fresh buffers (xp.empty) hold NaN or a sentinel, not the last launch's results, so
    that outputs a kernel leaves unwritten show."""
    poison_empty(monkeypatch, gpu_device)
    return gpu_device
