"""Residual and Concat blocks, and the resnet model built from them, against PyTorch twins with the same
weights (forward, input gradient, every parameter gradient), on the CPU and the emulated GPU; their flat,
stable parameter names, nesting, checkpoints, shape errors and summary."""
import numpy as np
import pytest
import torch

import gpucnn
from _oracle import assert_close, randn
from gpucnn import devices as backend
from gpucnn import layers as L
from gpucnn import models


class TorchResidual(torch.nn.Module):
    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class TorchConcat(torch.nn.Module):
    def __init__(self, branches, axis):
        super().__init__()
        self.branches, self.axis = torch.nn.ModuleList(branches), axis

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=self.axis)


def _param(a):
    return torch.nn.Parameter(torch.tensor(np.asarray(backend.to_cpu(a))))


def twin(layer):
    """A torch module computing what `layer` computes, with copies of its parameters; returns (module, names)
    where names maps our parameter names to (torch parameter, transform to our layout)."""
    names = {}
    if isinstance(layer, (L.Sequential, L.Residual, L.Concat)):
        subs = []
        for name, child in layer.named_children():
            module, inner = twin(child)
            subs.append((name, module))
            names.update({f"{name}.{k}": v for k, v in inner.items()})
        body = [m for n, m in subs if n != "shortcut"]
        if isinstance(layer, L.Sequential):
            return torch.nn.Sequential(*body), names
        if isinstance(layer, L.Concat):
            return TorchConcat(body, layer.axis), names
        shortcut = dict(subs).get("shortcut")
        return TorchResidual(torch.nn.Sequential(*body), shortcut), names
    if isinstance(layer, L.Conv2D):
        t, b, left, r = layer.pads
        m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, 0,
                            layer.dilation, layer.groups, bias="b" in layer.params)
        pad = torch.nn.ZeroPad2d((left, r, t, b))
        module = torch.nn.Sequential(pad, m)
    elif isinstance(layer, L.Affine):
        m = torch.nn.Linear(layer.in_features, layer.out_features)
        m.weight, m.bias = _param(layer.params["W"].T.copy()), _param(layer.params["b"])
        module = m
        names.update(W=(m.weight, lambda g: g.T), b=(m.bias, None))
    elif isinstance(layer, L.BatchNorm2D):
        m = module = torch.nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum)
        m.weight, m.bias = _param(layer.params["gamma"]), _param(layer.params["beta"])
        names.update(gamma=(m.weight, None), beta=(m.bias, None))
    else:
        module = {L.ReLU: torch.nn.ReLU, L.Flatten: torch.nn.Flatten, L.GlobalAvgPool2D: lambda: torch.nn.AdaptiveAvgPool2d(1),
                  L.Tanh: torch.nn.Tanh}[type(layer)]()
    if isinstance(layer, L.Conv2D):
        m.weight = _param(layer.params["W"])
        names["W"] = (m.weight, None)
        if "b" in layer.params:
            m.bias = _param(layer.params["b"])
            names["b"] = (m.bias, None)
    return module, names


def compare_with_twin(model, x, device, train=True):
    """model on `device` vs its torch twin: output, input gradient (when the model gives one) and all grads."""
    module, names = twin(model)
    module.train(train)
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    dout = randn(np.random.default_rng(9), *yt.shape)
    yt.backward(torch.tensor(dout))
    model.to(device).train(train)
    y = model.forward(backend.to_device(x, device))
    dx = model.backward(backend.to_device(dout, device))
    assert_close(y, yt, "y", device)
    if dx is not None:
        assert_close(dx, xt.grad, "dx", device)
    assert set(names) == set(model.params), "every parameter has a torch twin"
    for key, (param, to_ours) in names.items():
        assert_close(model.grads[key], param.grad if to_ours is None else to_ours(param.grad), f"grad {key}", device)


