"""ONNX export (gpucnn.interop.export_onnx): every zoo model and random models drawn from the layer table run in
onnxruntime as they run in gpucnn (inference mode, float32 to 1e-5 relative), LRN of every size (ONNX's window
differs from PyTorch's for even sizes), and every refusal named."""
import numpy as np
import onnx
import pytest

from _interop_nets import RANDOM_LAYERS, SEEDS, ZOO, assert_close, random_layer, random_model, randomize
from gpucnn import layers as L
from gpucnn import models
from gpucnn.interop import (DEFAULT_OPSET, MissingDependencyError, UnsupportedLayerError, export_onnx, onnx_session,
                            run_onnx, to_onnx)


def check(model, shape, tmp_path, batch=None, **kwargs):
    """Export, reload from the file, run on a batch of `batch` inputs (default: the exported batch size) in
    onnxruntime and compare with gpucnn's inference-mode output. Returns the loaded ModelProto."""
    path = export_onnx(model, tmp_path / "model.onnx", shape, **kwargs)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(1).standard_normal((batch or shape[0], *shape[1:])).astype(np.float32)
    want = model.forward(x, train=False)
    assert_close(run_onnx(onnx_session(path), x), want, "onnxruntime output")
    return proto


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_run_in_onnxruntime_as_in_gpucnn(name, tmp_path):
    build, shape = ZOO[name]
    model = build()
    randomize(model, np.random.default_rng(0))
    model.train()   # the export is of inference mode whatever the model's mode
    proto = check(model, shape, tmp_path, batch=shape[0] + 2)
    ops = [n.op_type for n in proto.graph.node]
    assert "Dropout" not in ops and ops[-1] == "Identity"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {i.name for i in proto.graph.initializer} >= set(model.params)   # named by gpucnn's names
    assert proto.opset_import[0].version == DEFAULT_OPSET


@pytest.mark.parametrize("seed", SEEDS)
def test_random_models_run_in_onnxruntime_as_in_gpucnn(seed, tmp_path):
    model, shape = random_model(seed)
    check(model, shape, tmp_path)


