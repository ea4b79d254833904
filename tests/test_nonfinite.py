"""The faults of one kind (a 0/1 choice made by multiplying by a mask, or by letting the first tap win) meeting
inf or NaN, in every layer where it can happen, with the right values; PyTorch is the oracle where it is right.

- SoftmaxCrossEntropy: the loss was sum(onehot * logp), so 0 * -inf gave NaN ([[0, -inf, 1]] label 0 must give
  log(1 + e) = 1.3132617; float32 [[3e38, -3e38]] label 0 must give 0).
- MaxPool2D: padding read as -inf won ties against -inf inputs, sending a gradient to padding (a 2x2 map of
  -inf pooled 2/2 with padding 1 must give dx of ones), in the twin and in the CUDA kernel.
- ReLU: dout * (y > 0) turned an infinite dout at an inactive unit into NaN (must be 0).
- Dropout multiplied by its 0/1 mask (PyTorch still does: a dropped inf gives NaN there; here it gives 0).
- LeakyReLU, BatchNorm2D, LRN, AvgPool2D and the loss gradient: no mask multiply; checked against PyTorch with
  infinite inputs and douts so that one cannot creep in.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpucnn
from _oracle import against_torch, assert_close
from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn.devices import kernels, twins

INF = np.inf
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # inf - inf and 0 * inf where torch makes them too


def on(device, a):
    return backend.to_device(np.asarray(a), device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_with_minus_infinity_logits_is_finite(any_device, dtype):
    ce = L.SoftmaxCrossEntropy()
    logits = np.array([[0.0, -INF, 1.0]], dtype)
    loss = backend.to_cpu(ce.forward(on(any_device, logits), on(any_device, np.array([0]))))
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss, math.log1p(math.e), rtol=1e-7)
    np.testing.assert_allclose(loss, F.cross_entropy(torch.tensor(logits), torch.tensor([0])).numpy(), rtol=1e-7)
    grad = backend.to_cpu(ce.backward())
    lt = torch.tensor(logits, requires_grad=True)
    F.cross_entropy(lt, torch.tensor([0])).backward()
    assert_close(grad.astype(np.float32), lt.grad.float(), "dlogits", any_device)
    assert grad[0, 1] == 0


def test_cross_entropy_of_huge_finite_float32_logits_is_zero(any_device):
    ce = L.SoftmaxCrossEntropy()
    logits = np.array([[3e38, -3e38]], np.float32)
    loss = backend.to_cpu(ce.forward(on(any_device, logits), on(any_device, np.array([0]))))
    assert loss == 0 and loss.dtype == np.float32
    np.testing.assert_array_equal(backend.to_cpu(ce.backward()), [[0, 0]])
    # label 1 has probability exp(-6e38): the true loss overflows float32, inf is right
    assert backend.to_cpu(ce.forward(on(any_device, logits), on(any_device, np.array([1])))) == INF


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.2}, {"weight": [1.0, 0.0, 2.0]},
                                     {"weight": [0.5, 1.0, 2.0], "label_smoothing": 0.3, "reduction": "sum"}])
def test_cross_entropy_gradient_with_minus_infinity_logits_matches_torch(options):
    logits = np.array([[0.0, -INF, 1.0], [-INF, 2.0, -INF], [3.0, 0.0, -INF]], np.float32)
    labels = np.array([2, 1, 0])
    ce = L.SoftmaxCrossEntropy(**options)
    lt = torch.tensor(logits, requires_grad=True)
    kw = {k: torch.tensor(v) if k == "weight" else v for k, v in options.items()}
    want = F.cross_entropy(lt, torch.tensor(labels), **kw)
    want.backward()
    got = ce.forward(logits, labels)
    if options.get("label_smoothing"):
        assert got == INF and want.item() == INF    # smoothing puts weight on the -inf classes: truly infinite
    else:
        assert_close(got, want, "loss")
    assert_close(ce.backward(), lt.grad, "dlogits")


def test_cross_entropy_class_of_weight_zero_adds_nothing_even_at_minus_infinity():
    """PyTorch computes 0 * inf there and returns NaN; the class's term is absent, so the loss is finite."""
    ce = L.SoftmaxCrossEntropy(weight=[1.0, 0.0, 1.0], label_smoothing=0.1)
    logits = np.array([[1.0, -INF, 0.0]], np.float32)
    loss = ce.forward(logits, np.array([0]))
    z = logits[0, [0, 2]]
    logp = z - np.log(np.exp(z).sum())
    assert np.isclose(loss, 0.9 * -logp[0] + 0.1 / 3 * -logp.sum())
    assert np.isfinite(ce.backward()).all()


def minus_inf_map():
    return np.full((1, 1, 2, 2), -INF, np.float32)


