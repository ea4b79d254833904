"""Devices, array modules, transfers and seeding (gpucnn.devices)."""
import logging
import subprocess
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn import devices as backend


def test_import_never_needs_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import gpucnn, gpucnn.devices.cuda as b\n"
            "b.cuda_status.cache_clear(); b._import_cupy.cache_clear()\n"
            "print(gpucnn.get_device('auto'))\n"
            "ok, why = b.cuda_status(); print(ok); print(why)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "cpu"
    assert out[1] == "False"
    assert "cupy is not installed" in out[2] and "pip install" in out[2]


def test_cuda_without_cupy_says_so(monkeypatch):
    monkeypatch.setattr(backend.cuda, "_import_cupy", lambda: (None, "cupy is not installed (ImportError: x)"))
    backend.cuda_status.cache_clear()
    try:
        with pytest.raises(backend.CudaUnavailableError, match="cupy is not installed.*cuda12"):
            backend.get_device("cuda")
    finally:
        backend.cuda_status.cache_clear()


def test_auto_falls_back_to_cpu_with_one_log_line(caplog):
    if backend.cuda_status()[0]:
        pytest.skip("a GPU is usable here: auto picks it")
    backend.core._log_fallback.cache_clear()
    with caplog.at_level(logging.INFO, logger="gpucnn"):
        assert backend.get_device("auto") == backend.CPU
        assert backend.get_device(None) == backend.CPU
    lines = [r for r in caplog.records if "running on the CPU" in r.getMessage()]
    assert len(lines) == 1


def test_cuda_without_gpu_is_a_clear_error():
    ok, why = backend.cuda_status()
    if ok:
        pytest.skip("a GPU is usable here")
    with pytest.raises(backend.CudaUnavailableError) as e:
        backend.get_device("cuda:0")
    msg = str(e.value)
    assert "cuda:0" in msg and why in msg and "--device cpu" in msg
    assert any(w in msg for w in ("cupy is not installed", "no CUDA driver", "no GPU"))


def test_env_var_is_the_default(monkeypatch):
    monkeypatch.setenv("GPUCNN_DEVICE", "emulated")
    assert backend.get_device() == backend.EMULATED
    monkeypatch.setenv("GPUCNN_DEVICE", "cpu")
    assert backend.get_device() == backend.CPU


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cuda:-1", "", "gpux", "cudax"])
def test_unknown_device_names(bad):
    with pytest.raises(ValueError, match="device"):
        backend.get_device(bad)


def test_get_array_module_and_mixing():
    x = np.zeros(3)
    e = backend.to_device(x, "emulated")
    assert backend.get_array_module(x, None, 1.0) is np
    assert backend.get_array_module(e) is backend.emulated_xp
    with pytest.raises(backend.DeviceMismatchError, match="different devices"):
        backend.get_array_module(x, e)


def test_emulated_arrays_behave_like_cupy_arrays():
    xp = backend.emulated_xp
    e = backend.to_device(np.arange(6, dtype=np.float32).reshape(2, 3), "emulated")
    assert isinstance(xp.zeros(3), backend.EmulatedArray)
    assert isinstance(e * 2 + 1, backend.EmulatedArray)
    assert isinstance(e.sum(), backend.EmulatedArray) and e.sum().ndim == 0
    assert isinstance(xp.matmul(e, e.T), backend.EmulatedArray)
    with pytest.raises(backend.DeviceMismatchError, match="host"):
        e + np.ones((2, 3), np.float32)
    with pytest.raises(backend.DeviceMismatchError, match="host"):
        xp.concatenate([e, np.ones((2, 3), np.float32)])
    assert isinstance(xp.asarray(np.ones(2)), backend.EmulatedArray)  # explicit host-to-device copy is fine


def test_host_syncs_are_counted():
    e = backend.to_device(np.ones(4, np.float32), "emulated")
    backend.transfer_stats.reset()
    s = (e * 3).sum()
    assert backend.transfer_stats.device_to_host == 0
    assert float(s) == 12.0
    assert backend.to_cpu(e).__class__ is np.ndarray
    assert bool(s > 1)
    assert backend.transfer_stats.device_to_host == 3


