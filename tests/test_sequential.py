"""Sequential's bookkeeping (names, identity, checkpoints, devices), the initialisers, the GPU path of the
layers (emulated, and cuda with the `gpu` marker) against the CPU, and Conv2D's workspace-limited chunking."""
import numpy as np
import pytest
import torch

import gpucnn
import tolerances
from _devices import no_host_sync
from gpucnn import devices as backend
from gpucnn.devices import ops
from gpucnn import init as I
from gpucnn import layers as L
from gpucnn.layers import Sequential


def small_net():
    return Sequential(L.Conv2D(2, 4, 3, padding=1), L.BatchNorm2D(4), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                      L.Affine(16, 3))


def lenet5():
    return Sequential([L.Conv2D(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2), L.Conv2D(6, 16, 5), L.ReLU(),
                       L.MaxPool2D(2), L.Flatten(), L.Affine(400, 120), L.ReLU(), L.Affine(120, 84), L.ReLU(),
                       L.Affine(84, 10)])


def step(model, x, labels):
    """One forward/backward; returns (logits, loss, model's dx)."""
    ce = L.SoftmaxCrossEntropy()
    logits = model.forward(x)
    loss = ce.forward(logits, labels)
    return logits, loss, model.backward(ce.backward())


@pytest.fixture
def restore_workspace():
    old = L.get_workspace_limit()
    yield
    L.set_workspace_limit(old)


# ----------------------------------------------------------------------------------------- bookkeeping

def test_names_order_and_identity():
    model = small_net()
    assert list(model.params) == ["0.W", "0.b", "1.gamma", "1.beta", "5.W", "5.b"]
    assert list(model.grads) == list(model.params)
    assert list(model.buffers) == ["1.running_mean", "1.running_var"]
    assert model.params["0.W"] is model[0].params["W"]
    assert model.buffers["1.running_var"] is model[1].buffers["running_var"]
    grads_before = model.grads
    for k, p in model.params.items():
        assert grads_before[k].shape == p.shape and grads_before[k].dtype == p.dtype == np.float32
        assert not grads_before[k].any()
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32)
    step(model, x, np.array([0, 1, 2]))
    for k, g in model.grads.items():
        assert g is grads_before[k], f"{k}: backward must fill the existing gradient array"
        assert g.any(), f"{k}: gradient still zero after backward"
    assert model.num_params() == sum(p.size for p in model.params.values()) == 2 * 4 * 9 + 4 + 8 + 16 * 3 + 3


def test_first_layer_skips_input_gradient(monkeypatch):
    model = Sequential(L.Conv2D(1, 2, 3), L.ReLU(), L.Conv2D(2, 2, 3))
    calls = []
    real, correlate = ops.col2im, L.Conv2D._correlate   # the CPU's three ways to an input gradient
    by_tap = L.conv.twins.col2im_by_tap
    monkeypatch.setattr(ops, "col2im", lambda *a: calls.append(a[1]) or real(*a))
    monkeypatch.setattr(L.conv.twins, "col2im_by_tap", lambda *a: calls.append(a[1]) or by_tap(*a))
    monkeypatch.setattr(L.Conv2D, "_correlate", lambda self, *a: calls.append(self.in_channels) or correlate(self, *a))
    y = model.forward(np.ones((2, 1, 6, 6), np.float32))
    assert model.backward(np.ones_like(y)) is None
    assert calls == [2], "only the second conv computes an input gradient (2 -> 2 channels: by correlation)"
    assert model[0].grads["W"].any()
    # the layer itself is unchanged: used on its own it still returns its input gradient
    assert all(layer.need_input_grad for layer in model)
    first = model[0]
    x = np.ones((2, 1, 6, 6), np.float32)
    assert first.backward(np.ones_like(first.forward(x))).shape == x.shape


