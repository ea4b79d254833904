"""The model zoo: shapes through each net, parameter counts against PyTorch twins, size errors."""
import numpy as np
import pytest
import torch.nn as nn

from gpucnn import models


def torch_count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("c,size", [(1, 28), (3, 32), (1, (28, 36))])
def test_forward_shape_for_each_input(name, c, size):
    model = models.get(name, in_channels=c, input_size=size, num_classes=7)
    h, w = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(0).standard_normal((2, c, h, w)).astype(np.float32)
    assert model.forward(x, train=False).shape == (2, 7)


def test_lenet5_matches_the_torch_architecture():
    twin = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))
    model = models.lenet5(in_channels=1, input_size=28, num_classes=10)
    assert model.num_params() == torch_count(twin)
    assert model.params["0.W"].shape == (6, 1, 5, 5)
    # the affine input is derived from the input size: 32x32 gives 16 * 6 * 6
    assert models.lenet5(3, 32, 10).params["6.W"].shape[0] == 16 * 6 * 6


def test_simple_convnet_count():
    twin = nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))
    assert models.simple_convnet(1, 28, 10).num_params() == torch_count(twin)


def test_alexnet_imagenet_form_matches_torch_shapes():
    model = models.alexnet(in_channels=3, input_size=227, num_classes=1000)
    twin = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 1000))
    assert model.num_params() == torch_count(twin)
    text = model.summary((1, 3, 227, 227))
    assert "(1, 96, 55, 55)" in text and "(1, 256, 6, 6)" in text and "(1, 1000)" in text
    assert sum(type(layer).__name__ == "LRN" for layer in model) == 2
    assert sum(type(layer).__name__ == "Dropout" for layer in model) == 2


def test_alexnet_small_form_for_small_inputs():
    model = models.alexnet(in_channels=3, input_size=32, num_classes=10)
    assert model.params["0.W"].shape == (64, 3, 3, 3)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert model.forward(x, train=True).shape == (2, 10)
    # the 128 px threshold picks the ImageNet form; form= overrides it
    assert models.alexnet(3, 128, 10).params["0.W"].shape == (96, 3, 11, 11)
    assert models.alexnet(3, 64, 10, form="small").params["0.W"].shape == (64, 3, 3, 3)


def test_vgg_uses_batchnorm_and_3x3_convs():
    model = models.vgg(in_channels=3, input_size=32, num_classes=10)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds.count("BatchNorm2D") == 6 and kinds.count("Conv2D") == 6
    assert all(p.shape[2:] == (3, 3) for k, p in model.params.items() if p.ndim == 4)
    assert any(k.endswith("running_mean") for k in model.buffers)


@pytest.mark.parametrize("name,size,smallest", [("lenet5", 8, 12), ("alexnet", 12, 15), ("vgg", 4, 8)])
def test_too_small_input_names_the_model_and_smallest_size(name, size, smallest):
    with pytest.raises(ValueError, match=rf"{name}.*{size}x{size} is too small.*at least {smallest}x{smallest}"):
        models.get(name, in_channels=1, input_size=size, num_classes=10)
    models.get(name, in_channels=1, input_size=smallest, num_classes=10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'googlenet'.*lenet5.*simple_convnet.*alexnet.*vgg.*resnet"):
        models.get("googlenet")
    with pytest.raises(ValueError, match="in_channels"):
        models.lenet5(in_channels=0)
    with pytest.raises(ValueError, match="num_classes"):
        models.lenet5(num_classes=0)
    with pytest.raises(TypeError, match="input_size"):
        models.lenet5(input_size="28")
    with pytest.raises(ValueError, match="form"):
        models.alexnet(form="huge")
    assert models.canonical_name("Simple-ConvNet") == "simple_convnet"
    for spelling in ("LeNet-5", "lenet_5", "LENET5"):
        assert models.canonical_name(spelling) == "lenet5"
    assert models.canonical_name("SimpleConvNet") == "simple_convnet"
    with pytest.raises(ValueError, match="unknown model 'lenet'"):
        models.canonical_name("lenet")


def test_alexnet_original_has_the_caffe_models_grouped_convolutions_and_parameter_count():
    model = models.alexnet(in_channels=3, input_size=227, num_classes=1000, original=True)
    assert model.num_params() == 60_965_224
    twin = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.Conv2d(256, 384, 3, padding=1), nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.Linear(256 * 6 * 6, 4096), nn.Linear(4096, 4096),
        nn.Linear(4096, 1000))
    assert model.num_params() == torch_count(twin)
    convs = [layer for layer in model if type(layer).__name__ == "Conv2D"]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert [c.params["W"].shape for c in convs][1] == (256, 48, 5, 5)
    text = model.summary((1, 3, 227, 227))
    assert "(1, 96, 55, 55)" in text and "(1, 256, 6, 6)" in text and "(1, 1000)" in text
    # the other forms are unchanged; original=True means the ImageNet form at any size it fits
    assert models.alexnet(3, 227, 1000).num_params() == 62_378_344
    assert models.alexnet(3, 96, 10, original=True).params["0.W"].shape == (96, 3, 11, 11)
    with pytest.raises(ValueError, match="original=True is the ImageNet form"):
        models.alexnet(3, 227, 1000, form="small", original=True)


