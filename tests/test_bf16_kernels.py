"""The bf16 kernel variants (im2col_bf16, col2im_bf16, bias_act_bf16) against their numpy twins (numpy with
ml_dtypes) on the emulated GPU (the emulator's __nv_bfloat16) and on a real GPU (the `gpu` cases of
`kernel_device`): the same odd shapes and launches as the float32/float64 variants, bit for bit (im2col copies,
col2im and bias_act widen bfloat16 exactly to float32 and sum in float32 in the same order as the twins). NVRTC
compiles them in tests/test_nvrtc.py."""
import ml_dtypes
import numpy as np
import pytest

import tolerances
from gpucnn import devices as backend
from gpucnn.devices import emulator, fused, fused_twins, kernels, ops
from test_fused_kernels import BIAS_CASES, LAUNCHES, product, specials
from test_kernels import CASES, IDS, OPTION_CASES, OPTION_IDS, data, option_data

BF16 = np.dtype(ml_dtypes.bfloat16)


def on(device):
    return lambda a: None if a is None else backend.to_device(a, device)


def bf16(a):
    return a.astype(np.float32).astype(BF16)


def check_columns(x, col, conv, groups, device, what):
    """im2col_bf16 is the twin's gather of the same bfloat16 values; col2im_bf16 the twin's float32 sum."""
    d = on(device)
    want_col = np.ascontiguousarray(ops.im2col(x, *conv, groups))
    want_img = ops.col2im(col, x.shape, *conv[2:])
    assert want_col.dtype == BF16 and want_img.dtype == np.float32
    for name, launch in LAUNCHES.items():
        tolerances.assert_exact(kernels.im2col(d(x), *conv, groups, launch=launch), want_col, f"{what} im2col {name}")
        tolerances.assert_exact(kernels.col2im(d(col), x.shape, *conv[2:], launch=launch), want_img,
                                f"{what} col2im {name}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_im2col_and_col2im_bf16_match_their_twins(case, kernel_device):
    x, win, _, col = data(case, np.float32)
    check_columns(bf16(x), bf16(col), win, 1, kernel_device, str(case))


@pytest.mark.parametrize("case", OPTION_CASES, ids=OPTION_IDS)
def test_im2col_and_col2im_bf16_with_groups_dilation_and_asymmetric_padding(case, kernel_device):
    n, c, h, w, kh, kw, sh, sw, pv, pu, dh, dw, g, ceil, include = case
    x, _, col = option_data(case, "im2col", np.float32)
    check_columns(bf16(x), bf16(col), (kh, kw, sh, sw, pv, pu, dh, dw), g, kernel_device, str(case))


def test_col2im_bf16_sums_in_float32():
    """The twin's float32 sum of bfloat16 taps differs from a bfloat16 sum: the variant keeps float32's."""
    x, win, _, col = data(CASES[2], np.float32)
    col = bf16(col)
    img = ops.col2im(col, x.shape, *win[2:])
    np.testing.assert_array_equal(img, ops.col2im(col.astype(np.float32), x.shape, *win[2:]))
    assert img.dtype == np.float32


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", [c for c in BIAS_CASES if c[4] != "in-place"],
                         ids=[f"{c[4]}-{'x'.join(map(str, c[:4]))}" for c in BIAS_CASES if c[4] != "in-place"])
def test_bias_act_bf16_matches_its_twin_bit_for_bit(case, with_bias, relu, kernel_device):
    """A bfloat16 product (NaN, infinities, signed zeros included) plus a float32 bias into float32."""
    rng = np.random.default_rng(0)
    src, strides, shape = product(rng, case, np.float32)
    src = bf16(src)
    bias = specials(rng, (shape[1] * shape[2],), np.float32) if with_bias else None
    want = fused_twins.bias_act(src, strides, bias, np.empty(shape, np.float32), relu)
    assert want.dtype == np.float32
    d = on(kernel_device)
    for name, launch in LAUNCHES.items():
        out = d(np.full(shape, 7, np.float32))
        got = fused.bias_act(d(src), strides, d(bias), out, relu, launch=launch)
        assert got is out
        tolerances.assert_exact(got, want, f"bias_act_bf16 {case} {name}")


def test_kernels_without_a_bf16_variant_refuse_bfloat16():
    x = backend.to_device(np.zeros((1, 1, 4, 4), BF16), backend.EMULATED)
    with pytest.raises(TypeError, match="maxpool_forward: kernels take float32 or float64 arrays, got bfloat16"):
        kernels.maxpool_forward(x, 2, 2, 2, 2, 0, 0)
    with pytest.raises(TypeError, match="a bfloat16 product goes into a float32 out"):
        fused.bias_act(x.reshape(16), (4, 0, 4, 1), None,
                       backend.to_device(np.zeros((1, 1, 4, 4)), backend.EMULATED), False)


ROUND = r"""
extern "C" __global__ void to_bf16(long long n, const float* x, __nv_bfloat16* y, float* back) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x) {
    y[i] = __float2bfloat16(x[i]);
    back[i] = __bfloat162float(y[i]);
  }
}
"""


def test_emulator_bfloat16_rounds_to_nearest_even_as_cuda_and_ml_dtypes_do():
    """The shim's __nv_bfloat16 (float -> bf16 round to nearest even, NaN kept, bf16 -> float exact) is
    ml_dtypes' conversion, bit for bit: ties both ways, the largest finite values (rounding to inf), infinities,
    NaN, subnormals and random values."""
    u = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0x7F7F7FFF, 0xFF7FFFFF,
                  0x7F800000, 0xFF800000, 0x00000001, 0x80008000, 0x00018000, 0x80000000], np.uint32)
    x = np.concatenate([u.view(np.float32), np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    mod = emulator.RawModule(code=ROUND, name="round.cu")
    dev = backend.EMULATED
    dx = backend.to_device(x, dev)
    y = backend.to_device(np.zeros(x.size, BF16), dev)
    back = backend.to_device(np.zeros(x.size, np.float32), dev)
    mod.get_function("to_bf16")((4,), (64,), (np.int64(x.size), dx, y, back))
    np.testing.assert_array_equal(backend.to_cpu(y).view(np.uint16), x.astype(BF16).view(np.uint16))
    np.testing.assert_array_equal(backend.to_cpu(back).view(np.uint32), x.astype(BF16).astype(np.float32).view(np.uint32))
    nan = np.array([np.nan], np.float32)
    assert np.isnan(backend.to_cpu(back)[np.isnan(x)]).all() and np.isnan(nan.astype(BF16))
