"""The DataLoader: per-epoch shuffling from (seed, epoch), crop/flip augmentation, normalisation, transfer."""
from __future__ import annotations

import numpy as np

from ..devices import get_device, host_rng, to_cpu, to_device
from .datasets import Dataset, channel_stats


# -------------------------------------------------------------------------------------------- loader

AUGMENTATIONS = ("crop", "flip")


class DataLoader:
    """Mini-batches of (x, y) on a device: x float NCHW, normalised; y int64 (PyTorch's target dtype).

    The order of epoch e is drawn from ``np.random.default_rng([seed, e])``, and so are that epoch's crops and
    flips: resuming at epoch e needs only ``set_epoch(e)``, no saved state. Each ``iter(loader)`` runs the
    current epoch and then advances it by one; a trainer may instead call ``set_epoch(e)`` before each epoch.
    Normalisation is ``(x/255 - mean) / std`` per channel for uint8 images (``x/255`` alone when
    ``normalize=False``); float images are taken as already scaled to [0, 1]. mean/std come from the Dataset,
    the arguments, or are computed from the images given. ``limit`` keeps the first n examples. Images and
    labels given as device arrays are copied to the host once (batches are made there and sent to `device`).
    """

    def __init__(self, data, batch_size=128, shuffle=True, seed=0, normalize=True, augment=(), device="cpu",
                 drop_last=False, dtype=np.float32, limit=None, pad=None, mean=None, std=None):
        if isinstance(data, Dataset):
            images, labels = data.images, data.labels
            mean = data.mean if mean is None else mean
            std = data.std if std is None else std
            self.name = f"{data.name} {data.split}".strip()
        else:
            try:
                images, labels = data
            except (TypeError, ValueError):
                raise TypeError(f"DataLoader: expected a Dataset or an (images, labels) pair, "
                                f"got {type(data).__name__}") from None
            images, labels = to_cpu(images), to_cpu(labels)   # device arrays are read back once, here
            self.name = "arrays"
        if images.ndim != 4:
            raise ValueError(f"DataLoader({self.name}): expected images (N, C, H, W), got shape {images.shape}")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"DataLoader({self.name}): expected integer labels of shape ({len(images)},), "
                             f"got {labels.dtype} of shape {labels.shape}")
        if limit is not None:
            if limit < 0:
                raise ValueError(f"DataLoader({self.name}): limit must be >= 0, got {limit}")
            images, labels = images[:limit], labels[:limit]
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader({self.name}): batch_size must be >= 1, got {batch_size}")
        augment = (augment,) if isinstance(augment, str) else tuple(augment or ())
        unknown = [a for a in augment if a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"DataLoader({self.name}): unknown augmentation(s) {unknown}: "
                             f"expected any of {AUGMENTATIONS}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"DataLoader({self.name}): dtype must be float32 or float64, got {self.dtype}")
        self.images, self.labels = images, labels.astype(np.int64, copy=False)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.seed = int(host_rng().integers(2**63 - 1)) if seed is None else int(seed)
        self.augment = augment
        self.pad = (4 if images.shape[2] >= 32 else 2) if pad is None else int(pad)
        self.device = get_device(device)
        self.epoch = 0
        self._scale, self._shift = self._normalisation(normalize, mean, std)

    def _normalisation(self, normalize, mean, std):
        """Per-channel (scale, shift) with x_out = x * scale - shift, as (1, C, 1, 1) arrays of self.dtype."""
        c = self.images.shape[1]
        raw = 255.0 if self.images.dtype == np.uint8 else 1.0
        if not normalize:
            mean, std = (0.0,) * c, (1.0,) * c
        elif mean is None or std is None:
            mean, std = channel_stats(self.images)
        mean, std = np.broadcast_to(np.asarray(mean, np.float64), (c,)), np.broadcast_to(np.asarray(std, np.float64), (c,))
        if np.any(std <= 0):
            raise ValueError(f"DataLoader({self.name}): std must be positive per channel, got {tuple(std)}")
        shape = (1, c, 1, 1)
        return ((1.0 / (raw * std)).astype(self.dtype).reshape(shape),
                (mean / std).astype(self.dtype).reshape(shape))

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int):
        """Make the next iteration run epoch `epoch` (its order and augmentation)."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of an epoch, in the order they are served."""
        n = len(self.labels)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.labels)
        idx = rng.permutation(n) if self.shuffle else None
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            sel = slice(start, min(start + self.batch_size, n)) if idx is None else idx[start:start + self.batch_size]
            x = self.images[sel]
            y = self.labels[sel]
            if "crop" in self.augment:
                x = self._crop(x, rng)
            if "flip" in self.augment:
                x = self._flip(x, rng)
            yield to_device(self._normalise(x), self.device), to_device(np.ascontiguousarray(y), self.device)

    def _normalise(self, x):
        out = np.empty(x.shape, self.dtype)
        np.multiply(x, self._scale, out=out, dtype=self.dtype)
        np.subtract(out, self._shift, out=out)
        return out

    def _crop(self, x, rng):
        """Random crops of the zero-padded images, same size as the input (offsets in 0..2*pad)."""
        p = self.pad
        b, c, h, w = x.shape
        padded = np.zeros((b, c, h + 2 * p, w + 2 * p), x.dtype)
        padded[:, :, p:p + h, p:p + w] = x
        dy, dx = rng.integers(0, 2 * p + 1, size=(2, b))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
        return windows[np.arange(b), :, dy, dx]

    def _flip(self, x, rng):
        """Each image mirrored left-right with probability 1/2."""
        mask = rng.random(len(x)) < 0.5
        return np.where(mask[:, None, None, None], x[..., ::-1], x)

    def __repr__(self):
        return (f"DataLoader({self.name}, {self.num_examples} examples, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device})")
