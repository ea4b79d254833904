"""Flat buffers (gpucnn.devices.flat) and Layer.flatten_parameters: every parameter and gradient of a model as a
view into one buffer each, names, values, checkpoints and training unchanged, on every device."""
import numpy as np
import pytest

from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn import models
from gpucnn.devices import flat


def blocks():
    """Nested containers: names like '2.0.W' and '2.shortcut.0.W'."""
    return L.Sequential(
        L.Conv2D(2, 4, 3, padding=1), L.ReLU(),
        L.Residual(L.Conv2D(4, 4, 3, padding=1), L.BatchNorm2D(4), shortcut=L.Sequential(L.Conv2D(4, 4, 1))),
        L.Concat(L.Conv2D(4, 2, 1), L.Sequential(L.Conv2D(4, 3, 1), L.ReLU())),
        L.Flatten(), L.Affine(5 * 6 * 6, 3))


def test_flatten_keeps_names_values_and_makes_every_array_a_view(any_device):
    net = blocks().to(any_device)
    names = list(net.params)
    before = {k: backend.to_cpu(v) for k, v in net.params.items()}
    fp, fg = net.flatten_parameters()
    assert list(net.params) == names == fp.names == fg.names
    assert flat.owner(net.params) is fp and flat.owner(net.grads) is fg
    assert fp.size == fg.size == net.num_params() and fp.device == fg.device == any_device
    for k, v in net.params.items():
        np.testing.assert_array_equal(backend.to_cpu(v), before[k])
        start, stop = fp.offsets[k]
        np.testing.assert_array_equal(backend.to_cpu(fp.buffer[start:stop]), before[k].reshape(-1))
    assert "2.shortcut.0.W" in names and "3.1.0.b" in names


def test_backward_writes_the_gradients_into_the_flat_buffer(any_device):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    plain, flattened = blocks().to(any_device), blocks().to(any_device)
    flattened.load_state_dict(plain.state_dict())
    _, fg = flattened.flatten_parameters()
    for net in (plain, flattened):
        y = net.forward(backend.to_device(x, any_device), train=True)
        net.backward(y * 0 + 1)
    for k, g in plain.grads.items():
        start, stop = fg.offsets[k]
        np.testing.assert_array_equal(backend.to_cpu(fg.buffer[start:stop]), backend.to_cpu(g).reshape(-1))


def test_state_dicts_load_into_the_views_and_order_is_respected():
    net = models.lenet5(in_channels=1, input_size=28, num_classes=10)
    state = {k: v + 1 for k, v in net.state_dict().items()}
    order = sorted(net.params, key=lambda n: (net.params[n].ndim > 1, n))   # biases first
    fp, _ = net.flatten_parameters(order)
    assert fp.names == order and fp.span([n for n in order if n.endswith(".b")]) == (0, 6 + 16 + 120 + 84 + 10)
    net.load_state_dict(state)
    assert flat.owner(net.params) is fp
    for k, v in state.items():
        np.testing.assert_array_equal(net.params[k], v)


def test_moving_a_flat_model_makes_fresh_arrays():
    net = models.lenet5(in_channels=1, input_size=28, num_classes=10)
    net.flatten_parameters()
    net.to("emulated")
    assert flat.owner(net.params) is None
    fp, _ = net.flatten_parameters()
    assert flat.owner(net.params) is fp and fp.device == backend.EMULATED


def test_owner_needs_all_the_views_and_only_them():
    net = models.lenet5(in_channels=1, input_size=28, num_classes=10)
    fp, _ = net.flatten_parameters()
    params = net.params
    assert flat.owner({k: v for k, v in list(params.items())[:3]}) is None
    assert flat.owner({**params, "0.W": params["0.W"].copy()}) is None
    assert flat.owner({}) is None and flat.owner({"a": np.ones(2)}) is None


def test_flatten_refuses_mixed_dtypes_and_bad_orders():
    net = L.Sequential(L.Affine(3, 2), L.Affine(2, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="flatten_parameters: expected arrays of one dtype"):
        net.flatten_parameters()
    net = L.Sequential(L.Affine(3, 2))
    with pytest.raises(ValueError, match="order must name every parameter once"):
        net.flatten_parameters(["0.W"])


def test_flat_arrays_of_the_same_layout():
    a = flat.FlatArrays({"x": np.ones((2, 3), np.float32), "y": np.full(4, 2, np.float32)})
    z = flat.FlatArrays.full_like(a, 0.5)
    assert z.names == a.names and z.offsets == a.offsets and z.views["x"].shape == (2, 3)
    assert np.all(z.buffer == 0.5) and np.all(a.views["y"] == 2)
    assert a.span(["x", "y"]) == (0, 10) and a.span(["y", "x"]) is None
