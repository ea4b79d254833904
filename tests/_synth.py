"""Files the tests write: a tiny learnable stand-in for MNIST as idx files (training tests run in seconds
without data), and checkpoints rewritten with chosen defects."""
import gzip
import json
import struct

import numpy as np


def write_idx_dataset(folder, n_train=256, n_test=128, size=16, seed=0):
    """train/t10k idx files (gzip) of size x size uint8 images in `folder`: class k is a bright 4x4 patch at
    grid cell k on noise, so small nets learn it in a few steps. Returns the folder."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 80, (n, size, size)).astype(np.uint8)
        cells = size // 4
        for i, k in enumerate(labels):
            r, c = divmod(int(k), cells)
            images[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 150
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
