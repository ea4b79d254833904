"""Central finite differences (float64) against every analytic backward: dx and every parameter gradient,
with the analytic gradients computed on each device (cpu, emulated, cuda with the `gpu` marker).

For a layer f and a fixed random dout, the scalar L = sum(f(x) * dout) has dL/dx = backward(dout); each
entry is compared with (L(x + eps) - L(x - eps)) / (2 eps), the differences taken with the same layer on the
CPU (the devices' forward passes agree to rounding, tested in test_layers_torch.py). Inputs keep away from
kinks (ReLU at 0, max ties) so the finite difference is the derivative.
"""
import copy

import numpy as np
import pytest

from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn.layers import Sequential
from tolerances import host, tolerance

EPS = 1e-6


def numeric_grad(loss, a):
    """d loss() / d a by central differences, perturbing `a` in place."""
    g = np.zeros_like(a)
    for i in range(a.size):
        old = a.flat[i]
        a.flat[i] = old + EPS
        hi = loss()
        a.flat[i] = old - EPS
        lo = loss()
        a.flat[i] = old
        g.flat[i] = (hi - lo) / (2 * EPS)
    return g


def assert_grad(analytic, numeric, what, device="cpu"):
    analytic = host(analytic)
    assert analytic.shape == numeric.shape and analytic.dtype == np.float64, what
    err = np.max(np.abs(analytic - numeric))
    assert err <= tolerance("grad", device, np.float64) * max(1.0, np.max(np.abs(numeric))), \
        f"{what} on {device}: max error {err:.3g}"


def on(device, a):
    return backend.to_device(np.asarray(a), device)