def test_containers_repr_and_summary():
    model = lenet5()
    assert len(model) == 12 and model[3].in_channels == 6 and list(model) == model.layers
    assert model.to("cpu") is model and str(model.device) == "cpu"
    text = repr(model)
    assert text.startswith("Sequential(") and "(3): Conv2D(6, 16, kernel_size=(5, 5)" in text
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.Conv2d(6, 16, 5),
                                 torch.nn.Linear(400, 120), torch.nn.Linear(120, 84), torch.nn.Linear(84, 10))
    assert model.num_params() == sum(p.numel() for p in tmodel.parameters())
    table = model.summary((7, 1, 28, 28))
    for line, expected in zip(table.splitlines()[3:], ["(7, 6, 28, 28)", "(7, 6, 28, 28)", "(7, 6, 14, 14)",
                                                       "(7, 16, 10, 10)", "(7, 16, 10, 10)", "(7, 16, 5, 5)",
                                                       "(7, 400)", "(7, 120)", "(7, 120)", "(7, 84)", "(7, 84)",
                                                       "(7, 10)"]):
        assert expected in line, (expected, line)
    assert "48,120" in table and f"total params: {model.num_params():,}" in table
    out = model.forward(np.zeros((7, 1, 28, 28), np.float32), train=False)
    assert f"{out.shape}" in table.splitlines()[-3]


def test_state_dict_round_trip():
    gpucnn.seed(0)
    a = small_net()
    x = np.random.default_rng(1).standard_normal((4, 2, 4, 4)).astype(np.float32)
    step(a, x, np.array([0, 1, 2, 0]))  # moves the BN running statistics off their initial values
    state = a.state_dict()
    assert set(state) == set(a.params) | set(a.buffers)
    assert all(type(v) is np.ndarray for v in state.values())
    state["0.W"][...] = 0  # a copy, not a view of the live parameter
    assert a.params["0.W"].any()
    state = a.state_dict()
    gpucnn.seed(1)
    b = small_net()
    arrays = dict(b.params)
    assert not np.array_equal(b.forward(x, train=False), a.forward(x, train=False))
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.forward(x, train=False), a.forward(x, train=False))
    assert all(b.params[k] is v for k, v in arrays.items()), "loading writes into the existing arrays"
    for k, v in b.buffers.items():
        np.testing.assert_array_equal(v, a.buffers[k])


def test_initialisers_seeded_scaled_and_zero_bias():
    gpucnn.seed(5)
    w1 = L.Conv2D(8, 64, 3).params["W"]
    gpucnn.seed(5)
    conv = L.Conv2D(8, 64, 3)
    np.testing.assert_array_equal(conv.params["W"], w1)
    assert not conv.params["b"].any()
    assert abs(conv.params["W"].std() / np.sqrt(2 / (8 * 9)) - 1) < 0.05  # He: fan_in = in * kh * kw
    aff = L.Affine(300, 200, init="xavier")
    limit = np.sqrt(6 / 500)
    assert np.abs(aff.params["W"]).max() <= limit and np.abs(aff.params["W"]).max() > 0.95 * limit
    assert abs(aff.params["W"].std() / (limit / np.sqrt(3)) - 1) < 0.05
    assert I.he_normal((3, 4), fan_in=4, dtype=np.float64).dtype == np.float64
    assert I.fans((16, 6, 5, 3)) == (90, 240)
    assert L.Affine(3, 4, dtype=np.float64).params["W"].dtype == np.float64


# ----------------------------------------------------------------------------------------- devices

def xp_only_nets():
    return [
        lambda: Sequential(L.Affine(12, 16), L.BatchNorm1D(16), L.ReLU(), L.Dropout(0.3), L.Affine(16, 8),
                           L.LeakyReLU(0.1), L.Sigmoid(), L.Affine(8, 5)),
        lambda: Sequential(L.BatchNorm2D(3), L.LRN(4, alpha=0.5), L.Tanh(), L.Flatten(), L.Affine(12, 5)),
    ]


def host_drawn_masks(monkeypatch):
    """Dropout masks drawn on the host for every device (a GPU draws its own from its generator), so that
    the layers around them can be compared."""
    from gpucnn.layers import dropout
    monkeypatch.setattr(dropout, "random_uniform", lambda shape, like: backend.to_device(
        backend.host_rng().random(shape, dtype=like.dtype), backend.device_of(like)))


