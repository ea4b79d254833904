"""The fused kernels (kernels/activation.cu, loss.cu, lrn.cu) against their numpy twins
(gpucnn.devices.fused_twins) on the emulated GPU and on a real GPU (the `gpu` cases of `kernel_device`), on odd
shapes, with NaN, infinities and signed zeros, for launches of fewer and of more threads than elements; the
twins against plain formulas or PyTorch; the launchers' refusals; and the chain's fusion of a ReLU into the
layer before it (same values, fewer device operations).
"""
import numpy as np
import pytest
import torch

import tolerances
from _devices import no_host_sync
from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn.devices import fused, fused_twins as twins, ops

LAUNCHES = {"default": None, "one-block-of-32": ((1,), (32,)), "oversized": ((997,), (64,)), "odd": ((3,), (7,))}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def on(device):
    return lambda a: None if a is None else backend.to_device(a, device)


def close(got, want, device, what):
    tolerances.assert_close(got, want, device, what, tol="kernel")


def specials(rng, shape, dtype):
    """Normal values with NaN, +-inf, -0.0 and +0.0 sprinkled in."""
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    for value, share in ((np.nan, 0.05), (np.inf, 0.03), (-np.inf, 0.03), (-0.0, 0.08), (0.0, 0.05)):
        flat[rng.random(flat.size) < share] = value
    return a


# ------------------------------------------------------------------------------------ bias and ReLU

#           N  G  OG  P, layout of the GEMM's product
BIAS_CASES = [(3, 1, 5, 7, "og-major"),     # (OG, N*P): conv on a GPU, W @ columns^T
              (2, 3, 4, 6, "position-major"),  # (G, N*P, OG): grouped conv, columns @ W^T
              (2, 2, 33, 3, "group-og-major"),  # (G, OG, N*P): the CPU's many-filter order
              (5, 1, 9, 1, "in-place"),     # affine: (N, OG), in place
              (1, 1, 1, 1, "og-major")]


def product(rng, case, dtype):
    """(the product array, its element strides for out's (n, g, o, q), out's shape)."""
    n, g, og, p, layout = case
    shape = {"og-major": (og, n * p), "position-major": (g, n * p, og), "group-og-major": (g, og, n * p),
             "in-place": (n, 1, og, 1)}[layout]
    strides = {"og-major": (p, 0, n * p, 1), "position-major": (p * og, n * p * og, 1, og),
               "group-og-major": (p, og * n * p, n * p, 1), "in-place": twins.own_strides((n, g, og, p))}[layout]
    return specials(rng, shape, dtype), strides, (n, g, og, p)


@DTYPES
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", BIAS_CASES, ids=[f"{c[4]}-{'x'.join(map(str, c[:4]))}" for c in BIAS_CASES])
def test_bias_act_matches_its_twin_bit_for_bit_for_any_launch(case, with_bias, relu, dtype, kernel_device):
    rng = np.random.default_rng(0)
    src, strides, shape = product(rng, case, dtype)
    bias = specials(rng, (shape[1] * shape[2],), dtype) if with_bias else None
    in_place = case[4] == "in-place"
    want = twins.bias_act(src.copy() if in_place else src, strides, bias,
                          src.copy().reshape(shape) if in_place else np.empty(shape, dtype), relu)
    d = on(kernel_device)
    for name, launch in LAUNCHES.items():
        dsrc = d(src)
        out = dsrc.reshape(shape) if in_place else d(np.full(shape, 7, dtype))
        got = fused.bias_act(out if in_place else dsrc, strides, d(bias), out, relu, launch=launch)
        assert got is out
        tolerances.assert_exact(got, want, f"bias_act {case} {name}")


def test_bias_act_twin_is_the_plain_formula():
    rng = np.random.default_rng(1)
    src, strides, shape = product(rng, BIAS_CASES[1], np.float64)
    bias = rng.standard_normal(shape[1] * shape[2])
    n, g, og, p = shape
    plain = src.reshape(g, n, p, og).transpose(1, 0, 3, 2) + bias.reshape(1, g, og, 1)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(twins.bias_act(src, strides, bias, np.empty(shape), True), np.maximum(plain, 0))
    np.testing.assert_array_equal(np.signbit(twins.bias_act(np.array([-0.0]), (1, 0, 0, 0), None,
                                                            np.empty((1, 1, 1, 1)), True)), [[[[False]]]])