def away_from_zero(rng, shape):
    """Random values with |v| >= 0.1: no ReLU kink within reach of EPS."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (0.1 + np.abs(v))


def distinct(rng, shape):
    """Values at least 0.01 apart: no max-pool ties within reach of EPS."""
    return rng.permutation(np.arange(int(np.prod(shape)))).reshape(shape) * 0.01 - 0.3


def check_layer(layer, x, device="cpu", train=True):
    rng = np.random.default_rng(1)
    x = x.astype(np.float64)
    twin = copy.deepcopy(layer).to(device)          # the analytic gradients, on the device
    y = twin.forward(on(device, x), train)
    dout = rng.standard_normal(y.shape)
    dx = twin.backward(on(device, dout))
    analytic = {k: host(g) for k, g in twin.grads.items()}
    loss = lambda: float(np.sum(layer.forward(x, train) * dout))
    assert_grad(dx, numeric_grad(loss, x), f"{layer!r} dx", device)
    for k, p in layer.params.items():
        assert p.dtype == np.float64
        assert_grad(analytic[k], numeric_grad(loss, p), f"{layer!r} d{k}", device)


def randomise_params(layer, rng):
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    return layer


F64 = np.float64

CONV_CASES = [  # (cin, cout, kernel, stride, padding, input (n, h, w), bias)
    (2, 3, 3, 1, 0, (2, 5, 5), True),
    (2, 2, 3, 2, 1, (2, 6, 7), True),
    (1, 2, (2, 3), (2, 1), (1, 2), (1, 5, 4), False),
    (3, 1, 1, 1, 0, (2, 3, 3), True),
    (1, 2, 4, 3, 2, (2, 4, 4), True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d(case, any_device):
    cin, cout, k, s, p, (n, h, w), bias = case
    rng = np.random.default_rng(0)
    layer = randomise_params(L.Conv2D(cin, cout, k, stride=s, padding=p, bias=bias, dtype=F64), rng)
    check_layer(layer, rng.standard_normal((n, cin, h, w)), any_device)


@pytest.mark.parametrize("args", [(2,), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 1)], ids=str)
@pytest.mark.parametrize("cls", [L.MaxPool2D, L.AvgPool2D])
def test_pools(cls, args, any_device):
    rng = np.random.default_rng(0)
    check_layer(cls(*args), distinct(rng, (2, 2, 5, 6)), any_device)


CONV_OPTION_CASES = [  # (cin, cout, kernel, stride, padding, dilation, groups, input (n, h, w))
    (2, 4, 3, 1, "same", 2, 2, (2, 6, 5)),
    (3, 3, (2, 3), (2, 1), (1, 0, 2, 1), (2, 1), 3, (1, 6, 5)),
    (2, 2, 4, 1, "same", 1, 1, (1, 5, 4)),
    (4, 2, (3, 2), 2, "valid", (1, 2), 2, (2, 7, 6)),
]


@pytest.mark.parametrize("case", CONV_OPTION_CASES, ids=str)
def test_conv2d_options(case, any_device):
    cin, cout, k, s, p, d, g, (n, h, w) = case
    rng = np.random.default_rng(0)
    layer = randomise_params(L.Conv2D(cin, cout, k, s, p, d, g, dtype=F64), rng)
    check_layer(layer, rng.standard_normal((n, cin, h, w)), any_device)


@pytest.mark.parametrize("case", [(2, 4, 3, 2, 1, 1, 2, 1, (2, 3, 2)), (3, 3, (2, 3), (1, 2), (0, 1), (1, 0), 3, 2, (1, 2, 3)),
                                  (2, 1, 1, 1, 0, 0, 1, 1, (2, 2, 2))], ids=str)
def test_conv_transpose2d(case, any_device):
    cin, cout, k, s, p, op, g, d, (n, h, w) = case
    rng = np.random.default_rng(0)
    layer = randomise_params(L.ConvTranspose2D(cin, cout, k, s, p, op, g, dilation=d, dtype=F64), rng)
    check_layer(layer, rng.standard_normal((n, cin, h, w)), any_device)


@pytest.mark.parametrize("layer", [L.MaxPool2D(2, 2, 1, 2, True), L.MaxPool2D((3, 2), 1, (1, 0), (2, 3)),
                                   L.AvgPool2D(3, 2, 1, True, False), L.AvgPool2D(2, 2, 1, True, True),
                                   L.GlobalAvgPool2D(), L.AdaptiveAvgPool2D((3, 4)), L.AdaptiveAvgPool2D((None, 2))],
                         ids=repr)
def test_pool_options(layer, any_device):
    rng = np.random.default_rng(0)
    check_layer(layer, distinct(rng, (2, 2, 5, 6)), any_device)


def test_residual_and_concat(any_device):
    rng = np.random.default_rng(0)
    block = Sequential(
        L.Residual(L.Conv2D(2, 3, 3, stride=2, padding=1, dtype=F64), L.Tanh(), L.Conv2D(3, 3, 1, dtype=F64),
                   shortcut=L.Conv2D(2, 3, 1, stride=2, dtype=F64)),
        L.Concat(L.Conv2D(3, 2, 1, dtype=F64), L.Residual(L.Conv2D(3, 3, 3, padding=1, groups=3, dtype=F64))))
    block.need_input_grad = True
    for p in block.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.5
    check_layer(block, rng.standard_normal((2, 2, 5, 4)), any_device)


@pytest.mark.parametrize("options", [dict(label_smoothing=0.3), dict(weight=[0.5, 2.0, 0.0, 1.0, 1.5]),
                                     dict(ignore_index=1, label_smoothing=0.1, weight=[1.0, 2.0, 3.0, 0.5, 1.0]),
                                     dict(reduction="sum"), dict(reduction="none", label_smoothing=0.2)], ids=str)
def test_softmax_cross_entropy_options(options, any_device):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)) * 3
    labels = np.array([0, 1, 2, 1, 4, 3])
    ce = L.SoftmaxCrossEntropy(**options)
    dout = rng.standard_normal(6) if options.get("reduction") == "none" else 2.0
    ce.forward(on(any_device, logits), on(any_device, labels))
    dlogits = ce.backward(on(any_device, dout) if options.get("reduction") == "none" else dout)
    numeric = numeric_grad(lambda: float(np.sum(ce.forward(logits, labels) * dout)), logits)
    assert_grad(dlogits, numeric, f"SoftmaxCrossEntropy({options}) dlogits", any_device)


def test_affine(any_device):
    rng = np.random.default_rng(0)
    layer = randomise_params(L.Affine(12, 5, dtype=F64), rng)
    check_layer(layer, rng.standard_normal((3, 3, 4)), any_device)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dim", [1, 2])
def test_batchnorm(dim, train, any_device):
    rng = np.random.default_rng(0)
    cls, shape = (L.BatchNorm1D, (5, 4)) if dim == 1 else (L.BatchNorm2D, (3, 3, 2, 3))
    layer = randomise_params(cls(shape[1], dtype=F64), rng)
    layer.buffers["running_mean"][...] = rng.standard_normal(shape[1])
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, shape[1])
    check_layer(layer, rng.standard_normal(shape) * 2 + 1, any_device, train=train)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
def test_lrn(size, any_device):
    rng = np.random.default_rng(size)
    check_layer(L.LRN(size, alpha=0.7, beta=0.8, k=1.5), rng.standard_normal((2, 6, 2, 3)), any_device)


@pytest.mark.parametrize("layer", [L.ReLU(), L.LeakyReLU(0.1), L.Sigmoid(), L.Tanh(), L.Flatten(),
                                   L.Dropout(0.4)], ids=repr)
def test_elementwise(layer, any_device):
    rng = np.random.default_rng(0)
    check_layer(layer, away_from_zero(rng, (2, 3, 4)), any_device, train=False)


def test_softmax_cross_entropy(any_device):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, size=6)
    ce = L.SoftmaxCrossEntropy()
    ce.forward(on(any_device, logits), on(any_device, labels))
    dlogits = ce.backward(2.0)
    numeric = numeric_grad(lambda: 2.0 * float(ce.forward(logits, labels)), logits)
    assert_grad(dlogits, numeric, "SoftmaxCrossEntropy dlogits", any_device)


def test_sequential_small_net(any_device):
    rng = np.random.default_rng(0)
    model = Sequential(L.Conv2D(2, 3, 3, padding=1, dtype=F64), L.BatchNorm2D(3, dtype=F64), L.ReLU(),
                       L.MaxPool2D(2), L.LRN(3, alpha=0.5), L.Flatten(), L.Affine(12, 8, dtype=F64), L.Tanh(),
                       L.Affine(8, 4, dtype=F64))
    for p in model.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.5
    x = rng.standard_normal((3, 2, 4, 4))
    labels = rng.integers(0, 4, size=3)
    ce = L.SoftmaxCrossEntropy()
    twin = copy.deepcopy(model).to(any_device)
    ce.forward(twin.forward(on(any_device, x)), on(any_device, labels))
    assert twin.backward(ce.backward()) is None
    analytic = {k: host(g) for k, g in twin.grads.items()}
    loss = lambda: float(ce.forward(model.forward(x), labels))
    for k, p in model.params.items():
        assert_grad(analytic[k], numeric_grad(loss, p), f"Sequential d{k}", any_device)
