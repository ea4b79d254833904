"""Random gpucnn models for the interop tests: architectures drawn from every layer type in
gpucnn.interop.TABLE (nested blocks included), with random weights and batch-norm statistics, so the mapping is
checked on models nobody wrote down; and what the interop tests share (the zoo, the tolerance)."""
import numpy as np
import torch

from gpucnn import layers as L
from gpucnn import models
from gpucnn.interop import TABLE


def _pair(rng, low, high):
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _conv(rng, shape):
    if len(shape) != 4:
        return None
    h, w = shape[2:]
    k = (int(rng.integers(1, min(h, 5) + 1)), int(rng.integers(1, min(w, 5) + 1)))
    pad = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    return L.Conv2D(shape[1], int(rng.integers(1, 7)), k, stride=_pair(rng, 1, 2), padding=pad,
                    bias=bool(rng.integers(0, 4)))


def _pool(cls):
    def make(rng, shape):
        if len(shape) != 4 or min(shape[2:]) < 2:
            return None
        k = (int(rng.integers(1, min(shape[2], 3) + 1)), int(rng.integers(1, min(shape[3], 3) + 1)))
        stride = None if rng.random() < 0.3 else _pair(rng, 1, 2)
        return cls(k, stride=stride, padding=(int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1))))
    return make


def _affine(rng, shape):
    return L.Affine(int(np.prod(shape[1:])), int(rng.integers(2, 12)), init="xavier")


def _batchnorm(rng, shape):
    cls = L.BatchNorm2D if len(shape) == 4 else L.BatchNorm1D
    return cls(shape[1], eps=float(rng.choice([1e-5, 1e-3])), momentum=float(rng.choice([0.1, 0.5])))


def _lrn(rng, shape):   # odd and even sizes, alpha large enough for the window to matter
    if len(shape) != 4:
        return None
    return L.LRN(int(rng.integers(1, 7)), alpha=float(rng.uniform(0.2, 2.0)), beta=float(rng.uniform(0.5, 1.0)),
                 k=float(rng.uniform(0.5, 2.0)))


def _block(rng, shape):
    """A nested Sequential of one to three layers (names such as "3.1.W")."""
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        layer = _draw(rng, shape, nested=False)
        layers.append(layer)
        shape = layer.output_shape(shape)
    return L.Sequential(*layers)


# One builder per layer type of the table: (rng, input shape) -> a layer taking that shape, or None.
RANDOM_LAYERS = {
    L.Conv2D: _conv,
    L.MaxPool2D: _pool(L.MaxPool2D),
    L.AvgPool2D: _pool(L.AvgPool2D),
    L.Affine: _affine,
    L.ReLU: lambda rng, shape: L.ReLU(),
    L.LeakyReLU: lambda rng, shape: L.LeakyReLU(float(rng.choice([0.01, 0.2, -0.5]))),
    L.Sigmoid: lambda rng, shape: L.Sigmoid(),
    L.Tanh: lambda rng, shape: L.Tanh(),
    L.Flatten: lambda rng, shape: L.Flatten(),
    L.Dropout: lambda rng, shape: L.Dropout(float(rng.choice([0.1, 0.5]))),
    L.BatchNorm1D: lambda rng, shape: _batchnorm(rng, shape) if len(shape) == 2 else None,
    L.BatchNorm2D: lambda rng, shape: _batchnorm(rng, shape) if len(shape) == 4 else None,
    L.LRN: _lrn,
    L.Sequential: _block,
}
NOT_IN_MODELS = {L.SoftmaxCrossEntropy}   # in the table (its twin is nn.CrossEntropyLoss), never inside a model


def _draw(rng, shape, nested=True):
    kinds = [k for k in RANDOM_LAYERS if nested or k is not L.Sequential]
    while True:
        layer = RANDOM_LAYERS[kinds[int(rng.integers(len(kinds)))]](rng, shape)
        if layer is not None:
            return layer


def random_model(seed, depth=None):
    """(model, input shape): a random Sequential ending in an Affine, its weights, biases and batch-norm
    statistics random, in training mode."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(5, 12)), int(rng.integers(5, 12)))
    layers, s = [], shape
    for _ in range(int(rng.integers(3, 8)) if depth is None else depth):
        layer = _draw(rng, s)
        layers.append(layer)
        s = layer.output_shape(s)
    layers.append(L.Affine(int(np.prod(s[1:])), int(rng.integers(2, 7))))
    model = L.Sequential(*layers)
    randomize(model, rng)
    return model, shape


def randomize(model, rng):
    """Random weights, biases, BN gamma/beta and running statistics (positive variances), in place."""
    for key, v in {**model.params, **model.buffers}.items():
        values = rng.standard_normal(v.shape) * (0.5 if key.endswith(".W") or key == "W" else 0.3)
        if key.endswith("running_var"):
            values = rng.uniform(0.5, 2.0, v.shape)
        v[...] = values.astype(v.dtype)


def layer_types(model):
    """The classes of every layer in the model, containers included."""
    found = {type(model)}
    for child in model.children():
        found |= layer_types(child)
    return found


def table_types():
    return set(TABLE)


# ------------------------------------------------------------------------------ shared by the tests

RTOL = 1e-5   # float32: max|ours - theirs| <= RTOL * max|theirs|
SEEDS = range(24)


def assert_close(ours, theirs, what, rtol=RTOL):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    err = float(np.max(np.abs(ours - theirs)))
    assert err <= rtol * max(float(np.max(np.abs(theirs))), 1e-30), f"{what}: max abs error {err:.3g}"


# name -> (builder, input shape): every zoo model, AlexNet in both forms
ZOO = {"lenet5": (lambda: models.lenet5(1, 28, 10), (3, 1, 28, 28)),
       "simple_convnet": (lambda: models.simple_convnet(3, 32, 7), (2, 3, 32, 32)),
       "alexnet-small": (lambda: models.alexnet(3, 32, 10), (2, 3, 32, 32)),
       "alexnet-imagenet": (lambda: models.alexnet(3, 128, 10), (1, 3, 128, 128)),
       "vgg": (lambda: models.vgg(3, 32, 10), (3, 3, 32, 32))}
