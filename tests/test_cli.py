"""The gpucnn command: train/eval/info/models work; user errors are one line on stderr and exit code 2."""
import json
import os
import re
from pathlib import Path

import pytest

import gpucnn
from _cli import assert_error, assert_one_error_line, gpucnn_cmd
from _synth import write_idx_dataset
from gpucnn import cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), n_train=128, n_test=64, size=16)


NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}   # a subprocess sees no GPU, whether or not the machine has one


@pytest.fixture
def no_gpu(monkeypatch):
    """CUDA is not usable in this process, whether or not the machine has a GPU."""
    from gpucnn.devices import cuda
    monkeypatch.setattr(cuda, "cuda_status", lambda: (False, "no GPU is usable (CUDA hidden by the test)"))


def tiny_train_args(data_dir, out, *extra):
    return ["train", "--dataset", "mnist", "--data-dir", str(data_dir), "--no-download", "--epochs", "1",
            "--batch-size", "32", "--limit-train", "64", "--limit-test", "32", "--device", "cpu", "--out", str(out),
            *extra]


def test_train_then_eval_in_subprocesses(data_dir, tmp_path):
    out = tmp_path / "run"
    p = gpucnn_cmd(*tiny_train_args(data_dir, out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "epoch 1/1" in p.stdout and "done: test accuracy" in p.stdout
    assert p.stderr == ""  # --device cpu: no fallback note; a short run prints no progress line
    row = json.loads((out / "metrics.jsonl").read_text())
    assert {"checkpoint.npz", "curves.png", "filters.png"} <= set(os.listdir(out))

    e = gpucnn_cmd("eval", "--checkpoint", out / "checkpoint.npz", "--data-dir", data_dir, "--device", "cpu",
                   "--limit-test", "32")
    assert e.returncode == 0, e.stderr
    # eval of the saved model on the same 32 test images reproduces the run's last test accuracy
    assert f"test accuracy {100 * row['test_acc']:.2f}%" in e.stdout
    assert "confusion matrix (rows: true class, columns: predicted class)" in e.stdout
    table = [line for line in e.stdout.splitlines() if re.match(r"^\s*\d \S", line)]
    assert len(table) == 10
    assert sum(int(v) for line in table for v in line.split()[2:12]) == 32


def test_train_and_eval_a_resnet(data_dir, tmp_path, capsys):
    """The residual model trains, checkpoints its nested parameters ("3.shortcut.0.W"-style) and evaluates."""
    out = tmp_path / "resnet"
    assert cli.main(tiny_train_args(data_dir, out, "--model", "resnet")) == 0
    assert "training resnet" in capsys.readouterr().out
    assert cli.main(["eval", "--checkpoint", str(out / "checkpoint.npz"), "--data-dir", str(data_dir), "--device",
                     "cpu", "--limit-test", "32"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_default_out_dir_and_resume_via_main(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--epochs", "1",
            "--batch-size", "32", "--limit-train", "64", "--limit-test", "32", "--device", "cpu", "--seed", "5"]
    assert cli.main(args) == 0
    out = tmp_path / "runs" / "lenet5-mnist"
    assert (out / "checkpoint.npz").exists()
    # --resume takes the run's own settings (batch size, limits, seed) from its checkpoint
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2", "--data-dir", data_dir]) == 0
    assert "resuming" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # but refuses to silently change what the run is
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "3", "--batch-size", "64"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"batch-size 64 \(the run uses 32\)")


@pytest.mark.parametrize("args,pattern", [
    (["train", "--epochs", "0"], r"epochs must be a positive integer, got 0"),
    (["train", "--epochs", "two"], r"--epochs: invalid int value: 'two'"),
    (["train", "--model", "googlenet"], r"--model: invalid choice: 'googlenet'"),
    (["train", "--optimizer", "lbfgs"], r"--optimizer: invalid choice"),
    (["train", "--on-nonfinite", "ignore"], r"--on-nonfinite: invalid choice"),
    (["train", "--lr", "-1"], r"lr must be a positive number"),
    (["train", "--label-smoothing", "1"], r"label-smoothing must be a number in \[0, 1\), got 1.0"),
    (["train", "--device", "tpu"], r"unknown device 'tpu'"),
    (["train", "--device", "cuda"], r"device 'cuda' was asked for but CUDA is not usable.*--device cpu"),
    (["train", "--dataset", "imagenet"], r"unknown dataset 'imagenet'"),
    (["train", "--bogus"], r"unrecognized arguments: --bogus"),
    (["eval"], r"one of the arguments --checkpoint --onnx is required"),
    ([], r"choose a command: train, eval, predict, bench, info, models, export"),
])
def test_user_errors_are_one_line_and_exit_2(args, pattern, capsys, tmp_path, monkeypatch, no_gpu):
    monkeypatch.chdir(tmp_path)
    if args[:1] == ["train"] and "--device" not in args:
        args = args + ["--device", "cpu"]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, pattern)
    assert not (tmp_path / "runs").exists()


def test_missing_data(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))        # no download cache to find it in either
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    args = tiny_train_args(str(tmp_path / "nothing"), tmp_path / "out", "--no-download")
    assert cli.main(args) == 2
    lines = assert_error(capsys.readouterr().err, r"mnist \(train split\) not found.*nothing")
    assert lines[0].endswith("not found. Looked for train-images-idx3-ubyte and train-labels-idx1-ubyte "
                             "(.gz or not) in:")
    assert lines[1] == f"  {tmp_path / 'nothing' / 'mnist'}  (data_dir / --data-dir)"   # one place a line
    assert "Downloading was turned off (--no-download)." in lines and "download=False" not in "".join(lines)


def test_numerical_fault_is_a_user_error(data_dir, tmp_path):
    """In a subprocess, so that numpy's overflow warnings would show on stderr too."""
    p = gpucnn_cmd(*tiny_train_args(data_dir, tmp_path / "out", "--optimizer", "sgd", "--lr", "1e30"), cwd=tmp_path)
    assert p.returncode == 2
    assert_one_error_line(p.stderr, r"non-finite loss or gradient .* at epoch 1, step \d+.*--lr")


def test_bad_checkpoints(data_dir, tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "none.npz")]) == 2
    assert_one_error_line(capsys.readouterr().err, r"none\.npz: no such file")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    assert cli.main(["eval", "--checkpoint", str(corrupt)]) == 2
    assert_one_error_line(capsys.readouterr().err, r"corrupt\.npz: truncated or corrupt")
    assert cli.main(tiny_train_args(data_dir, tmp_path / "fresh", "--resume")) == 2
    assert_one_error_line(capsys.readouterr().err, r"fresh.checkpoint\.npz: no such file")


