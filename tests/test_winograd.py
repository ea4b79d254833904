"""Winograd F(2x2, 3x3): the transforms against torch's convolution on odd shapes, Conv2D's choice between
Winograd and im2col, Conv2D through Winograd against torch and a float64 gradient check, on each device; on
the emulated GPU bit-identical to the CPU (the same numpy arithmetic), on CUDA to rounding, with no host reads."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tolerances
from _devices import no_host_sync
from gpucnn import devices as backend
from gpucnn.devices import ops, twins
from gpucnn.layers import conv, winograd
from gpucnn import layers as L
from test_layers_torch import against_torch, assert_close, case_rng, leaf, on, randn

# (n, cin, cout, (h, w), (ph, pw)): batch 1, odd and non-square sizes (last tile cut off), no padding,
# padding wider than the kernel's reach, a 3x3 input with no padding (one output pixel).
SHAPES = [(1, 3, 2, (8, 8), (1, 1)), (2, 2, 3, (7, 5), (0, 2)), (3, 4, 2, (3, 3), (0, 0)),
          (2, 3, 4, (6, 9), (2, 1)), (1, 1, 1, (4, 4), (1, 0)), (5, 7, 6, (5, 6), (1, 1)),
          (2, 5, 3, (1, 1), (1, 1)), (1, 2, 2, (2, 9), (1, 3))]


def winograd_conv(x, w, b, padding):
    """Forward and a backward closure, straight from the module's functions."""
    n, _, h, wd = x.shape
    oh, ow = h + 2 * padding[0] - 2, wd + 2 * padding[1] - 2
    u, v = winograd.filter_transform(w), winograd.input_transform(x, padding)
    y = winograd.output_transform(np.matmul(v, u.transpose(0, 2, 1)), n, oh, ow, b)

    def backward(dy):
        dm = winograd.output_gradient_transform(dy)
        dw = winograd.filter_gradient(np.matmul(dm.transpose(0, 2, 1), v))
        dx = winograd.input_gradient(np.matmul(dm, u), x.shape, padding)
        return dx, dw
    return y, backward


@pytest.mark.parametrize("block", [2, twins._COPY_BLOCK])
@pytest.mark.parametrize("case", SHAPES)
def test_transforms_match_torch_in_float64(case, block, monkeypatch, any_device):
    if block == 2 and any_device.is_gpu:
        pytest.skip("the copy block size is the CPU's (devices.twins.copy_blocked)")
    monkeypatch.setattr(twins, "_COPY_BLOCK", block)   # 2: the blocked transposing copies take several blocks
    n, c, o, (h, w), pad = case
    rng = case_rng(case)
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, 3, 3)), rng.standard_normal(o)
    xt, wtt = leaf(x), leaf(wt)
    yt = F.conv2d(xt, wtt, torch.tensor(b), padding=pad)
    dy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(dy))
    y, backward = winograd_conv(on(any_device, x), on(any_device, wt), on(any_device, b), pad)
    dx, dw = backward(on(any_device, dy))
    for ours, ref, what in ((y, yt, "y"), (dx, xt.grad, "dx"), (dw, wtt.grad, "dW")):
        tolerances.assert_close(ours, ref.detach().numpy(), any_device, what, tol="torch64")


def test_copy_blocked_copies_any_transpose(monkeypatch):
    monkeypatch.setattr(twins, "_COPY_BLOCK", 3)
    src = np.arange(2 * 3 * 20, dtype=np.float32).reshape(20, 2, 3)
    out = np.empty((2, 3, 20), np.float32)
    ops.copy_blocked(out, src.transpose(1, 2, 0))
    np.testing.assert_array_equal(out, src.transpose(1, 2, 0))


