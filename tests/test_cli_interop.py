"""`gpucnn export` and `gpucnn eval --onnx`: a model trained by `gpucnn train` exported to ONNX gives the
checkpoint's test accuracy in onnxruntime; exported PyTorch weights load into the twin with strict=True and give
the same logits. Runs on a synthetic data set always, and on Fashion-MNIST where Debian's package is installed."""
import os
import re
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from _synth import write_idx_dataset, write_npz_dataset
from gpucnn import cli, data, models
from gpucnn.interop import torch_twin
from gpucnn.train import checkpoint
from test_cli import assert_one_error_line

FASHION = "/usr/share/datasets/fashion-mnist"


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def accuracy_line(text):
    return re.search(r"test accuracy [\d.]+%  loss [\d.]+", text).group(0)


def check_exports(capsys, run_dir, dataset, data_dir, limit_test):
    """Export the run's checkpoint three ways and check each against the checkpoint's model."""
    ckpt = os.path.join(run_dir, "checkpoint.npz")
    onnx_path, pt_path, st_path = (os.path.join(run_dir, f"model.{e}") for e in ("onnx", "pt", "safetensors"))
    assert "as ONNX opset 17" in run(capsys, "export", "--checkpoint", ckpt, "--format", "onnx", "--out", onnx_path)
    run(capsys, "export", "--checkpoint", ckpt, "--format", "torch", "--out", pt_path)
    run(capsys, "export", "--checkpoint", ckpt, "--format", "safetensors", "--names", "torch", "--out", st_path)

    limit = ["--limit-test", limit_test] if limit_test else []
    by_onnx = run(capsys, "eval", "--onnx", onnx_path, *limit)     # the data set and its folder come from the file
    by_ckpt = run(capsys, "eval", "--checkpoint", ckpt, "--device", "cpu", *limit)
    assert "(onnxruntime, epoch 1)" in by_onnx
    assert accuracy_line(by_onnx) == accuracy_line(by_ckpt)
    assert by_onnx.split("confusion matrix")[1] == by_ckpt.split("confusion matrix")[1]

    saved = checkpoint.load(ckpt)
    model = saved.load_into(models.get(saved.model_name, **saved.model_kwargs)).eval()
    test = data.DataLoader(data.load_dataset(dataset, "test", data_dir=data_dir), batch_size=64, shuffle=False)
    x, _ = next(iter(test))
    want = model(x)
    for state in (torch.load(pt_path, weights_only=True), safetensors.torch.load_file(st_path)):
        twin = torch_twin(models.get(saved.model_name, **saved.model_kwargs))   # a fresh model's twin: other weights
        assert not np.allclose(twin.eval()(torch.from_numpy(x)).detach().numpy(), want)
        twin.load_state_dict(state, strict=True)
        got = twin.eval()(torch.from_numpy(x)).detach().numpy()
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_export_and_eval_onnx_on_a_synthetic_run(tmp_path, capsys):
    data_dir = write_idx_dataset(tmp_path, n_train=256, n_test=96, size=16)
    out = tmp_path / "run"
    run(capsys, "train", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", "--out", out)
    check_exports(capsys, out, "mnist", data_dir, None)


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"Fashion-MNIST not installed in {FASHION} "
                                                       f"(apt-get install dataset-fashion-mnist)")
def test_lenet5_trained_on_fashion_mnist_exports_with_the_same_accuracy(tmp_path, capsys):
    """The issue's done-when check: gpucnn train's LeNet-5 on Fashion-MNIST, its accuracy on the whole test split
    reproduced by onnxruntime, its PyTorch weights giving the same logits in the twin."""
    out = tmp_path / "run"
    run(capsys, "train", "--data-dir", FASHION, "--no-download", "--epochs", "1", "--limit-train", "5000",
        "--limit-test", "1000", "--device", "cpu", "--out", out)   # the training's own evaluation, kept short
    check_exports(capsys, out, "fashion-mnist", FASHION, None)