def compare_on_devices(build, x, labels, device):
    """The same model, seed and data on the CPU and on `device`: outputs, loss and gradients agree, the
    device arrays stay device arrays, and the step never syncs to the host."""
    results = {}
    for dev in (backend.CPU, device):
        gpucnn.seed(0)
        model = build().to(dev)
        assert model.device == dev
        xd, ld = backend.to_device(x, dev), backend.to_device(labels, dev)
        gpucnn.seed(1)  # same dropout masks
        with no_host_sync(dev):
            logits, loss, dx = step(model, xd, ld)
            model.forward(xd, train=False)
        assert dx is None
        arrays = [logits, loss, *model.grads.values(), *model.buffers.values()]
        assert all(backend.device_of(a) == dev for a in arrays)
        results[dev] = {"logits": logits, "loss": loss, **model.grads, **model.buffers}
    for k, v in results[backend.CPU].items():
        tolerances.assert_close(results[device][k], v, device, k)


@pytest.mark.parametrize("i", range(2))
def test_xp_layers_on_a_gpu_match_cpu(i, monkeypatch, gpu_device):
    host_drawn_masks(monkeypatch)
    rng = np.random.default_rng(i)
    shape = (6, 12) if i == 0 else (6, 3, 2, 2)
    compare_on_devices(xp_only_nets()[i], rng.standard_normal(shape).astype(np.float32),
                       rng.integers(0, 5, size=6), gpu_device)