@pytest.fixture
def winograd_for_all(monkeypatch):
    """Let Conv2D take Winograd at any size and on GPUs too, so that small layers exercise it on every device."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_ROWS", 1)
    monkeypatch.setattr(winograd, "ON_GPU", True)


def test_gpus_take_im2col_unless_told_otherwise(monkeypatch):
    """The CPU's measured rule picks Winograd for AlexNet's 3x3 layers; a GPU takes im2col (fewer device
    operations, see winograd.ON_GPU), also for column_bytes, unless ON_GPU is set."""
    layer, shape = L.Conv2D(192, 384, 3, padding=1), (32, 192, 8, 8)
    assert layer.uses_winograd(shape) and layer.uses_winograd(shape, device="cpu")
    assert not layer.uses_winograd(shape, device="emulated") and not layer.uses_winograd(shape, device=backend.Device("cuda", 0))
    assert layer.column_bytes(shape, device="emulated") == 32 * 64 * 9 * 192 * 4 != layer.column_bytes(shape)
    monkeypatch.setattr(winograd, "ON_GPU", True)
    assert layer.uses_winograd(shape, device="emulated")
    x = backend.to_device(np.zeros(shape, np.float32), "emulated")
    with backend.count_device_ops() as counts:
        layer.to("emulated").forward(x)
    assert counts.by_op["kernel:im2col_f32"] == 0


def _step_ops(shape):
    """Device operations of a 3x3 Conv2D followed by a ReLU on the emulated device: (forward, backward with
    the input gradient), counted on a second step (kernels compiled, buffers made)."""
    dev = backend.get_device("emulated")
    net = L.Sequential(L.Conv2D(shape[1], 2 * shape[1], 3, padding=1), L.ReLU()).to(dev)
    net.need_input_grad = True
    x = backend.to_device(case_rng(shape).standard_normal(shape, dtype=np.float32), dev)
    for _ in range(2):
        with backend.count_device_ops() as forward:
            y = net.forward(x, train=True)
        with backend.count_device_ops() as backward:
            net.backward(y)
    assert forward.syncs == backward.syncs == forward.host_to_device == backward.host_to_device == 0
    return forward.ops, backward.ops


def test_im2col_costs_a_gpu_fewer_device_operations_than_winograd(monkeypatch):
    """Why a GPU takes im2col (winograd.ON_GPU = False), counted: a 3x3 layer and its ReLU cost 4 device
    operations forward and 7 backward through im2col (the ReLU fused), whatever its size, against 40 and
    74-75 through the Winograd transforms as array passes (README, "GPU speed"; one more for a cut-off tile)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_ROWS", 1)
    shape = (2, 4, 6, 5)
    assert _step_ops(shape) == (4, 7)
    monkeypatch.setattr(winograd, "ON_GPU", True)
    assert L.Conv2D(4, 8, 3, padding=1).uses_winograd(shape, device="emulated")
    forward, backward = _step_ops(shape)
    assert forward >= 5 * 4 and backward >= 5 * 7, (forward, backward)


