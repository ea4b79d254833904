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


def _fits(layer, shape):
    """The layer if it takes `shape` (a random draw may leave no room for its window), else None."""
    try:
        layer.output_shape(shape)
    except ValueError:
        return None
    return layer


def _groups(rng, channels):
    divisors = [g for g in range(1, channels + 1) if channels % g == 0]
    return int(rng.choice(divisors))


def _conv(rng, shape):
    """Any padding form (int, pair, 4-tuple, 'same', 'valid'), strides, dilation, groups (depthwise included)."""
    if len(shape) != 4:
        return None
    c = shape[1]
    groups = _groups(rng, c)
    k = _pair(rng, 1, 4)
    stride = (1, 1) if rng.random() < 0.4 else _pair(rng, 1, 2)
    choice = int(rng.integers(5))
    padding = [int(rng.integers(0, 3)), _pair(rng, 0, 2), tuple(int(v) for v in rng.integers(0, 3, 4)),
               "same" if stride == (1, 1) else "valid", "valid"][choice]
    return _fits(L.Conv2D(c, groups * int(rng.integers(1, 4)), k, stride=stride, padding=padding,
                          dilation=_pair(rng, 1, 2), groups=groups, bias=bool(rng.integers(0, 4))), shape)


def _conv_transpose(rng, shape):
    if len(shape) != 4:
        return None
    c = shape[1]
    groups = _groups(rng, c)
    stride, dilation = _pair(rng, 1, 3), _pair(rng, 1, 2)
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    return _fits(L.ConvTranspose2D(c, groups * int(rng.integers(1, 3)), _pair(rng, 1, 4), stride=stride,
                                   padding=_pair(rng, 0, 1), output_padding=output_padding, groups=groups,
                                   bias=bool(rng.integers(0, 4)), dilation=dilation), shape)


def _pool(cls):
    def make(rng, shape):
        if len(shape) != 4 or min(shape[2:]) < 2:
            return None
        k = (int(rng.integers(1, min(shape[2], 3) + 1)), int(rng.integers(1, min(shape[3], 3) + 1)))
        stride = None if rng.random() < 0.3 else _pair(rng, 1, 3)
        padding = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
        options = dict(ceil_mode=bool(rng.integers(0, 2)))
        if cls is L.MaxPool2D and padding == (0, 0):   # dilated windows all in padding: PyTorch reads past the input
            options["dilation"] = _pair(rng, 1, 2)
        if cls is L.AvgPool2D:
            options["count_include_pad"] = bool(rng.integers(0, 2))
        return _fits(cls(k, stride=stride, padding=padding, **options), shape)
    return make


def _adaptive(rng, shape):
    if len(shape) != 4:
        return None
    size = [None if rng.random() < 0.2 else int(rng.integers(1, n + 2)) for n in shape[2:]]
    return L.AdaptiveAvgPool2D(size if rng.random() < 0.8 else size[0] or 2)


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


def _chain(rng, shape, count):
    layers = []
    for _ in range(count):
        layer = _draw(rng, shape, nested=False)
        layers.append(layer)
        shape = layer.output_shape(shape)
    return layers, shape


def _block(rng, shape):
    """A nested Sequential of one to three layers (names such as "3.1.W")."""
    return L.Sequential(*_chain(rng, shape, int(rng.integers(1, 4)))[0])


def _residual(rng, shape):
    """f: a 3x3 convolution (stride 1 or 2, other channels) and up to two more shape-keeping layers; the
    shortcut the identity where f keeps the shape, else a 1x1 convolution (in a Sequential, with batch norm)."""
    if len(shape) != 4:
        return None
    c, stride = shape[1], int(rng.integers(1, 3))
    width = c if rng.random() < 0.5 else int(rng.integers(1, 6))
    f = [L.Conv2D(c, width, 3, stride=stride, padding=1)]
    f += [[L.ReLU, L.Tanh, lambda: L.BatchNorm2D(width)][int(rng.integers(3))]() for _ in range(rng.integers(0, 3))]
    shortcut = None
    if (width, stride) != (c, 1) or rng.random() < 0.3:
        shortcut = L.Sequential(L.Conv2D(c, width, 1, stride=stride, bias=False), L.BatchNorm2D(width))
    return L.Residual(*f, shortcut=shortcut)


