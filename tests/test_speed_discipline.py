"""The hot path's discipline: no host syncs and compile-once kernels on a (emulated) GPU, im2col workspace
bounded by the limit (measured on a small conv, computed for ImageNet AlexNet), float32 kept float32, and the
benchmark helper."""
import numpy as np
import pytest

from _devices import no_host_sync
from gpucnn import bench, models
from gpucnn import devices as backend
from gpucnn.devices import kernels, ops, twins
from gpucnn import layers as L
from gpucnn.optim import Adam


@pytest.fixture
def restore_workspace():
    old = L.get_workspace_limit()
    yield
    L.set_workspace_limit(old)


def on(device, a):
    return backend.to_device(np.asarray(a), device)


# ---------------------------------------------------------------------------------------- no host syncs

def test_lenet5_training_on_a_gpu_never_syncs_and_compiles_each_kernel_once(gpu_device):
    """No host sync inside training steps (on CUDA checked by cupyx.allow_synchronize(False)), parameters
    updated in place, each kernel source compiled once per device and process."""
    net = models.lenet5(in_channels=1, input_size=28, num_classes=10).to(gpu_device)
    loss, opt = L.SoftmaxCrossEntropy(), Adam(lr=1e-3)
    rng = np.random.default_rng(0)
    batches = [(n, on(gpu_device, rng.standard_normal((n, 1, 28, 28), dtype=np.float32)),
                on(gpu_device, rng.integers(0, 10, n))) for n in (4, 3, 4, 5, 3)]
    before = {k: v for k, v in net.params.items()}
    with no_host_sync(gpu_device):
        for _, x, t in batches:
            value = loss.forward(net.forward(x, train=True), t)
            net.backward(loss.backward())
            opt.update(net.params, net.grads)
    assert backend.is_gpu_array(value) and value.shape == ()
    assert all(net.params[k] is before[k] for k in before), "parameters are updated in place"
    counts = kernels.compile_counts()
    assert {("im2col.cu", str(gpu_device)), ("pooling.cu", str(gpu_device))} <= set(counts)
    assert all(n == 1 for n in counts.values()), counts
    assert np.isfinite(float(value))   # the one sync, after the steps


# ------------------------------------------------------------------------------------------- workspace

def test_no_column_buffer_exceeds_the_workspace_limit(restore_workspace, monkeypatch, any_device):
    device = any_device
    layer = L.Conv2D(3, 4, 3, padding=1).to(device)
    x = on(device, np.random.default_rng(1).standard_normal((7, 3, 10, 10), dtype=np.float32))
    full = 7 * 3 * 3 * 3 * 10 * 10 * 4
    limit = full // 3
    L.set_workspace_limit(limit)
    sizes = []
    real = ops.im2col

    def counting(x, *args):
        col = real(x, *args)
        sizes.append(col.nbytes)
        return col
    monkeypatch.setattr(ops, "im2col", counting)
    y = layer.forward(x)
    layer.backward(y * 0 + 1)
    assert len(sizes) > 2 and max(sizes) <= limit, (sizes, limit)
    assert max(sizes) == layer.column_bytes(x.shape, x.dtype), "column_bytes predicts the largest buffer"
    assert full > limit


def test_imagenet_alexnet_at_batch_256_stays_within_the_default_workspace():
    net = models.alexnet(in_channels=3, input_size=227, num_classes=1000)
    limit = L.get_workspace_limit()
    shape, convs = (256, 3, 227, 227), 0
    for layer in net:
        if isinstance(layer, L.Conv2D):
            convs += 1
            assert layer.column_bytes(shape) <= limit, (layer, shape)
            if layer.kernel_size == (5, 5):
                assert layer.sample_bytes(shape) * shape[0] > limit, "the batch's columns do not fit whole"
        shape = layer.output_shape(shape)
    assert convs == 5


# ---------------------------------------------------------------------------------------------- dtypes

