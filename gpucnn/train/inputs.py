"""What :func:`gpucnn.fit` trains: the data sets (from arrays, a Dataset, a built-in name or a path), the
validation split carved with the seed, their loaders, and the model built for the data.

Rules: labels are class indices 0..K-1 with K the largest label + 1 (or the data set's class names); the
validation and test images must have the training images' shape; normalisation statistics come from the
built-in data set's published ones, else from the training images (after the validation split), and are
used for every split and saved with the model, so prediction normalises the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from .. import data, devices, models
from ..data import Dataset, DatasetError

_VALIDATION_KEY = 0x76616C  # "val": the validation split's random stream, apart from the epochs' ones


@dataclass
class Inputs:
    """The splits a run uses and what they mean."""
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    name: str                  # short: run folder names and titles
    identity: str              # recorded as the run's "dataset": a built-in name, an absolute path, "arrays"
    classes: list
    mean: tuple
    std: tuple
    validation: object = None  # how the validation data came: a fraction, "given", "val split", None

    @property
    def image_shape(self) -> tuple:
        return tuple(int(s) for s in self.train.images.shape[1:])

    @property
    def shape_kwargs(self) -> dict:
        c, h, w = self.image_shape
        return {"in_channels": c, "input_size": [h, w], "num_classes": len(self.classes)}

    @property
    def meta(self) -> dict:
        """What a checkpoint keeps so the model can be used on new images: class names, image shape and the
        normalisation ((x / scale - mean) / std per channel; scale 255 for uint8 images, 1 for float ones)."""
        return {"name": self.name, "classes": [str(c) for c in self.classes], "image_shape": list(self.image_shape),
                "mean": list(self.mean), "std": list(self.std),
                "scale": 255.0 if self.train.images.dtype == np.uint8 else 1.0}

    def describe(self) -> str:
        counts = " / ".join(f"{len(ds)} {what}" for ds, what in ((self.train, "train"), (self.val, "val"),
                                                                  (self.test, "test")) if ds is not None)
        source = f" from {self.train.source}" if self.train.source and self.train.source != "arrays" else ""
        return f"{counts} images {'x'.join(map(str, self.image_shape))}{source}"

    def scoring_note(self) -> str | None:
        """A sentence saying how the run is scored when there is no test split, else None."""
        if self.test is not None:
            return None
        if self.val is not None:
            return (f"{self.name} has no test split: the run is scored on the validation data, and best.npz "
                    f"keeps the epoch it prefers")
        return (f"{self.name} has no test split and there is no validation data: only the training loss and "
                f"accuracy are reported (add --val-split 0.1 to score the run)")


def augmentations(augment, dataset: str) -> tuple:
    """augment -> the DataLoader's augmentation names (True: random crops, plus flips except for digits)."""
    if augment is True:
        return ("crop",) if dataset == "mnist" else ("crop", "flip")
    if not augment:
        return ()
    return tuple(a.strip() for a in str(augment).split(",") if a.strip())


# ----------------------------------------------------------------------------------------------- data

def _is_fraction(v) -> bool:
    """A number given as `validation` (a fraction, or a mistake the range check reports)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _source(obj, what: str, split: str, data_dir, download) -> Dataset:
    """A Dataset from a Dataset, an (images, labels) pair (numpy or device arrays), a name or a path."""
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return data.load_dataset(obj, split, data_dir=data_dir, download=download)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = (devices.to_cpu(a) if devices.is_gpu_array(a) else np.asarray(a) for a in obj)
        images = data.images_nchw(x, f"{what} images")
        labels = data.class_indices(y, f"{what} labels")
        if len(labels) != len(images):
            raise DatasetError(f"{what}: {len(images)} images but {len(labels)} labels")
        return Dataset(images, labels, [], "arrays", split, "arrays")
    raise TypeError(f"{what}: expected (images, labels) arrays, a gpucnn.data.Dataset, a data set name or a path "
                    f"to an .npz file or image folder, got {type(obj).__name__}")


def split_off(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): a random `fraction` of `ds` (rounded, at least one example) drawn with the seed,
    both parts in their original order. ValueError when nothing would be left on one side."""
    n = len(ds)
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val-split {fraction:g} of {n} training images leaves "
                         f"{'no validation' if n_val < 1 else 'no training'} images")
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VALIDATION_KEY,))).permutation(n)
    pick = lambda idx: replace(ds, images=ds.images[np.sort(idx)], labels=ds.labels[np.sort(idx)])
    return replace(pick(order[n_val:]), split="train"), replace(pick(order[:n_val]), split="val")


