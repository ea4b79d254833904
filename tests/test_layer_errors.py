"""Bad arguments and bad inputs raise clear errors naming the layer, what was expected and what was got."""
import numpy as np
import pytest

import tolerances
from _devices import no_host_sync
from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn.layers import Sequential

X4 = np.zeros((8, 1, 28, 28), np.float32)

# (description, callable, exception type, substrings the message must contain)
CONSTRUCTOR_CASES = [
    ("kernel 0", lambda: L.Conv2D(3, 16, 0), ValueError, ["Conv2D", "kernel_size", ">= 1", "got 0"]),
    ("kernel pair of 3", lambda: L.Conv2D(3, 16, (3, 3, 3)), ValueError, ["Conv2D", "kernel_size", "(3, 3, 3)"]),
    ("kernel float", lambda: L.Conv2D(3, 16, 2.5), ValueError, ["Conv2D", "kernel_size", "2.5"]),
    ("negative padding", lambda: L.Conv2D(3, 16, 3, padding=-1), ValueError, ["Conv2D", "padding", ">= 0", "-1"]),
    ("stride 0", lambda: L.Conv2D(3, 16, 3, stride=(1, 0)), ValueError, ["Conv2D", "stride", "(1, 0)"]),
    ("in_channels 0", lambda: L.Conv2D(0, 16, 3), ValueError, ["Conv2D", "in_channels", ">= 1", "got 0"]),
    ("out_channels -2", lambda: L.Conv2D(3, -2, 3), ValueError, ["Conv2D", "out_channels", "got -2"]),
    ("unknown init", lambda: L.Conv2D(3, 4, 3, init="glorot"), ValueError, ["Conv2D", "'he'", "'glorot'"]),
    ("int dtype", lambda: L.Conv2D(3, 4, 3, dtype=np.int32), TypeError, ["Conv2D", "float", "int32"]),
    ("affine 0 features", lambda: L.Affine(0, 3), ValueError, ["Affine", "in_features", "got 0"]),
    ("affine bad init", lambda: L.Affine(2, 3, init=None), ValueError, ["Affine", "init", "None"]),
    ("pool kernel 0", lambda: L.MaxPool2D(0), ValueError, ["MaxPool2D", "kernel_size", "got 0"]),
    ("pool stride 0", lambda: L.AvgPool2D(2, stride=0), ValueError, ["AvgPool2D", "stride", "got 0"]),
    ("pool negative padding", lambda: L.MaxPool2D(2, padding=-1), ValueError, ["MaxPool2D", "padding", "-1"]),
    ("pool padding > k/2", lambda: L.MaxPool2D(2, padding=2), ValueError,
     ["MaxPool2D", "at most half", "padding=(2, 2)", "kernel_size=(2, 2)"]),
    ("avgpool padding > k/2", lambda: L.AvgPool2D((3, 4), padding=(2, 1)), ValueError,
     ["AvgPool2D", "at most half", "(2, 1)"]),
    ("dropout p=1", lambda: L.Dropout(1.0), ValueError, ["Dropout", "[0.0, 1.0)", "1.0"]),
    ("dropout p<0", lambda: L.Dropout(-0.1), ValueError, ["Dropout", "p", "-0.1"]),
    ("dropout p=1.5", lambda: L.Dropout(1.5), ValueError, ["Dropout", "1.5"]),
    ("conv bias string", lambda: L.Conv2D(1, 2, 3, bias="no"), ValueError, ["Conv2D", "bias must be True or False", "'no'"]),
    ("bn channels 0", lambda: L.BatchNorm2D(0), ValueError, ["BatchNorm2D", "num_features", "got 0"]),
    ("bn eps 0", lambda: L.BatchNorm1D(3, eps=0), ValueError, ["BatchNorm1D", "eps", "0"]),
    ("bn momentum", lambda: L.BatchNorm1D(3, momentum=1.5), ValueError, ["BatchNorm1D", "momentum", "1.5"]),
    ("lrn size 0", lambda: L.LRN(0), ValueError, ["LRN", "size", "got 0"]),
    ("lrn k 0", lambda: L.LRN(k=0.0), ValueError, ["LRN", "k", "0.0"]),
    ("leaky slope str", lambda: L.LeakyReLU("x"), ValueError, ["LeakyReLU", "negative_slope", "'x'"]),
    ("workspace 0", lambda: L.set_workspace_limit(0), ValueError, ["workspace", "positive", "0"]),
    ("sequential empty", lambda: Sequential(), ValueError, ["Sequential", "at least one layer"]),
    ("sequential non-layer", lambda: Sequential(L.ReLU(), "relu"), TypeError, ["Sequential", "Layer", "str", "1"]),
]


