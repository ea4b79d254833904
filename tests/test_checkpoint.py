"""Checkpoints: round trip, atomic replacement, and every way a file can be bad -> CheckpointError naming it."""
import os
import zipfile

import numpy as np
import pytest

import tolerances
from _synth import rewrite_checkpoint
from gpucnn import devices as backend
from gpucnn import models, optim
from gpucnn.train import checkpoint
from gpucnn.train.checkpoint import CheckpointError


def trained_lenet(steps=2, device="cpu"):
    """A LeNet-5 and an Adam optimizer after a couple of updates on `device` (so the optimizer has state)."""
    from gpucnn.layers import SoftmaxCrossEntropy
    backend.seed(3)
    model = models.lenet5(in_channels=1, input_size=28, num_classes=10).to(device)
    opt = optim.get("adam", lr=1e-3)
    loss = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = backend.to_device(rng.standard_normal((4, 1, 28, 28)).astype(np.float32), device)
        loss.forward(model.forward(x), backend.to_device(rng.integers(0, 10, 4), device))
        model.backward(loss.backward())
        opt.update(model.params, model.grads)
    return model, opt


def save_lenet(path, model, opt, **extra):
    kw = dict(model_name="lenet5", model_kwargs={"in_channels": 1, "input_size": [28, 28], "num_classes": 10},
              model_state=model.state_dict(), optim_state=opt.state_dict(), epoch=4, step=1234,
              rng_state=backend.get_rng_state(), config={"lr": 0.002, "model": "lenet5"},
              history=[{"epoch": 1, "test_acc": 0.5}])
    kw.update(extra)
    return checkpoint.save(path, **kw)


def test_round_trip_restores_model_optimizer_rng_and_metadata(tmp_path, any_device):
    """A checkpoint saved from device arrays (model and optimizer state on `any_device`) restores a model and
    an optimizer there that make bit for bit the update the originals make (same device, same process)."""
    model, opt = trained_lenet(device=any_device)
    path = save_lenet(tmp_path / "checkpoint.npz", model, opt)
    expected_rng = backend.host_rng().random(5)

    ck = checkpoint.load(path)
    assert (ck.model_name, ck.epoch, ck.step, ck.version) == ("lenet5", 4, 1234, checkpoint.FORMAT_VERSION)
    assert ck.config == {"lr": 0.002, "model": "lenet5"}
    assert ck.history == [{"epoch": 1, "test_acc": 0.5}]

    backend.seed(99)
    fresh = models.get(ck.model_name, **ck.model_kwargs).to(any_device)
    ck.load_into(fresh)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)
        assert fresh.state_dict()[k].dtype == v.dtype and type(v) is np.ndarray

    opt2 = optim.get("adam")
    opt2.load_state_dict(ck.optim_state)
    # the restored optimizer makes exactly the update the original makes
    g = {k: backend.to_device(np.full(p.shape, 0.01, p.dtype), any_device) for k, p in model.params.items()}
    opt.update(model.params, g)
    opt2.update(fresh.params, g)
    for k in model.params:
        assert backend.device_of(fresh.params[k]) == any_device
        tolerances.assert_exact(fresh.params[k], model.params[k], k)

    backend.set_rng_state(ck.rng_state)
    np.testing.assert_array_equal(backend.host_rng().random(5), expected_rng)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    model, opt = trained_lenet(1)
    path = tmp_path / "checkpoint.npz"
    save_lenet(path, model, opt, epoch=1)
    save_lenet(path, model, opt, epoch=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz"]
    assert checkpoint.load(path).epoch == 2

    # a writer failing half-way leaves the previous checkpoint untouched and no temp file
    def failing(f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(path, failing)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz"]
    assert checkpoint.load(path).epoch == 2


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".gpucnn-ckpt-abc.tmp").write_bytes(b"partial")
    (tmp_path / "keep.txt").write_text("x")
    assert checkpoint.remove_stale_temps(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.npz: no such file"):
        checkpoint.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, keep):
    model, opt = trained_lenet(1)
    path = save_lenet(tmp_path / "c.npz", model, opt)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"c\.npz.*(truncated or corrupt|not a gpucnn)"):
        checkpoint.load(path)


def test_corrupt_bytes_are_caught_by_the_crc(tmp_path):
    model, opt = trained_lenet(1)
    path = save_lenet(tmp_path / "c.npz", model, opt)
    # flip bytes inside the largest member's data (the 400x120 affine weight): zip CRC-32 catches it
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(open(path, "rb").read())
    middle = info.header_offset + 100 + info.compress_size // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.npz: truncated or corrupt"):
        checkpoint.load(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match=r"c\.npz"):
        checkpoint.load(path)


def test_an_npz_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, W=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"weights\.npz: not a gpucnn checkpoint"):
        checkpoint.load(path)


def test_other_format_version(tmp_path):
    model, opt = trained_lenet(1)
    path = save_lenet(tmp_path / "c.npz", model, opt)
    rewrite_checkpoint(path, __format__=np.array(checkpoint.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=rf"c\.npz: format version {checkpoint.FORMAT_VERSION + 1}"):
        checkpoint.load(path)


def test_missing_metadata_key(tmp_path):
    model, opt = trained_lenet(1)
    path = save_lenet(tmp_path / "c.npz", model, opt)
    rewrite_checkpoint(path, lambda meta: meta.pop("step"))
    with pytest.raises(CheckpointError, match=r"c\.npz: corrupt metadata, missing step"):
        checkpoint.load(path)


@pytest.mark.parametrize("meta_text", ['"5"', "[1, 2]", '"model_name epoch step"'])
def test_metadata_that_is_not_an_object(tmp_path, meta_text):
    model, opt = trained_lenet(1)
    path = save_lenet(tmp_path / "c.npz", model, opt)
    rewrite_checkpoint(path, __meta__=np.array(meta_text))
    with pytest.raises(CheckpointError, match=r"c\.npz: corrupt metadata, expected a JSON object"):
        checkpoint.load(path)


def test_malformed_optimizer_skeleton(tmp_path):
    model, opt = trained_lenet(1)
    path = save_lenet(tmp_path / "c.npz", model, opt)
    rewrite_checkpoint(path, lambda meta: meta.update(optim={"__items__": 5}))
    with pytest.raises(CheckpointError, match=r"c\.npz: corrupt optimizer state"):
        checkpoint.load(path)


def test_other_models_checkpoint_does_not_load(tmp_path):
    backend.seed(0)
    other = models.simple_convnet(in_channels=1, input_size=28, num_classes=10)
    path = checkpoint.save(tmp_path / "simple.npz", model_name="simple_convnet", model_kwargs={},
                           model_state=other.state_dict())
    lenet = models.lenet5(in_channels=1, input_size=28, num_classes=10)
    before = {k: v.copy() for k, v in lenet.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"simple\.npz \(simple_convnet.*does not fit the model: .*(missing|shape)"):
        checkpoint.load(path, model=lenet)
    for k, v in lenet.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(v, before[k])

    # same architecture, other input size: shapes differ
    bigger = models.lenet5(in_channels=1, input_size=32, num_classes=10)
    path = checkpoint.save(tmp_path / "big.npz", model_name="lenet5", model_kwargs={},
                           model_state=bigger.state_dict())
    with pytest.raises(CheckpointError, match=r"big\.npz.*shape mismatch 6\.W: checkpoint \(576, 120\), model \(400, 120\)"):
        checkpoint.load(path, model=lenet)


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        checkpoint.load(tmp_path)