def test_float32_training_stays_float32_in_every_layer():
    rng = np.random.default_rng(2)
    cases = [(L.Conv2D(2, 3, 3, padding=1), (4, 2, 6, 6)), (L.MaxPool2D(2), (4, 2, 6, 6)),
             (L.AvgPool2D(2), (4, 2, 6, 6)), (L.Affine(12, 5), (4, 12)), (L.ReLU(), (4, 5)),
             (L.LeakyReLU(0.1), (4, 5)), (L.Sigmoid(), (4, 5)), (L.Tanh(), (4, 5)), (L.Flatten(), (4, 2, 3)),
             (L.Dropout(0.3), (4, 5)), (L.BatchNorm1D(5), (4, 5)), (L.BatchNorm2D(2), (4, 2, 3, 3)),
             (L.LRN(3), (4, 4, 3, 3))]
    for layer, shape in cases:
        for train in (True, False):
            x = rng.standard_normal(shape, dtype=np.float32)
            y = layer.forward(x, train=train)
            dx = layer.backward(np.ones_like(y))
            assert y.dtype == np.float32 and dx.dtype == np.float32, (layer, train, y.dtype, dx.dtype)
            assert all(g.dtype == np.float32 for g in layer.grads.values()), layer
            assert all(b.dtype == np.float32 for b in layer.buffers.values()), layer
    loss = L.SoftmaxCrossEntropy()
    assert loss.forward(rng.standard_normal((4, 3), dtype=np.float32), np.arange(4) % 3).dtype == np.float32
    assert loss.backward().dtype == np.float32
    p, g = {"w": np.ones(3, np.float32)}, {"w": np.full(3, 0.5, np.float32)}
    opt = Adam()
    for _ in range(2):
        opt.update(p, g)
    assert p["w"].dtype == np.float32 and all(
        a.dtype == np.float32 for k, a in opt.state_dict().items() if k.startswith("state/") and "exp" in k)


# ----------------------------------------------------------------------------------------------- bench

@pytest.mark.parametrize("train", [True, False])
def test_benchmark_reports_a_consistent_result(any_device, train):
    device = str(any_device)
    r = bench.benchmark("simple_convnet", 3, device, steps=2, warmup=1, train=train, input_size=12,
                        num_classes=4)
    assert r["model"] == "simple_convnet" and r["device"] == device and r["batch"] == 3
    assert r["mode"] == ("train" if train else "inference") and r["input_shape"] == (1, 12, 12)
    assert r["seconds"] > 0 and r["ms_per_step"] == pytest.approx(r["seconds"] / 2 * 1e3)
    assert r["images_per_second"] == pytest.approx(3 * 2 / r["seconds"])
    line = bench.format_result(r)
    assert line.startswith(f"simple_convnet {r['mode']} on {device}, batch 3 of 1x12x12:") and "images/s" in line


def test_benchmark_training_on_the_emulated_gpu_does_not_sync():
    backend.transfer_stats.reset()
    bench.benchmark("lenet5", 2, "emulated", steps=2, warmup=1)
    assert backend.transfer_stats.device_to_host == 0


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": 0}, ["batch_size", ">= 1", "0"]),
    ({"steps": 0}, ["steps", ">= 1", "0"]),
    ({"warmup": -1}, ["warmup", ">= 0", "-1"]),
    ({"model_name": "googlenet"}, ["unknown model", "googlenet", "lenet5"]),
])
def test_benchmark_refuses_bad_arguments(kwargs, words):
    args = {"model_name": "lenet5", "batch_size": 2, "device": "cpu", **kwargs}
    with pytest.raises(ValueError) as e:
        bench.benchmark(**args)
    assert all(w in str(e.value) for w in words), str(e.value)


# ------------------------------------------------------------------------------ both dW contraction orders

@pytest.mark.parametrize("out_channels, size", [(20, 4), (2, 8), (4, 16)],
                         ids=["row-major, out>pixels", "row-major, out<=pixels", "tap-major"])