def test_conv_and_pool_on_a_gpu_match_cpu(gpu_device):
    rng = np.random.default_rng(0)
    compare_on_devices(lenet5, rng.standard_normal((3, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, size=3),
                       gpu_device)
    build = lambda: Sequential(L.Conv2D(3, 4, (3, 2), stride=(2, 1), padding=(1, 0)), L.AvgPool2D(3, 1, 1),
                               L.Conv2D(4, 2, 3, bias=False), L.Flatten(), L.Affine(2 * 2 * 3, 5))
    compare_on_devices(build, rng.standard_normal((4, 3, 8, 6)).astype(np.float32), rng.integers(0, 5, size=4),
                       gpu_device)


def test_layer_to_moves_params_grads_buffers(gpu_device):
    layer = L.BatchNorm2D(3)
    assert layer.to(gpu_device) is layer
    for d in (layer.params, layer.grads, layer.buffers):
        assert all(backend.device_of(v) == gpu_device for v in d.values())
    layer.to("cpu")
    assert all(type(v) is np.ndarray for d in (layer.params, layer.grads, layer.buffers) for v in d.values())


# ----------------------------------------------------------------------------------------- workspace

def run_conv(layer, x, dout):
    y = layer.forward(x)
    cached = layer._cache[1] is not None
    dx = layer.backward(dout)
    return y, dx, layer.grads["W"].copy(), layer.grads["b"].copy(), cached


@pytest.mark.parametrize("chunk", [1, 3, 6])
def test_workspace_limit_chunking_gives_the_same_results(restore_workspace, monkeypatch, chunk, any_device):
    """Bit-identical outputs and input gradients on the CPU and the emulated GPU (the GEMMs' rows do not depend
    on how many samples share them there); to rounding on CUDA, where cuBLAS picks its algorithm by size."""
    rng = np.random.default_rng(chunk)
    layer = L.Conv2D(3, 5, (3, 2), stride=(1, 2), padding=1)
    layer.params["b"][...] = rng.standard_normal(5)
    layer.to(any_device)
    x = backend.to_device(rng.standard_normal((7, 3, 9, 8)).astype(np.float32), any_device)
    dout = backend.to_device(rng.standard_normal(layer.output_shape(x.shape)).astype(np.float32), any_device)
    calls = []
    real = ops.im2col
    monkeypatch.setattr(ops, "im2col", lambda x, *a: calls.append(x.shape[0]) or real(x, *a))
    y0, dx0, dw0, db0, cached = run_conv(layer, x, dout)
    assert cached and calls == [7], "the whole batch fits: one im2col, columns kept for backward"
    per_sample = 3 * 3 * 2 * 9 * 5 * 4
    calls.clear()
    L.set_workspace_limit(per_sample * chunk + per_sample // 2)
    y1, dx1, dw1, db1, cached = run_conv(layer, x, dout)
    sizes = [min(chunk, 7 - s) for s in range(0, 7, chunk)]
    assert not cached and calls == sizes + sizes, "chunked: columns recomputed per chunk in backward"
    same = "step" if any_device.kind == "cuda" else "exact"
    tolerances.assert_close(y1, y0, any_device, "y", same)
    tolerances.assert_close(dx1, dx0, any_device, "dx", same)
    np.testing.assert_allclose(tolerances.host(dw1), tolerances.host(dw0), rtol=1e-5, atol=1e-5)
    tolerances.assert_close(db1, db0, any_device, "db", same)


def test_columns_not_kept_in_eval(monkeypatch):
    layer = L.Conv2D(1, 2, 3)
    layer.forward(np.ones((2, 1, 5, 5), np.float32), train=False)
    assert layer._cache[1] is None
    dx = layer.backward(np.ones((2, 2, 3, 3), np.float32))  # still possible: recomputed from x
    assert dx is not None and layer.grads["W"].any()


# ----------------------------------------------------------------------------------- modes and nesting

def test_modes_follow_pytorch():
    """A fresh model trains; eval() reaches every layer and makes model(x) deterministic; train() undoes it;
    an explicit train= still decides one call."""
    model = Sequential(L.Conv2D(2, 4, 3, padding=1), L.BatchNorm2D(4), L.ReLU(), L.Flatten(), L.Dropout(0.5),
                       L.Affine(64, 3))
    x = np.random.default_rng(1).standard_normal((5, 2, 4, 4)).astype(np.float32)
    assert model.training and all(layer.training for layer in model)
    before = model.buffers["1.running_mean"].copy()
    a, b = model(x), model(x)
    assert not np.array_equal(a, b), "training mode: dropout draws a new mask per call"
    assert not np.array_equal(model.buffers["1.running_mean"], before), "training mode updates running stats"
    assert model.eval() is model and not model.training and not any(layer.training for layer in model)
    stats = model.buffers["1.running_mean"].copy()
    c, d = model(x), model.forward(x)
    np.testing.assert_array_equal(c, d)
    np.testing.assert_array_equal(model.buffers["1.running_mean"], stats)
    e = model.forward(x, train=True)     # one call in training mode, the model stays in eval
    assert not np.array_equal(e, c) and not model.training
    model.train()
    assert model.training and all(layer.training for layer in model)


def test_nested_sequential_is_a_layer_with_flat_stable_names():
    rng = np.random.default_rng(2)
    inner = Sequential(L.Conv2D(4, 4, 3, padding=1), L.ReLU())
    nested = Sequential(L.Conv2D(2, 4, 3, padding=1), inner, L.Flatten(), L.Affine(64, 3))
    flat = Sequential(L.Conv2D(2, 4, 3, padding=1), L.Conv2D(4, 4, 3, padding=1), L.ReLU(), L.Flatten(),
                      L.Affine(64, 3))
    assert list(nested.params) == ["0.W", "0.b", "1.0.W", "1.0.b", "3.W", "3.b"]
    assert nested.params["1.0.W"] is inner[0].params["W"]
    for (_, a), (_, b) in zip(flat.params.items(), nested.params.items()):
        b[...] = a
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    labels = np.array([0, 2, 1])
    la, _, _ = step(flat, x, labels)
    lb, _, _ = step(nested, x, labels)
    np.testing.assert_array_equal(la, lb)
    for (ka, ga), (kb, gb) in zip(flat.grads.items(), nested.grads.items()):
        np.testing.assert_array_equal(ga, gb, err_msg=f"{ka} vs {kb}")
    assert nested.output_shape((3, 2, 4, 4)) == (3, 3)
    state = nested.state_dict()
    again = Sequential(L.Conv2D(2, 4, 3, padding=1), Sequential(L.Conv2D(4, 4, 3, padding=1), L.ReLU()),
                       L.Flatten(), L.Affine(64, 3))
    again.load_state_dict(state)
    np.testing.assert_array_equal(again(x, train=False), nested(x, train=False))


def test_a_nested_sequential_gives_its_input_gradient_only_when_asked():
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    model = Sequential(L.Affine(3, 4), L.ReLU())
    model.forward(x)
    assert model.backward(np.ones((2, 4), np.float32)) is None, "a top-level model skips its input gradient"
    model.need_input_grad = True
    dx = model.backward(np.ones((2, 4), np.float32))
    assert dx.shape == (2, 3)
    assert "need_input_grad" not in model[0].__dict__, "the child's own setting is restored"