@pytest.mark.parametrize("kind", sorted(RANDOM_LAYERS, key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_each_layer_type_alone_in_many_configurations(kind, tmp_path):
    """Twelve random instances of each layer type (padding forms, groups, dilation, ceil mode, count_include_pad,
    adaptive sizes that do not divide the input, ...) in onnxruntime."""
    for seed in range(12):
        model, shape = random_layer(kind, seed)
        try:
            check(model, shape, tmp_path)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, input {shape}: {model[0]!r}: {e}") from None


def test_a_dilated_max_window_over_padding_only_gives_minus_inf(tmp_path):
    model = L.Sequential(L.MaxPool2D(2, stride=1, padding=1, dilation=2))
    x = np.full((1, 1, 1, 1), 5.0, np.float32)
    path = export_onnx(model, tmp_path / "m.onnx", x.shape)
    np.testing.assert_array_equal(run_onnx(path, x), model.forward(x, train=False))
    assert np.isneginf(run_onnx(path, x)).all()


@pytest.mark.parametrize("size", range(1, 9))
def test_lrn_of_every_size_matches_gpucnn_and_torch(size, tmp_path):
    """Odd sizes become ONNX's LRN; even ones (whose ONNX window is the mirror image of PyTorch's, and which
    onnxruntime refuses) are built from the definition. alpha is large so that a shifted window shows."""
    import torch
    import torch.nn.functional as F
    layer = L.LRN(size, alpha=1.5, beta=0.75, k=1.0)
    x = np.random.default_rng(size).standard_normal((2, 7, 3, 4)).astype(np.float32) * 2
    proto = check(L.Sequential(layer), x.shape, tmp_path)
    assert ("LRN" in [n.op_type for n in proto.graph.node]) == bool(size % 2)
    got = run_onnx(tmp_path / "model.onnx", x)
    assert_close(got, F.local_response_norm(torch.from_numpy(x), size, alpha=1.5, beta=0.75, k=1.0), "vs torch")


@pytest.mark.parametrize("opset", [13, 21])
def test_other_opsets_and_a_fixed_batch(opset, tmp_path):
    model = models.alexnet(1, 28, 10)   # LRN, dropout, overlapping pools
    proto = check(model, (2, 1, 28, 28), tmp_path, opset=opset, dynamic_batch=False)
    assert proto.opset_import[0].version == opset
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_float64_models_export_as_double(tmp_path):
    """onnxruntime's CPU provider has no float64 Conv, so the float64 case is checked on a model without one."""
    model = L.Sequential(L.Affine(6, 5, dtype=np.float64), L.BatchNorm1D(5, dtype=np.float64), L.Tanh())
    path = export_onnx(model, tmp_path / "m.onnx", (3, 6))
    x = np.random.default_rng(0).standard_normal((3, 6))
    np.testing.assert_allclose(run_onnx(path, x), model.forward(x, train=False), rtol=1e-12, atol=1e-14)
    assert onnx.load(path).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


def test_metadata_is_stored(tmp_path):
    path = export_onnx(models.lenet5(), tmp_path / "m.onnx", (1, 1, 28, 28), metadata={"gpucnn.dataset": "mnist"})
    assert onnx_session(path).get_modelmeta().custom_metadata_map["gpucnn.dataset"] == "mnist"
    assert onnx.load(path).producer_name == "gpucnn"


class Custom(L.Layer):
    def forward(self, x, train=None):
        return x


def test_refusals_name_the_layer_and_the_problem(tmp_path):
    with pytest.raises(UnsupportedLayerError, match=r"layer 1 \(SoftmaxCrossEntropy\(\)\): ONNX cannot express "
                                                    r"SoftmaxCrossEntropy: it is a loss"):
        to_onnx(L.Sequential(L.Affine(4, 3), L.SoftmaxCrossEntropy()), (2, 4))
    with pytest.raises(UnsupportedLayerError, match=r"layer 2\.0 \(Custom\(\)\): .*no mapping for layer type Custom"):
        to_onnx(L.Sequential(L.ReLU(), L.Tanh(), L.Sequential(Custom())), (2, 4))
    pool = L.MaxPool2D(2)
    pool.return_indices = True   # an option the table's entry does not read: refused, not exported without it
    with pytest.raises(UnsupportedLayerError, match=r"layer 0 \(MaxPool2D.*option\(s\) return_indices"):
        to_onnx(L.Sequential(pool), (1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"Affine\(4, 3\): expected input \(N, 4\)"):
        to_onnx(L.Affine(4, 3), (2, 5))
    for bad in [(2, 0, 3), "2x4", (2.0, 4), ()]:
        with pytest.raises(ValueError, match="input_shape must be"):
            to_onnx(L.Affine(4, 3), bad)
    for opset in (12, 99, True):
        with pytest.raises(ValueError, match="opset must be an int from 13"):
            to_onnx(L.Affine(4, 3), (2, 4), opset=opset)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"ONNX model .*junk.onnx: onnxruntime cannot load it"):
        (tmp_path / "junk.onnx").write_bytes(b"not a model")
        onnx_session(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError, match="no such file"):
        onnx_session(tmp_path / "absent.onnx")


def test_missing_onnx_names_the_extra(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"needs the onnx package.*pip install 'gpucnn\[onnx\]'"):
        to_onnx(models.lenet5(), (1, 1, 28, 28))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gpucnn\[onnxruntime\]'"):
        onnx_session("model.onnx")


def test_a_model_on_a_device_exports_its_values(tmp_path):
    """Parameters on a (here emulated) GPU are read back for the export; the model stays where it is."""
    cpu_model = models.lenet5()
    randomize(cpu_model, np.random.default_rng(3))
    device_model = models.lenet5()
    device_model.load_state_dict(cpu_model.state_dict())
    device_model.to("emulated")
    path = export_onnx(device_model, tmp_path / "m.onnx", (2, 1, 28, 28))
    assert str(device_model.device) == "emulated"
    x = np.random.default_rng(4).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert_close(run_onnx(path, x), cpu_model.forward(x, train=False), "onnxruntime output")
