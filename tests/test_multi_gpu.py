"""cuda:N is honoured: every layer, the loss, every optimizer, gradient clipping and the finite check, the data
loader, dropout's generator, evaluation and training run on the GPU their arrays live on.

Checked on the second emulated GPU, whose arrays refuse any work while another GPU is current (as CuPy's do
where peer access is unavailable), and with the `gpu` marker on cuda:1 where a machine has two GPUs."""
import numpy as np
import pytest

import gpucnn
from _synth import write_idx_dataset
from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn import optim
from gpucnn.layers import winograd
from tolerances import assert_close


@pytest.fixture(params=["emulated:1", pytest.param("cuda:1", marks=pytest.mark.gpu)])
def second_gpu(request):
    if request.param.startswith("cuda") and backend.cuda.device_count() < 2:
        pytest.skip("needs a machine with two GPUs")
    return backend.get_device(request.param)


def every_layer():
    # No bias right before a BatchNorm: its gradient is rounding noise (BN removes any offset), which adaptive
    # optimizers scale up to +-lr, so devices that round differently (the fused kernels) would disagree by lr.
    return L.Sequential(
        L.Conv2D(3, 4, 3, padding=1, bias=False), L.BatchNorm2D(4), L.ReLU(), L.LRN(3, alpha=0.5), L.MaxPool2D(2),
        L.Conv2D(4, 4, 3, padding=1), L.AvgPool2D(2), L.Dropout(0.0), L.Flatten(), L.Affine(16, 8), L.LeakyReLU(0.1),
        L.Affine(8, 6), L.Tanh(), L.BatchNorm1D(6), L.Sigmoid(), L.Affine(6, 5))


@pytest.mark.parametrize("opt", optim.names())
def test_a_training_step_runs_on_the_gpu_its_arrays_live_on(second_gpu, opt, monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)    # the second conv takes Winograd
    monkeypatch.setattr(winograd, "MIN_ROWS", 1)
    monkeypatch.setattr(winograd, "ON_GPU", True)       # on the GPU too
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, 4)
    results = {}
    for dev in ("cpu", second_gpu):
        gpucnn.seed(0)
        model, loss, o = every_layer().to(dev), L.SoftmaxCrossEntropy(), optim.get(opt, lr=0.01)
        assert model[5].uses_winograd((4, 4, 4, 4))
        xd, td = backend.to_device(x, dev), backend.to_device(t, dev)
        for _ in range(2):
            value = loss.forward(model.forward(xd, train=True), td)
            model.backward(loss.backward())
            optim.clip_grad_norm(model.grads, 1.0)
            ok = optim.grads_finite(model.grads)
            o.update(model.params, model.grads)
        arrays = {"loss": value, "ok": ok, **model.params, **model.buffers,
                  **{f"state {k}": v for k, v in o.state_dict().items() if isinstance(v, np.ndarray)}}
        if dev != "cpu":
            assert all(backend.device_of(a) == second_gpu for a in (value, ok, *model.params.values(),
                                                                     *model.buffers.values(), *model.grads.values()))
        results[dev] = {k: backend.to_cpu(v) for k, v in arrays.items()}
    for k, v in results["cpu"].items():
        assert_close(results[second_gpu][k], v, second_gpu, what=k, tol="optim")   # kernels and twins round apart


def test_dropout_draws_from_the_second_gpus_own_generator(second_gpu):
    gpucnn.seed(1)
    x = backend.to_device(np.ones((50, 40), np.float32), second_gpu)
    y = L.Dropout(0.5).forward(x, train=True)
    assert backend.device_of(y) == second_gpu
    kept = (backend.to_cpu(y) != 0).mean()
    assert 0.4 < kept < 0.6
    assert list(backend.core._rng.devices) == [second_gpu]


def test_loader_evaluation_and_training_on_the_second_gpu(second_gpu, tmp_path):
    from gpucnn import data, train
    (tmp_path / "data").mkdir()
    folder = write_idx_dataset(tmp_path / "data", n_train=64, n_test=40, size=16)
    loader = data.DataLoader(data.load_dataset("mnist", "test", data_dir=folder, download=False), batch_size=16,
                             device=second_gpu)
    xb, yb = next(iter(loader))
    assert backend.device_of(xb) == backend.device_of(yb) == second_gpu
    result = train.train(train.TrainConfig(model="lenet5", dataset="mnist", data_dir=str(folder), epochs=1,
                                           batch_size=16, device=str(second_gpu), out=str(tmp_path / "run"),
                                           log_every=1e9, download=False), log=lambda line: None)
    assert result["device"] == str(second_gpu) and np.isfinite(result["test_loss"])
    assert all(backend.device_of(p) == second_gpu for p in result["model"].params.values())
