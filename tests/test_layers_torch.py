"""Every layer's forward and gradients against PyTorch (CPU, float32) on seeded random shapes, with our layer
on each device (cpu, emulated, and cuda with the `gpu` marker).

Shapes, strides, paddings and sizes are drawn from seeded generators (plus hand-picked edge cases), so
the cases cover configurations nobody picked by hand. Tolerance (tests/tolerances.py, kind "torch"):
max|ours - torch| <= tol * max(1, max|torch|), tol 2e-4 on cpu and emulated, wider on CUDA.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpucnn
import tolerances
from _oracle import against_torch, assert_close, case_rng, leaf, on, randn
from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn.interop import convert_to_torch, torch_twin
from gpucnn.layers import Sequential

N_RANDOM = 40


def run_ours(layer, x, dout, device="cpu"):
    """Forward and backward of a layer already on `device`, with host x and dout moved there."""
    y = layer.forward(on(device, x))
    dx = layer.backward(on(device, dout))
    return y, dx


# ----------------------------------------------------------------------------------------- Conv2D

def conv_cases():
    cases = [  # (n, cin, cout, (h, w), (kh, kw), (sh, sw), (ph, pw), bias)
        (1, 1, 1, (5, 5), (5, 5), (1, 1), (0, 0), True),      # kernel == input, batch 1, channels 1
        (2, 3, 4, (7, 9), (7, 9), (2, 3), (0, 0), True),      # kernel == non-square input
        (2, 3, 5, (8, 8), (3, 3), (1, 1), (1, 1), True),      # "same" conv
        (3, 2, 4, (9, 7), (2, 4), (2, 1), (1, 2), False),     # non-square everything, no bias
        (2, 4, 3, (6, 6), (1, 1), (1, 1), (0, 0), True),      # 1x1 conv
        (1, 2, 3, (4, 5), (3, 3), (5, 5), (2, 2), True),      # stride larger than the input
        (2, 1, 2, (3, 3), (5, 5), (1, 1), (2, 1), True),      # kernel larger than input, padded
        (2, 2, 2, (10, 10), (3, 3), (3, 3), (0, 0), True),    # stride leaves the right edge unused
    ]
    rng = np.random.default_rng(1234)
    for _ in range(N_RANDOM):
        kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
        sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
        ph, pw = (int(v) for v in rng.integers(0, 4, size=2))
        h = int(rng.integers(max(1, kh - 2 * ph), kh + 9))
        w = int(rng.integers(max(1, kw - 2 * pw), kw + 9))
        cases.append((int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 6)), (h, w),
                      (kh, kw), (sh, sw), (ph, pw), bool(rng.integers(0, 2))))
    return cases


@pytest.mark.parametrize("case", conv_cases(), ids=str)
def test_conv2d_matches_torch(case, any_device):
    n, cin, cout, (h, w), k, s, p, bias = case
    rng = case_rng(case)
    layer = L.Conv2D(cin, cout, k, stride=s, padding=p, bias=bias)
    if bias:
        layer.params["b"][...] = randn(rng, cout)
    x = randn(rng, n, cin, h, w)
    wt = leaf(layer.params["W"].copy())
    bt = leaf(layer.params["b"].copy()) if bias else None
    against_torch(layer, x, lambda xt: F.conv2d(xt, wt, bt, stride=s, padding=p), rng, device=any_device)
    assert_close(layer.grads["W"], wt.grad, "dW", any_device)
    if bias:
        assert_close(layer.grads["b"], bt.grad, "db", any_device)
    else:
        assert "b" not in layer.params and "b" not in layer.grads


# ----------------------------------------------------------------------------------------- pools

def pool_cases():
    cases = [  # (n, c, (h, w), (kh, kw), stride or None, (ph, pw))
        (1, 1, (4, 4), (4, 4), None, (0, 0)),   # kernel == input
        (2, 3, (7, 5), (2, 2), None, (0, 0)),   # odd sizes round down
        (2, 2, (6, 9), (3, 2), (2, 3), (1, 1)),
        (1, 2, (5, 5), (3, 3), (1, 1), (1, 1)),
        (2, 1, (2, 3), (4, 4), (1, 1), (2, 2)),  # kernel larger than input, padded
        (2, 2, (5, 5), (1, 1), (2, 2), (0, 0)),
    ]
    rng = np.random.default_rng(4321)
    for _ in range(N_RANDOM):
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        stride = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 4, size=2))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        h = int(rng.integers(max(1, kh - 2 * ph), kh + 8))
        w = int(rng.integers(max(1, kw - 2 * pw), kw + 8))
        cases.append((int(rng.integers(1, 4)), int(rng.integers(1, 4)), (h, w), (kh, kw), stride, (ph, pw)))
    return cases


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", pool_cases(), ids=str)
def test_pool_matches_torch(kind, case, any_device):
    n, c, (h, w), k, stride, p = case
    rng = case_rng((kind, case))
    layer = (L.MaxPool2D if kind == "max" else L.AvgPool2D)(k, stride=stride, padding=p)
    x = randn(rng, n, c, h, w)
    fn = F.max_pool2d if kind == "max" else F.avg_pool2d
    against_torch(layer, x, lambda xt: fn(xt, k, stride=stride, padding=p), rng, device=any_device)


@pytest.mark.parametrize("seed", range(5))
def test_maxpool_ties_match_torch(seed, any_device):
    """Inputs from {0, 1, 2}: many tied maxima; the gradient must go where PyTorch sends it."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(2, 3, 7, 6)).astype(np.float32)
    against_torch(L.MaxPool2D(3, stride=2, padding=1), x, lambda xt: F.max_pool2d(xt, 3, stride=2, padding=1), rng,
                  device=any_device)


