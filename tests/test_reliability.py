"""Crash safety: a training process SIGKILLed at random moments (also mid-write) leaves a loadable checkpoint,
and --resume finishes the run with exactly the weights of a run that was never interrupted."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from _synth import write_idx_dataset
from gpucnn.train import checkpoint

REPO = str(Path(gpucnn.__file__).resolve().parent.parent)
EPOCHS = 60

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def start(data_dir, out, *extra):
    """A training run of many tiny epochs (two steps each), so checkpoints are written many times a second."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GPUCNN_DEVICE", None)
    args = ["train", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--epochs", str(EPOCHS),
            "--batch-size", "32", "--limit-train", "64", "--limit-test", "32", "--device", "cpu",
            "--optimizer", "adam", "--out", str(out), *extra]
    return subprocess.Popen([sys.executable, "-m", "gpucnn", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def saved_epoch(out):
    try:
        return checkpoint.load(out / "checkpoint.npz").epoch
    except checkpoint.CheckpointError as e:
        if "no such file" in str(e):
            return 0
        raise  # a torn or corrupt checkpoint: exactly what must never happen


def wait_for_epoch_after(proc, out, epoch, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if saved_epoch(out) > epoch:
            return
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint after epoch {epoch} appeared; stderr: {proc.communicate()[1]}")


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    data_dir = write_idx_dataset(tmp_path, n_train=64, n_test=32, size=16)
    rng = random.Random(1234)
    out = tmp_path / "killed"
    kills = 0
    proc = start(data_dir, out)
    while kills < 8:
        before = saved_epoch(out)
        wait_for_epoch_after(proc, out, before)
        time.sleep(rng.uniform(0.0, 0.06))  # lands anywhere: mid-step, mid-evaluation, mid-checkpoint-write
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        ck = checkpoint.load(out / "checkpoint.npz")  # always whole: the old file or the new one
        assert 1 <= ck.epoch <= EPOCHS
        assert [row["epoch"] for row in ck.history] == list(range(1, ck.epoch + 1))
        if ck.epoch >= EPOCHS - 2:
            break
        proc = start(data_dir, out, "--resume")
    assert kills >= 4
    if proc.poll() is None:
        proc.wait()

    final = start(data_dir, out, "--resume")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]  # temp files of killed writers are gone
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))

    clean = tmp_path / "clean"
    p = start(data_dir, clean)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    a = checkpoint.load(out / "checkpoint.npz")
    b = checkpoint.load(clean / "checkpoint.npz")
    assert a.step == b.step == EPOCHS * 2
    for k in b.model_state:
        np.testing.assert_array_equal(a.model_state[k], b.model_state[k], err_msg=k)
    drop = ("seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b.history]