def test_conv2d_chooses_winograd_only_for_3x3_stride_1_where_it_pays(monkeypatch):
    c = winograd.MIN_CHANNELS
    shape = (winograd.MIN_ROWS // 16, c, 8, 8)   # 16 tiles per sample: exactly MIN_ROWS rows
    assert L.Conv2D(c, c, 3, padding=1).uses_winograd(shape)
    assert L.Conv2D(c, c, 3, padding=1, bias=False).uses_winograd(shape)
    a, b = 3 * c // 4, 3 * c // 2          # harmonic mean 2ab/(a+b) == c exactly
    assert 2 * a * b == c * (a + b)
    assert L.Conv2D(a, b, 3, padding=1).uses_winograd((shape[0], a, 8, 8))
    assert not L.Conv2D(a, b - 1, 3, padding=1).uses_winograd((shape[0], a, 8, 8))
    assert not L.Conv2D(c, c, 3, padding=1).uses_winograd((shape[0] - 1, c, 8, 8))         # too few rows
    assert not L.Conv2D(c, c, 3, stride=2).uses_winograd(shape)
    assert not L.Conv2D(c, c, 5, padding=2).uses_winograd(shape)
    assert not L.Conv2D(c, c, (3, 1)).uses_winograd(shape)
    big = (winograd.MAX_BYTES // (16 * 4 * 16 * c) + 1, c, 8, 8)   # one sample more than MAX_BYTES holds
    assert L.Conv2D(c, c, 3, padding=1).uses_winograd((big[0] - 1,) + big[1:])
    assert not L.Conv2D(c, c, 3, padding=1).uses_winograd(big)
    wide, wide_shape = L.Conv2D(4 * c, 4 * c, 3, padding=1), (shape[0], 4 * c, 8, 8)
    assert wide.uses_winograd(wide_shape)
    assert wide.column_bytes(wide_shape) == 16 * (4 * c) ** 2 * 4 > 16 * 16 * shape[0] * 4 * c * 4, \
        "the transformed filters (16 per filter and channel) outweigh V and M (16 per tile, sample and channel)"
    monkeypatch.setattr(conv, "_workspace_limit", 1000)
    assert not L.Conv2D(c, c, 3, padding=1).uses_winograd(shape)


def test_conv2d_falls_back_to_im2col_chunks_when_the_transforms_exceed_the_workspace(winograd_for_all,
                                                                                       monkeypatch, any_device):
    layer = L.Conv2D(3, 4, 3, padding=1)
    shape = (6, 3, 10, 10)
    need = 16 * 5 * 5 * 6 * 4 * 4      # 16 values per 2x2 output tile, per sample, per (output) channel, float32
    assert winograd.buffer_bytes(3, 4, 6, 10, 10, 4) == need
    assert layer.uses_winograd(shape) and layer.column_bytes(shape) == need
    monkeypatch.setattr(conv, "_workspace_limit", need - 1)
    assert not layer.uses_winograd(shape)
    assert layer.column_bytes(shape) <= need - 1
    rng = np.random.default_rng(3)
    x = randn(rng, *shape)
    w, b = leaf(layer.params["W"]), leaf(layer.params["b"])
    against_torch(layer, x, lambda t: F.conv2d(t, w, b, padding=1), rng, device=any_device)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_through_winograd_matches_torch(case, bias, winograd_for_all, any_device):
    n, c, o, (h, w), pad = case
    rng = case_rng((case, bias))
    layer = L.Conv2D(c, o, 3, padding=pad, bias=bias)
    assert layer.uses_winograd((n, c, h, w))
    if bias:
        layer.params["b"][...] = randn(rng, o)
    x = randn(rng, n, c, h, w)
    wt = leaf(layer.params["W"])
    bt = leaf(layer.params["b"]) if bias else None
    against_torch(layer, x, lambda t: F.conv2d(t, wt, bt, padding=pad), rng, device=any_device)
    assert_close(layer.grads["W"], wt.grad, "dW", any_device)
    if bias:
        assert_close(layer.grads["b"], bt.grad, "db", any_device)


def test_conv2d_through_winograd_takes_non_contiguous_input_and_gradient(winograd_for_all, any_device):
    rng = np.random.default_rng(8)
    layer = L.Conv2D(3, 4, 3, padding=1)
    layer.params["b"][...] = randn(rng, 4)
    x, dy = randn(rng, 2, 3, 7, 5), randn(rng, 2, 4, 7, 5)
    xt, wt, bt = leaf(x.transpose(0, 1, 3, 2).copy()), leaf(layer.params["W"]), leaf(layer.params["b"])
    yt = F.conv2d(xt, wt, bt, padding=1)
    yt.backward(torch.tensor(dy.transpose(0, 1, 3, 2).copy()))
    layer.to(any_device)
    strided = lambda a: on(any_device, a).transpose(0, 1, 3, 2)   # (2, C, 5, 7) views of (2, C, 7, 5) arrays
    assert_close(layer.forward(strided(x)), yt, "y", any_device)
    assert_close(layer.backward(strided(dy)), xt.grad, "dx", any_device)
    assert_close(layer.grads["W"], wt.grad, "dW", any_device)
    assert_close(layer.grads["b"], bt.grad, "db", any_device)


def test_conv2d_through_winograd_at_alexnet_size_matches_torch(any_device, monkeypatch):
    monkeypatch.setattr(winograd, "ON_GPU", True)
    rng = np.random.default_rng(4)
    c, o = 192, 384
    layer = L.Conv2D(c, o, 3, padding=1)
    x = randn(rng, 32, c, 8, 7)
    assert layer.uses_winograd(x.shape)
    wt, bt = leaf(layer.params["W"]), leaf(layer.params["b"])
    against_torch(layer, x, lambda t: F.conv2d(t, wt, bt, padding=1), rng, device=any_device)
    assert_close(layer.grads["W"], wt.grad, "dW", any_device)


def test_conv2d_through_winograd_gradients_are_exact_in_float64(winograd_for_all, any_device):
    """The device's analytic gradients against central differences of the same layer on the CPU."""
    rng = np.random.default_rng(5)
    layer = L.Conv2D(2, 3, 3, padding=1, dtype=np.float64)
    x = rng.standard_normal((2, 2, 5, 4))
    dy = rng.standard_normal((2, 3, 5, 4))
    on_device = copy.deepcopy(layer).to(any_device)
    on_device.forward(on(any_device, x))
    dx = tolerances.host(on_device.backward(on(any_device, dy)))
    grads = {k: tolerances.host(g) for k, g in on_device.grads.items()}
    loss = lambda: float(np.sum(layer.forward(x) * dy))
    eps = 1e-6
    for arr, grad in ((x, dx), (layer.params["W"], grads["W"]), (layer.params["b"], grads["b"])):
        for idx in [tuple(int(rng.integers(0, s)) for s in arr.shape) for _ in range(6)]:
            keep = arr[idx]
            arr[idx] = keep + eps
            up = loss()
            arr[idx] = keep - eps
            down = loss()
            arr[idx] = keep
            assert abs((up - down) / (2 * eps) - grad[idx]) < 1e-7


def test_conv2d_through_winograd_caches_the_transformed_input_and_backward_repeats(winograd_for_all,
                                                                                    monkeypatch):
    rng = np.random.default_rng(6)
    layer = L.Conv2D(3, 4, 3, padding=1)
    x, dy = randn(rng, 2, 3, 6, 6), randn(rng, 2, 4, 6, 6)
    transforms = []
    real = winograd.input_transform
    monkeypatch.setattr(winograd, "input_transform", lambda *a: transforms.append(1) or real(*a))
    layer.forward(x, train=True)
    dx = layer.backward(dy)
    dw = layer.grads["W"].copy()
    assert len(transforms) == 1, "backward after a training forward reuses the forward's transformed input"
    for train in (True, False):           # a second backward of one forward: V's buffer took dV, so recompute
        layer.forward(x, train=train)
        for _ in range(2):
            np.testing.assert_array_equal(layer.backward(dy), dx)
            np.testing.assert_array_equal(layer.grads["W"], dw)
    layer.need_input_grad = False
    layer.forward(x)
    assert layer.backward(dy) is None
    np.testing.assert_array_equal(layer.grads["W"], dw)


def test_conv2d_through_winograd_on_a_gpu_matches_the_cpu_and_never_syncs(winograd_for_all, monkeypatch,
                                                                         gpu_device):
    """Bit-identical on the emulated GPU (the same numpy arithmetic in the same order), to rounding on CUDA
    (cuBLAS); no host read either way."""
    rng = np.random.default_rng(7)
    cpu = L.Conv2D(3, 5, 3, padding=1)
    gpu = copy.deepcopy(cpu).to(gpu_device)
    x, dy = randn(rng, 2, 3, 7, 6), randn(rng, 2, 5, 7, 6)
    y, dx = cpu.forward(x), cpu.backward(dy)
    xe, dye = on(gpu_device, x), on(gpu_device, dy)
    with no_host_sync(gpu_device):
        ye = gpu.forward(xe)
        dxe = gpu.backward(dye)
    assert backend.device_of(ye) == backend.device_of(dxe) == gpu_device
    tol = "exact" if gpu_device.kind == "emulated" else "step"
    tolerances.assert_close(ye, y, gpu_device, "y", tol)
    tolerances.assert_close(dxe, dx, gpu_device, "dx", tol)
    for k in cpu.grads:
        tolerances.assert_close(gpu.grads[k], cpu.grads[k], gpu_device, f"d{k}", tol)
    copies = []
    monkeypatch.setattr(winograd, "to_device", lambda *a: copies.append(1) or backend.to_device(*a))
    gpu.forward(xe)
    gpu.backward(dye)
    assert copies == [], "the filter matrix is copied to the device once, not per step"