# ----------------------------------------------------------------------------------------- affine

def affine_cases():
    cases = [((1, 1), 1), ((3, 2, 3, 4), 5), ((4, 7), 1)]
    rng = np.random.default_rng(99)
    for _ in range(N_RANDOM // 2):
        ndim = int(rng.integers(2, 5))
        shape = tuple(int(v) for v in rng.integers(1, 7, size=ndim))
        cases.append((shape, int(rng.integers(1, 20))))
    return cases


@pytest.mark.parametrize("case", affine_cases(), ids=str)
def test_affine_matches_torch(case, any_device):
    shape, out = case
    rng = case_rng(case)
    fin = int(np.prod(shape[1:]))
    layer = L.Affine(fin, out, init="xavier")
    layer.params["b"][...] = randn(rng, out)
    x = randn(rng, *shape)
    wt, bt = leaf(layer.params["W"].T.copy()), leaf(layer.params["b"].copy())
    against_torch(layer, x, lambda xt: F.linear(xt.reshape(shape[0], -1), wt, bt), rng, device=any_device)
    assert_close(layer.grads["W"], wt.grad.T, "dW", any_device)
    assert_close(layer.grads["b"], bt.grad, "db", any_device)


# ----------------------------------------------------------------------------------------- elementwise

ACTIVATIONS = [
    (L.ReLU(), F.relu),
    (L.LeakyReLU(), lambda t: F.leaky_relu(t, 0.01)),
    (L.LeakyReLU(0.2), lambda t: F.leaky_relu(t, 0.2)),
    (L.Sigmoid(), torch.sigmoid),
    (L.Tanh(), torch.tanh),
    (L.Flatten(), lambda t: t.reshape(t.shape[0], -1)),
    (L.Dropout(0.5), lambda t: t),  # train=False below: identity
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pair", ACTIVATIONS, ids=lambda p: repr(p[0]))
def test_elementwise_matches_torch(pair, seed, any_device):
    layer, fn = pair
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(2, 5))))
    x = randn(rng, *shape) * 4
    if seed == 0:
        x.flat[::3] = 0.0  # the kink: PyTorch's gradient convention at exactly 0
    if seed == 1:
        x.flat[::2] *= 30  # saturation / overflow region
    against_torch(layer, x, fn, rng, train=False, device=any_device)