def _concat(rng, shape):
    """Two or three branches keeping the spatial size (channels concatenated), or, for a shape-keeping set of
    branches, along another axis."""
    if len(shape) == 2:
        return L.Concat(*[L.Affine(shape[1], int(rng.integers(1, 5))) for _ in range(rng.integers(2, 4))],
                        axis=int(rng.choice([1, -1])))
    if len(shape) != 4:
        return None
    c = shape[1]
    keep = [lambda: L.ReLU(), lambda: L.MaxPool2D(3, stride=1, padding=1), lambda: L.BatchNorm2D(c)]
    if rng.random() < 0.3:
        return L.Concat(*[keep[int(rng.integers(3))]() for _ in range(rng.integers(2, 4))],
                        axis=int(rng.choice([2, 3, -1])))
    widen = [lambda: L.Conv2D(c, int(rng.integers(1, 5)), 1),
             lambda: L.Sequential(L.Conv2D(c, int(rng.integers(1, 5)), 3, padding="same"), L.ReLU())]
    makers = keep + widen
    return L.Concat(*[makers[int(rng.integers(len(makers)))]() for _ in range(rng.integers(2, 4))])


# One builder per layer type of the table: (rng, input shape) -> a layer taking that shape, or None.
RANDOM_LAYERS = {
    L.Conv2D: _conv,
    L.ConvTranspose2D: _conv_transpose,
    L.MaxPool2D: _pool(L.MaxPool2D),
    L.AvgPool2D: _pool(L.AvgPool2D),
    L.GlobalAvgPool2D: lambda rng, shape: L.GlobalAvgPool2D() if len(shape) == 4 else None,
    L.AdaptiveAvgPool2D: _adaptive,
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
    L.Residual: _residual,
    L.Concat: _concat,
}
NOT_IN_MODELS = {L.SoftmaxCrossEntropy}   # in the table (its twin is nn.CrossEntropyLoss), never inside a model
CONTAINERS = {L.Sequential, L.Residual, L.Concat}


def _draw(rng, shape, nested=True):
    kinds = [k for k in RANDOM_LAYERS if nested or k not in CONTAINERS]
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


# name -> (builder, input shape): every zoo model, AlexNet in both forms (the ImageNet one with 2012's groups)
ZOO = {"lenet5": (lambda: models.lenet5(1, 28, 10), (3, 1, 28, 28)),
       "simple_convnet": (lambda: models.simple_convnet(3, 32, 7), (2, 3, 32, 32)),
       "alexnet-small": (lambda: models.alexnet(3, 32, 10), (2, 3, 32, 32)),
       "alexnet-original": (lambda: models.alexnet(3, 128, 10, original=True), (1, 3, 128, 128)),   # ImageNet form
       "vgg": (lambda: models.vgg(3, 32, 10), (3, 3, 32, 32)),
       "small_vgg": (lambda: models.small_vgg(1, 28, 10), (3, 1, 28, 28)),
       "resnet": (lambda: models.resnet(3, 32, 10, blocks=(2, 1, 1)), (2, 3, 32, 32))}


def random_layer(kind, seed):
    """(model, input shape): one layer of type `kind` drawn by its builder for a random input shape, alone in a
    Sequential, with random weights and statistics."""
    rng = np.random.default_rng([seed, sorted(RANDOM_LAYERS, key=lambda k: k.__name__).index(kind)])
    while True:
        shape = ((int(rng.integers(1, 4)), int(rng.integers(1, 7))) if kind is L.BatchNorm1D or
                 (kind in (L.Affine, L.Concat) and rng.random() < 0.3) else
                 (int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 10)), int(rng.integers(1, 10))))
        layer = RANDOM_LAYERS[kind](rng, shape)
        if layer is not None and (kind is not L.BatchNorm1D or shape[0] > 1):
            break
    model = L.Sequential(layer)
    randomize(model, rng)
    return model, shape