def test_errors_in_a_subprocess_have_no_traceback(data_dir, tmp_path):
    corrupt = tmp_path / "c.npz"
    corrupt.write_bytes(b"not a zip")
    for args, pattern in [(["eval", "--checkpoint", corrupt], r"c\.npz"),
                          (["train", "--device", "cuda", "--epochs", "1"], r"CUDA is not usable"),
                          (["train", "--batch-size", "0", "--device", "cpu"], r"batch-size must be a positive")]:
        p = gpucnn_cmd(*args, cwd=tmp_path, env=NO_GPU)
        assert p.returncode == 2, (args, p.stderr)
        lines = assert_one_error_line(p.stderr, pattern)
        assert len(lines) == 1, p.stderr
        assert p.stdout == ""


def test_default_device_error_run_has_one_line_on_stderr(tmp_path):
    """With the default device, a note may say the CPU is used (cupy installed without a GPU, as in CI): it
    goes to stdout, so a failing command's stderr is still its one error line."""
    p = gpucnn_cmd("train", "--dataset", "mnist", "--data-dir", tmp_path, "--no-download", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert_error(p.stderr, r"mnist \(train split\) not found")
    assert p.stderr.count("gpucnn:") == 1, p.stderr
    assert "error" not in p.stdout


def test_model_names_in_any_spelling():
    args = cli._build_parser().parse_args(["train", "--model", "LeNet-5"])
    assert args.model == "lenet5"
    assert cli._build_parser().parse_args(["bench", "--model", "SimpleConvNet"]).model == "simple_convnet"


def test_internal_errors_keep_their_traceback(monkeypatch):
    from gpucnn import train

    def broken(*a, **k):
        raise RuntimeError("a bug")
    monkeypatch.setattr(train, "train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "--device", "cpu"])


def test_info_and_models(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in (f"gpucnn {gpucnn.__version__}", "numpy ", "python ", "cupy ", "CUDA: ", "devices: cpu"):
        assert needle in out
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet5", "simple_convnet", "alexnet", "vgg"):
        assert re.search(rf"^{name}\s", out, re.M)
    assert "61,706" in out  # LeNet-5 at 1x28x28, as PyTorch counts it (see test_models)


def test_info_compiles_every_kernel_and_reports_its_compile_time(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    device = "cuda:0" if gpucnn.devices.cuda_status()[0] else "emulated"
    assert f"compiling every kernel for {device}" in out
    for source in ("im2col.cu", "pooling.cu"):
        assert re.search(rf"^  {re.escape(source)} \(.*\): \d+\.\d{{3}} s$", out, re.M), out
    assert "devices: cpu, emulated, emulated:1" in out


def test_bench_compiles_before_timing_and_says_so(capsys, monkeypatch):
    from gpucnn import devices
    from gpucnn.devices import kernels
    monkeypatch.setattr(kernels, "_cache", kernels._Cache())   # nothing compiled yet in this process
    at_timing = []
    enter = devices.DeviceTimer.__enter__
    monkeypatch.setattr(devices.DeviceTimer, "__enter__",
                        lambda self: (at_timing.append(set(kernels.compile_counts())), enter(self))[1])
    assert cli.main(["bench", "--device", "emulated", "--steps", "1", "--warmup", "0", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^kernel compilation: \d+\.\d{3} s in this process, before timing \(excluded", out, re.M)
    assert at_timing and all(seen == {(s, "emulated") for s in kernels.sources()} for seen in at_timing)


def test_bench_count_ops_prints_device_ops_per_step_per_layer(capsys):
    assert cli.main(["bench", "--device", "emulated", "--count-ops", "--model", "lenet5", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^lenet5 training step, batch 4 of 1x28x28 on emulated: (\d+) device ops, 0 host syncs", out, re.M)
    assert m and 30 < int(m.group(1)) <= 60, out
    assert re.search(r"^\s+0  Conv2D\(1, 6, .*\)\s+\d+\s+\d+$", out, re.M)
    assert re.search(r"^\s+optimizer \(AdamW, 2 groups\)\s+\d+$", out, re.M)
    assert re.search(r"^\s+data \(gather, crop, flip, normalise\)\s+1$", out, re.M)
    assert cli.main(["bench", "--device", "cpu", "--count-ops"]) == 2
    assert_one_error_line(capsys.readouterr().err, "counted on the emulated device")


def test_module_entry_point_help():
    p = gpucnn_cmd("--help")
    assert p.returncode == 0 and "train" in p.stdout and "eval" in p.stdout
    p = gpucnn_cmd("train", "--help")
    assert p.returncode == 0 and "--limit-train" in p.stdout and "--on-nonfinite" in p.stdout


def test_bench(capsys):
    assert cli.main(["bench", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^lenet5 train on cpu, batch 8 of 1x28x28: [\d.]+ ms/step, \d+ images/s$", out, re.M)
    assert re.search(r"^lenet5 inference on cpu, batch 8 of 1x28x28: [\d.]+ ms/step, \d+ images/s$", out, re.M)
    assert cli.main(["bench", "--device", "cpu", "--model", "vgg", "--input-shape", "3x16x16", "--steps", "1",
                     "--batch-size", "4"]) == 0
    assert "batch 4 of 3x16x16" in capsys.readouterr().out
    assert cli.main(["bench", "--input-shape", "3x3"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"--input-shape must look like 3x32x32")
    assert cli.main(["bench", "--device", "cpu", "--model", "lenet5", "--input-shape", "1x8x8"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"lenet5: input_size 8x8 is too small")
    assert cli.main(["bench", "--device", "cpu", "--steps", "0"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"steps must be an int >= 1, got 0")


def test_corrupt_dataset_files_are_one_line(data_dir, tmp_path, capsys):
    """A truncated or mislabelled idx file in --data-dir: one line naming the file and the problem."""
    import gzip
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    images = bad / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:len(raw) // 2]))
    assert cli.main(tiny_train_args(bad, tmp_path / "out")) == 2
    assert_one_error_line(capsys.readouterr().err, r"train-images-idx3-ubyte\.gz: truncated")
    shutil.copy(Path(data_dir) / "train-images-idx3-ubyte.gz", images)
    labels = bad / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8] = 42                                       # a label outside 0..9
    labels.write_bytes(gzip.compress(bytes(raw)))
    assert cli.main(tiny_train_args(bad, tmp_path / "out")) == 2
    assert_one_error_line(capsys.readouterr().err, r"train-labels-idx1-ubyte\.gz: .*42")


def test_a_checkpoint_from_before_data_and_decay_groups_still_resumes_evaluates_and_predicts(data_dir, tmp_path,
                                                                                          capsys):
    """Older checkpoints have no 'data' entry (classes, normalisation), no 'decay_all' and no 'label_smoothing'
    setting: they meant the built-in data set's published statistics, weight decay on every parameter and no
    smoothing."""
    import numpy as np
    from _synth import rewrite_checkpoint

    out = tmp_path / "old"
    assert cli.main(tiny_train_args(data_dir, out, "--decay-all")) == 0

    def make_old(meta):
        del meta["data"]
        del meta["config"]["decay_all"]
        del meta["config"]["label_smoothing"]
    rewrite_checkpoint(out / "checkpoint.npz", make_old)
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 0
    assert "resuming" in capsys.readouterr().out
    from gpucnn.train import checkpoint
    resumed = checkpoint.load(out / "checkpoint.npz")
    assert resumed.config["label_smoothing"] == 0.0
    assert resumed.config["decay_all"] is True and not [k for k in resumed.optim_state if k.startswith("groups/")]
    rewrite_checkpoint(out / "checkpoint.npz", make_old)
    assert cli.main(["eval", "--checkpoint", str(out / "checkpoint.npz"), "--data-dir", data_dir]) == 0
    np.save(tmp_path / "x.npy", np.zeros((16, 16), np.uint8))
    assert cli.main(["predict", "--checkpoint", str(out / "checkpoint.npz"), str(tmp_path / "x.npy")]) == 0
    assert re.match(r"\S+x\.npy: \d \(\d\) [\d.]+%, \d \(\d\) [\d.]+%, \d \(\d\) [\d.]+%$",
                    capsys.readouterr().out.splitlines()[-1])


def test_the_readme_recipe_command_runs_as_written(data_dir, tmp_path, capsys):
    """The 93.5% recipe's command from the README, with every setting it gives, on a small stand-in: one epoch
    of 64 synthetic images in one process (the data-parallel run is tested in test_distributed)."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- recipe-command -->\s*```\s*(.*?)\s*```\s*<!-- /recipe-command -->", text, re.S)
    assert block, "README has no recipe-command block"
    words = block.group(1).split()
    args = words[words.index("gpucnn") + 1:]
    assert words[:3] == ["mpiexec", "-n", "2"] and args[0] == "train" and "--distributed" in args
    args = [a for a in args if a != "--distributed"]
    args[args.index("--epochs") + 1] = "1"
    assert cli.main(args + ["--dataset", "mnist", "--data-dir", str(data_dir), "--no-download", "--limit-train", "64",
                            "--limit-test", "32", "--batch-size", "32", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    given = dict(zip(args[1::2], args[2::2]))   # the recipe's own settings reached the run
    assert config["model"] == given["--model"] and config["label_smoothing"] == float(given["--label-smoothing"])
    assert config["optimizer"] == given.get("--optimizer", "adamw")
