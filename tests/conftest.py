"""Shared test setup: the `gpu` marker and a device fixture parametrised over cpu and a real GPU."""
import os

import pytest

from gpucnn import devices as backend


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


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Each test using it runs on the CPU, and on a real GPU where there is one."""
    return backend.get_device(request.param)


@pytest.fixture(params=["cpu", "emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def any_device(request):
    """cpu, the emulated GPU (kernels run by the CPU emulator), and a real GPU where there is one."""
    return backend.get_device(request.param)