@DTYPES
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (1,), (4, 33)])
def test_relu_backward_matches_its_twin_bit_for_bit(shape, dtype, kernel_device):
    rng = np.random.default_rng(2)
    y, dout = specials(rng, shape, dtype), specials(rng, shape, dtype)
    want = twins.relu_backward(y, dout)
    d = on(kernel_device)
    for name, launch in LAUNCHES.items():
        tolerances.assert_exact(fused.relu_backward(d(y), d(dout), launch=launch), want, f"relu_backward {name}")


def test_relu_backward_twin_is_torch_threshold_backward():
    rng = np.random.default_rng(3)
    y, dout = specials(rng, (50,), np.float64), specials(rng, (50,), np.float64)
    want = torch.ops.aten.threshold_backward(torch.tensor(dout), torch.tensor(y), 0.0).numpy()
    np.testing.assert_array_equal(twins.relu_backward(y, dout).view(np.int64), want.view(np.int64))  # +0.0, not -0.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_keep_or_zero_is_where_bit_for_bit(dtype, contiguous):
    """The CPU's bit-mask selection (ReLU backward, dropout) is np.where(keep, a, +0.0) to the bit: inf, NaN and
    -0.0 kept where kept, +0.0 where dropped whatever a held, for any layout of a."""
    rng = np.random.default_rng(4)
    a = specials(rng, (6, 9, 10), dtype)
    a.flat[::7] = -0.0
    if not contiguous:
        a = a.transpose(2, 0, 1)[:, ::2]
    keep = rng.random(a.shape) < 0.5
    bits = np.dtype(f"i{np.dtype(dtype).itemsize}")
    want = np.where(keep, a, dtype(0))
    got = twins.keep_or_zero(keep, a)
    assert got.dtype == dtype and got.shape == a.shape
    np.testing.assert_array_equal(got.view(bits), want.view(bits))
    np.testing.assert_array_equal(ops.keep_or_zero(keep, a).view(bits), want.view(bits))


# ---------------------------------------------------------------------------------- cross-entropy

#             N   K  smoothing  weighted
XENT_CASES = [(7, 3, 0.0, False), (7, 3, 0.1, True), (1, 1, 0.0, False), (5, 11, 1.0, True), (6, 4, 0.3, False),
              (9, 2, 0.0, True)]


def xent_data(case, dtype, rng):
    n, k, eps, weighted = case
    logits = rng.standard_normal((n, k)).astype(dtype) * 3
    if k > 2:
        logits[0, 1] = -np.inf                 # a -inf logit: finite loss unless smoothing needs it
        logits[-1, :2] = np.finfo(dtype).max, -np.finfo(dtype).max   # logits - max overflows to -inf
    labels = rng.integers(0, k, n).astype(np.int64)
    if n > 2:
        labels[1] = -100                       # ignored
    if n > 4:
        labels[3] = k + 4                      # out of range: NaN
    weight = None
    if weighted:
        weight = (rng.random(k) * 2).astype(dtype)
        weight[0] = 0                          # a class of weight 0 adds nothing, even at -inf
    return logits, labels, weight, eps


@DTYPES
@pytest.mark.parametrize("case", XENT_CASES, ids=["x".join(map(str, c)) for c in XENT_CASES])
def test_xent_kernels_match_their_twins_for_any_launch(case, dtype, kernel_device):
    rng = np.random.default_rng(4)
    logits, labels, weight, eps = xent_data(case, dtype, rng)
    wsum = None if weight is None else float(weight.astype(np.float64).sum())
    losses, wy, stats = twins.xent_forward(logits, labels, weight, -100, eps)
    n = len(labels)
    dout_per_sample = rng.standard_normal(n).astype(dtype)
    d = on(kernel_device)
    for name, launch in LAUNCHES.items():
        got = fused.xent_forward(d(logits), d(labels), d(weight), -100, eps, launch=launch)
        for g, w, what in zip(got, (losses, wy, stats), ("losses", "wy", "stats")):
            close(g, w, kernel_device, f"xent_forward {what} {name}")
        for mean in (True, False):
            red = twins.xent_reduce(losses, wy, mean)
            dred = fused.xent_reduce(got[0], got[1], mean, launch=launch)
            close(dred, red, kernel_device, f"xent_reduce mean={mean} {name}")
            for dout, ddout in ((1.0, 1.0), (np.asarray(dtype(0.5)), d(np.asarray(dtype(0.5)))),
                                (dout_per_sample, d(dout_per_sample))):
                want = twins.xent_backward(logits, stats, labels, weight, wsum, -100, eps, dout, red, mean)
                grad = fused.xent_backward(d(logits), got[2], d(labels), d(weight), wsum, -100, eps, ddout, dred,
                                           mean, launch=launch)
                close(grad, want, kernel_device, f"xent_backward mean={mean} dout={np.shape(dout)} {name}")


