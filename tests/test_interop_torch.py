"""PyTorch names, layouts and twins (gpucnn.interop): exact state-dict round trips for every layer type and zoo
model, twins that compute what the gpucnn model computes, weights made by PyTorch loading into gpucnn, and
every mismatch named. Models are drawn at random from the layer table (tests/_interop_nets.py); outputs agree to
1e-5 of their largest magnitude (float32)."""
import numpy as np
import pytest
import torch

import gpucnn
from _interop_nets import (NOT_IN_MODELS, RANDOM_LAYERS, SEEDS, ZOO, assert_close, layer_types, random_layer,
                          random_model, randomize, table_types)
from gpucnn import layers as L
from gpucnn import models
from gpucnn.interop import (IncompatibleKeys, MissingDependencyError, StateDictError, UnsupportedLayerError,
                            convert_to_torch, load_torch_state_dict, to_torch_state_dict, torch_names, torch_twin)


def test_every_layer_type_is_in_the_table():
    """A layer type added to gpucnn.layers must get its interop entry (until then it is refused by name)."""
    public = {getattr(L, name) for name in L.__all__}
    types = {c for c in public if isinstance(c, type) and issubclass(c, L.Layer)} - {L.Layer, L.Container}
    assert types - table_types() == set(), f"layer types without an interop entry: {types - table_types()}"


