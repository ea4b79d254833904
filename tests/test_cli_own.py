"""The command line with your own data and model: train (npz, image folders), eval and predict on them, run
folders, resume with another length, byte-identical checkpoints, and the conveniences (--version, choices in
--help, names in any case, plurals)."""
import json
import os
import re

import numpy as np
import pytest

from _synth import write_image_folder, write_model_file, write_npz_dataset
from gpucnn import cli
from gpucnn.train import checkpoint
from _cli import assert_one_error_line, gpucnn_cmd

FAST = ["--device", "cpu", "--batch-size", "32", "--log-every", "1e9"]
RUN_FILES = {"best.npz", "checkpoint.npz", "config.json", "curves.png", "filters.png", "metrics.jsonl",
             "results.json"}


@pytest.fixture
def own(tmp_path, monkeypatch):
    """A folder holding my.npz (4 classes of 12x12 NHWC images, with a test split) and my_net.py; the cwd."""
    monkeypatch.chdir(tmp_path)
    write_npz_dataset(tmp_path / "my.npz", n_train=160, n_test=48)
    write_model_file(tmp_path)
    return tmp_path


def rows_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_done_when_npz_and_own_model_end_to_end_with_identical_bytes_whatever_the_hash_seed(own, tmp_path):
    """The issue's command in fresh interpreters, twice with different PYTHONHASHSEED: the same bytes."""
    outs = []
    for seed in ("1", "2"):
        cwd = tmp_path / f"run{seed}"
        cwd.mkdir()
        p = gpucnn_cmd("train", "--dataset", own / "my.npz", "--model", own / "my_net.py:build", "--val-split",
                       "0.1", "--early-stop", "3", "--epochs", "3", *FAST, cwd=cwd, env={"PYTHONHASHSEED": seed})
        assert p.returncode == 0, p.stderr
        outs.append(cwd / "runs" / "my_net-my")
    out = outs[0]
    assert set(os.listdir(out)) == RUN_FILES
    assert "training my_net.py:build" in p.stdout and "(144 train / 16 val / 48 test images 1x12x12" in p.stdout
    assert re.search(r"^done: test accuracy [\d.]+% \(loss [\d.]+\) at epoch \d of 3, chosen by validation loss; "
                     r"outputs in runs/my_net-my$", p.stdout, re.M), p.stdout
    rows = rows_of(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("val_loss" in r and "test_loss" not in r for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == f"{own / 'my_net.py'}:build" and config["dataset"] == str(own / "my.npz")
    assert (config["val_split"], config["early_stop"]) == (0.1, 3)
    for name in ("checkpoint.npz", "best.npz"):
        assert (out / name).read_bytes() == (outs[1] / name).read_bytes(), name


@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_eval_and_predict_a_run_on_own_data(own, capsys, device):
    assert cli.main(["train", "--dataset", "my.npz", "--model", "my_net.py:build", "--val-split", "0.2",
                     "--epochs", "2", "--out", "r", *FAST, "--device", device]) == 0
    capsys.readouterr()
    results = json.loads((own / "r" / "results.json").read_text())
    # eval of best.npz (dropout and batch norm inside: eval mode matters) reproduces the run's final test score
    assert cli.main(["eval", "--checkpoint", "r/best.npz", "--device", device]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * results['test']['acc']:.2f}%" in out and "on my test, 48 images" in out
    # and the validation split, carved again as the run carved it, gives the best epoch's validation score
    assert cli.main(["eval", "--checkpoint", "r/best.npz", "--split", "VAL", "--device", device]) == 0
    assert f"val accuracy {100 * results['best']['val_acc']:.2f}%" in capsys.readouterr().out
    # predict: PNG, JPEG and .npy inputs, the top classes with probabilities
    from PIL import Image
    x = np.load("my.npz")["x_test"][:3]                            # NHWC uint8
    Image.fromarray(x[0, :, :, 0], "L").save("a.png")
    Image.fromarray(np.repeat(x[1], 3, axis=2), "RGB").save("b.jpg", quality=100)   # colour -> luma
    np.save("c.npy", x)                                              # a batch of 3 (N, H, W, C)
    assert cli.main(["predict", "--checkpoint", "r/best.npz", "--top", "2", "--device", device, "a.png", "b.jpg",
                     "c.npy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a.png", "b.jpg", "c.npy[0]", "c.npy[1]", "c.npy[2]"]
    for line in lines:
        probs = [float(v) for v in re.findall(r"\(\d\) ([\d.]+)%", line)]
        assert len(probs) == 2 and probs[0] >= probs[1] and sum(probs) <= 100.01
    assert lines[0].split(":")[1] == lines[2].split(":")[1]          # the PNG and the array: the same image
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save("small.png")
    assert cli.main(["predict", "--checkpoint", "r/best.npz", "small.png"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"small\.png: is 12x10 pixels, but the model takes 12x12 images")


def test_image_folder_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "shapes", per_class=10, splits=("train", "test"))
    write_model_file(tmp_path)
    assert cli.main(["train", "--dataset", "shapes", "--model", "my_net:build", "--val-split", "0.2",
                     "--early-stop", "3", "--epochs", "3", *FAST]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "build-shapes"
    assert set(os.listdir(run)) == RUN_FILES
    assert "(24 train / 6 val / 30 test images 1x12x12" in out and "done: test accuracy" in out
    ck = checkpoint.load(run / "best.npz")
    assert ck.data["classes"] == ["circle", "cross", "dot"] and ck.model_name == "my_net:build"
    assert cli.main(["predict", "--checkpoint", str(run / "best.npz"), "shapes/test/dot/00.png"]) == 0
    assert re.match(r"shapes/test/dot/00\.png: (circle|cross|dot) \(\d\) [\d.]+%, ", capsys.readouterr().out)


def test_data_without_a_test_split_says_how_the_run_is_scored(own, capsys):
    write_npz_dataset(own / "notest.npz", n_train=96, n_test=0)
    assert cli.main(["train", "--dataset", "notest.npz", "--model", "simple_convnet", "--epochs", "1", *FAST]) == 0
    out = capsys.readouterr().out
    assert "notest has no test split and there is no validation data: only the training loss and accuracy are " \
           "reported (add --val-split 0.1 to score the run)" in out
    assert "1 epoch ->" in out and "1 epochs" not in out                # the banner's plural
    assert re.search(r"^done: training accuracy [\d.]+% after epoch 1 \(no validation or test data\)", out, re.M)
    assert cli.main(["train", "--dataset", "notest.npz", "--model", "simple_convnet", "--epochs", "1",
                     "--val-split", "0.25", "--out", "v", *FAST]) == 0
    out = capsys.readouterr().out
    assert "notest has no test split: the run is scored on the validation data" in out
    assert re.search(r"^done: validation accuracy [\d.]+% \(loss [\d.]+\) at epoch 1 of 1", out, re.M)
    assert cli.main(["eval", "--checkpoint", "v/best.npz"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"notest has no test split; pick another with --split")


def test_existing_run_folder_is_refused_naming_resume_and_overwrite(own, capsys):
    args = ["train", "--dataset", "my.npz", "--model", "simple_convnet", "--epochs", "1", "--out", "r", *FAST]
    assert cli.main(args) == 0
    first = (own / "r" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert cli.main(args) == 2
    assert_one_error_line(capsys.readouterr().err, r"r already holds a run \(config\.json, metrics\.jsonl, "
                                                   r"checkpoint\.npz.*--resume.*--overwrite")
    assert (own / "r" / "metrics.jsonl").read_bytes() == first
    assert cli.main(args + ["--overwrite"]) == 0
    assert cli.main(args + ["--resume", "--overwrite"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"--resume .* --overwrite .*pass one of them")


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_resume_to_another_length_says_how_the_schedule_changes(own, capsys, schedule):
    args = ["train", "--dataset", "my.npz", "--model", "simple_convnet", "--schedule", schedule, "--out", "r",
            *FAST]
    assert cli.main(args + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", "r", "--epochs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("resuming r at epoch 2/2 (global step 5)")
    note = [line for line in lines if "schedule now spans" in line]
    if schedule == "constant":
        assert not note                                              # its rate does not depend on the length
        return
    # at step 5 the one-epoch schedule had ended (rate 0); over two epochs it is half-way (rate lr / 2 for both)
    assert note == [f"--epochs 2 (the run was planned for 1): the {schedule} schedule now spans 2 epochs instead of "
                    f"1, so the learning rate at step 5 goes from 0.00e+00 to 1.00e-03"]
    from gpucnn import optim
    full = optim.make_schedule(schedule, 2e-3, 10)
    assert rows_of(own / "r")[1]["lr"] == full.lr_at(9)   # epoch 2's last step, of 10


def test_eval_on_another_data_set_and_a_run_of_a_model_object(own, capsys):
    import gpucnn
    from gpucnn.train import inputs
    net = gpucnn.models.build("my_net.py:build", in_channels=1, input_size=12, num_classes=4)
    gpucnn.fit(net, "my.npz", epochs=1, batch_size=32, out="obj", log=None)
    assert cli.main(["eval", "--checkpoint", "obj/checkpoint.npz"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"does not name its model .*pass --model "
                                                   r"path/to/file\.py:function")
    write_npz_dataset(own / "other.npz", n_train=8, n_test=20, seed=9)
    assert cli.main(["eval", "--checkpoint", "obj/checkpoint.npz", "--model", "my_net.py:build", "--dataset",
                     "other.npz"]) == 0
    assert "on other test, 20 images" in capsys.readouterr().out
    assert inputs.model_name(net) == ""


def test_version_help_choices_and_names_in_any_case(capsys):
    import gpucnn
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"gpucnn {gpucnn.__version__}\n"
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("mnist, fashion-mnist, cifar10", "{sgd,momentum,nesterov,adagrad,rmsprop,adam,adamw}",
                   "{constant,step,cosine,linear}", "{loss,acc}", ", ".join(gpucnn.models.names()),
                   "path/to/file.py:function", "--val-split F", "--early-stop N", "--decay-all", "--overwrite",
                   "--label-smoothing EPS"):
        assert needle in text, needle
    args = cli._build_parser().parse_args(["train", "--optimizer", "SGD", "--schedule", "Cosine", "--model",
                                           "LeNet-5", "--select", "ACC", "--on-nonfinite", "Skip"])
    assert (args.optimizer, args.schedule, args.model, args.select, args.on_nonfinite) == (
        "sgd", "cosine", "lenet5", "acc", "skip")
    assert cli.main(["train", "--model", "resnet50"]) == 2
    names = ", ".join(gpucnn.models.names())
    assert_one_error_line(capsys.readouterr().err, rf"--model: invalid choice: 'resnet50' \(choose from {names}, "
                                                   rf"or give your own as path/to/file\.py:function")


def test_own_model_errors_are_one_line(own, capsys):
    for spec, pattern in [("nothere.py:build", r"no such file .*nothere\.py"),
                          ("my_net.py:nothing", r"defines no function 'nothing'")]:
        assert cli.main(["train", "--dataset", "my.npz", "--model", spec, *FAST]) == 2
        assert_one_error_line(capsys.readouterr().err, pattern)
    assert not (own / "runs").exists()


def test_a_files_own_val_split_is_used_and_the_run_resumes(own, capsys):
    z = dict(np.load("my.npz"))
    z["x_val"], z["y_val"] = z["x_test"][:16], z["y_test"][:16]
    np.savez("withval.npz", **z)
    args = ["train", "--dataset", "withval.npz", "--model", "simple_convnet", "--out", "r", *FAST]
    assert cli.main(args + ["--epochs", "1"]) == 0
    assert "(160 train / 16 val / 48 test images" in capsys.readouterr().out
    assert json.loads((own / "r" / "config.json").read_text())["val_split"] == "val split"
    assert cli.main(["train", "--resume", "--out", "r", "--epochs", "2"]) == 0
    assert [r["epoch"] for r in rows_of(own / "r") if r["val_acc"] is not None] == [1, 2]
    assert cli.main(["eval", "--checkpoint", "r/best.npz", "--split", "val"]) == 0
    assert "on withval val, 16 images" in capsys.readouterr().out
