"""safetensors files (gpucnn.interop.save_safetensors / load_safetensors): exact round trips under gpucnn's and
PyTorch's names, files PyTorch's own safetensors loader reads into the twin, and unreadable or unfitting files
named."""
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from _interop_nets import random_model, randomize
from gpucnn.interop import (MissingDependencyError, StateDictError, load_safetensors, read_safetensors,
                            save_safetensors, to_torch_state_dict, torch_twin)


def equal_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("names", ["gpucnn", "torch"])
@pytest.mark.parametrize("seed", range(4))
def test_round_trip_under_either_names(names, seed, tmp_path):
    model, _ = random_model(seed)
    other, _ = random_model(seed)
    randomize(other, np.random.default_rng(seed + 7))
    path = save_safetensors(model, tmp_path / "w.safetensors", names=names, metadata={"note": "hi"})
    state, header = read_safetensors(path)
    assert header["gpucnn.names"] == names and header["note"] == "hi"
    assert set(state) == set(model.state_dict() if names == "gpucnn" else to_torch_state_dict(model))
    assert not equal_state(model, other)
    assert load_safetensors(other, path) == ([], [])
    assert equal_state(model, other)


def test_torch_named_file_loads_into_the_twin_with_pytorchs_loader(tmp_path):
    model, shape = random_model(3)
    path = save_safetensors(model, tmp_path / "w.safetensors", names="torch")
    twin = torch_twin(random_model(3)[0])
    assert not twin.load_state_dict(safetensors.torch.load_file(path), strict=True).missing_keys
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(twin.eval()(torch.from_numpy(x)).detach().numpy(), model.forward(x, train=False),
                               rtol=1e-5, atol=1e-5 * np.abs(model.forward(x, train=False)).max())


def test_files_without_gpucnn_metadata_are_recognised(tmp_path):
    """A file written by PyTorch's safetensors (PyTorch names) or by numpy (gpucnn names) loads without saying."""
    model, _ = random_model(5)
    other, _ = random_model(5)
    randomize(other, np.random.default_rng(1))
    twin = torch_twin(model)
    safetensors.torch.save_file(twin.state_dict(), tmp_path / "t.safetensors")
    load_safetensors(other, tmp_path / "t.safetensors")
    assert equal_state(model, other)
    randomize(other, np.random.default_rng(2))
    safetensors.numpy.save_file(model.state_dict(), tmp_path / "g.safetensors")
    load_safetensors(other, tmp_path / "g.safetensors")
    assert equal_state(model, other)


def test_problems_name_the_file(tmp_path):
    model, _ = random_model(1)
    path = save_safetensors(model, tmp_path / "w.safetensors")
    first = next(iter(model.params))
    state = model.state_dict()
    del state[first]
    state["extra"] = np.zeros(2, np.float32)
    safetensors.numpy.save_file(state, tmp_path / "bad.safetensors", metadata={"gpucnn.names": "gpucnn"})
    before = model.state_dict()
    with pytest.raises(StateDictError, match=rf"bad.safetensors: .*missing keys \['{first}'\].*unexpected keys "
                                             rf"\['extra'\]"):
        load_safetensors(model, tmp_path / "bad.safetensors")
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())   # nothing changed
    result = load_safetensors(model, tmp_path / "bad.safetensors", strict=False)
    assert result == ([first], ["extra"])
    with pytest.raises(StateDictError, match=r"w.safetensors: the PyTorch state dict does not fit"):
        load_safetensors(model, path, names="torch")
    (tmp_path / "torn.safetensors").write_bytes(open(path, "rb").read()[:50])
    with pytest.raises(ValueError, match=r"torn.safetensors: cannot be read"):
        load_safetensors(model, tmp_path / "torn.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_safetensors(model, tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="names must be one of 'gpucnn', 'torch'"):
        save_safetensors(model, tmp_path / "x.safetensors", names="keras")


def test_missing_safetensors_names_the_extra(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gpucnn\[safetensors\]'"):
        save_safetensors(random_model(0)[0], tmp_path / "w.safetensors")
