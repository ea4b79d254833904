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
    config.json; the scope is closed afterwards; the run resumes in bf16."""
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
    # not a run-defining setting: the float32 master weights resume in another precision
    h = gpucnn.fit("lenet5", (x, y), validation=None, test=None, epochs=2, batch_size=16, device="emulated",
                   precision="bf16", out=tmp_path / "run", resume=True, log=None)
    assert [r["epoch"] for r in h.rows] == [1, 2] and set(seen[-2:]) == {("bf16", False)}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "bf16"


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


# ------------------------------------------------------------------------------------------------------ bf16

def _lenet_pass(name, x, device=EMU):
    """LeNet-5 (seed 0) forward and backward on x in precision `name`: (logits, grads, net) on the host."""
    gpucnn.seed(0)
    net = gpucnn.models.lenet5().to(device)
    scope = device if devices.get_device(device).is_gpu else EMU   # a CPU model inside a GPU's bf16 scope
    with gpucnn.precision(name, scope):
        logits = net(x)
        net.backward(logits)
    return devices.to_cpu(logits), {k: devices.to_cpu(g) for k, g in net.grads.items()}, net


def test_bf16_lenet5_pass_is_close_to_fp32(gpu_device):
    """On the emulated GPU and on CUDA: a bf16 pass differs from fp32 by bfloat16's rounding (unit round-off
    2^-9 = 0.2%: logits within 0.1-2%, gradients 0.3-8%), float32 outputs and gradients."""
    x = devices.to_device(np.random.default_rng(2).random((16, 1, 28, 28), dtype=np.float32), gpu_device)
    l32, g32, _ = _lenet_pass("fp32", x, gpu_device)
    l16, g16, _ = _lenet_pass("bf16", x, gpu_device)
    assert l16.dtype == np.float32 and all(g.dtype == np.float32 for g in g16.values())
    assert 1e-3 < _relative_error(l16, l32.astype(np.float64)) < 2e-2
    for k in g32:
        assert 3e-3 < _relative_error(g16[k], g32[k].astype(np.float64)) < 8e-2, k


def test_bf16_lenet5_pass_lowers_the_gemm_operands_only():
    """In bf16 the GEMM operands are bfloat16 (the cached columns and affine inputs: half the bytes) and the
    bf16 kernel variants run, while parameters, gradients and outputs stay float32 (counted on the emulated
    GPU; the values are compared with fp32's in the test above)."""
    x = devices.to_device(np.random.default_rng(2).random((16, 1, 28, 28), dtype=np.float32), EMU)
    l32, g32, _ = _lenet_pass("fp32", x)
    with devices.count_device_ops() as counts:
        l16, g16, net = _lenet_pass("bf16", x)
    assert l16.dtype == np.float32 and all(g.dtype == np.float32 for g in g16.values())
    assert all(p.dtype == np.float32 for p in net.params.values())
    for kernel in ("im2col_bf16", "col2im_bf16", "bias_act_bf16"):
        assert counts.by_op[f"kernel:{kernel}"] > 0, kernel
    conv, affine = net.layers[0], net.layers[6]
    net.forward(x)   # the caches of a forward pass: outside the scope, float32 again
    assert conv._cache[2].dtype == np.float32 and affine._cache[0].dtype == np.float32
    with gpucnn.precision("bf16", EMU):
        net.forward(x)
    assert conv._cache[1].dtype.name == "bfloat16" and affine._cache[0].dtype.name == "bfloat16"
    assert not np.array_equal(l16, l32)


def test_bf16_leaves_float64_layers_and_cpu_arrays_in_full_precision():
    """Gradient checks run in float64 and the CPU computes in float32: neither is lowered inside a bf16 scope."""
    from gpucnn import layers as L
    rng = np.random.default_rng(3)
    x = rng.random((4, 2, 9, 9))
    outs = []
    for name in ("fp32", "bf16"):
        gpucnn.seed(0)
        net = L.Sequential(L.Conv2D(2, 3, 3, dtype=np.float64), L.ReLU(), L.Flatten(),
                           L.Affine(147, 5, dtype=np.float64)).to(EMU)
        with gpucnn.precision(name, EMU):
            y = net(devices.to_device(x, EMU))
            net.backward(y)
        outs.append((devices.to_cpu(y), {k: devices.to_cpu(g) for k, g in net.grads.items()}))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for k in outs[0][1]:
        np.testing.assert_array_equal(outs[0][1][k], outs[1][1][k])
    xc = rng.random((4, 1, 28, 28), dtype=np.float32)
    lc, gc, _ = _lenet_pass("fp32", xc, device="cpu")
    lcb, gcb, _ = _lenet_pass("bf16", xc, device="cpu")
    np.testing.assert_array_equal(lc, lcb)


@pytest.mark.parametrize("model, batch, most", [("lenet5", 128, 70)])
def test_bf16_step_device_ops(model, batch, most):
    """What bf16 adds to a training step (counted as tests/test_budgets.py counts fp32's): LeNet-5 b128 68
    (fp32: 48), the AlexNet-style net b32 109 (fp32: 84, within its budget of 150): per GEMM layer the casts of
    its input and output gradient to bfloat16 and of the affine layers' weights and products; no transfer, no
    sync."""
    from gpucnn import bench
    result = bench.count_step_ops(model, batch, precision="bf16")
    total = result["total"]
    assert total.ops <= most, bench.format_op_counts(result)
    assert (total.syncs, total.host_to_device, total.device_to_host) == (0, 0, 0), total.as_dict()
    assert total.by_op["kernel:im2col_bf16"] >= 2 and total.by_op["kernel:bias_act_bf16"] >= 5


REAL_FASHION = "/usr/share/datasets/fashion-mnist"
TRACKING_RUN = """
import json, sys
import gpucnn
rows = {}
for name in ("fp32", "bf16"):
    h = gpucnn.fit("lenet5", "fashion-mnist", data_dir=sys.argv[1], download=False, validation=None, epochs=8,
                   batch_size=16, limit_train=400, limit_test=300, lr=2e-3, device="emulated", precision=name,
                   log=None, seed=0)
    rows[name] = h.rows
print(json.dumps(rows))
"""


@pytest.mark.skipif(not __import__("os").path.isdir(REAL_FASHION),
                    reason=f"{REAL_FASHION} is absent (apt-get install dataset-fashion-mnist)")
def test_lenet5_in_bf16_tracks_fp32_over_200_steps():
    """LeNet-5 on the first 400 Fashion-MNIST images, batch 16, 8 epochs (200 AdamW steps), on the emulated GPU in
    fp32 and in bf16, the same seed. Tolerance: training is chaotic, so any rounding change moves the trajectory;
    the spread measured for a change smaller than bf16's, tf32 against fp32 (same run), was up to 9% in an
    epoch's training loss and 0.2 points of test accuracy, and bf16 against fp32 4% and 0.8 points (2-core
    machine, emulated GPU). Held: each epoch's training loss within 15% of fp32's, the last epoch's test accuracy
    within 3 points, and both runs learn (loss falls below a third of the first epoch's; accuracy > 70%).
    In a subprocess with one BLAS thread: the emulated GEMMs are small, and OpenBLAS's threads contending on a
    loaded 2-core machine made the same runs 4x slower (91 s against ~20 s)."""
    import json
    import os
    import subprocess
    import sys
    from _cli import REPO
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GPUCNN_DEVICE", None)
    p = subprocess.run([sys.executable, "-c", TRACKING_RUN, REAL_FASHION], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    runs = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(runs["fp32"]) == len(runs["bf16"]) == 8
    for r32, r16 in zip(runs["fp32"], runs["bf16"]):
        assert abs(r16["train_loss"] - r32["train_loss"]) <= 0.15 * r32["train_loss"], (r32, r16)
    last32, last16 = runs["fp32"][-1], runs["bf16"][-1]
    assert abs(last16["test_acc"] - last32["test_acc"]) <= 0.03, (last32, last16)
    for rows in runs.values():
        assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 3 and rows[-1]["test_acc"] > 0.7


def test_bf16_needs_numpy_2_1_2(monkeypatch):
    """CuPy 14 enables bfloat16 arrays only from numpy 2.1.2: bf16 is refused, naming it, on an older numpy."""
    monkeypatch.setattr(np, "__version__", "2.0.2")
    with pytest.raises(gpucnn.PrecisionError, match=r"needs numpy >= 2.1.2.*got numpy 2.0.2"):
        with gpucnn.precision("bf16", EMU):
            pass