def test_every_table_entry_is_drawn_by_the_random_models():
    """A layer type added to the table without a random builder here would go untested."""
    assert table_types() == set(RANDOM_LAYERS) | NOT_IN_MODELS
    drawn = set().union(*(layer_types(random_model(seed)[0]) for seed in SEEDS))
    assert drawn == set(RANDOM_LAYERS), f"never drawn: {set(RANDOM_LAYERS) - drawn}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_model_round_trip_twin_and_torch_weights(seed):
    model, shape = random_model(seed)
    x = np.random.default_rng(seed + 100).standard_normal(shape).astype(np.float32)
    state = to_torch_state_dict(model)
    assert all(type(v) is np.ndarray for v in state.values())

    # the twin's own state_dict has exactly these names, order, shapes and values
    twin = torch_twin(model)
    theirs = twin.state_dict()
    assert list(theirs) == list(state)
    for k, v in state.items():
        assert tuple(theirs[k].shape) == v.shape and np.array_equal(theirs[k].numpy(), v), k
    assert twin.training and all(m.training for m in twin.modules())

    # same outputs in inference mode
    model.eval()
    assert_close(model(x), twin.eval()(torch.from_numpy(x)), "eval logits")

    # the round trip through PyTorch names is exact, into a model whose weights were all different
    other, _ = random_model(seed)
    randomize(other, np.random.default_rng(seed + 1))
    assert load_torch_state_dict(other, state) == IncompatibleKeys([], [])
    for k, v in {**model.params, **model.buffers}.items():
        assert np.array_equal({**other.params, **other.buffers}[k], v), k

    # weights made by PyTorch (re-drawn, then a few training steps moving the BN statistics) load into gpucnn
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    twin.train()
    opt = torch.optim.SGD(twin.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        twin(torch.randn(4, *shape[1:])).square().mean().backward()   # batch > 1: BatchNorm needs it
        opt.step()
    twin.eval()
    load_torch_state_dict(other, twin.state_dict())
    other.eval()
    assert_close(other(x), twin(torch.from_numpy(x)), "logits with PyTorch's weights")


@pytest.mark.parametrize("kind", sorted(RANDOM_LAYERS, key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_each_layer_type_alone_in_many_configurations(kind):
    """Twelve random instances of each layer type (its options drawn: padding forms, groups, dilation, ceil
    mode, ...) on random input shapes: the twin computes the layer, and the round trip is exact."""
    for seed in range(12):
        model, shape = random_layer(kind, seed)
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        state = to_torch_state_dict(model)
        twin = torch_twin(model).eval()
        assert_close(model.forward(x, train=False), twin(torch.from_numpy(x)), f"seed {seed}: {model[0]!r}")
        other = random_layer(kind, seed)[0]
        randomize(other, np.random.default_rng(seed + 50))
        load_torch_state_dict(other, state)
        assert all(np.array_equal(other.state_dict()[k], v) for k, v in model.state_dict().items())


def test_the_zoo_here_is_the_whole_zoo():
    assert {name.split("-")[0] for name in ZOO} == set(models.names())


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_round_trip_and_twin(name):
    build, shape = ZOO[name]
    model, other = build(), build()
    rng = np.random.default_rng(0)
    randomize(model, rng)
    state = to_torch_state_dict(model)
    load_torch_state_dict(other, {k: torch.from_numpy(v) for k, v in state.items()})   # torch tensors in
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in model.state_dict().items())
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(model.eval()(x), torch_twin(model).eval()(torch.from_numpy(x)), "eval logits")


def test_names_layouts_and_nesting():
    model = L.Sequential(L.Conv2D(1, 2, 3), L.ReLU(), L.Sequential(L.BatchNorm2D(2), L.Sequential(L.Flatten())),
                         L.Affine(2 * 4 * 4, 3))
    assert torch_names(model) == {"0.W": "0.weight", "0.b": "0.bias", "2.0.gamma": "2.0.weight",
                                  "2.0.beta": "2.0.bias", "2.0.running_mean": "2.0.running_mean",
                                  "2.0.running_var": "2.0.running_var", "3.W": "3.weight", "3.b": "3.bias"}
    state = to_torch_state_dict(model)
    assert list(state)[4:7] == ["2.0.running_mean", "2.0.running_var", "2.0.num_batches_tracked"]
    assert state["2.0.num_batches_tracked"].shape == () and state["2.0.num_batches_tracked"].dtype == np.int64
    assert np.array_equal(state["3.weight"], model.params["3.W"].T) and state["3.weight"].flags.c_contiguous
    state["0.weight"][...] = 7   # copies, not views of the live parameters
    assert not (model.params["0.W"] == 7).any()
    grads = convert_to_torch(model, model.grads)
    assert set(grads) == set(torch_names(model).values()) - {"2.0.running_mean", "2.0.running_var"}
    assert grads["3.weight"].shape == (3, 32)
    # a single layer is a model too
    assert list(to_torch_state_dict(L.Affine(4, 2))) == ["weight", "bias"]


def test_twin_keeps_dtype_and_each_layers_mode():
    model = L.Sequential(L.Affine(5, 4, dtype=np.float64), L.BatchNorm1D(4, dtype=np.float64), L.Dropout(0.5))
    model[1].eval()
    twin = torch_twin(model)
    assert twin[0].weight.dtype == torch.float64 and twin[1].running_var.dtype == torch.float64
    assert [m.training for m in twin] == [True, False, True]
    x = np.random.default_rng(0).standard_normal((3, 5))
    np.testing.assert_allclose(model.eval()(x), twin.eval()(torch.from_numpy(x)).detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("options", [{}, {"ignore_index": 2, "label_smoothing": 0.2},
                                     {"weight": [0.5, 2.0, 0.0, 1.0], "reduction": "sum"}, {"reduction": "none"}],
                         ids=str)
def test_loss_twin_is_cross_entropy(options):
    logits = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 2, 2, 0])
    loss = L.SoftmaxCrossEntropy(**options)
    twin = torch_twin(loss)
    assert isinstance(twin, torch.nn.CrossEntropyLoss) and twin.state_dict() == {} == to_torch_state_dict(loss)
    assert_close(np.asarray(loss(logits, labels)), twin(torch.from_numpy(logits), torch.from_numpy(labels)), "loss")


def test_strict_loading_names_every_problem_and_changes_nothing():
    model = models.lenet5()
    before = model.state_dict()
    state = {k: torch.from_numpy(v) for k, v in to_torch_state_dict(model).items()}
    del state["3.bias"]
    state["12.weight"] = torch.zeros(2)
    state["0.weight"] = torch.zeros(6, 1, 3, 3)
    state["6.weight"] = torch.zeros(400, 120)   # gpucnn's (in, out) layout is not PyTorch's
    with pytest.raises(StateDictError) as info:
        load_torch_state_dict(model, state)
    msg = str(info.value)
    assert "missing keys ['3.bias']" in msg and "unexpected keys ['12.weight']" in msg
    assert "0.weight: expected (6, 1, 5, 5), got (6, 1, 3, 3)" in msg
    assert "6.weight: expected (120, 400), got (400, 120)" in msg
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    # not strict: missing and unexpected keys are reported, shapes must still fit
    with pytest.raises(StateDictError, match="shape mismatches"):
        load_torch_state_dict(model, state, strict=False)
    del state["0.weight"], state["6.weight"]
    state["3.weight"] = torch.ones(16, 6, 5, 5)
    result = load_torch_state_dict(model, state, strict=False)
    assert result.missing_keys == ["0.weight", "3.bias", "6.weight"] and result.unexpected_keys == ["12.weight"]
    assert (model.params["3.W"] == 1).all() and np.array_equal(model.params["0.W"], before["0.W"])
    with pytest.raises(TypeError, match=r"pass module.state_dict\(\)"):
        load_torch_state_dict(model, torch.nn.Linear(2, 2))


def test_num_batches_tracked_is_optional_and_must_be_an_integer():
    model = L.Sequential(L.Conv2D(1, 2, 3), L.BatchNorm2D(2))
    state = to_torch_state_dict(model)
    state["1.num_batches_tracked"] = np.array(123, np.int64)
    load_torch_state_dict(model, state)
    del state["1.num_batches_tracked"]
    assert load_torch_state_dict(model, state) == IncompatibleKeys([], [])
    state["1.num_batches_tracked"] = np.array(1.5)
    with pytest.raises(StateDictError, match=r"non-integer values for \['1.num_batches_tracked'\]"):
        load_torch_state_dict(model, state)


def test_bfloat16_and_float64_tensors_load_into_float32():
    model = L.Affine(3, 2)
    w = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) / 4
    load_torch_state_dict(model, {"weight": w, "bias": torch.tensor([0.5, -1.0], dtype=torch.float64)})
    assert model.params["W"].dtype == np.float32
    np.testing.assert_array_equal(model.params["W"], w.float().numpy().T)
    np.testing.assert_array_equal(model.params["b"], [0.5, -1.0])