def test_parameter_names_of_the_existing_models_are_unchanged():
    """Checkpoints of today's models still load: their parameters keep the flat "<index>.<name>" keys."""
    for name in ("lenet5", "simple_convnet", "alexnet", "vgg"):
        model = models.get(name, in_channels=1, input_size=32, num_classes=10)
        for i, layer in enumerate(model):
            for key in layer.params:
                assert f"{i}.{key}" in model.params
        assert all(k.count(".") == 1 for k in model.params)
    assert list(models.lenet5().params) == ["0.W", "0.b", "3.W", "3.b", "6.W", "6.b", "8.W", "8.b", "10.W", "10.b"]


def test_resnet_stages_and_options():
    model = models.resnet(in_channels=1, input_size=28, num_classes=10)
    assert model.num_params() == 77_754
    kinds = [type(layer).__name__ for layer in model]
    assert kinds.count("Residual") == 3 and kinds[-3:] == ["GlobalAvgPool2D", "Flatten", "Affine"]
    assert model.output_shape((2, 1, 28, 28)) == (2, 10)
    deeper = models.resnet(3, 32, 100, widths=(8, 16, 32, 64), blocks=(2, 1, 1, 3))
    assert [type(layer).__name__ for layer in deeper].count("Residual") == 7
    assert deeper.output_shape((1, 3, 32, 32)) == (1, 100)
    assert "7.shortcut.0.W" in deeper.params and "3.shortcut.0.W" not in deeper.params
    assert models.resnet(1, 5, 10).forward(np.zeros((2, 1, 5, 5), np.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match="one block count per stage width"):
        models.resnet(widths=(16, 32), blocks=(1,))
    with pytest.raises(ValueError, match="widths must be a positive int"):
        models.resnet(widths=(16, 0), blocks=(1, 1))


def test_vgg_conv_counts_per_block_and_pooling_before_the_norm():
    from gpucnn.layers import BatchNorm2D, Conv2D, MaxPool2D
    kinds = lambda m: [type(layer).__name__ for layer in m.layers[:15]]
    model = models.vgg(1, 28, 10, convs_per_block=(1, 1, 2), pool_before_norm=True)
    assert kinds(model) == ["Conv2D", "MaxPool2D", "BatchNorm2D", "ReLU"] * 2 + [
        "Conv2D", "BatchNorm2D", "ReLU", "Conv2D", "MaxPool2D", "BatchNorm2D", "ReLU"]
    assert [l.out_channels for l in model.layers if isinstance(l, Conv2D)] == [32, 64, 128, 128]
    assert isinstance(models.vgg(1, 28, 10, convs_per_block=1).layers[3], MaxPool2D)
    assert [type(l) for l in models.vgg(1, 28, 10, convs_per_block=1).layers[:2]] == [Conv2D, BatchNorm2D]
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert models.small_vgg().forward(x, train=False).shape == (2, 10)
    assert models.small_vgg().num_params() == 391_146
    assert kinds(models.small_vgg()) == ["Conv2D", "MaxPool2D", "BatchNorm2D", "ReLU"] * 3 + ["Dropout", "Affine", "BatchNorm1D"]
    for bad in ((1, 2), (1, 0, 1)):
        with pytest.raises(ValueError, match="vgg: "):
            models.vgg(1, 28, 10, convs_per_block=bad)