def prepare(train, validation=None, test="auto", *, seed=0, limit_train=None, limit_test=None, data_dir=None,
            download=True) -> Inputs:
    """The splits of a run. `train`: (images, labels), a Dataset, a built-in name or a path; `validation`: a
    fraction of `train` in (0, 1), data as `train`, or None (a file's own val split is then used);
    `test`: data, None, or "auto" (the test split of the same name or path, if it has one)."""
    from_source = isinstance(train, (str, os.PathLike))
    own_file = from_source and data.is_own_data(train)
    train_set = _source(train, "train", "train", data_dir, download).subset(limit_train)
    how = None
    if validation is None and own_file and data.has_split(train, "val"):
        validation, how = data.load_path(train, "val"), "val split"
    if validation is None:
        val_set = None
    elif _is_fraction(validation):
        if not 0 < float(validation) < 1:
            raise ValueError(f"val-split must be a fraction between 0 and 1, got {validation!r}")
        train_set, val_set = split_off(train_set, float(validation), seed)
        how = float(validation)
    else:
        val_set, how = _source(validation, "validation", "val", data_dir, download), how or "given"
    if isinstance(test, str) and test == "auto":
        test = None
        if from_source and (not own_file or data.has_split(train, "test")):
            test = train
    test_set = None if test is None else _source(test, "test", "test", data_dir, download).subset(limit_test)

    sets = [(train_set, "training"), (val_set, "validation"), (test_set, "test")]
    for ds, what in sets[1:]:
        if ds is not None and ds.image_shape != train_set.image_shape:
            raise DatasetError(f"the {what} images are {'x'.join(map(str, ds.image_shape))}, but the training "
                               f"images are {'x'.join(map(str, train_set.image_shape))}")
    top = max(int(ds.labels.max()) for ds, _ in sets if ds is not None and len(ds))
    classes = list(train_set.classes) or [str(k) for k in range(top + 1)]
    if top >= len(classes):
        raise DatasetError(f"a label is {top}, but the training data names {len(classes)} classes")
    mean, std = ((train_set.mean, train_set.std) if train_set.mean is not None and train_set.std is not None
                 else data.channel_stats(train_set.images))
    identity = (train_set.name if from_source and not own_file else
                os.path.abspath(os.fspath(train)) if own_file else train_set.source or train_set.name)
    return Inputs(train_set, val_set, test_set, train_set.name, identity, classes, tuple(mean), tuple(std), how)


def loaders(inputs: Inputs, *, batch_size: int, seed: int, augment, device):
    """(train, validation or None, test or None) loaders, all normalised with the training statistics."""
    common = dict(seed=seed, normalize=True, device=device, drop_last=False, mean=inputs.mean, std=inputs.std)
    train = data.DataLoader(inputs.train, batch_size=batch_size, shuffle=True,
                            augment=augmentations(augment, inputs.name), **common)
    # A last batch of one sample has no batch statistics (BatchNorm refuses it): it is left out of training.
    train.drop_last = train.num_examples % batch_size == 1 and train.num_examples > 1
    evaluation = lambda ds: None if ds is None else data.DataLoader(ds, batch_size=max(batch_size, 256),
                                                                    shuffle=False, augment=False, **common)
    return train, evaluation(inputs.val), evaluation(inputs.test)


# ---------------------------------------------------------------------------------------------- model

def model_name(model) -> str:
    """How a run records its model: the zoo's name, 'abs/path/file.py:function', 'module:function', or ''
    (a model object or a function that cannot be imported by name: eval and predict then need --model)."""
    from ..layers import Layer
    if isinstance(model, Layer):
        return ""
    if isinstance(model, str):
        if not models.is_spec(model):
            return models.canonical_name(model)
        where, _, func = model.rpartition(":")
        if where.endswith(".py") or os.sep in where or "/" in where:
            return f"{os.path.abspath(os.path.expanduser(where))}:{func}"
        return model
    if callable(model):
        return models.spec_of(model)
    raise TypeError(f"model: expected a gpucnn Layer, a model name ({', '.join(models.names())}), "
                    f"'file.py:function', 'module:function' or a function, got {type(model).__name__}")


def build_model(model, inputs: Inputs):
    """(the model for the data, its recorded name); ValueError when it cannot take the data's images or does
    not give one score per class (checked by one forward pass of a blank image in eval mode)."""
    from ..layers import Layer
    name = model_name(model)
    layer = model if isinstance(model, Layer) else models.build(model, **inputs.shape_kwargs)
    label = name or (getattr(model, "__qualname__", None) or type(model).__name__)
    dtype = next((p.dtype for p in layer.params.values()), np.float32)
    was_training = layer.training
    layer.eval()
    try:
        with devices.device_scope(layer.device):
            x = devices.to_device(np.zeros((1, *inputs.image_shape), dtype), layer.device)
            shape = tuple(layer(x).shape)
    except (ValueError, TypeError) as e:
        raise ValueError(f"model {label}: cannot take the data's {'x'.join(map(str, inputs.image_shape))} images: "
                         f"{e}") from None
    finally:
        layer.train(was_training)
    k = len(inputs.classes)
    if shape != (1, k):
        raise ValueError(f"model {label}: gives outputs of shape {shape} for one image, but the data has {k} "
                         f"classes: expected (1, {k})")
    return layer, name
