"""The DataLoader: per-epoch shuffling from (seed, epoch), crop/flip augmentation, normalisation, transfer, and
the share of each batch that one process of a data-parallel run takes (:func:`shard_bounds`)."""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np

from ..devices import device_scope, get_device, host_rng, ops, to_cpu, to_device
from .datasets import Dataset, channel_stats


# -------------------------------------------------------------------------------------------- loader

AUGMENTATIONS = ("crop", "flip")


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """(start, stop): the rows of a batch of `total` examples that process `rank` of `world` takes.

    Contiguous, in rank order, as even as can be: the first ``total % world`` processes take one example more
    (numpy.array_split's rule). A process takes none when ``total < world`` and ``rank >= total``.
    """
    base, extra = divmod(int(total), int(world))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class Loader(Protocol):
    """What the trainer asks of a loader; :class:`DataLoader` is one, a loader keeping the images on the
    device (gathering, normalising and augmenting batches there) can be another.

    ``set_epoch(e)`` fixes the order and augmentation of the next iteration from (seed, e); iterating yields
    ``(x, y)``: x float (N, C, H, W) normalised, y int64 (N,), both on the model's device; ``len()`` is the
    number of batches per epoch and ``num_examples`` the number of examples served per epoch.
    """

    batch_size: int

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator: ...

    @property
    def num_examples(self) -> int: ...


class DataLoader:
    """Mini-batches of (x, y) on a device: x float NCHW, normalised; y int64 (PyTorch's target dtype).

    The order of epoch e is drawn from ``np.random.default_rng([seed, e])``, and so are that epoch's crops and
    flips: resuming at epoch e needs only ``set_epoch(e)``, no saved state. Each ``iter(loader)`` runs the
    current epoch and then advances it by one; a trainer may instead call ``set_epoch(e)`` before each epoch.
    Normalisation is ``(x/255 - mean) / std`` per channel for uint8 images (``x/255`` alone when
    ``normalize=False``); float images are taken as already scaled to [0, 1]. mean/std come from the Dataset,
    the arguments, or are computed from the images given. ``limit`` keeps the first n examples. Images and
    labels given as device arrays are copied to the host once.

    On a GPU, uint8 images stay on the device: they and the labels are uploaded once (at the first iteration),
    each epoch's order, crops and flips (:meth:`draws`) are drawn on the host and uploaded as one table when the
    epoch starts, and each batch is one kernel gathering, cropping, flipping and normalising its images there
    (kernels/data.cu): a training step makes no host work and no host-to-device copy for its data. Elsewhere
    (the CPU, float images) the same draws are applied by the kernel's numpy twin and the batch is sent to
    `device`. Either way an epoch's batches are the same, bit for bit on the CPU.

    ``shard=(rank, world)``: the loader of one process of a data-parallel run. The batches, their order and
    their crops and flips are those of the whole loader (``batch_size`` is the global batch); each one yields
    only the rows :func:`shard_bounds` gives the process. A process whose share of a batch is empty (a last
    batch smaller than `world`) gets the batch's first example instead when ``pad_shards`` (so that every
    process runs every step; its trainer gives that example no weight), else nothing for that batch.
    """

    def __init__(self, data, batch_size=128, shuffle=True, seed=0, normalize=True, augment=(), device="cpu",
                 drop_last=False, dtype=np.float32, limit=None, pad=None, mean=None, std=None, shard=None,
                 pad_shards=True):
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
        self._resident = None      # (images, labels, scale, shift) on the device, once uploaded
        self._fixed_draws = None   # the device draws of a loader without shuffling or augmentation
        if shard is not None:
            rank, world = (int(v) for v in shard)
            if not 0 <= rank < world:
                raise ValueError(f"DataLoader({self.name}): shard must be (rank, world) with 0 <= rank < world, "
                                 f"got {tuple(shard)}")
            shard = (rank, world)
        self.shard, self.pad_shards = shard, bool(pad_shards)

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

    def batch_sizes(self) -> list[int]:
        """The number of examples of each batch of an epoch, every process's share together."""
        n = len(self.labels)
        stop = n - n % self.batch_size if self.drop_last else n
        return [min(self.batch_size, stop - start) for start in range(0, stop, self.batch_size)]

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of an epoch, in the order they are served."""
        n = len(self.labels)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def draws(self, epoch: int) -> np.ndarray:
        """What epoch `epoch` serves, in order: an (examples served, 4) int32 table of (example index, crop row
        offset, crop column offset, mirrored) per example, all drawn from ``default_rng([seed, epoch])``: the
        permutation first, then per batch its crop offsets (0..2*pad, rows then columns) and its flips."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.labels)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        table = np.zeros((stop, 4), np.int32)
        table[:, 0] = order[:stop]
        for start in range(0, stop, self.batch_size):
            rows = table[start:start + self.batch_size]
            if "crop" in self.augment:
                rows[:, 1:3] = rng.integers(0, 2 * self.pad + 1, size=(2, len(rows))).T
            if "flip" in self.augment:
                rows[:, 3] = rng.random(len(rows)) < 0.5
        return table

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        resident = self._on_device()
        if resident is None:
            return self._batches(self.draws(epoch), (self.images, self.labels, self._scale.reshape(-1),
                                                     self._shift.reshape(-1)))
        if self._fixed_draws is not None:
            return self._batches(self._fixed_draws, resident)
        with device_scope(self.device):
            draws = to_device(self.draws(epoch), self.device)   # the epoch's one upload, before its first step
        if not self.shuffle and not self.augment:
            self._fixed_draws = draws
        return self._batches(draws, resident)

    def _on_device(self):
        """(images, labels, scale, shift) on the GPU, uploaded at the first call; None where batches are made
        on the host (the CPU, or float images)."""
        if not self.device.is_gpu or self.images.dtype != np.uint8:
            return None
        if self._resident is None:
            with device_scope(self.device):
                self._resident = tuple(to_device(np.ascontiguousarray(a), self.device) for a in (
                    self.images, self.labels, self._scale.reshape(-1), self._shift.reshape(-1)))
        return self._resident

    def _batches(self, draws, data):
        images, labels, scale, shift = data
        crop, flip = "crop" in self.augment, "flip" in self.augment
        for start in range(0, len(draws), self.batch_size):
            with device_scope(draws):   # not across the yield: the consumer runs in its own scope
                rows = self._share(draws[start:start + self.batch_size])
                if rows is None:
                    continue
                x, y = ops.gather_batch(images, labels, rows, crop, flip, self.pad, scale, shift, self.dtype)
            if images is self.images:   # made on the host: send it
                x, y = to_device(x, self.device), to_device(y, self.device)
            yield x, y

    def _share(self, rows):
        """This process's rows of a batch's draws (see the class doc), or None when it takes nothing."""
        if self.shard is None:
            return rows
        start, stop = shard_bounds(len(rows), *self.shard)
        if stop > start:
            return rows[start:stop]
        return rows[:1] if self.pad_shards else None

    def __repr__(self):
        shard = f", shard={self.shard}" if self.shard else ""
        return (f"DataLoader({self.name}, {self.num_examples} examples, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device}{shard})")