# ----------------------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dim", [1, 2])
def test_batchnorm_train_eval_and_running_stats_match_torch(dim, seed, any_device):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 6))
    shape = (int(rng.integers(2, 6)), c) + (tuple(int(v) for v in rng.integers(1, 6, size=2)) if dim == 2 else ())
    momentum = float(rng.choice([0.1, 0.3, 1.0]))
    eps = float(rng.choice([1e-5, 1e-3]))
    layer = (L.BatchNorm1D if dim == 1 else L.BatchNorm2D)(c, eps=eps, momentum=momentum)
    layer.params["gamma"][...] = randn(rng, c)
    layer.params["beta"][...] = randn(rng, c)
    rm, rv = torch.zeros(c), torch.ones(c)
    gt, bt = leaf(layer.params["gamma"].copy()), leaf(layer.params["beta"].copy())
    layer.to(any_device)
    for step in range(3):
        x = randn(rng, *shape) * 3 + 1
        xt = leaf(x)
        yt = F.batch_norm(xt, rm, rv, gt, bt, training=True, momentum=momentum, eps=eps)
        dout = randn(rng, *shape)
        gt.grad = bt.grad = None
        yt.backward(torch.tensor(dout))
        y, dx = run_ours(layer, x, dout, any_device)
        assert_close(y, yt, f"train y step {step}", any_device)
        assert_close(dx, xt.grad, f"train dx step {step}", any_device)
        assert_close(layer.grads["gamma"], gt.grad, "dgamma", any_device)
        assert_close(layer.grads["beta"], bt.grad, "dbeta", any_device)
        assert_close(layer.buffers["running_mean"], rm, "running_mean", any_device)
        assert_close(layer.buffers["running_var"], rv, "running_var", any_device)
    x = randn(rng, *shape)
    xt = leaf(x)
    gt.grad = bt.grad = None
    yt = F.batch_norm(xt, rm, rv, gt, bt, training=False, eps=eps)
    dout = randn(rng, *shape)
    yt.backward(torch.tensor(dout))
    y = layer.forward(on(any_device, x), train=False)
    dx = layer.backward(on(any_device, dout))
    assert_close(y, yt, "eval y", any_device)
    assert_close(dx, xt.grad, "eval dx", any_device)
    assert_close(layer.grads["gamma"], gt.grad, "eval dgamma", any_device)
    assert_close(layer.grads["beta"], bt.grad, "eval dbeta", any_device)
    assert_close(layer.buffers["running_var"], rv, "running_var unchanged by eval", any_device)


@pytest.mark.parametrize("dim", [1, 2])
def test_batchnorm_statistics_survive_a_large_common_offset(dim, any_device):
    """float32 input of spread 1e-3 around -100: the statistics must not round the deviations away. The
    float64 oracle is the reference (float32 torch is itself off by ~1e-3 here)."""
    rng = np.random.default_rng(0)
    shape = (3, 4) + ((5, 2) if dim == 2 else ())
    x = (rng.standard_normal(shape) * 1e-3 - 100).astype(np.float32)
    dout = randn(rng, *shape)
    layer = (L.BatchNorm1D if dim == 1 else L.BatchNorm2D)(4).to(any_device)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    yt = F.batch_norm(xt, rm, rv, training=True, momentum=0.1, eps=1e-5)
    yt.backward(torch.tensor(dout.astype(np.float64)))
    y, dx = run_ours(layer, x, dout, any_device)
    rtol = tolerances.tolerance("step", any_device)[0]
    for got, want, what in [(y, yt, "y"), (dx, xt.grad, "dx"), (layer.buffers["running_mean"], rm, "mean")]:
        got, want = tolerances.host(got), want.detach().numpy()
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < rtol, f"{what}: relative error {err:.1e}"


# ----------------------------------------------------------------------------------------- LRN

def lrn_cases():
    cases = [(5, 7), (4, 7), (1, 3), (2, 1), (6, 3), (7, 2)]  # (size, channels): odd, even, size > channels
    rng = np.random.default_rng(7)
    for _ in range(N_RANDOM // 2):
        cases.append((int(rng.integers(1, 9)), int(rng.integers(1, 10))))
    return cases


@pytest.mark.parametrize("case", lrn_cases(), ids=str)
def test_lrn_matches_torch(case, any_device):
    size, c = case
    rng = case_rng(case)
    # alpha large enough that the normaliser matters (with 1e-4 a wrong window would go unnoticed)
    alpha, beta, k = float(rng.uniform(0.2, 2.0)), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.5, 2.0))
    layer = L.LRN(size, alpha=alpha, beta=beta, k=k)
    x = randn(rng, int(rng.integers(1, 4)), c, int(rng.integers(1, 5)), int(rng.integers(1, 5))) * 2
    against_torch(layer, x, lambda xt: F.local_response_norm(xt, size, alpha=alpha, beta=beta, k=k), rng,
                  device=any_device)


def test_lrn_defaults_match_torch_alexnet_settings(any_device):
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 8, 3, 3) * 20
    against_torch(L.LRN(), x, torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0), rng, device=any_device)


# ----------------------------------------------------------------------------------------- dropout

def test_dropout_statistics_scaling_and_mask_reuse(any_device):
    gpucnn.seed(3)
    p = 0.3
    layer = L.Dropout(p)
    x = np.ones((400, 250), np.float32)
    y = tolerances.host(layer.forward(on(any_device, x)))
    kept = y != 0
    frac = 1 - kept.mean()
    sigma = np.sqrt(p * (1 - p) / x.size)
    assert abs(frac - p) < 5 * sigma
    np.testing.assert_array_equal(y[kept], np.float32(1 / (1 - p)))
    assert y.dtype == np.float32
    dout = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    dx = tolerances.host(layer.backward(on(any_device, dout)))
    np.testing.assert_array_equal(dx[~kept], 0)
    np.testing.assert_allclose(dx[kept], dout[kept] / (1 - p), rtol=1e-6)
    y2 = tolerances.host(layer.forward(on(any_device, x)))
    assert not np.array_equal(y2 != 0, kept), "a new mask per forward"