def test_conv_weight_gradient_matches_pytorch_in_both_contraction_orders(out_channels, size):
    """a @ col3 for row-major columns, (col3^T a^T)^T for tap-major ones (3 channels on a 16-wide map)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    layer = L.Conv2D(3, out_channels, 3, padding=1, dtype=np.float64)
    x = rng.standard_normal((5, 3, size, size))
    assert L.Conv2D._cols(layer, x, np.float64)[1].flags.c_contiguous == (size < 16)
    dout = rng.standard_normal(layer.output_shape(x.shape))
    layer.forward(x)
    dx = layer.backward(dout)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["W"], requires_grad=True)
    torch.nn.functional.conv2d(tx, tw, padding=1).backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.grads["W"], tw.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------- branch-free max-pool twin, bit for bit

@pytest.mark.parametrize("nans", [True, False], ids=["nans", "no-nans"])  # 2x2/2 without NaN: the halving path
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("win", [(2, 2, 2, 2, 0, 0), (3, 3, 2, 2, 1, 1), (3, 2, 1, 2, 1, 0)])
def test_maxpool_twin_matches_the_kernel_bit_for_bit_on_signed_zeros_ties_nans_and_infinities(win, dtype, nans,
                                                                                              kernel_device):
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, (3, 4, 9, 11)).astype(dtype)   # many ties
    x[rng.random(x.shape) < 0.15] = -0.0                    # +0 / -0 ties: the first one must stay
    x[rng.random(x.shape) < (0.1 if nans else 0)] = np.nan
    x[rng.random(x.shape) < 0.05] = -np.inf
    y, arg = ops.maxpool_forward(x, *win)
    ky, karg = (backend.to_cpu(a) for a in kernels.maxpool_forward(on(kernel_device, x), *win))
    np.testing.assert_array_equal(arg, karg)
    np.testing.assert_array_equal(y, ky)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(ky))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy[0, 0, 0, 0], dy[0, 1, 0, 0] = np.inf, -0.0
    dx = ops.maxpool_backward(dy, arg, x.shape, *win)
    kdx = backend.to_cpu(kernels.maxpool_backward(on(kernel_device, dy), on(kernel_device, karg), x.shape, *win))
    np.testing.assert_allclose(dx, kdx, rtol=1e-12 if dtype == np.float64 else 1e-6)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(kdx))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("win", [(2, 2, 2, 2, 0, 0), (3, 2, 3, 2, 1, 0), (2, 2, 3, 3, 0, 0), (3, 3, 2, 2, 1, 1),
                                 (3, 2, 1, 2, 1, 0)])
def test_maxpool_backward_twin_matches_the_kernel_bit_for_bit_with_and_without_overlapping_windows(win, dtype,
                                                                                                   kernel_device):
    """Disjoint windows write their share, overlapping ones add it: both give the kernel's bits, +0.0 for a
    -0.0 gradient, zeros for inputs no window reaches."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 10, 11)).astype(dtype)
    _, arg = ops.maxpool_forward(x, *win)
    dy = rng.standard_normal(arg.shape).astype(dtype)
    dy[rng.random(dy.shape) < 0.2] = -0.0
    dy[0, 0, 0, 0], dy[1, 2, -1, -1] = np.inf, np.nan
    dx = ops.maxpool_backward(dy, arg, x.shape, *win)
    kdx = backend.to_cpu(kernels.maxpool_backward(on(kernel_device, dy), on(kernel_device, arg), x.shape, *win))
    np.testing.assert_array_equal(dx, kdx)
    np.testing.assert_array_equal(np.signbit(dx), np.signbit(kdx))


# ------------------------------------------------------------- the 2x2 stride-2 max pool's own CPU path

@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 9, 7), (3, 1, 2, 3)], ids=str)
def test_maxpool_halving_path_is_the_general_pass_bit_for_bit(shape, ceil_mode, monkeypatch):
    """The 2x2/stride-2 forward path (twins._maxpool_halving) against the general pass, on ties, signed zeros,
    infinities and NaN (a NaN result falls back to the general pass), odd sizes (the last row or column is no
    window's in floor mode; ceil mode then takes the general pass), both float dtypes; and its argmax sends
    the gradient where the general pass's does."""
    rng = np.random.default_rng(sum(shape) + ceil_mode)
    win = (2, 2, 2, 2, 0, 0, 1, 1, ceil_mode)
    taken = []
    real = twins._maxpool_halving
    monkeypatch.setattr(twins, "_maxpool_halving", lambda *a: taken.append(real(*a)) or taken[-1])
    for trial in range(40):
        dtype = (np.float32, np.float64)[trial % 2]
        x = rng.integers(-2, 3, shape).astype(dtype)
        x[rng.random(shape) < 0.15] = -0.0
        x[rng.random(shape) < 0.1] = -np.inf
        x[rng.random(shape) < 0.05] = np.inf
        x[rng.random(shape) < (0.05 if trial % 4 == 0 else 0)] = np.nan
        y, arg = twins.maxpool_forward(x, *win)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dy[rng.random(y.shape) < 0.2] = -0.0
        dy.flat[0] = np.inf
        dx = twins.maxpool_backward(dy, arg, shape, *win)
        with monkeypatch.context() as m:
            m.setattr(twins, "_halving", lambda *a: False)
            y0, arg0 = twins.maxpool_forward(x, *win)
            dx0 = twins.maxpool_backward(dy, arg0, shape, *win)
        assert arg.dtype == arg0.dtype == np.int32 and y.flags.c_contiguous
        np.testing.assert_array_equal(arg, arg0)
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(y0))
        np.testing.assert_array_equal(dx, dx0)
        np.testing.assert_array_equal(np.signbit(dx), np.signbit(dx0))
    odd_ceil = ceil_mode and (shape[2] % 2 or shape[3] % 2)
    used = sum(r is not None for r in taken)   # the path ran and its result was returned (no NaN fallback)
    assert (len(taken) == 0) if odd_ceil else (used >= 20)