def test_maxpool_padding_never_wins_over_minus_infinity_inputs(any_device):
    layer = L.MaxPool2D(2, stride=2, padding=1).to(any_device)
    y = layer.forward(on(any_device, minus_inf_map()))
    np.testing.assert_array_equal(backend.to_cpu(y), minus_inf_map())
    dx = backend.to_cpu(layer.backward(on(any_device, np.ones((1, 1, 2, 2), np.float32))))
    np.testing.assert_array_equal(dx, np.ones((1, 1, 2, 2)))
    x = torch.tensor(minus_inf_map(), requires_grad=True)
    F.max_pool2d(x, 2, stride=2, padding=1).backward(torch.ones(1, 1, 2, 2))
    np.testing.assert_array_equal(dx, x.grad.numpy())


@pytest.mark.parametrize("win", [(2, 2, 2, 2, 1, 1), (3, 3, 1, 1, 1, 1), (3, 2, 2, 1, 1, 1)])
def test_maxpool_kernel_and_twin_send_minus_infinity_windows_to_an_input(win):
    """The argmax of a window of -inf inputs and padding is its first input element, in both implementations."""
    x = np.full((1, 2, 3, 4), -INF, np.float32)
    y, arg = twins.maxpool_forward(x, *win)
    ky, karg = (backend.to_cpu(a) for a in kernels.maxpool_forward(on("emulated", x), *win))
    np.testing.assert_array_equal(arg, karg)
    kh, kw, sh, sw, ph, pw = win
    oy, ox = np.meshgrid(np.arange(y.shape[2]), np.arange(y.shape[3]), indexing="ij")
    rows, cols = oy * sh - ph + arg // kw, ox * sw - pw + arg % kw
    assert ((rows >= 0) & (rows < 3) & (cols >= 0) & (cols < 4)).all(), "an argmax points at padding"
    assert (rows == np.maximum(oy * sh - ph, 0)).all() and (cols == np.maximum(ox * sw - pw, 0)).all()


def test_relu_gives_zero_gradient_at_an_inactive_unit_whatever_dout(any_device):
    x = np.array([[-1.0, 0.0, 2.0, np.nan, -INF, INF]], np.float32)
    dout = np.array([[INF, -INF, INF, 1.0, np.nan, 2.0]], np.float32)
    layer = L.ReLU().to(any_device)
    layer.forward(on(any_device, x))
    dx = backend.to_cpu(layer.backward(on(any_device, dout)))
    xt = torch.tensor(x, requires_grad=True)
    F.relu(xt).backward(torch.tensor(dout))
    np.testing.assert_array_equal(dx, [[0, 0, INF, 1.0, 0, 2.0]])
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def test_dropout_gives_zero_for_dropped_units_whatever_they_hold(any_device):
    """PyTorch multiplies by the mask (a dropped inf gives NaN there); a dropped unit is 0 here, forward and back."""
    gpucnn.seed(4)
    x = np.full((4, 50), INF, np.float32)
    x[::2] = np.nan
    layer = L.Dropout(0.5).to(any_device)
    y = backend.to_cpu(layer.forward(on(any_device, x), train=True))
    dropped = y == 0
    assert 0.3 < dropped.mean() < 0.7
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x) & ~dropped)
    assert (np.isinf(y) == (np.isinf(x) & ~dropped)).all()
    dx = backend.to_cpu(layer.backward(on(any_device, -x)))
    np.testing.assert_array_equal(dx == 0, dropped)


@pytest.mark.parametrize("name", ["leaky", "leaky0", "bn_eval", "lrn", "avgpool", "avgpool_exclusive", "tanh"])
def test_layers_without_masks_agree_with_torch_on_infinities(name, any_device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x[0, 0, 0, :2] = [INF, -INF]
    layer, fn = {
        "leaky": (L.LeakyReLU(0.1), lambda t: F.leaky_relu(t, 0.1)),
        "leaky0": (L.LeakyReLU(0.0), lambda t: F.leaky_relu(t, 0.0)),
        "bn_eval": (L.BatchNorm2D(3), lambda t: F.batch_norm(t, torch.zeros(3), torch.ones(3), torch.ones(3),
                                                             torch.zeros(3), training=False)),
        "lrn": (L.LRN(3, alpha=0.5), lambda t: F.local_response_norm(t, 3, alpha=0.5, beta=0.75, k=2.0)),
        "avgpool": (L.AvgPool2D(3, 2, 1, ceil_mode=True), lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True)),
        "avgpool_exclusive": (L.AvgPool2D(2, 1, 1, count_include_pad=False),
                              lambda t: F.avg_pool2d(t, 2, 1, 1, count_include_pad=False)),
        "tanh": (L.Tanh(), torch.tanh),
    }[name]
    against_torch(layer, x, fn, rng, any_device, train=False)
