"""Your own data: an ``.npz`` file of arrays or a folder of images, as Datasets like the built-in ones.

``.npz``: ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test``, ``x_val``, ``y_val``, ``classes`` (class
names) and ``layout`` ("NCHW" or "NHWC"). Images are uint8 (0-255) or float (kept as float32; pixel values
scaled to [0, 1], as ``predict`` reads PNG/JPEG files (x / 255): values outside are a DatasetError; the loader
normalises them with their own statistics), shaped (N, H, W) for one channel or
4-D in NCHW or NHWC; labels are integers 0..K-1 shaped (N,) or (N, 1).

Layout rule (:func:`images_nchw`): of axes 1 and 3, the channel axis is the one of length 1, 3 or 4 when
the other is not; when both or neither are (such as (N, 3, 4, 3) or (N, 16, 32, 32)) the file must say
which with a ``layout`` entry, and the error says so.

Image folder: one subfolder per class (``root/<class>/*.png``), or ``root/train/<class>/...`` with
``root/test/<class>/...`` (and optionally ``root/val/<class>/...``) for separate splits. PNG and JPEG files,
read with Pillow (``pip install 'gpucnn[images]'``); class names are the subfolders' names in sorted order
(as torchvision's ImageFolder); all images must have the same size; grayscale images give one channel, unless
some image has colour, when all become RGB. Files whose names start with "." are ignored; any other file that
is not a readable PNG or JPEG is an error naming it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datasets import Dataset, DatasetError

SPLITS = ("train", "test", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("NCHW", "NHWC")
_CHANNEL_COUNTS = (1, 3, 4)
FLOAT_SLACK = 1e-3   # float images may stray this far outside [0, 1] (rounding of resampling or colour conversion)


def is_path(source) -> bool:
    """True when a data set argument names a file or folder rather than a built-in data set."""
    if isinstance(source, os.PathLike):
        return True
    text = str(source)
    return text.endswith(".npz") or os.sep in text or "/" in text or os.path.exists(text)


def has_split(path, split: str) -> bool:
    """Whether the .npz file or image folder at `path` holds `split` ("train", "test" or "val")."""
    path = Path(path)
    if path.is_dir():
        return (path / split).is_dir() if _split_layout(path) else split == "train"
    with _open_npz(path) as z:
        return f"x_{split}" in z.files


def load_path(path, split: str = "train") -> Dataset:
    """One split of an .npz file or an image folder (see the module docstring); DatasetError naming the file
    and the problem for anything unusable."""
    if split not in SPLITS:
        raise DatasetError(f"{path}: unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    path = Path(path).expanduser()
    if path.is_dir():
        return read_image_folder(path, split)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (expected an .npz file or a folder of images with one "
                           f"subfolder per class)")
    return read_npz(path, split)


# ------------------------------------------------------------------------------------------------ npz

def _open_npz(path):
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:2] != b"PK":        # not a zip archive: np.load would try it as a pickle and say so, confusingly
            raise ValueError(f"not a zip archive as np.savez writes (it starts with {magic!r})")
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def read_npz(path, split: str = "train") -> Dataset:
    """One split of an .npz file: x_<split> as (N, C, H, W) (uint8, or float32) and y_<split> as int64 (N,)."""
    path = Path(path)
    with _open_npz(path) as z:
        keys = set(z.files)
        if "x_train" not in keys or "y_train" not in keys:
            raise DatasetError(f"{path}: expected arrays x_train and y_train (and optionally x_test, y_test, "
                               f"x_val, y_val, classes, layout), got {', '.join(sorted(keys)) or 'none'}")
        if f"x_{split}" not in keys:
            raise DatasetError(f"{path}: has no {split} split (no x_{split} array)")
        if f"y_{split}" not in keys:
            raise DatasetError(f"{path}: has x_{split} but no y_{split} (the labels)")
        try:
            layout = str(z["layout"]) if "layout" in keys else None
            raw_labels = {s: z[f"y_{s}"] for s in SPLITS if f"y_{s}" in keys}
            x = z[f"x_{split}"]
            names = [str(c) for c in np.atleast_1d(z["classes"])] if "classes" in keys else None
        except (OSError, ValueError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt .npz file ({type(e).__name__}: {e})") from None
    labels = {s: class_indices(y, f"{path}: y_{s}") for s, y in raw_labels.items()}
    images = images_nchw(x, f"{path}: x_{split}", layout)
    y = labels[split]
    if len(y) != len(images):
        raise DatasetError(f"{path}: x_{split} holds {len(images)} images but y_{split} holds {len(y)} labels")
    top = max(int(v.max()) for v in labels.values() if len(v))
    if names is None:
        names = [str(k) for k in range(top + 1)]
    elif top >= len(names):
        raise DatasetError(f"{path}: a label is {top}, but 'classes' names only {len(names)} classes")
    return Dataset(images, y, names, _name(path), split, str(path))


def class_indices(y, where) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{where}: expected labels of shape (N,), got shape {y.shape} (one integer class "
                           f"index per image, not one-hot rows)")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and len(y) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            what = "float labels with integer values: store them with y.astype('int64')"
        else:
            what = f"{y.dtype} labels"
        raise DatasetError(f"{where}: expected integer class indices 0..K-1, got {what}")
    if len(y) == 0:
        raise DatasetError(f"{where}: holds no labels")
    if int(y.min()) < 0:
        raise DatasetError(f"{where}: expected class indices 0..K-1, got a negative label {int(y.min())}")
    return y.astype(np.int64)


def images_nchw(x, where: str, layout: str | None = None) -> np.ndarray:
    """Images as (N, C, H, W): uint8 kept (and other integers within 0-255 made uint8), other numbers as float32,
    which must lie in [0, 1]; (N, H, W) gets one channel; 4-D arrays follow `layout` or the rule in the module
    docstring. DatasetError naming `where` otherwise."""
    x = np.asarray(x)
    if x.dtype == np.bool_ or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)
                                   or np.issubdtype(x.dtype, np.integer)):
        raise DatasetError(f"{where}: expected uint8 or float images, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise DatasetError(f"{where}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if len(x) == 0:
        raise DatasetError(f"{where}: holds no images")
    if layout is not None:
        key = str(layout).strip().upper()
        if key not in LAYOUTS:
            raise DatasetError(f"{where}: layout must be NCHW or NHWC, got {layout!r}")
    else:
        first, last = x.shape[1] in _CHANNEL_COUNTS, x.shape[3] in _CHANNEL_COUNTS
        if first == last:
            raise DatasetError(
                f"{where}: cannot tell whether shape {x.shape} is NCHW or NHWC (axes 1 and 3 are "
                f"{'both' if first else 'neither'} 1, 3 or 4 long); save the file with layout='NCHW' or "
                f"layout='NHWC' beside the arrays, e.g. np.savez(path, ..., layout='NHWC')")
        key = "NCHW" if first else "NHWC"
    if key == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
            x = x.astype(np.uint8)
        else:
            x = x.astype(np.float32)
            if not np.all(np.isfinite(x)):
                raise DatasetError(f"{where}: holds NaN or infinite pixel values")
            lo, hi = float(x.min()), float(x.max())
            if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:   # else prediction on PNG/JPEG files (x / 255) is wrong
                raise DatasetError(
                    f"{where}: images that are not uint8 are taken as pixel values scaled to [0, 1], but these range "
                    f"from {lo:g} to {hi:g}: divide 0-255 values by 255 or store them as uint8, and give images "
                    f"before any normalisation (gpucnn normalises with the training images' statistics)")
    return np.ascontiguousarray(x)


def _name(path: Path) -> str:
    """A short data set name for run folders: the file's or folder's name without its suffix."""
    return path.resolve().name.removesuffix(".npz") or "data"


# ------------------------------------------------------------------------------------------ image folder

def _split_layout(root: Path) -> bool:
    """True when root holds train/ and test/ (and maybe val/) folders rather than one folder per class."""
    subs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return "train" in subs and subs <= set(SPLITS) and len(subs) > 1


def _class_folders(folder: Path) -> list[Path]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{folder}: expected one subfolder per class (e.g. {folder}/cat/1.png), found none")
    return classes


def read_image_folder(root, split: str = "train") -> Dataset:
    """One split of a folder of PNG/JPEG images in class subfolders (see the module docstring)."""
    root = Path(root)
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(f"{root}: reading image folders needs Pillow: pip install 'gpucnn[images]'") from None
    split_layout = _split_layout(root)
    train_dir = root / "train" if split_layout else root
    classes = [p.name for p in _class_folders(train_dir)]
    if split != "train" and not (split_layout and (root / split).is_dir()):
        raise DatasetError(f"{root}: has no {split} split (a {split}/ folder beside train/, each with one "
                           f"subfolder per class)")
    folder = root / split if split_layout else root
    found = [p.name for p in _class_folders(folder)]
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{folder}: classes {unknown} are not among the training classes {classes}")
    files, labels = [], []
    for k, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        names = sorted(f for f in (folder / name).iterdir() if not f.name.startswith("."))
        if not names:
            raise DatasetError(f"{folder / name}: class folder holds no images")
        for f in names:
            if f.is_dir() or f.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{f}: expected PNG or JPEG files ({', '.join(IMAGE_SUFFIXES)}) in a class "
                                   f"folder, got {'a folder' if f.is_dir() else 'this file'}")
            files.append(f)
            labels.append(k)
    size = _reference_size(Image, train_dir, classes) if split != "train" else None
    pixels = [_read_image(Image, f) for f in files]
    first = files[0]
    size = size or (pixels[0].shape[:2], first)
    for f, a in zip(files, pixels):
        if a.shape[:2] != size[0]:
            raise DatasetError(f"{f}: is {a.shape[1]}x{a.shape[0]} pixels, but {size[1]} is {size[0][1]}x"
                               f"{size[0][0]}; all images must have one size (resize them first)")
    colour = any(a.shape[2] == 3 for a in pixels)
    images = np.stack([np.repeat(a, 3, axis=2) if colour and a.shape[2] == 1 else a for a in pixels])
    return Dataset(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), np.asarray(labels, np.int64), classes,
                   _name(root), split, str(root))


def _reference_size(Image, train_dir, classes):
    """(height, width) of the first training image, and its path: other splits must match it."""
    for name in classes:
        for f in sorted((train_dir / name).iterdir()):
            if not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                return _read_image(Image, f).shape[:2], f
    return None


def read_image(path) -> np.ndarray:
    """A PNG or JPEG file as uint8 (H, W, 1) for grayscale or (H, W, 3) otherwise (Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(f"{path}: reading images needs Pillow: pip install 'gpucnn[images]'") from None
    return _read_image(Image, Path(path))


def _read_image(Image, path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("L", "1", "I;16", "I", "F"):
                a = np.asarray(img.convert("L"))[:, :, None]
            else:
                a = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:   # PIL.UnidentifiedImageError is an OSError
        raise DatasetError(f"{path}: not a readable PNG or JPEG image ({type(e).__name__}: {e})") from None
    return a