def test_dropout_identity_in_eval_and_p0_and_seeded(any_device):
    x = np.random.default_rng(1).standard_normal((30, 40)).astype(np.float32)
    xd = on(any_device, x)
    layer = L.Dropout(0.5)
    exact = tolerances.assert_exact
    exact(layer.forward(xd, train=False), x)
    exact(layer.backward(xd), x)
    exact(L.Dropout(0.0).forward(xd, train=True), x)
    gpucnn.seed(11)
    a = L.Dropout(0.5).forward(xd)
    gpucnn.seed(11)
    b = L.Dropout(0.5).forward(xd)
    exact(a, b, "the same seed on the same device, same process")


# ----------------------------------------------------------------------------------------- loss

@pytest.mark.parametrize("seed", range(12))
def test_softmax_cross_entropy_matches_torch(seed, any_device):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 40)), int(rng.integers(1, 12))
    logits = randn(rng, n, k) * float(rng.choice([1, 10, 200]))  # 200: exp would overflow unshifted
    labels = rng.integers(0, k, size=n).astype(rng.choice([np.int64, np.int32, np.uint8]))
    lt = leaf(logits)
    loss_t = F.cross_entropy(lt, torch.tensor(labels.astype(np.int64)))
    dout = float(rng.choice([1.0, 2.5]))
    loss_t.backward(torch.tensor(dout))
    ce = L.SoftmaxCrossEntropy()
    loss = ce.forward(on(any_device, logits), on(any_device, labels))
    assert backend.device_of(loss) == any_device and loss.shape == () and loss.dtype == np.float32
    assert np.isfinite(tolerances.host(loss))
    assert_close(loss, loss_t, "loss", any_device)
    assert_close(ce.backward(dout), lt.grad, "dlogits", any_device)


# ----------------------------------------------------------------------------------------- networks

def lenet5():
    return Sequential(L.Conv2D(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2), L.Conv2D(6, 16, 5), L.ReLU(),
                      L.MaxPool2D(2), L.Flatten(), L.Affine(400, 120), L.ReLU(), L.Affine(120, 84), L.ReLU(),
                      L.Affine(84, 10))


NETS = {
    "lenet5": (lenet5, (8, 1, 28, 28)),
    "mixed": (lambda: Sequential(
        L.Conv2D(3, 8, (3, 5), stride=(2, 1), padding=(1, 2)), L.BatchNorm2D(8), L.Tanh(), L.LRN(4, alpha=0.5),
        L.AvgPool2D(3, stride=2, padding=1), L.Conv2D(8, 4, 3, bias=False), L.Sigmoid(), L.Flatten(),
        L.Affine(4 * 2 * 6, 10)), (5, 3, 13, 15)),
}


@pytest.mark.parametrize("name", NETS)
def test_sequential_network_matches_torch(name, any_device):
    gpucnn.seed(0)
    build, shape = NETS[name]
    model = build()
    for k, v in model.params.items():  # non-trivial biases and BN affine params
        if not k.endswith(".W"):
            v[...] = np.random.default_rng(len(k)).standard_normal(v.shape).astype(np.float32) * 0.5
    tmodel = torch_twin(model)
    model.to(any_device)
    rng = np.random.default_rng(5)
    x = randn(rng, *shape)
    labels = rng.integers(0, 10, size=shape[0])
    logits_t = tmodel(torch.tensor(x))
    loss_t = F.cross_entropy(logits_t, torch.tensor(labels))
    loss_t.backward()
    ce = L.SoftmaxCrossEntropy()
    logits = model.forward(on(any_device, x))
    loss = ce.forward(logits, on(any_device, labels))
    assert model.backward(ce.backward()) is None
    assert_close(logits, logits_t, "logits", any_device)
    assert_close(loss, loss_t, "loss", any_device)
    theirs = {k: p.grad for k, p in tmodel.named_parameters()}
    ours = convert_to_torch(model, model.grads)   # PyTorch's names and layouts (Affine's dW transposed)
    assert set(ours) == set(theirs) and len(ours) == len(model.grads)
    for key, g in ours.items():
        assert_close(g, theirs[key], f"grad {key}", any_device)
