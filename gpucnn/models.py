"""The model zoo: functions returning a :class:`~gpucnn.layers.Sequential` sized for the input.

Every model takes ``in_channels``, ``input_size`` (an int or ``(h, w)``) and ``num_classes``; the sizes
of the affine layers are derived from the input, so the same net trains on 28x28 Fashion-MNIST or
32x32 CIFAR-10. An input too small for a net raises ValueError naming the smallest size that fits.

- ``lenet5``: LeCun et al. 1998 with ReLU and max-pooling: conv 6@5x5 pad 2, pool 2, conv 16@5x5,
  pool 2, affine 120, 84, classes.
- ``simple_convnet``: the one-conv net of "Deep Learning from Scratch": conv 30@5x5, pool 2, affine 100.
- ``alexnet``: Krizhevsky et al. 2012: five conv layers, LRN after the first two, overlapping 3x3/2
  max-pools, two dropout+affine layers. Two forms, picked by input size (or ``form=``):
    * ``imagenet`` (input >= 128, e.g. 3x227x227): 96@11x11/4, 256@5x5 p2, 384, 384, 256 @3x3 p1,
      affine 4096, 4096 (62,378,344 parameters at 227x227 with 1000 classes, as torchvision's layout);
      ``original=True`` splits conv2, conv4 and conv5 into two groups, as the paper's two-GPU model and the
      Caffe reference model bvlc_alexnet (60,965,224 parameters at 227x227 with 1000 classes);
    * ``small`` (28-127 px, e.g. CIFAR-10): 64@3x3 p1, 192@3x3 p1, 384, 256, 256 @3x3 p1,
      affine 1024, 1024.
- ``vgg``: Simonyan & Zisserman 2014 style: blocks of (3x3 conv, BatchNorm2D, ReLU) x 2 then a 2x2
  max-pool, widths 32, 64, 128 by default, then dropout, affine 256 with BatchNorm1D, classes; options for
  the convs per block and for pooling before the normalisation.
- ``small_vgg``: the Fashion-MNIST recipe's net: ``vgg`` with one conv per block, each block's max-pool right
  after its conv (BatchNorm and ReLU on the pooled map).
- ``resnet``: He et al. 2016's CIFAR ResNets, small: a 3x3 conv stem, then per width a stage of basic
  residual blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, plus the input; ReLU after the sum), every stage but
  the first halving the map with a stride-2 first block whose shortcut is a strided 1x1 conv and BN; then
  global average pooling and one affine layer. Fits any input size.

Your own model (:func:`build`, :func:`from_spec`): a function returning a Layer, named on the command line as
``path/to/file.py:function`` or ``module:function`` and called with those of ``in_channels``, ``input_size``
((h, w)) and ``num_classes`` it takes.
"""
from __future__ import annotations

import inspect
import os
import zlib

from .devices.twins import out_size

# A net is described as a list of layer specs, walked once for shapes (to size the affine layers and
# report a too-small input) and then instantiated.


def _size(input_size) -> tuple[int, int]:
    if isinstance(input_size, bool):
        raise TypeError(f"input_size must be an int or (h, w), got {input_size!r}")
    if isinstance(input_size, int):
        h = w = input_size
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in input_size):
        h, w = input_size
    else:
        raise TypeError(f"input_size must be an int or (h, w), got {input_size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive, got {h}x{w}")
    return h, w


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _walk(specs, c, h, w):
    """Shapes through the specs: the list of input shapes (c, h, w) or (features,) per spec.

    Raises _TooSmall(index) when a window no longer fits.
    """
    shapes = []
    shape = (c, h, w)
    for i, spec in enumerate(specs):
        shapes.append(shape)
        kind = spec[0]
        if kind == "conv":
            _, out, k, s, p = spec[:5]
            oh, ow = out_size(shape[1], k, s, p), out_size(shape[2], k, s, p)
            if oh < 1 or ow < 1:
                raise _TooSmall(i, shape)
            shape = (out, oh, ow)
        elif kind == "pool":
            _, k, s = spec
            oh, ow = out_size(shape[1], k, s, 0), out_size(shape[2], k, s, 0)
            if oh < 1 or ow < 1:
                raise _TooSmall(i, shape)
            shape = (shape[0], oh, ow)
        elif kind == "affine":
            shape = (spec[1],)
    return shapes


class _TooSmall(Exception):
    def __init__(self, index, shape):
        super().__init__(index, shape)
        self.index, self.shape = index, shape


def _describe(spec):
    kind = spec[0]
    if kind == "conv":
        _, out, k, s, p = spec[:5]
        return f"conv {out}@{k}x{k}" + (f"/{s}" if s != 1 else "") + (f" pad {p}" if p else "")
    if kind == "pool":
        return f"max-pool {spec[1]}x{spec[1]}/{spec[2]}"
    return kind