def block_net():
    """A net with a residual block (projection shortcut), an identity residual, a concat of a plain layer
    and a nested chain, and a residual nested inside a concat branch."""
    return L.Sequential(
        L.Conv2D(2, 4, 3, padding=1),
        L.Residual(L.Conv2D(4, 6, 3, stride=2, padding=1, bias=False), L.BatchNorm2D(6), L.ReLU(),
                   L.Conv2D(6, 6, 3, padding="same"),
                   shortcut=L.Sequential(L.Conv2D(4, 6, 1, stride=2, bias=False), L.BatchNorm2D(6))),
        L.Residual(L.Conv2D(6, 6, 3, padding=1, groups=3), L.Tanh()),
        L.Concat(L.Conv2D(6, 2, 1),
                 L.Sequential(L.Conv2D(6, 3, 3, padding=(0, 2, 1, 1), dilation=(1, 1)), L.ReLU(),
                              L.Residual(L.Conv2D(3, 3, 1)))),
        L.GlobalAvgPool2D(), L.Flatten(), L.Affine(5, 3))


@pytest.mark.parametrize("train", [True, False])
def test_blocks_match_torch(any_device, train):
    gpucnn.seed(1)
    model = block_net()
    for k, v in model.params.items():
        if not k.endswith(".W"):
            v[...] = np.random.default_rng(len(k)).standard_normal(v.shape).astype(np.float32) * 0.5
    model.need_input_grad = True
    compare_with_twin(model, randn(np.random.default_rng(2), 3, 2, 7, 6), any_device, train)


@pytest.mark.parametrize("size", [12, (13, 9)])
def test_resnet_matches_torch(any_device, size):
    gpucnn.seed(0)
    model = models.resnet(in_channels=1, input_size=size, num_classes=10, widths=(4, 8), blocks=(2, 1))
    h, w = (size, size) if isinstance(size, int) else size
    compare_with_twin(model, randn(np.random.default_rng(1), 2, 1, h, w), any_device)


def test_block_parameter_names_are_flat_and_stable():
    model = block_net()
    assert list(model.params) == [
        "0.W", "0.b", "1.0.W", "1.1.gamma", "1.1.beta", "1.3.W", "1.3.b", "1.shortcut.0.W", "1.shortcut.1.gamma",
        "1.shortcut.1.beta", "2.0.W", "2.0.b", "3.0.W", "3.0.b", "3.1.0.W", "3.1.0.b", "3.1.2.0.W", "3.1.2.0.b",
        "6.W", "6.b"]
    assert list(model.buffers) == ["1.1.running_mean", "1.1.running_var", "1.shortcut.1.running_mean",
                                   "1.shortcut.1.running_var"]
    assert model.params["1.shortcut.0.W"] is model[1].shortcut[0].params["W"]
    assert len(model[1]) == 4 and model[1][3] is model[1].layers[3]


def test_block_checkpoint_round_trip_and_modes():
    gpucnn.seed(2)
    a = block_net()
    x = randn(np.random.default_rng(0), 3, 2, 7, 6)
    a.forward(x)                       # moves the running statistics
    state = a.state_dict()
    gpucnn.seed(3)
    b = block_net()
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    assert not any(layer.training for layer in b[1].children())   # eval() reached the shortcut's layers too
    assert not b[1].shortcut[1].training
    b.train()
    assert b[1].shortcut[1].training


def test_residual_and_concat_as_the_first_layer_skip_the_input_gradient(monkeypatch):
    """A model's input needs no gradient: a block in first place is asked for none, and computes none."""
    model = L.Sequential(L.Residual(L.Conv2D(2, 2, 3, padding=1)), L.Concat(L.Conv2D(2, 1, 1), L.Conv2D(2, 1, 1)))
    y = model.forward(randn(np.random.default_rng(0), 2, 2, 5, 5))
    calls = []
    real = L.Conv2D.backward
    monkeypatch.setattr(L.Conv2D, "backward", lambda self, d: calls.append(self.need_input_grad) or real(self, d))
    assert model.backward(np.ones_like(y)) is None
    assert calls == [True, True, False], "the Concat's branches need theirs, the first block's conv does not"
    block = L.Residual(L.Conv2D(2, 2, 3, padding=1))
    block.forward(np.ones((1, 2, 4, 4), np.float32))
    assert block.backward(np.ones((1, 2, 4, 4), np.float32)).shape == (1, 2, 4, 4), "used alone it gives dx"


