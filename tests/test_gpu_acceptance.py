"""benchmarks/gpu_acceptance.sh dry-run without CUDA: every stage but the GPU's own work runs on the emulated
device (DEVICE=emulated), PyTorch on the CPU, with small limits; the script's stages, checks, failure and
timeout reporting and its summary are what is tested here. The real run is on a GPU machine (see README)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _synth import write_idx_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.sh"


def acceptance(tmp_path, **settings):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "emulated", "TORCH_DEVICE": "cpu",
           "OUT": str(tmp_path / "out"), "PYTEST_ARGS": "tests/test_emulated.py", "MIN_ACC": "0",
           "TRAIN_ARGS": "--limit-train 96 --limit-test 64 --batch-size 32", "BENCH_CASES": "lenet5:4",
           "BENCH_STEPS": "1", "CPU_STEPS": "1", "OPS_ARGS": "--model lenet5 --batch-size 4",
           **{f"T_{s}": "300" for s in ("ENV", "PYTEST", "TRAIN", "BENCH_GPU", "BENCH_CPU", "BENCH_TORCH", "OPS")},
           **settings}
    env.pop("GPUCNN_DEVICE", None)
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    return p, summary


@pytest.fixture
def data(tmp_path):
    (tmp_path / "data").mkdir()
    return write_idx_dataset(tmp_path / "data", n_train=96, n_test=64, size=16)


def test_every_cuda_free_stage_passes_and_the_summary_says_so(tmp_path, data):
    p, summary = acceptance(tmp_path, DATA=data)
    assert p.returncode == 0, p.stdout + p.stderr
    for stage in ("env", "pytest", "train", "bench-gpu", "bench-cpu", "bench-torch", "ops"):
        assert f"== {stage}: PASS" in p.stdout
        assert any(line.startswith(stage) and " PASS " in line for line in summary.splitlines()), summary
    assert "kernels compiled for emulated: " in summary and " im2col.cu " in summary
    assert "after 3 epochs" in summary and "after --resume to epoch 4 (epochs in metrics.jsonl: 1,2,3,4)" in summary
    assert "lenet5 b4: " in summary and " ops, 0 syncs per step" in summary
    for precision in ("fp32", "tf32", "bf16"):   # gpucnn GPU, (CPU: fp32 only), torch GPU, their ratio, x fp32
        row = next(line for line in summary.splitlines() if line.startswith(f"lenet5 b4 {precision} ")).split()
        assert len(row) == 8 and (row[4] == "-") == (precision != "fp32"), row
        assert all(float(v) > 0 for i, v in enumerate(row[3:]) if i != 1 or precision == "fp32"), row
    assert summary.rstrip().splitlines()[-1].startswith("RESULT: PASS")


def test_a_failing_or_hanging_stage_hides_nothing_of_the_others(tmp_path, data):
    p, summary = acceptance(tmp_path, DATA=data, STAGES="train ops env", TRAIN_ARGS="--batch-size 0",
                            T_OPS="1", OPS_ARGS="--model alexnet_style --batch-size 64")
    assert p.returncode == 1
    rows = [line.split() for line in summary.splitlines()]
    status = {r[0]: r[1] for r in rows if len(r) > 1 and r[0] in ("train", "ops", "env")}
    assert status == {"train": "FAIL", "ops": "TIMEOUT", "env": "PASS"}, summary
    assert "batch-size must be a positive integer" in p.stdout, "a failing stage's log tail is shown"
    assert summary.rstrip().splitlines()[-1].startswith("RESULT: FAIL (train, ops)")