def _build(name, specs_fn, in_channels, input_size, num_classes, **options):
    """Validate the arguments, walk the shapes and instantiate the layers into a Sequential."""
    from . import layers as L
    from .layers import Sequential

    _positive("in_channels", in_channels)
    _positive("num_classes", num_classes)
    h, w = _size(input_size)
    specs = specs_fn(num_classes=num_classes, **options)
    try:
        shapes = _walk(specs, in_channels, h, w)
    except _TooSmall as e:
        smallest = next((s for s in range(1, 1025) if _fits(specs, in_channels, s)), None)
        need = f"; it needs at least {smallest}x{smallest}" if smallest else ""
        raise ValueError(f"{name}: input_size {h}x{w} is too small: the {e.shape[1]}x{e.shape[2]} feature map "
                         f"before layer {e.index} ({_describe(specs[e.index])}) has no room for its "
                         f"window{need}") from None
    layers = []
    for spec, shape in zip(specs, shapes):
        kind = spec[0]
        if kind == "conv":
            _, out, k, s, p, bias, groups = spec
            layers.append(L.Conv2D(shape[0], out, k, stride=s, padding=p, groups=groups, bias=bias))
        elif kind == "pool":
            layers.append(L.MaxPool2D(spec[1], stride=spec[2]))
        elif kind == "relu":
            layers.append(L.ReLU())
        elif kind == "lrn":
            layers.append(L.LRN(size=5, alpha=1e-4, beta=0.75, k=2.0))
        elif kind == "dropout":
            layers.append(L.Dropout(spec[1]))
        elif kind == "bn2d":
            layers.append(L.BatchNorm2D(shape[0]))
        elif kind == "bn1d":
            layers.append(L.BatchNorm1D(shape[0]))
        elif kind == "affine":
            features = 1
            for d in shape:
                features *= d
            layers.append(L.Affine(features, spec[1]))
        else:  # pragma: no cover - specs are written in this file
            raise AssertionError(kind)
    return Sequential(layers)


def _fits(specs, c, s):
    try:
        _walk(specs, c, s, s)
        return True
    except _TooSmall:
        return False


# --------------------------------------------------------------------------------------------- models

def _conv(out, k, stride=1, padding=0, bias=True, groups=1):
    return ("conv", out, k, stride, padding, bias, groups)


def _pool(k, stride=None):
    return ("pool", k, stride or k)


RELU = ("relu",)


def lenet5(in_channels: int = 1, input_size=28, num_classes: int = 10):
    """LeNet-5 with ReLU and max-pooling (about 62k parameters at 1x28x28, 10 classes)."""
    def specs(num_classes):
        return [_conv(6, 5, padding=2), RELU, _pool(2),
                _conv(16, 5), RELU, _pool(2),
                ("affine", 120), RELU, ("affine", 84), RELU, ("affine", num_classes)]
    return _build("lenet5", specs, in_channels, input_size, num_classes)


def simple_convnet(in_channels: int = 1, input_size=28, num_classes: int = 10):
    """One conv layer (30@5x5), a 2x2 max-pool and two affine layers (100 hidden units)."""
    def specs(num_classes):
        return [_conv(30, 5), RELU, _pool(2), ("affine", 100), RELU, ("affine", num_classes)]
    return _build("simple_convnet", specs, in_channels, input_size, num_classes)


ALEXNET_FORMS = ("imagenet", "small")


def alexnet(in_channels: int = 3, input_size=227, num_classes: int = 1000, dropout: float = 0.5,
            form: str | None = None, original: bool = False):
    """AlexNet: the ImageNet form for inputs of 128 px and more (original=True: 2012's two groups), else a small form.

    ``original=True`` takes the ImageNet form with conv2, conv4 and conv5 in two groups, as the 2012 paper's
    two-GPU model and Caffe's bvlc_alexnet (60,965,224 parameters at 3x227x227 with 1000 classes); ValueError
    with form='small'. See the module doc for the layers of each form."""
    h, w = _size(input_size)
    if not isinstance(original, bool):
        raise ValueError(f"alexnet: original must be True or False, got {original!r}")
    if form is None:
        form = "imagenet" if original or min(h, w) >= 128 else "small"
    if form not in ALEXNET_FORMS:
        raise ValueError(f"alexnet: form must be one of {', '.join(ALEXNET_FORMS)}, got {form!r}")
    if original and form != "imagenet":
        raise ValueError(f"alexnet: original=True is the ImageNet form with grouped convolutions, got form={form!r}")
    groups = 2 if original else 1

    def specs(num_classes):
        if form == "imagenet":
            convs = [_conv(96, 11, stride=4), RELU, ("lrn",), _pool(3, 2),
                     _conv(256, 5, padding=2, groups=groups), RELU, ("lrn",), _pool(3, 2)]
            widths, hidden = (384, 384, 256), 4096
        else:
            convs = [_conv(64, 3, padding=1), RELU, ("lrn",), _pool(3, 2),
                     _conv(192, 3, padding=1), RELU, ("lrn",), _pool(3, 2)]
            widths, hidden = (384, 256, 256), 1024
        for i, width in enumerate(widths):
            convs += [_conv(width, 3, padding=1, groups=1 if i == 0 else groups), RELU]
        return convs + [_pool(3, 2),
                        ("dropout", dropout), ("affine", hidden), RELU,
                        ("dropout", dropout), ("affine", hidden), RELU,
                        ("affine", num_classes)]
    return _build(f"alexnet ({form} form)", specs, in_channels, (h, w), num_classes)