def test_xent_twins_are_torch_cross_entropy():
    rng = np.random.default_rng(5)
    for case in XENT_CASES:
        logits, labels, weight, eps = xent_data(case, np.float64, rng)
        labels[labels >= case[1]] = 0                     # torch raises on a bad label
        logits[~(np.abs(logits) < 1e300)] = 0.5           # torch's smoothing term is NaN at -inf and overflow
        wsum = None if weight is None else float(weight.sum())
        t = torch.tensor(logits, requires_grad=True)
        loss = torch.nn.functional.cross_entropy(t, torch.tensor(labels), None if weight is None else
                                                 torch.tensor(weight), ignore_index=-100, label_smoothing=eps)
        loss.backward()
        losses, wy, stats = twins.xent_forward(logits, labels, weight, -100, eps)
        red = twins.xent_reduce(losses, wy, True)
        np.testing.assert_allclose(red[0], loss.item(), rtol=1e-12, err_msg=str(case))
        grad = twins.xent_backward(logits, stats, labels, weight, wsum, -100, eps, 1.0, red, True)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14, err_msg=str(case))


def test_xent_on_a_gpu_reads_nothing_back(gpu_device):
    rng = np.random.default_rng(6)
    logits, labels, weight, eps = xent_data(XENT_CASES[1], np.float32, rng)
    d = on(gpu_device)
    with no_host_sync(gpu_device):
        losses, wy, stats = fused.xent_forward(d(logits), d(labels), d(weight), -100, eps)
        red = fused.xent_reduce(losses, wy, True)
        fused.xent_backward(d(logits), stats, d(labels), d(weight), 1.5, -100, eps, 1.0, red, True)


# -------------------------------------------------------------------------------------------- LRN

#            shape          size alpha beta  k
LRN_CASES = [((2, 7, 3, 5), 5, 1e-2, 0.75, 2.0), ((1, 1, 2, 2), 3, 1e-4, 0.75, 1.0), ((1, 3, 1, 1), 8, 0.5, 1.3, 0.7),
             ((3, 6, 2, 1), 2, 0.2, 0.5, 1.0), ((1, 4, 3, 3), 1, 1.0, 2.0, 0.5)]


@DTYPES
@pytest.mark.parametrize("case", LRN_CASES, ids=[f"{'x'.join(map(str, c[0]))}-size{c[1]}" for c in LRN_CASES])
def test_lrn_kernels_match_their_twins_for_any_launch(case, dtype, kernel_device):
    shape, size, alpha, beta, k = case
    rng = np.random.default_rng(7)
    x, dout = rng.standard_normal(shape).astype(dtype) * 2, rng.standard_normal(shape).astype(dtype)
    want = twins.lrn_forward(x, size, alpha, beta, k)
    dx = twins.lrn_backward(x, *want, dout, size, alpha, beta)
    d = on(kernel_device)
    for name, launch in LAUNCHES.items():
        got = fused.lrn_forward(d(x), size, alpha, beta, k, launch=launch)
        for g, w, what in zip(got, want, ("y", "d", "scale")):
            close(g, w, kernel_device, f"lrn_forward {what} {name}")
        close(fused.lrn_backward(d(x), *got, d(dout), size, alpha, beta, launch=launch), dx, kernel_device,
              f"lrn_backward {name}")


