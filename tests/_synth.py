"""Files the tests write: a tiny learnable stand-in for MNIST as idx files, the same kind of images as
arrays, an .npz file or a folder of PNG/JPEG files, a small network in a file of its own (training tests run
in seconds without data), and checkpoints rewritten with chosen defects."""
import gzip
import json
import struct

import numpy as np


def patch_images(n, size=16, classes=10, rng=None, channels=1):
    """(uint8 images (n, channels, size, size), int64 labels (n,)): class k is a bright 4x4 patch at grid cell
    k on noise, so small nets learn it in a few steps."""
    rng = rng if rng is not None else np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 80, (n, channels, size, size)).astype(np.uint8)
    cells = size // 4
    for i, k in enumerate(labels):
        r, c = divmod(int(k), cells)
        images[i, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 150
    return images, labels.astype(np.int64)


def write_idx_dataset(folder, n_train=256, n_test=128, size=16, seed=0):
    """train/t10k idx files (gzip) of size x size uint8 patch images (see patch_images) in `folder`. Returns
    the folder."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = patch_images(n, size, rng=rng)
        images, labels = images[:, 0], labels.astype(np.uint8)
        with gzip.open(f"{folder}/{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, size, size) + images.tobytes())
        with gzip.open(f"{folder}/{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return str(folder)


def rewrite_checkpoint(path, edit_meta=None, **arrays):
    """Rewrite a checkpoint .npz with some of its arrays replaced and/or its JSON metadata edited in place by
    edit_meta(meta)."""
    with np.load(path) as z:
        content = {k: z[k] for k in z.files}
    if edit_meta is not None:
        meta = json.loads(str(content["__meta__"]))
        edit_meta(meta)
        content["__meta__"] = np.array(json.dumps(meta))
    content.update(arrays)
    np.savez(path, **content)


def write_npz_dataset(path, n_train=160, n_test=48, size=12, classes=4, channels=1, layout="NHWC", seed=0, **extra):
    """An .npz of patch images (x_train, y_train, x_test, y_test; n_test=0 leaves the test split out) stored in
    `layout`; `extra` arrays are added as they are. Returns the path."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        if n:
            x, y = patch_images(n, size, classes, rng, channels)
            arrays[f"x_{split}"] = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
            arrays[f"y_{split}"] = y
    arrays.update(extra)
    np.savez(path, **arrays)
    return str(path)


def write_image_folder(root, per_class=12, size=12, classes=("circle", "cross", "dot"), splits=("train",),
                       rgb=False, seed=0):
    """root/<class>/NN.png (splits=("train",)) or root/<split>/<class>/NN.png of patch images, every third
    file a JPEG (saved at quality 100, so the patches survive). Returns the root."""
    from pathlib import Path
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in splits:
        base = Path(root) if splits == ("train",) else Path(root) / split
        for k, name in enumerate(classes):
            (base / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(30, 70, (size, size, 3 if rgb else 1)).astype(np.uint8)
                img[:4, 4 * k:4 * k + 4] = 230                         # class k: a bright patch at cell k
                pil = Image.fromarray(img if rgb else img[:, :, 0], "RGB" if rgb else "L")
                suffix = ".jpg" if i % 3 == 2 else ".png"
                pil.save(base / name / f"{i:02d}{suffix}", **({"quality": 100} if suffix == ".jpg" else {}))
    return str(root)


NET_SOURCE = """
import gpucnn
from gpucnn.layers import Affine, BatchNorm2D, Conv2D, Dropout, Flatten, MaxPool2D, ReLU


def build(in_channels, input_size, num_classes):
    h, w = input_size
    return gpucnn.Sequential(Conv2D(in_channels, 6, 3, padding=1), BatchNorm2D(6), ReLU(), MaxPool2D(2),
                             Flatten(), Dropout(0.25), Affine(6 * (h // 2) * (w // 2), num_classes))


def no_layer():
    return [1, 2, 3]
"""


def write_model_file(folder, name="my_net.py"):
    """A small network of one's own (conv, batch norm, dropout) in a file: build(in_channels, input_size,
    num_classes). Returns the path."""
    from pathlib import Path
    path = Path(folder) / name
    path.write_text(NET_SOURCE)
    return str(path)