def test_eval_onnx_honours_dataset_and_refuses_options_it_cannot_apply(tmp_path, capsys):
    data_dir = write_idx_dataset(tmp_path, n_train=64, n_test=32, size=16)
    out = tmp_path / "run"
    run(capsys, "train", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", "--out", out)
    onnx_path = tmp_path / "m.onnx"
    run(capsys, "export", "--checkpoint", out / "checkpoint.npz", "--format", "ONNX", "--out", onnx_path)  # any case
    other = tmp_path / "other"
    other.mkdir()
    write_idx_dataset(other, n_train=8, n_test=40, size=16, seed=3)
    by_onnx = run(capsys, "eval", "--onnx", onnx_path, "--dataset", "mnist", "--data-dir", other)
    by_ckpt = run(capsys, "eval", "--checkpoint", out / "checkpoint.npz", "--dataset", "mnist", "--data-dir", other,
                  "--device", "cpu")
    assert "40 images" in by_onnx and accuracy_line(by_onnx) == accuracy_line(by_ckpt)
    npz = write_npz_dataset(tmp_path / "own.npz", n_train=8, n_test=16, size=16, classes=10)
    assert "own test, 16 images" in run(capsys, "eval", "--onnx", onnx_path, "--dataset", npz)
    small = write_npz_dataset(tmp_path / "small.npz", n_train=8, n_test=8, size=12)
    for args, pattern in [(["--split", "train"], r"--split train: eval --onnx scores the test split"),
                          (["--model", "lenet5"], r"--model lenet5: eval --onnx .*applies to eval --checkpoint"),
                          (["--dataset", small], r"m.onnx: takes 1x16x16 images, but .*small.npz has 1x12x12")]:
        assert cli.main(["eval", "--onnx", str(onnx_path), *map(str, args)]) == 2, args
        assert_one_error_line(capsys.readouterr().err, pattern)

def test_export_and_eval_onnx_errors_are_one_line(tmp_path, capsys, monkeypatch):
    data_dir = write_idx_dataset(tmp_path, n_train=64, n_test=32, size=16)
    out = tmp_path / "run"
    run(capsys, "train", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", "--out", out)
    ckpt = out / "checkpoint.npz"
    cases = [
        (["export", "--checkpoint", ckpt, "--out", tmp_path / "m.onnx"], r"required: --format"),
        (["export", "--checkpoint", ckpt, "--format", "keras", "--out", "m"], r"invalid choice: 'keras'"),
        (["export", "--checkpoint", tmp_path / "none.npz", "--format", "onnx", "--out", tmp_path / "m.onnx"],
         r"none.npz: no such file"),
        (["export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path, "--opset", "17"],
         r"--out .*: expected a file path"),
        (["export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx", "--opset", "9"],
         r"opset must be an int from 13"),
        (["eval", "--onnx", tmp_path / "absent.onnx"], r"absent.onnx: no such file"),
        (["eval", "--onnx", tmp_path / "m.onnx", "--checkpoint", ckpt], r"not allowed with argument"),
    ]
    for args, pattern in cases:
        assert cli.main([str(a) for a in args]) == 2, args
        assert_one_error_line(capsys.readouterr().err, pattern)
    bare = tmp_path / "bare.onnx"   # an ONNX file that does not say what it was trained on
    from gpucnn.interop import export_onnx
    export_onnx(models.lenet5(1, 16, 10), bare, (1, 1, 16, 16))
    assert cli.main(["eval", "--onnx", str(bare)]) == 2
    assert_one_error_line(capsys.readouterr().err, r"bare.onnx: its metadata does not name the data set")
    assert cli.main(["eval", "--onnx", str(bare), "--device", "cuda"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"--device cuda: eval --onnx runs onnxruntime on the CPU")
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert cli.main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert_one_error_line(capsys.readouterr().err, r"needs the onnx package.*pip install 'gpucnn\[onnx\]'")
    assert not (tmp_path / "x").exists()