def test_to_device_round_trip():
    x = np.random.default_rng(0).random((2, 3)).astype(np.float32)
    for dev in ("cpu", "emulated"):
        y = backend.to_device(x, dev)
        assert str(backend.device_of(y)) == dev
        np.testing.assert_array_equal(backend.to_cpu(y), x)
    assert not backend.is_gpu_array(x) and backend.is_gpu_array(backend.to_device(x, "emulated"))


def test_seed_makes_every_rng_repeat():
    like = np.zeros(1, np.float32)
    gpucnn.seed(123)
    a = (backend.host_rng().random(4), backend.random_uniform((4,), like))
    gpucnn.seed(123)
    b = (backend.host_rng().random(4), backend.random_uniform((4,), like))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].dtype == np.float32


def test_rng_state_round_trip():
    gpucnn.seed(5)
    backend.host_rng().random(3)
    state = backend.get_rng_state()
    first = backend.host_rng().random(5)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.host_rng().random(5), first)


def test_random_uniform_on_the_emulated_device():
    like = backend.to_device(np.zeros(1, np.float32), "emulated")
    u = backend.random_uniform((3, 4), like)
    assert isinstance(u, backend.EmulatedArray) and u.shape == (3, 4) and u.dtype == np.float32


def test_same_code_on_each_device(device):
    """A device-parametrised check: runs on the CPU here, and on the GPU where there is one."""
    x = backend.to_device(np.arange(12, dtype=np.float32), device)
    xp = backend.get_array_module(x)
    np.testing.assert_allclose(backend.to_cpu(xp.sqrt(x * x)), np.arange(12, dtype=np.float32))


def test_cupy_installed_without_gpu():
    """The case CI sets up: cupy imports, but there is no driver or GPU."""
    cp = pytest.importorskip("cupy")
    backend.cuda_status.cache_clear()
    ok, why = backend.cuda_status()
    if ok:
        pytest.skip("a GPU is usable here")
    assert f"cupy {cp.__version__} is installed" in why
    assert "no CUDA driver" in why or "no GPU" in why
    assert backend.get_device("auto") == backend.CPU
    with pytest.raises(backend.CudaUnavailableError, match="is installed but"):
        backend.get_device("cuda")


def test_seed_does_not_load_curand(monkeypatch):
    """gpucnn.seed never calls cupy.random.seed (which makes a cuRAND host generator), even with a GPU."""
    import types
    calls = []
    fake = types.SimpleNamespace(random=types.SimpleNamespace(seed=lambda n=None: calls.append(n)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend.cuda, "cuda_status", lambda: (True, "a pretend GPU"))
    gpucnn.seed(3)
    assert calls == []


def test_device_generators_are_made_only_when_a_device_draws():
    from gpucnn import layers as L
    gpucnn.seed(4)
    assert backend.core._rng.devices == {}
    x = backend.to_device(np.ones((2, 3), np.float32), "emulated")
    L.ReLU().forward(x)
    L.Dropout(0.5).forward(x, train=False)
    assert backend.core._rng.devices == {}, "no draw, no generator"
    a = L.Dropout(0.5).forward(x, train=True)
    assert list(backend.core._rng.devices) == [backend.EMULATED]
    gpucnn.seed(4)
    assert backend.core._rng.devices == {}
    np.testing.assert_array_equal(backend.to_cpu(L.Dropout(0.5).forward(x, train=True)), backend.to_cpu(a))


def test_device_timer_times_a_block_on_each_device(any_device):
    """Seconds as a float > 0 on every device; on a GPU the block's end waits for the device (CUDA events
    and their synchronisation; the emulated device counts that wait as its one host sync)."""
    x = backend.to_device(np.full((64, 64), 0.5, np.float32), any_device)
    xp = backend.get_array_module(x)
    with backend.count_device_ops() as counts:
        with backend.DeviceTimer(any_device) as timer:
            for _ in range(3):
                x = xp.matmul(x, x) * np.float32(1 / 64)
    assert isinstance(timer.seconds, float) and timer.seconds > 0
    assert counts.syncs == (1 if any_device.kind == "emulated" else 0)
    np.testing.assert_allclose(backend.to_cpu(x), np.full((64, 64), 0.5 ** 8), rtol=1e-6)   # x -> x*x