def vgg(in_channels: int = 3, input_size=32, num_classes: int = 10, widths=(32, 64, 128),
        convs_per_block=2, hidden: int = 256, dropout: float = 0.5, pool_before_norm: bool = False):
    """VGG-style: per width a block of (3x3 conv, BatchNorm2D, ReLU) x convs_per_block and a 2x2 max-pool, then
    dropout, affine `hidden` with BatchNorm1D and ReLU, and the classifier.

    convs_per_block: one count for every block or one per width. pool_before_norm: the last conv of each block
    is followed by the max-pool, then its BatchNorm2D and ReLU (on a map 4x smaller, so 4x cheaper; the
    statistics are those of the pooled map). ValueError for counts that are not positive."""
    counts = (convs_per_block,) * len(widths) if isinstance(convs_per_block, int) else tuple(convs_per_block)
    if len(counts) != len(widths):
        raise ValueError(f"vgg: expected one conv count per block width, got widths={tuple(widths)}, "
                         f"convs_per_block={convs_per_block!r}")
    for count in counts:
        _positive("vgg: convs_per_block", count)

    def specs(num_classes):
        out = []
        for width, count in zip(widths, counts):
            for i in range(count):
                out.append(_conv(width, 3, padding=1, bias=False))
                if pool_before_norm and i == count - 1:
                    out.append(_pool(2))
                out += [("bn2d",), RELU]
            if not pool_before_norm:
                out.append(_pool(2))
        return out + [("dropout", dropout), ("affine", hidden), ("bn1d",), RELU, ("affine", num_classes)]
    return _build("vgg", specs, in_channels, input_size, num_classes)


def small_vgg(in_channels: int = 1, input_size=28, num_classes: int = 10):
    """The Fashion-MNIST recipe's net (README, "93.5% on Fashion-MNIST in 10 minutes"): ``vgg`` with widths 32,
    64, 128, one 3x3 conv per block and each block's max-pool before its BatchNorm and ReLU; 391,146 parameters
    and 7.75M multiply-adds per 1x28x28 image."""
    return vgg(in_channels, input_size, num_classes, widths=(32, 64, 128), convs_per_block=1, pool_before_norm=True)


def _basic_block(in_width, width, stride):
    """One residual block of ResNet-18/34 and the CIFAR ResNets (He et al. 2016, Fig. 2), ReLU after the sum."""
    from . import layers as L
    shortcut = None
    if stride != 1 or in_width != width:   # projection shortcut (option B of the paper)
        shortcut = L.Sequential(L.Conv2D(in_width, width, 1, stride=stride, bias=False), L.BatchNorm2D(width))
    return [L.Residual(L.Conv2D(in_width, width, 3, stride=stride, padding=1, bias=False), L.BatchNorm2D(width),
                       L.ReLU(), L.Conv2D(width, width, 3, padding=1, bias=False), L.BatchNorm2D(width),
                       shortcut=shortcut), L.ReLU()]


def resnet(in_channels: int = 3, input_size=32, num_classes: int = 10, widths=(16, 32, 64), blocks=(1, 1, 1)):
    """A small ResNet for 28-32 px inputs: 3x3 conv stem, residual stages (BN), global average pooling."""
    from . import layers as L
    _positive("in_channels", in_channels)
    _positive("num_classes", num_classes)
    _size(input_size)
    widths, blocks = tuple(widths), tuple(blocks)
    if not widths or len(blocks) != len(widths):
        raise ValueError(f"resnet: expected one block count per stage width, got widths={widths}, blocks={blocks}")
    for what, values in (("widths", widths), ("blocks", blocks)):
        for v in values:
            _positive(f"resnet: {what}", v)
    layers = [L.Conv2D(in_channels, widths[0], 3, padding=1, bias=False), L.BatchNorm2D(widths[0]), L.ReLU()]
    width = widths[0]
    for stage, (out, count) in enumerate(zip(widths, blocks)):
        for b in range(count):
            layers += _basic_block(width, out, 2 if stage > 0 and b == 0 else 1)
            width = out
    layers += [L.GlobalAvgPool2D(), L.Flatten(), L.Affine(width, num_classes)]
    return L.Sequential(layers)


