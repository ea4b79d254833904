"""The CUDA kernels against their numpy twins in gpucnn.ops, on the emulated GPU (the CPU emulator runs the
.cu source) and on a real GPU (the `gpu` cases of the `kernel_device` fixture).

Odd shapes (strides, padding, non-square everything, batch 1, channel 1, window == input) and launches
with fewer threads than elements (the grid-stride loop must cover the rest) and far more (idle threads
must not write). Tolerances (tests/tolerances.py, kind "kernel") follow llm.c's dev/cuda checks:
|got - ref| <= tol * (1 + |ref|); the gathers are compared bit for bit on every device.
"""
import math

import numpy as np
import pytest
import torch

import tolerances
from _devices import no_host_sync
from gpucnn import devices as backend
from gpucnn.devices import kernels, ops, twins

EMU = backend.EMULATED

#            n  c  h   w  kh kw sh sw ph pw
CASES = [
    (2, 3, 7, 5, 3, 2, 2, 1, 1, 0),     # non-square kernel, input and stride; padding on one axis
    (1, 1, 4, 4, 4, 4, 1, 1, 0, 0),     # batch 1, channel 1, window == input
    (2, 2, 6, 5, 6, 5, 3, 2, 1, 2),     # window == input plus padding: several windows
    (3, 2, 9, 11, 3, 3, 3, 2, 1, 1),    # stride == kernel on one axis
    (1, 4, 10, 7, 2, 2, 3, 3, 0, 0),    # stride > kernel: pixels no window covers
    (2, 1, 5, 8, 1, 3, 1, 2, 0, 1),     # 1-row kernel
    (1, 2, 13, 6, 5, 3, 2, 1, 2, 1),    # large kernel, padding on both axes
    (2, 3, 3, 3, 2, 2, 1, 1, 1, 1),     # tiny input, every window padded
    (1, 2, 3, 4, 2, 2, 1, 2, 2, 1),     # padding wider than the kernel: windows entirely in padding
    (2, 17, 6, 5, 3, 2, 1, 2, 1, 1),    # many channels (the CPU twin's other col2im path)
    (2, 3, 6, 8, 3, 2, 3, 2, 0, 0),     # windows tile the input exactly (max-pool backward writes every pixel once)
]
IDS = ["x".join(map(str, c)) for c in CASES]
LAUNCHES = {"default": None, "one-block-of-32": ((1,), (32,)), "oversized": ((997,), (64,)),
            "odd": ((3,), (7,))}


def to(device):
    """A function putting host arrays on `device`."""
    return lambda a: backend.to_device(a, device)


emu = to(EMU)   # the launchers' argument checks run on the host: the emulated device is enough for them


def host(a):
    assert backend.is_gpu_array(a), f"expected a device array, got {type(a).__name__}"
    return backend.to_cpu(a)


def assert_close(got, ref, device, what):
    got = host(got)
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    tolerances.assert_close(got, ref, device, what, tol="kernel")


def data(case, dtype, seed=0):
    n, c, h, w, kh, kw, sh, sw, ph, pw = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    oh, ow = ops.out_size(h, kh, sh, ph), ops.out_size(w, kw, sw, pw)
    return x, (kh, kw, sh, sw, ph, pw), rng.standard_normal((n, c, oh, ow)).astype(dtype), \
        rng.standard_normal((n, oh, ow, kh, kw, c)).astype(dtype)   # channels-last columns


# Each entry: (kernel launcher call on device arrays made by d, twin call on host arrays); both get
# (x, win, dy, col).
OPS = {
    "im2col": (lambda d, x, win, dy, col, **k: kernels.im2col(d(x), *win, **k),
               lambda x, win, dy, col: ops.im2col(x, *win)),
    "col2im": (lambda d, x, win, dy, col, **k: kernels.col2im(d(col), x.shape, *win[2:], **k),
               lambda x, win, dy, col: ops.col2im(col, x.shape, *win[2:])),
    "maxpool_forward": (lambda d, x, win, dy, col, **k: kernels.maxpool_forward(d(x), *win, **k),
                        lambda x, win, dy, col: ops.maxpool_forward(x, *win)),
    "maxpool_backward": (
        lambda d, x, win, dy, col, **k: kernels.maxpool_backward(
            d(dy), d(ops.maxpool_forward(x, *win)[1]), x.shape, *win, **k),
        lambda x, win, dy, col: ops.maxpool_backward(dy, ops.maxpool_forward(x, *win)[1], x.shape, *win)),
    "avgpool_forward": (lambda d, x, win, dy, col, **k: kernels.avgpool_forward(d(x), *win, **k),
                        lambda x, win, dy, col: ops.avgpool_forward(x, *win)),
    "avgpool_backward": (lambda d, x, win, dy, col, **k: kernels.avgpool_backward(d(dy), x.shape, *win, **k),
                         lambda x, win, dy, col: ops.avgpool_backward(dy, x.shape, *win)),
}