@pytest.mark.parametrize("make, words", [
    (lambda: L.Residual(L.Conv2D(2, 3, 1)).forward(np.ones((1, 2, 4, 4), np.float32)),
     ["Residual", "(1, 3, 4, 4)", "identity shortcut", "(1, 2, 4, 4)"]),
    (lambda: L.Residual(L.Conv2D(2, 3, 3, stride=2), shortcut=L.Conv2D(2, 3, 1)).output_shape((1, 2, 8, 8)),
     ["Residual", "(1, 3, 3, 3)", "shortcut to (1, 3, 8, 8)"]),
    (lambda: L.Concat(L.Conv2D(2, 3, 1), L.Conv2D(2, 3, 3)).output_shape((1, 2, 8, 8)),
     ["Concat", "differ outside axis 1"]),
    (lambda: L.Residual(L.ReLU(), shortcut="identity"), ["Residual", "shortcut", "str"]),
    (lambda: L.Concat(), ["Concat", "at least one layer"]),
    (lambda: L.Concat(L.ReLU()).backward(np.ones(3, np.float32)), ["backward() called before forward()"]),
])
def test_block_errors_are_clear(make, words):
    with pytest.raises((ValueError, TypeError, RuntimeError)) as e:
        make()
    for word in words:
        assert word in str(e.value), str(e.value)


def test_concat_along_another_axis():
    x = randn(np.random.default_rng(0), 2, 3, 4, 5)
    block = L.Concat(L.ReLU(), L.Tanh(), axis=-1)
    y = block.forward(x)
    np.testing.assert_array_equal(y, np.concatenate([np.maximum(x, 0), np.tanh(x)], axis=-1))
    assert block.output_shape(x.shape) == (2, 3, 4, 10)
    dx = block.backward(np.ones_like(y))
    np.testing.assert_allclose(dx, (x > 0) + (1 - np.tanh(x) ** 2), rtol=1e-6)


def test_summary_lists_the_layers_inside_blocks():
    table = models.resnet(1, 28, 10).summary((1, 1, 28, 28))
    for row in ["3  Residual", "3.0    Conv2D(16, 16", "5.shortcut    Sequential", "5.shortcut.0      Conv2D(16, 32",
                "(1, 64, 7, 7)", "9  GlobalAvgPool2D()  ", "total params: 77,754"]:
        assert row in table, row


def test_a_training_step_of_the_new_layers_on_the_emulated_gpu_reads_nothing_back():
    """Grouped, dilated and transposed convolutions, the new pools, blocks and loss options stay on the device."""
    gpucnn.seed(0)
    model = L.Sequential(
        L.Conv2D(2, 4, 3, padding="same", dilation=2, groups=2), L.ReLU(),
        L.Residual(L.Conv2D(4, 4, 3, padding=(1, 1, 0, 2), groups=4), L.BatchNorm2D(4)),
        L.Concat(L.MaxPool2D(3, 2, 1, dilation=1, ceil_mode=True),
                 L.AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False)),
        L.ConvTranspose2D(8, 3, 3, stride=2, padding=1, output_padding=1, groups=1),
        L.AdaptiveAvgPool2D((3, 2)), L.Dropout(0.3), L.GlobalAvgPool2D(), L.Flatten(), L.Affine(3, 5)).to("emulated")
    ce = L.SoftmaxCrossEntropy(label_smoothing=0.1, weight=[1.0, 2.0, 0.5, 1.0, 1.0], ignore_index=4)
    x = backend.to_device(randn(np.random.default_rng(0), 3, 2, 9, 7), "emulated")
    labels = backend.to_device(np.array([0, 4, 2]), "emulated")
    backend.transfer_stats.reset()
    for _ in range(2):
        loss = ce.forward(model.forward(x), labels)
        model.backward(ce.backward())
    assert backend.transfer_stats.device_to_host == 0
    assert all(backend.device_of(g) == backend.EMULATED for g in model.grads.values())
    assert np.isfinite(backend.to_cpu(loss))
