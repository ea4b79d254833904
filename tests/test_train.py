"""The trainer: outputs, reproducibility, bit-identical resume, numerical faults, and no host syncs per step."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from _synth import rewrite_checkpoint, write_idx_dataset
from gpucnn import devices as backend
from gpucnn.train import checkpoint, inputs
from gpucnn.train import fitting as F
from gpucnn.train import NumericalFaultError, Progress, TrainConfig, evaluate, resume_config, train

FASHION = Path("/usr/share/datasets/fashion-mnist")
TIMING_KEYS = ("seconds", "images_per_second")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), n_train=256, n_test=128, size=16)


def config(data_dir, out, **kw):
    base = dict(model="lenet5", dataset="mnist", data_dir=data_dir, out=str(out), epochs=2, batch_size=32,
                device="cpu", seed=1, log_every=1e9, download=False)
    base.update(kw)
    return TrainConfig(**base)


def run(cfg, lines=None):
    return train(cfg, log=(lines.append if lines is not None else lambda line: None))


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def params_of(out):
    return checkpoint.load(os.path.join(out, "checkpoint.npz")).model_state


def assert_same_arrays(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_run_writes_metrics_checkpoint_and_pictures(data_dir, tmp_path):
    lines = []
    result = run(config(data_dir, tmp_path / "run", limit_test=100), lines)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds",
                            "images_per_second", "lr", "skipped_steps"}
    assert rows == result["history"]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]        # the synthetic task is learnable
    assert rows[1]["test_acc"] > 0.3                            # chance is 0.1
    assert all(0 <= r["train_acc"] <= 1 and r["skipped_steps"] == 0 for r in rows)
    assert int(result["confusion"].sum()) == 100                 # limit_test
    ck = checkpoint.load(out / "checkpoint.npz")
    assert (ck.epoch, ck.step, ck.model_name) == (2, 2 * 8, "lenet5")   # 256 images / 32 per batch
    assert ck.model_kwargs == {"in_channels": 1, "input_size": [16, 16], "num_classes": 10}
    assert ck.config["lr"] == 2e-3 and ck.history == without_timing(rows)   # timing only in metrics.jsonl
    for name in ("curves.png", "filters.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "config.json", "curves.png", "filters.png",
                                       "metrics.jsonl", "results.json"]
    assert json.loads((out / "config.json").read_text()) == ck.config


def test_same_seed_gives_bit_identical_metrics_and_params(data_dir, tmp_path):
    a = run(config(data_dir, tmp_path / "a", model="vgg", augment=True, limit_train=96))
    b = run(config(data_dir, tmp_path / "b", model="vgg", augment=True, limit_train=96))
    assert without_timing(a["history"]) == without_timing(b["history"])
    assert_same_arrays(params_of(tmp_path / "a"), params_of(tmp_path / "b"))
    c = run(config(data_dir, tmp_path / "c", model="vgg", augment=True, limit_train=96, seed=2))
    assert without_timing(c["history"]) != without_timing(a["history"])


@pytest.mark.parametrize("model,schedule", [("lenet5", "constant"), ("vgg", "cosine")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(data_dir, tmp_path, model, schedule):
    """vgg brings dropout (host RNG), batch-norm buffers and augmentation; cosine a step-dependent rate."""
    kw = dict(model=model, schedule=schedule, epochs=3, augment=True, limit_train=96, optimizer="adam",
              warmup=2)
    full = run(config(data_dir, tmp_path / "full", **kw))

    class Crash(Exception):
        pass

    def crash_after_epoch_2(line):
        if line.startswith("epoch 2/3"):
            raise Crash  # as if killed right after the epoch-2 checkpoint was written
    with pytest.raises(Crash):
        train(config(data_dir, tmp_path / "resumed", **kw), log=crash_after_epoch_2)
    assert checkpoint.load(tmp_path / "resumed" / "checkpoint.npz").epoch == 2
    # what the CLI does: the saved run's settings, continued
    resumed = run(resume_config(str(tmp_path / "resumed"), log_every=1e9))

    assert without_timing(resumed["history"]) == without_timing(full["history"])
    a = checkpoint.load(tmp_path / "full" / "checkpoint.npz")
    b = checkpoint.load(tmp_path / "resumed" / "checkpoint.npz")
    assert_same_arrays(a.model_state, b.model_state)
    opt_a = {k: v for k, v in a.optim_state.items() if isinstance(v, np.ndarray)}
    opt_b = {k: v for k, v in b.optim_state.items() if isinstance(v, np.ndarray)}
    assert opt_a and opt_a.keys() == opt_b.keys()
    assert_same_arrays(opt_a, opt_b)
    assert a.rng_state == b.rng_state and a.step == b.step
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(rows) == without_timing(full["history"])


def test_extending_a_finished_run_with_constant_schedule(data_dir, tmp_path):
    """2 epochs, then --resume --epochs 3 == 3 epochs in one go (the schedule does not depend on the total)."""
    full = run(config(data_dir, tmp_path / "full", epochs=3, schedule="constant"))
    run(config(data_dir, tmp_path / "two", epochs=2, schedule="constant"))
    lines = []
    more = run(config(data_dir, tmp_path / "two", epochs=3, schedule="constant", resume=True), lines)
    assert lines[0].startswith("resuming") and "epoch 3/3" in lines[0]
    assert without_timing(more["history"]) == without_timing(full["history"])
    assert_same_arrays(params_of(tmp_path / "two"), params_of(tmp_path / "full"))


def test_resume_refuses_other_run_settings_and_missing_checkpoint(data_dir, tmp_path):
    run(config(data_dir, tmp_path / "r", epochs=1))
    with pytest.raises(ValueError, match=r"--resume: .*checkpoint\.npz was trained with other settings: "
                                         r"batch-size 64 \(the run uses 32\)"):
        run(config(data_dir, tmp_path / "r", epochs=2, batch_size=64, resume=True))
    with pytest.raises(checkpoint.CheckpointError, match=r"empty.*checkpoint\.npz: no such file"):
        run(config(data_dir, tmp_path / "empty", resume=True))


@pytest.mark.parametrize("field,value", [("rng_state", {"bad": 1}), ("history", [{"no epoch": 1}]),
                                         ("history", ["not a row"])])
def test_resume_from_well_formed_file_with_unusable_contents_names_it(data_dir, tmp_path, field, value):
    run(config(data_dir, tmp_path / "r", epochs=1))
    rewrite_checkpoint(tmp_path / "r" / "checkpoint.npz", lambda meta: meta.update({field: value}))
    with pytest.raises(checkpoint.CheckpointError, match=r"r.checkpoint\.npz: unusable contents"):
        run(config(data_dir, tmp_path / "r", epochs=2, resume=True))


@pytest.mark.parametrize("limit,steps", [(65, 2), (66, 3), (64, 2), (1, 1)])
def test_a_last_training_batch_of_one_is_left_out(data_dir, tmp_path, limit, steps):
    """BatchNorm has no statistics for one sample: such a last batch is dropped (unless it is all there is)."""
    data = inputs.prepare("mnist", seed=1, limit_train=limit, limit_test=33, data_dir=data_dir, download=False)
    train_loader, _, test_loader = inputs.loaders(data, batch_size=32, seed=1, augment=False, device="cpu")
    assert len(train_loader) == steps == len(list(train_loader))
    assert sum(len(x) for x, _ in test_loader) == 33


class PoisonedLoader:
    """Wraps the training loader: puts a NaN into the input of the given (epoch, batch index) pairs."""

    def __init__(self, loader, bad):
        self.loader, self.bad = loader, set(bad)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        epoch = self.loader.epoch
        for i, (x, y) in enumerate(self.loader):
            if (epoch, i) in self.bad:
                x = x.copy()
                x[0, 0, 0, 0] = np.nan
            yield x, y


@pytest.fixture
def poison(monkeypatch):
    def install(*bad):
        real = inputs.loaders

        def loaders(*args, **kwargs):
            train_loader, val_loader, test_loader = real(*args, **kwargs)
            return PoisonedLoader(train_loader, bad), val_loader, test_loader
        monkeypatch.setattr(inputs, "loaders", loaders)
    return install


def test_nan_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, poison,
                                                                           any_device):
    device = str(any_device)
    poison((2, 4))  # epoch 2, its 5th batch
    out = tmp_path / "r"
    with pytest.raises(NumericalFaultError, match=r"epoch 2, step 5 \(global step 13\).*last good checkpoint "
                                                  r"\(epoch 1\).*--lr.*--on-nonfinite skip") as e:
        run(config(data_dir, out, epochs=3, device=device))
    assert (e.value.epoch, e.value.step) == (2, 5)
    ck = checkpoint.load(out / "checkpoint.npz")
    assert ck.epoch == 1 and all(np.isfinite(v).all() for v in ck.model_state.values())
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_absurd_learning_rate_stops_with_a_clear_error(data_dir, tmp_path):
    out = tmp_path / "r"
    run(config(data_dir, out, epochs=1, optimizer="sgd", lr=0.01))
    # resuming with an absurd rate: the fault is in epoch 2 and epoch 1's checkpoint survives
    with pytest.raises(NumericalFaultError, match=r"at epoch 2, step \d+ .*epoch 1"):
        run(config(data_dir, out, epochs=3, optimizer="sgd", lr=1e30, resume=True))
    ck = checkpoint.load(out / "checkpoint.npz")
    assert ck.epoch == 1
    run(config(data_dir, out, epochs=2, optimizer="sgd", lr=0.01, resume=True))  # and the run goes on from it
    assert checkpoint.load(out / "checkpoint.npz").epoch == 2


def test_skip_mode_skips_and_counts_bad_steps(data_dir, tmp_path, poison):
    poison((1, 2), (1, 5), (2, 0))
    result = run(config(data_dir, tmp_path / "r", model="vgg", limit_train=256, on_nonfinite="skip"))
    assert [r["skipped_steps"] for r in result["history"]] == [2, 1]
    state = params_of(tmp_path / "r")
    assert all(np.isfinite(v).all() for v in state.values())   # includes batch-norm running statistics
    assert np.isfinite(result["history"][-1]["test_loss"])


def test_no_host_sync_per_step_on_the_gpu_path(data_dir, tmp_path):
    """On the emulated GPU, device->host transfers happen per log point and epoch, not per step."""
    def transfers(n_images, log_every=1e9):
        backend.transfer_stats.reset()
        run(config(data_dir, tmp_path / f"r{n_images}-{log_every}", device="emulated", epochs=1,
                   limit_train=n_images, log_every=log_every))
        return backend.transfer_stats.device_to_host

    n, n2 = transfers(64), transfers(128)    # 2 steps and 4 steps in the epoch
    assert n == n2
    # with validation data too: its evaluation reads back once, whatever the number of steps
    backend.transfer_stats.reset()
    run(config(data_dir, tmp_path / "v64", device="emulated", epochs=1, limit_train=80, val_split=0.2))
    v = backend.transfer_stats.device_to_host
    backend.transfer_stats.reset()
    run(config(data_dir, tmp_path / "v128", device="emulated", epochs=1, limit_train=160, val_split=0.2))
    assert backend.transfer_stats.device_to_host == v
    # the counter does see reads: refreshing progress at every step costs a read per step
    assert transfers(128, log_every=0) >= n2 + 4


def test_evaluate_matches_a_numpy_computation(data_dir, tmp_path):
    from gpucnn import data, models
    from gpucnn.layers import SoftmaxCrossEntropy
    ds = data.load_dataset("mnist", "test", data_dir=data_dir, download=False)
    model = models.lenet5(1, 16, 10)
    loader = data.DataLoader(ds, batch_size=50, shuffle=False)
    loss, acc, confusion = evaluate(model, loader)
    x = np.concatenate([xb for xb, _ in loader])
    logits = model.forward(x, train=False)
    pred = logits.argmax(1)
    assert acc == np.mean(pred == ds.labels)
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (ds.labels, pred), 1)
    np.testing.assert_array_equal(confusion, expected)
    assert loss == pytest.approx(float(SoftmaxCrossEntropy().forward(logits, ds.labels)), rel=1e-5)


def test_an_evaluation_reads_back_from_the_device_once(data_dir):
    """Counts and sums stay on the device over all batches; cupy.bincount would read back twice per batch."""
    from gpucnn import data, models
    ds = data.load_dataset("mnist", "test", data_dir=data_dir, download=False)
    results = {}
    for dev in ("cpu", "emulated"):
        model = models.lenet5(1, 16, 10)
        model.load_state_dict(results["cpu"][3]) if results else None
        loader = data.DataLoader(ds, batch_size=30, shuffle=False, device=dev)
        with backend.count_device_ops() as counts:
            loss, acc, confusion = evaluate(model.to(dev), loader)
        results[dev] = (loss, acc, confusion, model.state_dict())
    assert len(loader) == 5
    assert (counts.device_to_host, counts.syncs) == (1, 1), counts.by_sync
    assert results["emulated"][1] == results["cpu"][1]
    np.testing.assert_array_equal(results["emulated"][2], results["cpu"][2])
    assert results["emulated"][0] == pytest.approx(results["cpu"][0], rel=1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("epochs", 0, "epochs must be a positive integer"), ("batch_size", -1, "batch-size"),
    ("lr", float("nan"), "lr must be a positive number"), ("on_nonfinite", "ignore", "on-nonfinite"),
    ("schedule", "onecycle", "unknown schedule"), ("optimizer", "lbfgs", "unknown optimizer"),
    ("model", "googlenet", "unknown model"), ("clip", 0, "clip"), ("limit_train", 0, "limit-train")])
def test_bad_settings_are_refused_before_anything_runs(data_dir, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        run(config(data_dir, tmp_path / "r", **{field: value}))
    assert not (tmp_path / "r").exists()


def test_out_must_be_a_folder_path(data_dir, tmp_path):
    with pytest.raises(ValueError, match="out must be a folder path, got ''"):
        run(config(data_dir, "", epochs=1))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=r"out .*afile: exists and is not a folder"):
        run(config(data_dir, afile, epochs=1))


def test_default_out_dir_uses_canonical_names():
    assert TrainConfig(model="LeNet-5", dataset="fmnist").out_dir() == os.path.join("runs", "lenet5-fashion-mnist")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_short_run(tmp_path):
    result = run(TrainConfig(out=str(tmp_path / "fm"), epochs=1, limit_train=6000, limit_test=1000,
                             device="cpu", log_every=1e9, data_dir=str(FASHION), download=False))
    assert result["history"][0]["test_acc"] > 0.70


def test_without_matplotlib_pictures_are_skipped_with_one_line(data_dir, tmp_path, monkeypatch):
    from gpucnn.train import plots
    monkeypatch.setattr(plots, "available", lambda: False)
    monkeypatch.setattr(F, "PLOT_INTERVAL", 0.0)      # pictures asked for at every epoch: still one line
    lines = []
    run(config(data_dir, tmp_path / "r", epochs=2), lines)
    assert sum("matplotlib is not installed" in line for line in lines) == 1
    assert sorted(os.listdir(tmp_path / "r")) == ["checkpoint.npz", "config.json", "metrics.jsonl", "results.json"]


def test_filter_grid_tiles_each_filter_scaled_on_its_own():
    from gpucnn.train.plots import filter_grid
    w = np.zeros((5, 1, 3, 3))
    w[1] = np.arange(9).reshape(3, 3)            # 0..8 -> 0..1
    w[2] = -np.arange(9).reshape(3, 3) * 100.0   # scale does not matter
    grid = filter_grid(w)
    assert grid.shape == (2 * 4 + 1, 3 * 4 + 1)  # 5 filters -> 3 columns x 2 rows, 1 px borders
    np.testing.assert_allclose(grid[1:4, 5:8], np.arange(9).reshape(3, 3) / 8)
    np.testing.assert_allclose(grid[1:4, 9:12], 1 - np.arange(9).reshape(3, 3) / 8)
    assert filter_grid(np.ones((4, 3, 5, 5))).shape == (13, 13, 3)  # RGB tiles for 3 input channels


class FakeTTY:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.fixture
def clock(monkeypatch):
    """A settable time.perf_counter for the progress module."""
    from gpucnn.train import progress
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


def test_progress_redraws_on_a_terminal_and_prints_lines_otherwise(clock):
    term = FakeTTY(True)
    p = Progress(stream=term, use_tqdm=False)
    assert p.interval == 0.25
    p.begin("epoch 1/2", 10)
    clock[0] += 12.0
    p.show(5, "loss 0.5")                     # 12 s for 5 of 10: 12 s left
    clock[0] += 68.0
    p.show(10, "loss 0.4")
    p.clear()
    assert term.text.count("\r\033[K") == 3 and "\n" not in term.text
    assert "epoch 1/2 [##########..........] 5/10 00:12<00:12 loss 0.5" in term.text
    assert "[####################] 10/10 01:20<00:00 loss 0.4" in term.text
    log = FakeTTY(False)
    p = Progress(stream=log)
    assert p.interval == 10.0 and not p.due()
    p.begin("epoch 1/2 validation", 4)
    clock[0] += 3725.0
    assert p.due()
    p.show(1)
    p.clear()
    assert log.text == "epoch 1/2 validation 1/4 1:02:05<3:06:15\n"


def test_progress_uses_tqdm_on_a_terminal_when_installed(monkeypatch):
    """tqdm is optional: when it imports, a terminal gets its bar (which shows elapsed time and ETA itself)."""
    import sys
    import types
    made = []

    class FakeBar:
        def __init__(self, total, desc, file, **kw):
            self.total, self.desc, self.n, self.postfix, self.closed = total, desc, 0, "", False
            made.append(self)

        def update(self, k):
            self.n += k

        def set_postfix_str(self, text):
            self.postfix = text

        def close(self):
            self.closed = True
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    term = FakeTTY(True)
    p = Progress(stream=term)
    p.begin("epoch 2/3", 8)
    p.show(3, "loss 0.3")
    p.show(8, "loss 0.2")
    p.clear()
    assert len(made) == 1 and (made[0].desc, made[0].total, made[0].n, made[0].postfix) == ("epoch 2/3", 8, 8,
                                                                                          "loss 0.2")
    assert made[0].closed and term.text == ""
    assert Progress(stream=FakeTTY(False)).tqdm is None       # a log gets plain lines even with tqdm installed


def test_progress_shows_the_evaluation_phase(data_dir, tmp_path, monkeypatch):
    """log_every=0 redraws at every step: the lines name each epoch's steps and its evaluation, with timing."""
    import io
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    run(config(data_dir, tmp_path / "r", epochs=1, limit_train=64, limit_test=64, log_every=0))
    lines = stream.getvalue().splitlines()
    assert any(re.match(r"epoch 1/1 2/2 \d\d:\d\d<\d\d:\d\d loss [\d.]+ acc [\d.]+% \d+ img/s", x) for x in lines)
    assert any(re.match(r"epoch 1/1 test 1/1 \d\d:\d\d<\d\d:\d\d$", x) for x in lines), lines


def test_default_weight_decay_depends_on_the_optimizer():
    assert F.weight_decay_for("adamw", None) == 0.05 == F.DEFAULT_WEIGHT_DECAY["adamw"]
    assert F.weight_decay_for("sgd", None) == 0.0      # an L2 term that size would be too strong
    assert F.weight_decay_for("sgd", 1e-4) == 1e-4
    assert F.weight_decay_for("AdamW", 0.0) == 0.0


def test_the_run_uses_the_resolved_weight_decay(data_dir, tmp_path):
    run(config(data_dir, tmp_path / "r", epochs=1))
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.npz")
    assert ck.optim_state["optimizer"] == "AdamW" and ck.optim_state["hparams/weight_decay"] == 0.05
    assert ck.config["weight_decay"] is None
