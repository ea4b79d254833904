"""The datasets gpucnn knows (MNIST, Fashion-MNIST, CIFAR-10: where published, checksums, file names, class
names, statistics) and the Dataset type: uint8 images (N, C, H, W) with int64 labels (N,)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


class DatasetError(ValueError):
    """A dataset is missing, corrupt, or could not be downloaded; the message names the file and the problem."""


# ------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class _Spec:
    """What is known about one dataset: where it is published, its checksums and its file names."""
    name: str
    kind: str                      # "idx" or "cifar"
    classes: tuple
    mean: tuple                    # per channel, of x/255 on the train split
    std: tuple
    urls: tuple                    # base URLs, tried in order
    sha256: dict                   # published file name -> SHA-256 of the file as served
    files: dict                    # split -> file names (idx: images, labels; cifar: batch names)
    torchvision_dir: str = ""      # layout torchvision uses under a root: <root>/<dir>
    hint: str = ""


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"

# SHA-256 of the files as served: MNIST and Fashion-MNIST from TensorFlow Datasets' url_checksums
# (mnist.txt, fashion_mnist.txt), CIFAR-10 from Keras' cifar10.load_data (file_hash). The Debian package's
# Fashion-MNIST .gz files are recompressed (same pixels, other bytes), so local files are validated by
# structure, and only downloads by checksum.
DATASETS = {
    "mnist": _Spec(
        "mnist", "idx", tuple(str(d) for d in range(10)), (0.1307,), (0.3081,),
        ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/",
         "http://yann.lecun.com/exdb/mnist/"),
        {"train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
         "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
         "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
         "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"},
        _IDX_FILES, "MNIST/raw"),
    "fashion-mnist": _Spec(
        "fashion-mnist", "idx",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
         "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
         "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
         "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"},
        _IDX_FILES, "FashionMNIST/raw",
        hint="install the Debian package: sudo apt-get install dataset-fashion-mnist"),
    "cifar10": _Spec(
        "cifar10", "cifar",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ("https://www.cs.toronto.edu/~kriz/",),
        {CIFAR_ARCHIVE: "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}),
}

_ALIASES = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "fmnist": "fashion-mnist", "cifar10": "cifar10", "cifar": "cifar10"}


def dataset_spec(name: str) -> _Spec:
    """The registry entry for a dataset name or alias ('fashion_mnist', 'fmnist', 'cifar-10', ...)."""
    key = str(name).strip().lower().replace("_", "-")
    canonical = _ALIASES.get(key) or _ALIASES.get(key.replace("-", ""))
    if canonical is None:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)} "
                           f"(aliases: fashion_mnist, fmnist, cifar-10), or a path to an .npz file or an image "
                           f"folder")
    return DATASETS[canonical]


# -------------------------------------------------------------------------------------------- dataset

@dataclass(frozen=True, repr=False)
class Dataset:
    """One split of a dataset: images (N, C, H, W), uint8 (0-255) or float32 (taken as scaled to [0, 1]),
    int64 labels (N,), and what they mean (class names, where they came from, per-channel statistics or None)."""
    images: np.ndarray
    labels: np.ndarray
    classes: list
    name: str = "arrays"
    split: str = ""
    source: str = ""
    mean: tuple = field(default=None)
    std: tuple = field(default=None)

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def subset(self, n: int | None) -> "Dataset":
        """The first n examples (all of them when n is None or at least len(self))."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise ValueError(f"{self.name} {self.split}: subset size must be >= 0, got {n}")
        return replace(self, images=self.images[:n], labels=self.labels[:n])

    def __repr__(self):
        return (f"Dataset({self.name!r}, split={self.split!r}, images={self.images.shape} {self.images.dtype}, "
                f"classes={self.num_classes}, source={self.source!r})")


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and std of images/255 (uint8 NCHW; float images as they are), accumulated in chunks
    without a float64 copy. A channel that holds one value in every image (an unused colour channel) gets std
    1 instead of 0, as scikit-learn's StandardScaler does, so normalising maps it to 0 instead of dividing by 0."""
    c = images.shape[1]
    s = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].astype(np.float32)
        s += x.sum(axis=(0, 2, 3), dtype=np.float64)
        s2 += np.einsum("nchw,nchw->c", x, x, dtype=np.float64)
        lo, hi = np.minimum(lo, x.min(axis=(0, 2, 3))), np.maximum(hi, x.max(axis=(0, 2, 3)))
    count = images.size / c
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    std[lo == hi] = 255.0 if images.dtype == np.uint8 else 1.0
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return tuple(float(m / scale) for m in mean), tuple(float(v / scale) for v in std)