def _fwd(layer, x, *args):
    return lambda: layer.forward(x, *args)


INPUT_CASES = [
    ("conv channels", _fwd(L.Conv2D(3, 16, 3), X4), ValueError,
     ["Conv2D(3, 16, kernel_size=(3, 3)", "expected input (N, 3, H, W)", "(8, 1, 28, 28)"]),
    ("conv ndim", _fwd(L.Conv2D(1, 2, 3), np.zeros((1, 28, 28), np.float32)), ValueError,
     ["Conv2D(1, 2", "4-D input (N, 1, H, W)", "(1, 28, 28)"]),
    ("conv too small", _fwd(L.Conv2D(1, 2, (3, 5), padding=1), np.zeros((2, 1, 6, 2), np.float32)), ValueError,
     ["Conv2D(1, 2", "kernel 3x5", "padding 1,1", "(2, 1, 6, 2)"]),
    ("conv uint8", _fwd(L.Conv2D(1, 2, 3), X4.astype(np.uint8)), TypeError, ["Conv2D(1, 2", "float32 or float64", "uint8"]),
    ("maxpool float16", _fwd(L.MaxPool2D(2), X4.astype(np.float16)), TypeError, ["MaxPool2D(", "float32 or float64", "float16"]),
    ("conv int64", _fwd(L.Conv2D(1, 2, 3), X4.astype(np.int64)), TypeError, ["Conv2D(1, 2", "int64"]),
    ("conv float64 into float32", _fwd(L.Conv2D(1, 2, 3), X4.astype(np.float64)), TypeError,
     ["Conv2D(1, 2", "expected float32", "got float64"]),
    ("conv list", _fwd(L.Conv2D(1, 2, 3), [[1.0]]), TypeError, ["Conv2D(1, 2", "expected an array", "list"]),
    ("maxpool ndim", _fwd(L.MaxPool2D(2), np.zeros((4, 9), np.float32)), ValueError,
     ["MaxPool2D(kernel_size=(2, 2)", "4-D input", "(4, 9)"]),
    ("avgpool too small", _fwd(L.AvgPool2D(5), np.zeros((1, 1, 4, 9), np.float32)), ValueError,
     ["AvgPool2D(kernel_size=(5, 5)", "kernel 5x5", "(1, 1, 4, 9)"]),
    ("maxpool int", _fwd(L.MaxPool2D(2), X4.astype(np.int32)), TypeError, ["MaxPool2D", "int32"]),
    ("affine features", _fwd(L.Affine(10, 2), X4), ValueError,
     ["Affine(10, 2)", "10 features", "(8, 1, 28, 28)"]),
    ("affine 1-D", _fwd(L.Affine(10, 2), np.zeros(10, np.float32)), ValueError, ["Affine(10, 2)", "(10,)"]),
    ("bn2d channels", _fwd(L.BatchNorm2D(3), X4), ValueError,
     ["BatchNorm2D(3", "expected input (N, 3, H, W)", "(8, 1, 28, 28)"]),
    ("bn1d ndim", _fwd(L.BatchNorm1D(1), X4), ValueError, ["BatchNorm1D(1", "2-D input (N, 1)", "(8, 1, 28, 28)"]),
    ("bn batch of one", _fwd(L.BatchNorm1D(4), np.zeros((1, 4), np.float32)), ValueError,
     ["BatchNorm1D(4", "more than 1 value per channel", "(1, 4)"]),
    ("lrn ndim", _fwd(L.LRN(), np.zeros((2, 5), np.float32)), ValueError, ["LRN(size=5", "4-D", "(2, 5)"]),
    ("relu int", _fwd(L.ReLU(), np.zeros(3, np.int16)), TypeError, ["ReLU()", "float32 or float64", "int16"]),
    ("dropout uint8", _fwd(L.Dropout(), np.zeros(3, np.uint8)), TypeError, ["Dropout(p=0.5)", "uint8"]),
    ("flatten 0-d", _fwd(L.Flatten(), np.float32(1.0) * np.ones((), np.float32)), ValueError, ["Flatten()", "()"]),
]