def test_lrn_twins_are_torch_local_response_norm():
    rng = np.random.default_rng(8)
    for shape, size, alpha, beta, k in LRN_CASES:
        x, dout = rng.standard_normal(shape), rng.standard_normal(shape)
        t = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.local_response_norm(t, size, alpha, beta, k)
        y.backward(torch.tensor(dout))
        ours = twins.lrn_forward(x, size, alpha, beta, k)
        np.testing.assert_allclose(ours[0], y.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(twins.lrn_backward(x, *ours, dout, size, alpha, beta), t.grad.numpy(), rtol=1e-10,
                                   atol=1e-14)


# ------------------------------------------------------------------------------------------ refusals

E = backend.EMULATED


@pytest.mark.parametrize("call, error, fragment", [
    (lambda d: fused.bias_act(d(np.zeros(6, np.float32)), (3, 0, 1, 1), None, d(np.zeros((2, 1, 3, 2), np.float32)),
                              True), ValueError, "read past"),
    (lambda d: fused.bias_act(d(np.zeros(6, np.float32)), (3, 0, 1, 0), None, d(np.zeros((2, 1, 3, 1))), True),
     TypeError, "one dtype"),
    (lambda d: fused.bias_act(d(np.zeros(6, np.float32)), (3, 0, 1, 0), d(np.zeros(2, np.float32)),
                              d(np.zeros((2, 1, 3, 1), np.float32)), True), ValueError, "3 bias values"),
    (lambda d: fused.relu_backward(d(np.zeros(3, np.float32)), d(np.zeros(4, np.float32))), ValueError, "same shape"),
    (lambda d: fused.xent_forward(d(np.zeros((2, 3), np.float32)), d(np.zeros(2, np.int32)), None, -100, 0.0),
     TypeError, "int64 labels"),
    (lambda d: fused.xent_forward(d(np.zeros((2, 3), np.float32)), d(np.zeros(2, np.int64)), None, -100, 1.5),
     ValueError, "smoothing"),
    (lambda d: fused.xent_forward(d(np.zeros(3, np.float32)), d(np.zeros(3, np.int64)), None, -100, 0.0),
     ValueError, "logits (N, K)"),
    (lambda d: fused.lrn_forward(d(np.zeros((2, 3), np.float32)), 5, 1e-4, 0.75, 2.0), ValueError, "(N, C, H, W)"),
    (lambda d: fused.relu_backward(d(np.zeros(3, np.int32)), d(np.zeros(3, np.int32))), TypeError, "float32 or"),
])
def test_launchers_refuse_what_the_kernels_cannot_take(call, error, fragment):
    with pytest.raises(error) as e:
        call(on(E))
    assert fragment in str(e.value) and e.value.args[0].split(":")[0] in fused.__all__


# --------------------------------------------------------------------------- ReLU fused into the chain

def chain(fused_relu):
    """conv, ReLU, pool, affine, ReLU, affine: each ReLU fused into the layer before it, or not."""
    net = L.Sequential(L.Conv2D(2, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Affine(36, 5),
                       L.ReLU(), L.Affine(5, 3))
    if not fused_relu:
        for layer in net:
            layer.fuses_relu = False
    return net


def test_a_relu_fused_into_the_layer_before_gives_the_same_values_and_gradients(any_device):
    rng = np.random.default_rng(9)
    x, dy = rng.standard_normal((3, 2, 6, 6)).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)
    x[0, 0, 0, :3] = -0.0
    results = []
    for fused_relu in (True, False):
        backend.seed(0)
        net = chain(fused_relu).to(any_device)
        y = net.forward(backend.to_device(x, any_device), train=True)
        net.backward(backend.to_device(dy, any_device))
        results.append([backend.to_cpu(y)] + [backend.to_cpu(g) for g in net.grads.values()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_a_fused_relu_saves_a_pass_per_pair_on_a_gpu():
    counts = {}
    x = backend.to_device(np.ones((2, 2, 6, 6), np.float32), E)
    for fused_relu in (True, False):
        net = chain(fused_relu).to(E)
        net.forward(x)
        with backend.count_device_ops() as c:
            net.forward(x)
        counts[fused_relu] = c.ops
    assert counts[False] - counts[True] == 2, counts


def test_ops_dispatch_host_arrays_to_the_twins():
    y, dout = np.array([1.0, -1.0]), np.array([2.0, 3.0])
    np.testing.assert_array_equal(ops.relu_backward(y, dout), [2.0, 0.0])
    assert isinstance(ops.relu_backward(y, dout), np.ndarray)
