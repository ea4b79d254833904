"""gpucnn.fit through the API: a model not in the zoo on in-memory arrays, with a validation split, early
stopping and the best checkpoint, on the CPU and the emulated device, reproducibly; safe run folders; modes."""
import json
import os

import numpy as np
import pytest

import gpucnn
from _synth import patch_images
from gpucnn import devices
from gpucnn.layers import Affine, BatchNorm2D, Conv2D, Dropout, Flatten, MaxPool2D, ReLU
from gpucnn.train import checkpoint, evaluate

QUIET = dict(log=None, log_every=1e9)


def small_net(in_channels, input_size, num_classes):
    """Not in the zoo: conv, batch norm (buffers), dropout (randomness), as users write them."""
    h, w = input_size
    return gpucnn.Sequential(Conv2D(in_channels, 4, 3, padding=1), BatchNorm2D(4), ReLU(), MaxPool2D(2), Flatten(),
                             Dropout(0.2), Affine(4 * (h // 2) * (w // 2), num_classes))


@pytest.fixture(scope="module")
def arrays():
    """NHWC uint8 images as a user would have them, 4 classes, and a separate test set."""
    x, y = patch_images(200, 12, classes=4, rng=np.random.default_rng(5))
    xt, yt = patch_images(48, 12, classes=4, rng=np.random.default_rng(6))
    return (x.transpose(0, 2, 3, 1), y), (xt.transpose(0, 2, 3, 1), yt)


def params(model):
    return {k: devices.to_cpu(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_fit_own_model_on_arrays_with_validation_early_stopping_reproducibly(arrays, tmp_path, device):
    (x, y), test = arrays
    kw = dict(validation=0.25, test=test, epochs=4, batch_size=32, early_stopping=2, device=device, seed=3, **QUIET)
    a = gpucnn.fit(small_net, (x, y), out=tmp_path / "a", **kw)
    assert isinstance(a, gpucnn.History) and a.epochs == [1, 2, 3, 4]
    assert set(a.rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                              "images_per_second", "lr", "skipped_steps"}      # test: once, at the end
    assert a["val_acc"][-1] > 0.5 and a["val_loss"][-1] < a["val_loss"][0]    # it learns (chance: 0.25)
    assert a.best_epoch == int(np.argmin(a["val_loss"])) + 1
    assert a.test["epoch"] == a.best_epoch and 0 <= a.test["acc"] <= 1
    # the run folder holds everything, and best.npz the best epoch's weights, which the model ends with
    assert sorted(os.listdir(tmp_path / "a")) == ["best.npz", "checkpoint.npz", "config.json", "curves.png",
                                                  "filters.png", "metrics.jsonl", "results.json"]
    best = checkpoint.load(tmp_path / "a" / "best.npz")
    assert best.epoch == a.best_epoch and best.optim_state is None
    for k, v in params(a.model).items():
        np.testing.assert_array_equal(v, best.model_state[k], err_msg=k)
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["best_epoch"] == a.best_epoch and results["test"] == a.test
    # the final test score is that of the selected weights
    loader = gpucnn.DataLoader((test[0].transpose(0, 3, 1, 2), test[1]), batch_size=64, shuffle=False,
                               device=device, mean=best.data["mean"], std=best.data["std"])
    assert evaluate(a.model, loader)[1] == a.test["acc"]
    # the same seed gives the same run, to the bit
    b = gpucnn.fit(small_net, (x, y), out=tmp_path / "b", **kw)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in h.rows]
    assert strip(a) == strip(b) and a.test == b.test
    pa, pb = params(a.model), params(b.model)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    if device == "cpu":
        assert (tmp_path / "a" / "checkpoint.npz").read_bytes() == (tmp_path / "b" / "checkpoint.npz").read_bytes()


def test_early_stopping_stops_after_n_epochs_without_improvement(arrays):
    """With a rate too small to move any float32 weight, and no batch norm, the validation loss never changes
    again after epoch 1: the run stops at epoch 1 + N."""
    (x, y), _ = arrays
    net = lambda num_classes: gpucnn.Sequential(Flatten(), Affine(144, num_classes))
    h = gpucnn.fit(net, (x, y), validation=0.25, epochs=10, batch_size=50, optimizer="sgd", lr=1e-30,
                   schedule="constant", early_stopping=2, **QUIET)
    assert h.epochs == [1, 2, 3] and h.stopped_early and h.best_epoch == 1
    assert len(set(h["val_loss"])) == 1


def test_select_by_accuracy_and_test_every_epoch(arrays):
    (x, y), test = arrays
    h = gpucnn.fit(small_net, (x, y), validation=0.25, test=test, epochs=3, batch_size=32, select="acc",
                   test_every_epoch=True, seed=1, **QUIET)
    assert all(r["test_acc"] is not None and r["val_acc"] is not None for r in h.rows)
    accs = h["val_acc"]
    assert h.best_epoch == accs.index(max(accs)) + 1 and h.select == "acc"


def test_validation_split_is_drawn_with_the_seed_and_disjoint(arrays):
    from gpucnn.train import inputs
    (x, y), _ = arrays
    ds = inputs.prepare((x, y), 0.25, None, seed=7)
    again = inputs.prepare((x, y), 0.25, None, seed=7)
    other = inputs.prepare((x, y), 0.25, None, seed=8)
    assert (len(ds.train), len(ds.val)) == (150, 50) and ds.test is None
    np.testing.assert_array_equal(ds.val.images, again.val.images)
    assert not np.array_equal(ds.val.labels, other.val.labels)
    rows = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}
    assert not rows(ds.train.images) & rows(ds.val.images)     # patch images with noise are all distinct
    assert len(rows(ds.train.images) | rows(ds.val.images)) == 200
    assert ds.mean == pytest.approx(gpucnn.data.channel_stats(ds.train.images)[0])   # from the training part


def test_inputs_from_device_arrays_a_dataset_and_3d_grayscale(arrays):
    (x, y), _ = arrays
    xd = devices.to_device(np.ascontiguousarray(x[..., 0]), "emulated")     # (N, H, W) on a device
    yd = devices.to_device(y, "emulated")
    h = gpucnn.fit(small_net, (xd, yd), epochs=1, batch_size=64, device="cpu", **QUIET)
    assert h.epochs == [1] and h.test is None and h.best_epoch is None
    ds = gpucnn.Dataset(x.transpose(0, 3, 1, 2).copy(), y, ["a", "b", "c", "d"], "mine", "train")
    h = gpucnn.fit("simple_convnet", ds, validation=ds, epochs=1, batch_size=64, **QUIET)
    assert h.classes == ["a", "b", "c", "d"] and h.rows[0]["val_acc"] is not None


@pytest.mark.parametrize("bad,message", [
    (lambda: gpucnn.Sequential(Flatten(), Affine(144, 3)), r"gives outputs of shape \(1, 3\).*4 classes"),
    (lambda: gpucnn.Sequential(Flatten(), Affine(100, 4)), r"cannot take the data's 1x12x12 images"),
    (lambda: [Flatten()], r"returned list, expected a gpucnn Layer"),
])
def test_a_model_that_does_not_fit_the_data_is_refused_up_front(arrays, tmp_path, bad, message):
    (x, y), _ = arrays
    with pytest.raises(ValueError, match=message):
        gpucnn.fit(bad, (x, y), epochs=1, out=tmp_path / "r", **QUIET)
    assert not (tmp_path / "r").exists()


def test_fit_argument_errors(arrays, tmp_path):
    (x, y), _ = arrays
    with pytest.raises(ValueError, match="early-stop needs validation data: add --val-split"):
        gpucnn.fit(small_net, (x, y), early_stopping=2, **QUIET)
    with pytest.raises(ValueError, match="val-split must be a fraction between 0 and 1, got 1.5"):
        gpucnn.fit(small_net, (x, y), validation=1.5, **QUIET)
    with pytest.raises(ValueError, match=r"select must be one of loss, acc, got 'auc'"):
        gpucnn.fit(small_net, (x, y), select="auc", **QUIET)
    with pytest.raises(ValueError, match=r"resume needs the run folder"):
        gpucnn.fit(small_net, (x, y), resume=True, **QUIET)
    with pytest.raises(TypeError, match=r"train: expected \(images, labels\) arrays"):
        gpucnn.fit(small_net, x, **QUIET)
    with pytest.raises(gpucnn.DatasetError, match=r"the test images are 1x8x8, but the training images are "
                                                  r"1x12x12"):
        gpucnn.fit(small_net, (x, y), test=(x[:4, :8, :8], y[:4]), **QUIET)
    with pytest.raises(gpucnn.DatasetError, match=r"train images: images that are not uint8 are taken as pixel "
                                                  r"values scaled to \[0, 1\], but these range from 0 to \d+: divide"):
        gpucnn.fit(small_net, (x.astype(np.float32), y), **QUIET)     # 0-255 values as floats: not divided


def test_an_existing_run_is_never_overwritten_without_resume_or_overwrite(arrays, tmp_path):
    (x, y), _ = arrays
    out = tmp_path / "run"
    gpucnn.fit(small_net, (x, y), validation=0.25, epochs=1, batch_size=64, out=out, **QUIET)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(ValueError, match=r"run already holds a run \(config.json, metrics.jsonl, checkpoint.npz, "
                                         r"best.npz.*pass --resume to continue it, --overwrite to delete it"):
        gpucnn.fit(small_net, (x, y), epochs=1, batch_size=64, out=out, **QUIET)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    (out / "notes.txt").write_text("mine")
    gpucnn.fit(small_net, (x, y), epochs=1, batch_size=64, out=out, overwrite=True, **QUIET)   # no validation
    assert "best.npz" not in os.listdir(out) and (out / "notes.txt").read_text() == "mine"  # only run files go
    with pytest.raises(ValueError, match="pass one of them"):
        gpucnn.fit(small_net, (x, y), out=out, resume=True, overwrite=True, **QUIET)


def test_config_json_holds_the_run_settings(arrays, tmp_path):
    (x, y), _ = arrays
    gpucnn.fit("lenet5", (np.pad(x, ((0, 0), (8, 8), (8, 8), (0, 0))), y), validation=0.2, epochs=1,
               batch_size=64, lr=1e-3, out=tmp_path / "r", **QUIET)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert {k: config[k] for k in ("model", "dataset", "epochs", "batch_size", "lr", "val_split", "decay_all")} == \
        {"model": "lenet5", "dataset": "arrays", "epochs": 1, "batch_size": 64, "lr": 1e-3, "val_split": 0.2,
         "decay_all": False}
    assert checkpoint.load(tmp_path / "r" / "checkpoint.npz").config == config


def test_the_trainer_and_evaluate_switch_modes_and_eval_mode_is_deterministic(arrays):
    (x, y), test = arrays
    model = small_net(1, (12, 12), 4).eval()               # handed over in eval mode: fit trains in training mode
    h = gpucnn.fit(model, (x, y), epochs=1, batch_size=64, **QUIET)
    assert h.model is model and not model.training          # and hands it back in eval mode
    assert np.abs(model.buffers["1.running_mean"]).max() > 0   # batch statistics were gathered (training mode)
    xb = np.ascontiguousarray(test[0][:16].transpose(0, 3, 1, 2), dtype=np.float32) / 255
    stats = model.buffers["1.running_mean"].copy()
    np.testing.assert_array_equal(model(xb), model(xb))     # model(x) in eval mode: the same twice
    np.testing.assert_array_equal(model.buffers["1.running_mean"], stats)
    model.train()
    assert not np.array_equal(model(xb), model(xb))         # dropout draws new masks in training mode
    # evaluate runs a training-mode model's passes in eval mode, and leaves its mode as it was
    loader = gpucnn.DataLoader((test[0].transpose(0, 3, 1, 2), test[1]), batch_size=48, shuffle=False)
    loss, acc, _ = evaluate(model, loader)
    assert model.training
    model.eval()
    assert evaluate(model, loader)[:2] == (loss, acc) and not model.training


def test_trainer_default_keeps_biases_and_norms_out_of_weight_decay(arrays, tmp_path):
    (x, y), _ = arrays
    gpucnn.fit(small_net, (x, y), epochs=1, batch_size=64, out=tmp_path / "a", **QUIET)
    state = checkpoint.load(tmp_path / "a" / "checkpoint.npz").optim_state
    assert list(state["groups/0/params"]) == ["0.b", "1.gamma", "1.beta", "6.b"]   # the 1-D parameters
    assert state["groups/0/weight_decay"] == 0.0 and state["hparams/weight_decay"] == 0.05
    gpucnn.fit(small_net, (x, y), epochs=1, batch_size=64, out=tmp_path / "b", decay_all=True, **QUIET)
    assert not [k for k in checkpoint.load(tmp_path / "b" / "checkpoint.npz").optim_state if "groups" in k]


def test_label_smoothing_trains_with_pytorchs_smoothed_loss_and_is_part_of_the_run(arrays, tmp_path):
    (x, y), test = arrays
    kw = dict(test=test, epochs=1, batch_size=64, seed=1, **QUIET)
    plain = gpucnn.fit(small_net, (x, y), **kw)
    smooth = gpucnn.fit(small_net, (x, y), label_smoothing=0.2, out=tmp_path / "s", **kw)
    # the same first step, then other gradients: other weights, and a loss with the smoothing term
    assert not np.array_equal(params(plain.model)["0.W"], params(smooth.model)["0.W"])
    torch = pytest.importorskip("torch")
    saved = checkpoint.load(tmp_path / "s" / "checkpoint.npz").data
    loader = gpucnn.DataLoader((test[0].transpose(0, 3, 1, 2), test[1]), batch_size=48, shuffle=False,
                               mean=saved["mean"], std=saved["std"])
    xb, yb = next(iter(loader))
    logits = smooth.model.forward(xb, train=False)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(np.asarray(yb)).long(),
                                             label_smoothing=0.2).item()
    assert smooth["test_loss"][-1] == pytest.approx(want, rel=1e-5)
    assert json.loads((tmp_path / "s" / "config.json").read_text())["label_smoothing"] == 0.2
    with pytest.raises(ValueError, match="--resume: .* label-smoothing 0.0 .*0.2"):
        gpucnn.fit(small_net, (x, y), out=tmp_path / "s", resume=True, **{**kw, "epochs": 2})
    for bad in (-0.1, 1.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="label-smoothing must be a number in \\[0, 1\\)"):
            gpucnn.fit(small_net, (x, y), label_smoothing=bad, **kw)


def test_eval_every_scores_every_nth_epoch_and_the_last(arrays, tmp_path):
    (x, y), test = arrays
    kw = dict(epochs=5, batch_size=32, eval_every=2, seed=1, **QUIET)
    h = gpucnn.fit(small_net, (x, y), test=test, out=tmp_path / "t", **kw)
    assert [r["epoch"] for r in h.rows if "test_acc" in r] == [2, 4, 5]
    assert all("train_acc" in r for r in h.rows) and h.test["epoch"] == 5
    every = gpucnn.fit(small_net, (x, y), test=test, **{**kw, "eval_every": 1})
    assert h.test == every.test                      # skipping evaluations changes nothing trained
    v = gpucnn.fit(small_net, (x, y), validation=0.25, test=test, select="acc", out=tmp_path / "v", **kw)
    assert [r["epoch"] for r in v.rows if "val_acc" in r] == [2, 4, 5]
    assert not any("test_acc" in r for r in v.rows) and v.best_epoch in (2, 4, 5)
    lines = [json.loads(line) for line in open(tmp_path / "v" / "metrics.jsonl")]
    assert [("val_acc" in r) for r in lines] == [False, True, False, True, True]
    with pytest.raises(ValueError, match="eval-every must be a positive integer"):
        gpucnn.fit(small_net, (x, y), epochs=1, eval_every=0, **QUIET)
