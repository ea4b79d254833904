"""Precision (fp32, tf32, bf16): the option in the CLI, bench and fit, its refusal on the CPU, TF32 GEMMs on the
emulated GPU (operands rounded to a 10-bit mantissa) and on CUDA (CuPy's compute type and cuBLAS math mode)."""
import numpy as np
import pytest

import gpucnn
from gpucnn import cli, devices
from gpucnn.devices import precision as P
from _cli import assert_one_error_line

EMU = devices.EMULATED


# ----------------------------------------------------------------------------------------------- the option

@pytest.mark.parametrize("args", [
    ["train", "--precision", "bf16", "--device", "cpu"],
    ["train", "--precision", "TF32", "--device", "cpu"],
    ["bench", "--precision", "bf16", "--device", "cpu", "--steps", "1"],
])
def test_cli_refuses_tf32_and_bf16_on_the_cpu(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    line = assert_one_error_line(capsys.readouterr().err, r"precision '(bf16|tf32)' needs a GPU device")[0]
    assert "got device cpu" in line and "'fp32'" in line
    assert not (tmp_path / "runs").exists()   # refused before any data is read or folder made


def test_cli_rejects_an_unknown_precision(capsys):
    assert cli.main(["train", "--precision", "fp16", "--device", "cpu"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"--precision: invalid choice: 'fp16'")


def test_fit_refuses_and_checks_names():
    x = np.zeros((4, 1, 8, 8), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(gpucnn.PrecisionError, match="precision 'bf16' needs a GPU device.*got device cpu"):
        gpucnn.fit("lenet5", (x, y), device="cpu", precision="bf16", log=None)
    with pytest.raises(gpucnn.PrecisionError, match="unknown precision 'half'.*fp32, tf32, bf16"):
        gpucnn.fit("lenet5", (x, y), device="emulated", precision="half", log=None)
    with pytest.raises(gpucnn.PrecisionError, match="'tf32' needs a GPU"):
        with gpucnn.precision("tf32", "cpu"):
            pass


def test_scope_sets_and_restores():
    assert gpucnn.get_precision() == "fp32"
    with gpucnn.precision("BF16", EMU) as name:
        assert name == "bf16" and gpucnn.get_precision() == "bf16"
        with gpucnn.precision("tf32", EMU):
            assert gpucnn.get_precision() == "tf32" and devices.emulated.tf32_enabled(0)
        assert gpucnn.get_precision() == "bf16" and not devices.emulated.tf32_enabled(0)
    assert gpucnn.get_precision() == "fp32"


def test_fit_records_the_precision_and_runs_in_it(tmp_path, monkeypatch):
    """fit(precision='tf32') trains inside the scope (seen by the loss layer at each step) and writes it into
    config.json; the scope is closed afterwards."""
    from gpucnn.layers import SoftmaxCrossEntropy
    seen = []
    forward = SoftmaxCrossEntropy.forward

    def spy(self, *args, **kwargs):
        seen.append((gpucnn.get_precision(), devices.emulated.tf32_enabled(0)))
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(SoftmaxCrossEntropy, "forward", spy)
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 1, 16, 16), dtype=np.float32), rng.integers(0, 10, 32)
    h = gpucnn.fit("lenet5", (x, y), validation=None, test=None, epochs=1, batch_size=16, device="emulated",
                   precision="tf32", out=tmp_path / "run", log=None)
    assert seen and set(seen) == {("tf32", True)}
    assert h.rows and gpucnn.get_precision() == "fp32" and not devices.emulated.tf32_enabled(0)
    import json
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "tf32"


# ------------------------------------------------------------------------------------------------------ tf32

def test_round_tf32_keeps_ten_mantissa_bits_rounding_to_nearest_even():
    one = np.float32(1)
    ulp = 2.0 ** -10                               # TF32's unit in the last place at 1.0
    x = np.array([1 + ulp / 2, 1 + 1.5 * ulp, 1 + ulp / 2 + 2.0 ** -20, 1 + ulp / 4, -3.0, np.inf, -np.inf, np.nan,
                  1e-40], np.float32)
    r = P.round_tf32(x)
    assert r[0] == one                             # a tie goes to the even neighbour (1.0)
    assert r[1] == np.float32(1 + 2 * ulp)         # a tie goes to the even neighbour (1 + 2 ulp)
    assert r[2] == np.float32(1 + ulp)             # above the tie: up
    assert r[3] == one                             # below: down
    assert r[4] == -3.0 and r[5] == np.inf and r[6] == -np.inf and np.isnan(r[7])
    samples = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    rs = P.round_tf32(samples)
    assert not (rs.view(np.uint32) & 0x1FFF).any()                   # 13 low bits dropped
    rel = np.abs(rs.astype(np.float64) / samples - 1)
    assert rel.max() <= 2.0 ** -11 and rel.max() > 2.0 ** -12       # half an ulp at most, and it is reached


def _relative_error(c, ref):
    return float(np.sqrt(np.mean((c.astype(np.float64) - ref) ** 2) / np.mean(ref ** 2)))


def test_emulated_tf32_gemm_rounds_operands_and_sums_in_float32():
    """A float32 product on the emulated GPU in a tf32 scope is exactly the float32 product of the TF32-rounded
    operands; against float64 its error is that of TF32 (unit round-off 2^-11 on each operand: about 4e-4 of
    the result's size for random operands, K = 256), thousands of times float32's, and no larger."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 64, 256), np.float32), rng.standard_normal((3, 256, 48), np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    da, db = devices.to_device(a, EMU), devices.to_device(b, EMU)
    fp32 = devices.to_cpu(da @ db)
    with gpucnn.precision("tf32", EMU):
        tf32 = devices.to_cpu(da @ db)
        tf32_2d = devices.to_cpu(devices.emulated_xp.matmul(da[0], db[0]))
    after = devices.to_cpu(da @ db)
    np.testing.assert_array_equal(tf32, P.round_tf32(a) @ P.round_tf32(b))
    np.testing.assert_array_equal(tf32_2d, tf32[0])
    np.testing.assert_array_equal(after, fp32)                      # the scope's end restores fp32
    e32, e_tf32 = _relative_error(fp32, ref), _relative_error(tf32, ref)
    assert e32 < 1e-6
    assert 2e-4 < e_tf32 < 8e-4, e_tf32


def test_lenet5_step_in_tf32_stays_close_to_fp32():
    """A forward and backward pass of LeNet-5 on the emulated GPU in tf32 differs from fp32 by TF32's rounding
    (relative 1e-5..1e-2 in the logits and gradients), not more."""
    rng = np.random.default_rng(2)
    x = devices.to_device(rng.random((16, 1, 28, 28), dtype=np.float32), EMU)
    runs = []
    for name in ("fp32", "tf32"):
        gpucnn.seed(0)
        net = gpucnn.models.lenet5().to(EMU)
        with gpucnn.precision(name, EMU):
            logits = net(x)
            net.backward(logits)
        runs.append((devices.to_cpu(logits), {k: devices.to_cpu(g) for k, g in net.grads.items()}))
    (l32, g32), (ltf, gtf) = runs
    assert 1e-5 < _relative_error(ltf, l32.astype(np.float64)) < 1e-2
    for k in g32:
        assert 1e-6 < _relative_error(gtf[k], g32[k].astype(np.float64)) < 3e-2, k


@pytest.mark.gpu
def test_cuda_tf32_switches_cupy_compute_type_and_math_mode():
    """On a GPU of compute capability >= 8.0, a tf32 scope makes float32 GEMMs (2-D and batched) TF32: their
    error against float64 grows to TF32's; both switches are back at their defaults afterwards."""
    import cupy as cp
    from cupy._core import _routines_linalg as linalg
    from cupy_backends.cuda.libs import cublas
    dev = devices.get_device("cuda")
    if int(cp.cuda.Device(dev.index).compute_capability) < 80:
        pytest.skip("TF32 needs compute capability 8.0")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 64, 256), np.float32), rng.standard_normal((3, 256, 48), np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    da, db = cp.asarray(a), cp.asarray(b)
    with gpucnn.precision("tf32", dev):
        batched, flat = cp.asnumpy(da @ db), cp.asnumpy(da[0] @ db[0])
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
    assert 1e-4 < _relative_error(batched, ref) < 1e-3
    assert 1e-4 < _relative_error(flat, ref[0]) < 1e-3
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    assert cublas.getMathMode(cp.cuda.device.get_cublas_handle()) == cublas.CUBLAS_DEFAULT_MATH
    assert _relative_error(cp.asnumpy(da @ db), ref) < 1e-5