def compare(op, got, ref, device, what):
    if op == "maxpool_forward":
        assert_close(got[0], ref[0], device, what + " y")
        np.testing.assert_array_equal(host(got[1]), ref[1], err_msg=what + " argmax")
        assert got[1].dtype == np.int32
    else:
        assert_close(got, np.ascontiguousarray(ref), device, what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_kernel_matches_numpy_twin_for_any_launch(op, case, dtype, kernel_device):
    x, win, dy, col = data(case, dtype)
    run, twin = OPS[op]
    ref = twin(x, win, dy, col)
    for name, launch in LAUNCHES.items():
        compare(op, run(to(kernel_device), x, win, dy, col, launch=launch), ref, kernel_device,
                f"{op} {case} launch={name}")


@pytest.mark.parametrize("op", list(OPS))
def test_ops_dispatch_device_arrays_to_the_kernels(op, kernel_device):
    """ops.<op> on a device array takes the kernel path, returns device arrays equal to the twin's and reads
    nothing back."""
    case = CASES[0]
    x, win, dy, col = data(case, np.float32, seed=1)
    argmax = ops.maxpool_forward(x, *win)[1]
    calls = {
        "im2col": lambda d: ops.im2col(d(x), *win),
        "col2im": lambda d: ops.col2im(d(col), x.shape, *win[2:]),
        "maxpool_forward": lambda d: ops.maxpool_forward(d(x), *win),
        "maxpool_backward": lambda d: ops.maxpool_backward(d(dy), d(argmax), x.shape, *win),
        "avgpool_forward": lambda d: ops.avgpool_forward(d(x), *win),
        "avgpool_backward": lambda d: ops.avgpool_backward(d(dy), x.shape, *win),
    }
    args = to(kernel_device)
    with no_host_sync(kernel_device):
        got = calls[op](args)
    compare(op, got, calls[op](lambda a: a), kernel_device, op)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_column_layout_is_torch_unfold_channels_last(case):
    """im2col is F.unfold rearranged to (N, out_h, out_w, kh, kw, C); col2im is F.fold of the same, whatever
    the columns' memory order (the CPU twin makes tap-major ones for few channels)."""
    n, c, h, w, kh, kw, sh, sw, ph, pw = case
    x, win, dy, col = data(case, np.float64)
    oh, ow = dy.shape[2:]
    unfold = torch.nn.functional.unfold(torch.from_numpy(x), (kh, kw), padding=(ph, pw), stride=(sh, sw))
    want = unfold.numpy().reshape(n, c, kh, kw, oh, ow).transpose(0, 4, 5, 2, 3, 1)
    np.testing.assert_array_equal(ops.im2col(x, *win), want)
    torch_col = torch.from_numpy(np.ascontiguousarray(col.transpose(0, 5, 3, 4, 1, 2)).reshape(n, -1, oh * ow))
    fold = torch.nn.functional.fold(torch_col, (h, w), (kh, kw), padding=(ph, pw), stride=(sh, sw))
    np.testing.assert_allclose(ops.col2im(col, x.shape, *win[2:]), fold.numpy(), rtol=1e-12, atol=1e-12)
    tap_major = np.ascontiguousarray(col.transpose(3, 4, 5, 0, 1, 2)).transpose(3, 4, 5, 0, 1, 2)
    np.testing.assert_allclose(ops.col2im(tap_major, x.shape, *win[2:]), fold.numpy(), rtol=1e-12, atol=1e-12)


def test_col2im_is_deterministic(kernel_device):
    case = (4, 8, 17, 19, 5, 4, 1, 2, 2, 1)        # heavy overlap: up to 5x2 taps summed per pixel
    x, win, dy, col = data(case, np.float32)
    col = to(kernel_device)(col * np.float32(1e3))
    first = host(kernels.col2im(col, x.shape, *win[2:]))
    for launch in LAUNCHES.values():
        again = host(kernels.col2im(col, x.shape, *win[2:], launch=launch))
        assert first.tobytes() == again.tobytes()


@pytest.mark.parametrize("samples_per_block", [None, 1, 2], ids=["default-block", "block-1", "block-2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_im2col_and_col2im_are_bit_identical_to_the_twin(case, dtype, samples_per_block, monkeypatch,
                                                         kernel_device):
    """Both add the same taps in the same row-major kernel order, whatever the twin's column memory order
    and however many samples its channels-last accumulator holds at once."""
    x, win, dy, col = data(case, dtype)
    if samples_per_block:
        n, c, h, w, kh, kw, sh, sw, ph, pw = case
        sample = (h + 2 * ph) * (w + 2 * pw) * c * np.dtype(dtype).itemsize
        monkeypatch.setattr(twins, "_COL2IM_BLOCK_BYTES", samples_per_block * sample)
    emu = to(kernel_device)
    got = host(kernels.im2col(emu(x), *win))
    assert got.tobytes() == np.ascontiguousarray(ops.im2col(x, *win)).tobytes()
    got = host(kernels.col2im(emu(col), x.shape, *win[2:]))
    tap_major = np.ascontiguousarray(col.transpose(3, 4, 5, 0, 1, 2)).transpose(3, 4, 5, 0, 1, 2)
    for twin_col in (col, tap_major):
        assert got.tobytes() == ops.col2im(twin_col, x.shape, *win[2:]).tobytes()


# Dilation, groups, asymmetric (and negative trailing) padding, ceil_mode and exclusive averaging.
#               n  c  h   w  kh kw sh sw  (top, bottom) (left, right) dh dw  G  ceil  count_include_pad
OPTION_CASES = [(2, 4, 9, 7, 3, 2, 2, 1, (1, 2), (0, 1), 2, 3, 2, False, True),    # grouped, dilated, asymmetric
                (1, 3, 6, 8, 2, 3, 1, 2, (0, 0), (2, 0), 1, 2, 3, True, False),    # depthwise, batch 1
                (2, 6, 5, 5, 3, 3, 2, 2, (1, 1), (1, 1), 1, 1, 2, True, False),    # ceil_mode adds a window
                (1, 2, 11, 4, 4, 1, 3, 1, (2, 2), (0, 0), 2, 1, 1, True, True),    # 1-column kernel, tall dilation
                (2, 1, 4, 4, 3, 3, 2, 2, (1, 0), (1, -1), 1, 1, 1, False, True),   # trailing padding < 0 (output_padding)
                (1, 8, 3, 3, 2, 2, 3, 3, (1, 1), (1, 1), 2, 2, 4, True, False)]    # stride > dilated kernel
OPTION_IDS = ["x".join(map(str, c)).replace(" ", "") for c in OPTION_CASES]


def option_ops(case, device=EMU):
    """(kernel launcher on `device`, twin) per op for one OPTION_CASES entry; both take (x, dy, col, **launch)."""
    emu = to(device)
    n, c, h, w, kh, kw, sh, sw, pv, pu, dh, dw, g, ceil, include = case
    pool = (kh, kw, sh, sw, pv[0], pu[0])          # pools pad the same on both sides
    conv = (kh, kw, sh, sw, pv, pu, dh, dw)
    argmax = lambda x: ops.maxpool_forward(x, *pool, dh, dw, ceil)[1]
    return {
        "im2col": (lambda x, dy, col, **k: kernels.im2col(emu(x), *conv, g, **k),
                   lambda x, dy, col: ops.im2col(x, *conv, g)),
        "col2im": (lambda x, dy, col, **k: kernels.col2im(emu(col), x.shape, *conv[2:], **k),
                   lambda x, dy, col: ops.col2im(col, x.shape, *conv[2:])),
        "maxpool_forward": (lambda x, dy, col, **k: kernels.maxpool_forward(emu(x), *pool, dh, dw, ceil, **k),
                            lambda x, dy, col: ops.maxpool_forward(x, *pool, dh, dw, ceil)),
        "maxpool_backward": (
            lambda x, dy, col, **k: kernels.maxpool_backward(emu(dy), emu(argmax(x)), x.shape, *pool, dh, dw, ceil,
                                                             **k),
            lambda x, dy, col: ops.maxpool_backward(dy, argmax(x), x.shape, *pool, dh, dw, ceil)),
        "avgpool_forward": (lambda x, dy, col, **k: kernels.avgpool_forward(emu(x), *pool, ceil, include, **k),
                            lambda x, dy, col: ops.avgpool_forward(x, *pool, ceil, include)),
        "avgpool_backward": (lambda x, dy, col, **k: kernels.avgpool_backward(emu(dy), x.shape, *pool, ceil, include,
                                                                              **k),
                             lambda x, dy, col: ops.avgpool_backward(dy, x.shape, *pool, ceil, include)),
    }


def option_data(case, op, dtype):
    n, c, h, w, kh, kw, sh, sw, pv, pu, dh, dw, g, ceil, include = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    x[rng.random(x.shape) < 0.2] = -np.inf if op.startswith("maxpool") else 0
    if op.startswith("maxpool"):
        oh, ow = ops.out_size(h, kh, sh, pv[0], dh, ceil), ops.out_size(w, kw, sw, pu[0], dw, ceil)
    elif op.startswith("avgpool"):
        oh, ow = ops.out_size(h, kh, sh, pv[0], 1, ceil), ops.out_size(w, kw, sw, pu[0], 1, ceil)
    else:
        oh, ow = ops.out_size(h, kh, sh, pv, dh), ops.out_size(w, kw, sw, pu, dw)
    dy = rng.standard_normal((n, c, oh, ow)).astype(dtype)
    col = rng.standard_normal((g, n, oh, ow, kh, kw, c // g)).astype(dtype)
    return x, dy, col if g > 1 else col[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", OPTION_CASES, ids=OPTION_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_kernel_options_match_numpy_twin_for_any_launch(op, case, dtype, kernel_device):
    x, dy, col = option_data(case, op, dtype)
    run, twin = option_ops(case, kernel_device)[op]
    ref = twin(x, dy, col)
    for name, launch in LAUNCHES.items():
        compare(op, run(x, dy, col, launch=launch), ref, kernel_device, f"{op} {case} launch={name}")
    if op in ("im2col", "col2im"):   # the same taps in the same order: bit for bit
        got = host(run(x, dy, col))
        assert got.tobytes() == np.ascontiguousarray(ref).tobytes(), op


@pytest.mark.parametrize("case", OPTION_CASES, ids=OPTION_IDS)
def test_grouped_dilated_columns_are_torch_unfold(case):
    """Group g's columns hold input channels g*C/G.., each window's taps dh/dw apart, padding as given."""
    n, c, h, w, kh, kw, sh, sw, (pt, pb), (pl, pr), dh, dw, g, _, _ = case
    x = np.random.default_rng(8).standard_normal((n, c, h, w))
    padded = torch.nn.functional.pad(torch.from_numpy(x), (pl, max(pr, 0), pt, max(pb, 0)))
    oh, ow = ops.out_size(h, kh, sh, (pt, pb), dh), ops.out_size(w, kw, sw, (pl, pr), dw)
    full = [ops.out_size(size, k, s, 0, d) for size, k, s, d in zip(padded.shape[2:], (kh, kw), (sh, sw), (dh, dw))]
    unfold = torch.nn.functional.unfold(padded, (kh, kw), dilation=(dh, dw), stride=(sh, sw)).numpy()
    want = unfold.reshape(n, g, c // g, kh, kw, *full)[..., :oh, :ow]     # a negative trailing pad drops windows
    got = ops.im2col(x, kh, kw, sh, sw, (pt, pb), (pl, pr), dh, dw, g)
    np.testing.assert_array_equal(got if g > 1 else got[None], want.transpose(1, 0, 5, 6, 3, 4, 2))


def tie_and_nan_input(dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(2, 3, 9, 8)).astype(dtype)   # many ties
    x[0, 0, 1, 1] = x[1, 2, 4, 4] = x[1, 2, 4, 6] = np.nan      # NaN wins; two NaNs in one window
    x[0, 1] = -np.inf                                           # all -inf channel: first position wins
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("win", [(3, 3, 2, 2, 1, 1), (2, 3, 2, 1, 0, 1), (3, 2, 1, 1, 1, 0)])
def test_maxpool_ties_and_nans_like_the_twin(win, dtype, kernel_device):
    emu = to(kernel_device)
    x = tie_and_nan_input(dtype)
    y, arg = kernels.maxpool_forward(emu(x), *win)
    y_ref, arg_ref = ops.maxpool_forward(x, *win)
    np.testing.assert_array_equal(host(y), y_ref)
    np.testing.assert_array_equal(host(arg), arg_ref)
    dy = np.random.default_rng(4).standard_normal(y_ref.shape).astype(dtype)
    dx = kernels.maxpool_backward(emu(dy), arg, x.shape, *win)   # the device's own argmax
    np.testing.assert_array_equal(host(dx), ops.maxpool_backward(dy, arg_ref, x.shape, *win))


def test_maxpool_argmax_agrees_with_pytorch_on_ties_and_nans(kernel_device):
    emu = to(kernel_device)
    x = tie_and_nan_input(np.float32)   # with an all -inf channel: padding must not win (PyTorch's first input)
    kh, kw, sh, sw, ph, pw = 3, 3, 2, 2, 1, 1
    y, arg = kernels.maxpool_forward(emu(x), kh, kw, sh, sw, ph, pw)
    y, arg = host(y), host(arg)
    ty, tidx = torch.nn.functional.max_pool2d(torch.from_numpy(x), (kh, kw), (sh, sw), (ph, pw),
                                              return_indices=True)
    oh, ow = y.shape[2:]
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    flat = (oy * sh - ph + arg // kw) * x.shape[3] + (ox * sw - pw + arg % kw)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(flat, tidx.numpy())


def test_every_source_compiles_once_per_process(kernel_device):
    x = to(kernel_device)(np.ones((1, 1, 4, 4), np.float32))
    for _ in range(3):
        y, arg = ops.maxpool_forward(x, 2, 2, 2, 2, 0, 0)
        ops.col2im(ops.im2col(x, 3, 3, 1, 1, 1, 1), x.shape, 1, 1, 1, 1)
        ops.avgpool_backward(ops.avgpool_forward(x.astype(np.float64), 2, 2, 1, 1, 0, 0), x.shape, 2, 2, 1, 1, 0, 0)
        ops.relu_backward(x, x)
        ops.lrn_backward(x, *ops.lrn_forward(x, 3, 1e-4, 0.75, 2.0), x, 3, 1e-4, 0.75)
        labels = to(kernel_device)(np.zeros(4, np.int64))
        ops.xent_reduce(*ops.xent_forward(x.reshape(4, 4), labels, None, -100, 0.0)[:2], True)
        ops.sgd_step(x.reshape(-1).copy(), x.reshape(-1), None, 0.1, 0.0, 0.0, True, 0.0, False)
        ops.nonfinite_check(x.reshape(-1), None, 1, to(kernel_device)(np.array(-1)))
        ops.gather_batch(to(kernel_device)(np.zeros((2, 1, 2, 2), np.uint8)), labels[:2],
                         to(kernel_device)(np.zeros((1, 4), np.int32)), False, False, 0, x.reshape(-1)[:1],
                         x.reshape(-1)[:1], np.float32)
    counts = kernels.compile_counts()
    for source in kernels.sources():
        assert counts[(source, str(kernel_device))] == 1


def test_info_names_sources_and_compiled_modules():
    kernels.im2col(to(EMU)(np.ones((1, 1, 3, 3), np.float32)), 2, 2, 1, 1, 0, 0)
    info = kernels.info()
    assert info["source_origin"] in ("checkout", "package")
    assert set(info["sources"]) == {"im2col.cu", "pooling.cu", "activation.cu", "loss.cu", "lrn.cu", "optim.cu",
                                    "check.cu", "data.cu"}
    compiled = {(c["source"], c["device"]): c for c in info["compiled"]}
    assert compiled[("im2col.cu", "emulated")]["times"] == 1
    assert compiled[("im2col.cu", "emulated")]["seconds"] >= 0


def test_non_contiguous_input_is_made_contiguous_first(kernel_device):
    x = np.random.default_rng(5).standard_normal((2, 3, 12, 9)).astype(np.float32)
    view = to(kernel_device)(x)[:, ::2, ::2, 1:]
    assert not view.flags.c_contiguous
    assert_close(kernels.im2col(view, 3, 2, 1, 2, 1, 0), ops.im2col(x[:, ::2, ::2, 1:], 3, 2, 1, 2, 1, 0),
                 kernel_device, "im2col of a strided view")


def test_empty_batch_launches_nothing(kernel_device):
    x = to(kernel_device)(np.zeros((0, 3, 5, 5), np.float32))
    assert kernels.im2col(x, 3, 3, 1, 1, 1, 1).shape == (0, 5, 5, 3, 3, 3)
    y, arg = kernels.maxpool_forward(x, 2, 2, 2, 2, 0, 0)
    assert y.shape == arg.shape == (0, 3, 2, 2)


def test_default_launch_caps_the_grid(monkeypatch, kernel_device):
    emu = to(kernel_device)
    seen = []
    real = kernels.get_function

    def spy(source, kernel, device):
        fn = real(source, kernel, device)
        return lambda grid, block, args: (seen.append((grid, block)), fn(grid, block, args))

    monkeypatch.setattr(kernels, "get_function", spy)
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 3)
    x = np.random.default_rng(6).standard_normal((2, 3, 20, 20)).astype(np.float32)
    assert_close(kernels.avgpool_forward(emu(x), 1, 1, 1, 1, 0, 0), x, kernel_device, "1x1 avgpool is identity")
    kernels.avgpool_forward(emu(x[:1, :1, :4, :4]), 1, 1, 1, 1, 0, 0)
    assert seen == [((3,), (kernels.BLOCK,)), ((math.ceil(16 / kernels.BLOCK),), (kernels.BLOCK,))]


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: kernels.im2col(emu(np.ones((1, 1, 4, 4), np.float16)), 2, 2, 1, 1, 0, 0), TypeError, "float16"),
    (lambda: kernels.im2col(emu(np.ones((1, 4, 4), np.float32)), 2, 2, 1, 1, 0, 0), ValueError, "(N, C, H, W)"),
    (lambda: kernels.im2col(emu(np.ones((1, 1, 4, 4), np.float32)), 5, 2, 1, 1, 0, 0), ValueError, "does not fit"),
    (lambda: kernels.im2col(emu(np.ones((1, 1, 4, 4), np.float32)), 2, 2, 0, 1, 0, 0), ValueError, "stride"),
    (lambda: kernels.col2im(emu(np.ones((1, 3, 3, 2, 2, 1), np.float32)), (1, 1, 5, 5), 1, 1, 0, 0),
     ValueError, "expected (1, 4, 4, 2, 2, 1)"),
    (lambda: kernels.maxpool_backward(emu(np.ones((1, 1, 2, 2), np.float32)), emu(np.zeros((1, 1, 2, 2), np.int64)),
                                      (1, 1, 4, 4), 2, 2, 2, 2, 0, 0), TypeError, "int32"),
    (lambda: kernels.avgpool_backward(emu(np.ones((1, 1, 3, 2), np.float32)), (1, 1, 4, 4), 2, 2, 2, 2, 0, 0),
     ValueError, "expected (1, 1, 2, 2)"),
    (lambda: kernels.maxpool_backward(emu(np.ones((1, 1, 2, 2), np.float32)), np.zeros((1, 1, 2, 2), np.int32),
                                      (1, 1, 4, 4), 2, 2, 2, 2, 0, 0), backend.DeviceMismatchError, "different devices"),
])
def test_bad_calls_are_clear_errors(call, error, fragment):
    with pytest.raises(error) as e:
        call()
    assert fragment in str(e.value)


def test_compile_error_on_the_emulator_carries_the_log(monkeypatch):
    monkeypatch.setattr(kernels, "_cache", kernels._Cache())
    monkeypatch.setattr(kernels, "_read_source", lambda name: 'extern "C" __global__ void k() { nope(); }\n')
    with pytest.raises(kernels.KernelCompileError) as e:
        kernels.get_function("broken.cu", "k", EMU)
    assert "kernels/broken.cu" in str(e.value) and "nope" in str(e.value) and "error" in str(e.value)