def test_loading_keeps_the_device():
    model = L.Sequential(L.Conv2D(1, 2, 3), L.BatchNorm2D(2)).to("emulated")
    state = to_torch_state_dict(model)
    state["0.weight"] += 1
    load_torch_state_dict(model, state)
    assert str(model.device) == "emulated"
    np.testing.assert_array_equal(gpucnn.to_cpu(model.params["0.W"]), state["0.weight"])


class Custom(L.Layer):
    def forward(self, x, train=None):
        return x


class WiderConv(L.Conv2D):
    pass


@pytest.mark.parametrize("use", ["state_dict", "twin", "names"])
def test_unknown_layers_and_options_are_refused_by_name(use):
    call = {"state_dict": to_torch_state_dict, "twin": torch_twin, "names": torch_names}[use]
    with pytest.raises(UnsupportedLayerError, match=r"layer 1\.2 \(Custom\(\)\).*no mapping for layer type Custom"):
        call(L.Sequential(L.ReLU(), L.Sequential(L.ReLU(), L.Tanh(), Custom())))
    with pytest.raises(UnsupportedLayerError, match=r"layer 0 .*WiderConv \(a subclass of Conv2D"):
        call(L.Sequential(WiderConv(1, 1, 1)))
    conv = L.Conv2D(1, 2, 3)
    conv.padding_mode = "reflect"   # an option added to the layer that the table's entry does not read
    with pytest.raises(UnsupportedLayerError, match=r"layer 1 \(Conv2D\(1, 2.*option\(s\) padding_mode"):
        call(L.Sequential(L.ReLU(), conv))


def test_missing_torch_names_the_extra(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError,
                       match=r"torch_twin needs the torch package.*pip install 'gpucnn\[torch\]'"):
        torch_twin(models.lenet5())