def _ce(logits, labels):
    return lambda: L.SoftmaxCrossEntropy().forward(logits, labels)


LOGITS = np.zeros((4, 3), np.float32)
LOSS_CASES = [
    ("logits 1-D", _ce(np.zeros(4, np.float32), np.zeros(4, np.int64)), ValueError,
     ["SoftmaxCrossEntropy", "(N, classes)", "(4,)"]),
    ("logits int", _ce(np.zeros((4, 3), np.int32), np.zeros(4, np.int64)), TypeError,
     ["SoftmaxCrossEntropy", "floating", "int32"]),
    ("labels float", _ce(LOGITS, np.zeros(4, np.float32)), TypeError, ["SoftmaxCrossEntropy", "integer", "float32"]),
    ("labels shape", _ce(LOGITS, np.zeros((4, 1), np.int64)), ValueError,
     ["SoftmaxCrossEntropy", "shape (4,)", "(4, 1)"]),
    ("labels count", _ce(LOGITS, np.zeros(5, np.int64)), ValueError, ["SoftmaxCrossEntropy", "(4,)", "(5,)"]),
    ("label too big", _ce(LOGITS, np.array([0, 1, 3, 2])), ValueError,
     ["SoftmaxCrossEntropy", "[0, 3)", "3 classes", "[0, 3]"]),
    ("label negative", _ce(LOGITS, np.array([0, -1, 2, 2])), ValueError, ["SoftmaxCrossEntropy", "[-1, 2]"]),
    ("labels list", _ce(LOGITS, [0, 1, 2, 0]), TypeError, ["SoftmaxCrossEntropy", "labels", "list"]),
]


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES + INPUT_CASES + LOSS_CASES, ids=lambda c: c[0])
def test_error_message(case):
    _, fn, exc, parts = case
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_params_on_another_device_than_input():
    layer = L.Affine(4, 2).to("emulated")
    with pytest.raises(backend.DeviceMismatchError) as info:
        layer.forward(np.zeros((3, 4), np.float32))
    msg = str(info.value)
    assert "Affine(4, 2)" in msg and "input is on cpu" in msg and "emulated" in msg and ".to(device)" in msg


def test_bn_buffers_on_another_device_than_input():
    layer = L.BatchNorm1D(4)
    layer.buffers["running_mean"] = backend.to_device(layer.buffers["running_mean"], "emulated")
    with pytest.raises(backend.DeviceMismatchError, match=r"BatchNorm1D\(4.*input is on cpu.*emulated"):
        layer.forward(np.zeros((3, 4), np.float32))


def test_loss_logits_and_labels_on_different_devices():
    labels = backend.to_device(np.zeros(4, np.int64), "emulated")
    with pytest.raises(backend.DeviceMismatchError, match="SoftmaxCrossEntropy.*logits are on cpu.*labels on emulated"):
        L.SoftmaxCrossEntropy().forward(LOGITS, labels)


SCORES = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