MODELS = {"lenet5": lenet5, "simple_convnet": simple_convnet, "alexnet": alexnet, "vgg": vgg, "small_vgg": small_vgg,
          "resnet": resnet}


def names() -> list[str]:
    """The model names get() knows."""
    return list(MODELS)


def canonical_name(name: str) -> str:
    """The registry spelling of a model name ('LeNet-5' -> 'lenet5', 'SimpleConvNet' -> 'simple_convnet');
    ValueError listing the names if unknown."""
    squeeze = lambda s: str(s).strip().lower().replace("-", "").replace("_", "")
    for key in MODELS:
        if squeeze(key) == squeeze(name):
            return key
    raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")


def get(name: str, **kwargs):
    """Build the model called `name` (in_channels=, input_size=, num_classes=, model options)."""
    return MODELS[canonical_name(name)](**kwargs)


# ------------------------------------------------------------------------------------- your own models

SHAPE_ARGS = ("in_channels", "input_size", "num_classes")


def is_spec(name) -> bool:
    """True for 'path/to/file.py:function' or 'module:function' (your own model), False for a zoo name."""
    where, sep, func = str(name).rpartition(":")
    return bool(sep and where and func.isidentifier())


def from_spec(spec: str):
    """The function a spec names: 'path/to/file.py:function' (the file is run as a module) or
    'module:function' (imported, the current folder first on the path). ValueError naming the spec when the
    file, module or function is missing; errors raised by the file itself propagate with their traceback."""
    import importlib
    import importlib.util
    import sys

    where, sep, func = str(spec).rpartition(":")
    if not sep or not where or not func:
        raise ValueError(f"model {spec!r}: expected path/to/file.py:function or module:function")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(os.path.expanduser(where))
        if not os.path.isfile(path):
            raise ValueError(f"model {spec!r}: no such file {path}")
        name = f"gpucnn_user_model_{zlib.crc32(path.encode())}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            if e.name != where.split(".")[0] and e.name != where:
                raise
            raise ValueError(f"model {spec!r}: no module named {where!r} (looked in the current folder and on "
                             f"sys.path)") from None
        finally:
            sys.path.remove(os.getcwd())
    fn = getattr(module, func, None)
    if not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise ValueError(f"model {spec!r}: {where} defines no function {func!r}"
                         + (f" (it defines: {', '.join(defined)})" if defined else ""))
    return fn


def spec_of(fn) -> str:
    """'module:function' for an importable function (so a checkpoint can name it), else ''."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or module.startswith("gpucnn_user_model_") or "<" in qualname:
        return ""
    return f"{module}:{qualname}"


def build(model, in_channels: int, input_size, num_classes: int):
    """A model for the data: `model` a zoo name, a spec ('my_net.py:build', 'module:function') or a function,
    called with those of in_channels, input_size ((h, w)) and num_classes that it takes. Returns the Layer;
    ValueError when the function requires another parameter or does not return a Layer."""
    from .layers import Layer

    kwargs = {"in_channels": int(in_channels), "input_size": tuple(int(s) for s in _size(input_size)),
              "num_classes": int(num_classes)}
    if isinstance(model, str) and not is_spec(model):
        return get(model, **kwargs)
    fn = from_spec(model) if isinstance(model, str) else model
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    name = model if isinstance(model, str) else getattr(model, "__qualname__", repr(model))
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [p.name for p in params.values() if p.default is inspect.Parameter.empty and (
        p.kind is inspect.Parameter.POSITIONAL_ONLY or p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                                  inspect.Parameter.KEYWORD_ONLY)
        and p.name not in kwargs)]
    if unknown:
        raise ValueError(f"model {name}: the function requires {', '.join(unknown)}, which gpucnn cannot pass: it "
                         f"passes those of {', '.join(SHAPE_ARGS)} (by keyword) that the function takes, so "
                         f"name its parameters so or give them defaults")
    out = fn(**{k: v for k, v in kwargs.items() if takes_all or k in params})
    if not isinstance(out, Layer):
        raise ValueError(f"model {name}: returned {type(out).__name__}, expected a gpucnn Layer such as "
                         f"gpucnn.Sequential(...)")
    return out