@pytest.mark.parametrize("bad", [7, 3, -1])
def test_out_of_range_labels_on_a_device_poison_the_loss_without_a_sync(bad, gpu_device):
    """On a GPU a range check would cost a host sync per step: there a bad label makes the loss and its
    sample's gradient NaN instead of silently dropping out; the other samples' gradients are untouched."""
    layer = L.SoftmaxCrossEntropy()
    logits = backend.to_device(SCORES, gpu_device)
    labels = backend.to_device(np.array([0, 1, bad, 2]), gpu_device)
    with no_host_sync(gpu_device):
        loss = layer.forward(logits, labels)
        grad = layer.backward()
    loss, grad = backend.to_cpu(loss), backend.to_cpu(grad)
    assert np.isnan(loss)
    assert np.isnan(grad[2]).any()
    good = L.SoftmaxCrossEntropy()
    good.forward(SCORES, np.array([0, 1, 1, 2]))
    tolerances.assert_close(grad[[0, 1, 3]], good.backward()[[0, 1, 3]], gpu_device, "good samples", "step")


def test_loss_on_a_device_with_good_labels_equals_the_cpu(gpu_device):
    labels = np.array([0, 1, 1, 2])
    cpu, dev = L.SoftmaxCrossEntropy(), L.SoftmaxCrossEntropy()
    want = cpu.forward(SCORES, labels)
    got = dev.forward(backend.to_device(SCORES, gpu_device), backend.to_device(labels, gpu_device))
    assert got.dtype == want.dtype == SCORES.dtype   # a kernel on a GPU, its numpy twin on the CPU: to rounding
    tolerances.assert_close(got, want, gpu_device, "loss", "step")
    tolerances.assert_close(dev.backward(), cpu.backward(), gpu_device, "dlogits", "step")


def test_loss_is_a_layer_without_parameters():
    layer = L.SoftmaxCrossEntropy()
    assert isinstance(layer, L.Layer) and layer.params == layer.grads == {} and layer.to("emulated") is layer


@pytest.mark.parametrize("make", [lambda: L.AvgPool2D(2), lambda: L.Flatten(), lambda: L.Dropout(0.0),
                                  lambda: L.ReLU(), lambda: L.MaxPool2D(2)])
@pytest.mark.parametrize("forward_on", ["cpu", "emulated"])
def test_dout_on_another_device_than_the_forward_pass(make, forward_on):
    layer = make()
    y = layer.forward(backend.to_device(np.ones((1, 1, 4, 4), np.float32), forward_on))
    other = "emulated" if forward_on == "cpu" else "cpu"
    with pytest.raises(backend.DeviceMismatchError, match=rf"{type(layer).__name__}.*dout is on {other} but the "
                                                         rf"forward pass ran on {forward_on}"):
        layer.backward(backend.to_device(np.ones(y.shape, np.float32), other))


def test_backward_before_forward_and_wrong_dout_shape():
    layer = L.Conv2D(1, 2, 3)
    with pytest.raises(RuntimeError, match=r"Conv2D\(1, 2.*backward\(\) called before forward\(\)"):
        layer.backward(np.zeros((8, 2, 26, 26), np.float32))
    layer.forward(X4)
    with pytest.raises(ValueError, match=r"Conv2D\(1, 2.*expected dout of shape \(8, 2, 26, 26\).*got \(8, 2, 26, 25\)"):
        layer.backward(np.zeros((8, 2, 26, 25), np.float32))
    with pytest.raises(RuntimeError, match=r"SoftmaxCrossEntropy.*before forward"):
        L.SoftmaxCrossEntropy().backward()


def test_load_state_dict_names_missing_unexpected_and_mismatched_keys():
    model = Sequential(L.Affine(4, 3), L.BatchNorm1D(3), L.Affine(3, 2))
    state = model.state_dict()
    del state["0.b"]
    state["9.W"] = np.zeros(1)
    state["2.W"] = np.zeros((3, 3))
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert "missing keys ['0.b']" in msg and "unexpected keys ['9.W']" in msg
    assert "2.W: expected (3, 2), got (3, 3)" in msg
    for k, v in model.state_dict().items():  # nothing was changed
        np.testing.assert_array_equal(v, before[k])


def test_summary_refuses_impossible_shapes():
    model = Sequential(L.Conv2D(1, 4, 5), L.Flatten(), L.Affine(10, 2))
    with pytest.raises(ValueError, match=r"Affine\(10, 2\).*got shape \(1, 2304\)"):
        model.summary((1, 1, 28, 28))
