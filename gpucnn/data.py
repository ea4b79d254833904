"""Datasets (MNIST, Fashion-MNIST, CIFAR-10): validating readers, lookup, verified download, and the loader.

Images come back as uint8 ``(N, C, H, W)`` and labels as int64 ``(N,)`` (int64 to match PyTorch's targets).
``load_dataset`` looks in ``data_dir``, ``$GPUCNN_DATA``, ``~/.cache/gpucnn/<name>`` and (Fashion-MNIST) the
Debian package's folder, and only then downloads, checking the published SHA-256 of every file.
``DataLoader`` batches, shuffles per epoch from ``(seed, epoch)``, augments, normalises on the host and moves
each batch to the device.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import http.client
import os
import pickle
import socket
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .backend import get_device, host_rng, to_device

DATA_ENV = "GPUCNN_DATA"
MIRROR_ENV = "GPUCNN_MIRROR"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TIMEOUT = 30.0


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
                           f"(aliases: fashion_mnist, fmnist, cifar-10)")
    return DATASETS[canonical]


# -------------------------------------------------------------------------------------------- dataset

@dataclass(frozen=True, repr=False)
class Dataset:
    """One split of a dataset: uint8 images (N, C, H, W), int64 labels (N,), and what they mean."""
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
    """Per-channel mean and std of images/255 (uint8 NCHW), accumulated in chunks without a float64 copy."""
    c = images.shape[1]
    s = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].astype(np.float32)
        s += x.sum(axis=(0, 2, 3), dtype=np.float64)
        s2 += np.einsum("nchw,nchw->c", x, x, dtype=np.float64)
    count = images.size / c
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return tuple(float(m / scale) for m in mean), tuple(float(v / scale) for v in std)


# ---------------------------------------------------------------------------------------- idx reader

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open_maybe_gzip(path):
    """The file opened for reading, decompressing when it starts with the gzip magic (whatever its name)."""
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb"), True
    f.seek(0)
    return f, False


def _read_exact(f, n):
    """Up to n bytes (fewer only at the end of the stream)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), 1 << 22))
        if not chunk:
            break
        buf += chunk
    return buf


def _describe(dims, what):
    if what == "images" and len(dims) == 3:
        return f"{dims[0]} images of {dims[1]}x{dims[2]}"
    if what == "labels" and len(dims) == 1:
        return f"{dims[0]} labels"
    return f"an array of shape {tuple(dims)}"


def read_idx(path, ndim: int | None = None, what: str = "") -> np.ndarray:
    """An idx file (LeCun's MNIST format, gzipped or not) as a native-endian array, fully validated."""
    path = Path(path)
    try:
        f, gz = _open_maybe_gzip(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        with f:
            head = _read_exact(f, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DatasetError(f"{path}: not an idx file: bad magic number {bytes(head).hex()} "
                                   f"(an idx file starts with 00 00 <type> <dimensions>)")
            code, nd = head[2], head[3]
            if code not in _IDX_DTYPES:
                raise DatasetError(f"{path}: unknown idx data type code 0x{code:02x} "
                                   f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
            if ndim is not None and nd != ndim:
                raise DatasetError(f"{path}: expected {ndim} dimension(s) ({what or 'idx'} file), "
                                   f"the header says {nd}")
            if nd == 0:
                raise DatasetError(f"{path}: idx header has 0 dimensions")
            raw_dims = _read_exact(f, 4 * nd)
            if len(raw_dims) < 4 * nd:
                raise DatasetError(f"{path}: truncated: the idx header needs {4 + 4 * nd} bytes, "
                                   f"the file holds {4 + len(raw_dims)}")
            dims = [int(d) for d in np.frombuffer(bytes(raw_dims), ">u4")]
            dtype = _IDX_DTYPES[code]
            header = 4 + 4 * nd
            body = int(np.prod(dims, dtype=object)) * dtype.itemsize
            data = _read_exact(f, body)
            extra = 0
            if len(data) == body:
                while chunk := f.read(1 << 20):
                    extra += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(data) != body or extra:
        holds = header + len(data) + extra
        raise DatasetError(f"{path}: {'truncated' if holds < header + body else 'too long'}: header says "
                           f"{_describe(dims, what)} ({header + body} bytes) but the file holds {holds}"
                           f"{' (decompressed)' if gz else ''}")
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def read_idx_images(path) -> np.ndarray:
    """idx3 uint8 images as (N, 1, H, W)."""
    a = read_idx(path, ndim=3, what="images")
    if a.dtype != np.uint8:
        raise DatasetError(f"{path}: expected unsigned-byte pixels (idx type 0x08), got {a.dtype}")
    return a[:, None]


def read_idx_labels(path, num_classes: int = 10) -> np.ndarray:
    """idx1 uint8 labels as int64 (N,), each checked to lie in 0..num_classes-1."""
    a = read_idx(path, ndim=1, what="labels")
    if a.dtype != np.uint8:
        raise DatasetError(f"{path}: expected unsigned-byte labels (idx type 0x08), got {a.dtype}")
    return _check_labels(a.astype(np.int64), num_classes, path)


def _check_labels(labels, num_classes, path):
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: label {int(labels[i])} at index {i} is outside 0..{num_classes - 1} "
                           f"({bad.size} such label(s))")
    return labels


def read_mnist(images_path, labels_path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """An MNIST-format pair of idx files: uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path, num_classes)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels")
    return images, labels


# -------------------------------------------------------------------------------------- cifar reader

_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]
_NUMPY_SCALAR = np.int64(0).__reduce__()[0]
_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
                   ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
                   ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
                   ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("_codecs", "encode"): codecs.encode}  # bytes in Python 3 protocol-2 pickles


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes and numpy arrays only: a CIFAR batch needs nothing else."""

    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only "
                                         f"dicts, lists and numpy arrays") from None


def read_cifar_batch(data: bytes, where: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (the pickle's bytes) as uint8 (N, 3, 32, 32) and int64 labels (N,)."""
    import io
    try:
        d = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # truncated or corrupt pickles raise a zoo of types
        raise DatasetError(f"{where}: not a readable CIFAR-10 batch pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{where}: expected a dict with b'data' and b'labels', got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DatasetError(f"{where}: expected keys b'data' and b'labels', got {sorted(map(str, d))}")
    x, y = d["data"], d["labels"]
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3 * 32 * 32):
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DatasetError(f"{where}: expected b'data' to be a uint8 array of shape (N, 3072), got {got}")
    try:
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TypeError
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: expected b'labels' to be a list of integers") from None
    if len(y) != len(x):
        raise DatasetError(f"{where}: holds {len(x)} images but {len(y)} labels")
    return x.reshape(-1, 3, 32, 32), _check_labels(y.astype(np.int64), num_classes, where)


def read_cifar10(source, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the cifar-10-batches-py folder or the cifar-10-python.tar.gz archive (read in place)."""
    source = Path(source)
    names = DATASETS["cifar10"].files[split]
    blobs = {}
    if source.is_dir():
        for n in names:
            try:
                blobs[n] = (source / n).read_bytes()
            except OSError as e:
                raise DatasetError(f"{source / n}: cannot read: {e.strerror or e}") from None
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for m in tar:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in names and base not in blobs:
                        blobs[base] = tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DatasetError(f"{source}: not a readable CIFAR-10 archive ({type(e).__name__}: {e})") from None
        missing = [n for n in names if n not in blobs]
        if missing:
            raise DatasetError(f"{source}: archive lacks {', '.join(missing)} (expected {CIFAR_FOLDER}/...)")
    parts = [read_cifar_batch(blobs[n], f"{source}:{n}" if not source.is_dir() else str(source / n))
             for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# -------------------------------------------------------------------------------------------- lookup

def cache_dir() -> Path:
    """Where downloads go by default: ~/.cache/gpucnn."""
    return Path.home() / ".cache" / "gpucnn"


def search_places(name: str, data_dir=None) -> list[tuple[Path, str]]:
    """The folders looked in, in order, each with why: data_dir, $GPUCNN_DATA, the cache, the Debian package."""
    spec = dataset_spec(name)
    places = []

    def root(r, why):
        r = Path(r).expanduser()
        places.append((r / spec.name, why))
        if spec.torchvision_dir:
            places.append((r / spec.torchvision_dir, why))
        places.append((r, why))

    if data_dir is not None:
        root(data_dir, "data_dir / --data-dir")
    if os.environ.get(DATA_ENV):
        root(os.environ[DATA_ENV], f"${DATA_ENV}")
    places.append((cache_dir() / spec.name, "download cache"))
    if spec.name == "fashion-mnist":
        places.append((DEBIAN_FASHION_MNIST, "Debian package dataset-fashion-mnist"))
    return places


def _find_in(spec, folder: Path, split):
    """The source(s) for a split in one folder, or None when the folder lacks any of them."""
    if spec.kind == "idx":
        found = []
        for base in spec.files[split]:
            hit = next((folder / n for n in (base + ".gz", base) if (folder / n).is_file()), None)
            if hit is None:
                return None
            found.append(hit)
        return tuple(found)
    for d in (folder / CIFAR_FOLDER, folder):
        if all((d / n).is_file() for n in spec.files[split]):
            return (d,)
    return (folder / CIFAR_ARCHIVE,) if (folder / CIFAR_ARCHIVE).is_file() else None


def _download_names(spec, split):
    return [b + ".gz" for b in spec.files[split]] if spec.kind == "idx" else [CIFAR_ARCHIVE]


def _read(spec, split, found) -> tuple[np.ndarray, np.ndarray]:
    if spec.kind == "idx":
        return read_mnist(found[0], found[1], len(spec.classes))
    return read_cifar10(found[0], split)


def load_dataset(name: str, split: str = "train", data_dir=None, download: bool = True, progress=True,
                 mirror: str | None = None, timeout: float = TIMEOUT) -> Dataset:
    """One split of 'mnist', 'fashion-mnist' or 'cifar10', from the first place that has it, else downloaded.

    Looks in :func:`search_places` order; downloads into ``<data_dir>/<name>`` (or ``~/.cache/gpucnn/<name>``)
    from ``mirror`` / ``$GPUCNN_MIRROR`` / the official URLs, verifying SHA-256. Files found but corrupt raise
    DatasetError rather than being skipped.
    """
    spec = dataset_spec(name)
    if split not in ("train", "test"):
        raise DatasetError(f"{spec.name}: unknown split {split!r}: expected 'train' or 'test'")
    places = search_places(spec.name, data_dir)
    dest = (Path(data_dir).expanduser() if data_dir is not None else cache_dir()) / spec.name
    other = "test" if split == "train" else "train"
    for folder, _ in places:
        found = _find_in(spec, folder, split)
        if found:
            return _dataset(spec, split, found)
        if _find_in(spec, folder, other):   # half a dataset: taking the split from elsewhere would mix copies
            if download and folder == dest:
                break                       # a download in progress: fetch this split there too
            raise DatasetError(f"{folder}: holds the {other} split of {spec.name} but not the {split} split "
                               f"({', '.join(_download_names(spec, split))}, gzipped or not); add those files "
                               f"or remove the folder")
    failures = []
    if download:
        try:
            fetch(spec.name, split, dest, mirror=mirror, progress=progress, timeout=timeout)
        except _DownloadFailed as e:
            failures = e.failures
        else:
            return _dataset(spec, split, _find_in(spec, dest, split))
    raise DatasetError(_not_found_message(spec, split, places, download, failures, mirror))


def _dataset(spec, split, found):
    images, labels = _read(spec, split, found)
    return Dataset(images, labels, list(spec.classes), spec.name, split,
                   str(found[0] if len(found) == 1 else found[0].parent), spec.mean, spec.std)


def _not_found_message(spec, split, places, download, failures, mirror):
    names = _download_names(spec, split)
    wanted = (" and ".join(spec.files[split]) + " (.gz or not)" if spec.kind == "idx" else
              f"{', '.join(spec.files[split])} (in {CIFAR_FOLDER}/ or in {CIFAR_ARCHIVE})")
    msg = [f"{spec.name} ({split} split) not found. Looked for {wanted} in:"]
    seen = set()
    for folder, why in places:
        if folder not in seen:
            seen.add(folder)
            msg.append(f"  {folder}  ({why})")
    if not download:
        msg.append("Downloading was turned off (download=False).")
    msg += [f"Download failed: {e}" for e in failures]
    msg.append("To get it:")
    if spec.hint:
        msg.append(f"  - {spec.hint}")
    base = _base_urls(spec, mirror)[0]
    msg.append(f"  - {'or ' if spec.hint else ''}download {', '.join(base + n for n in names)} by hand into "
               f"one of the folders above (or into a folder you pass as data_dir / --data-dir)")
    return "\n".join(msg)


# ------------------------------------------------------------------------------------------ download

class DownloadError(DatasetError):
    """A download failed (network, HTTP status, short transfer or checksum); nothing was kept."""


class _DownloadFailed(Exception):
    """Every URL for a file failed; carries their DownloadErrors."""

    def __init__(self, failures):
        super().__init__("; ".join(map(str, failures)))
        self.failures = failures


def _base_urls(spec, mirror=None) -> list[str]:
    """Base URLs to try: the mirror (parameter, else $GPUCNN_MIRROR; '{name}' is replaced) alone, else official."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        m = mirror.replace("{name}", spec.name)
        return [m if m.endswith("/") else m + "/"]
    return list(spec.urls)


def fetch(name: str, split: str, dest, mirror: str | None = None, progress=True,
          timeout: float = TIMEOUT) -> list[Path]:
    """Download the files of one split into dest (skipping ones already there), each verified and atomic."""
    spec = dataset_spec(name)
    dest = Path(dest)
    out = []
    for fname in _download_names(spec, split):
        target = dest / fname
        if not target.is_file():
            failures = []
            for base in _base_urls(spec, mirror):
                try:
                    download_file(base + fname, target, spec.sha256[fname], progress, timeout)
                    break
                except DownloadError as e:
                    failures.append(e)
            else:
                raise _DownloadFailed(failures)
        out.append(target)
    return out


def download_file(url: str, target, sha256: str, progress=True, timeout: float = TIMEOUT) -> Path:
    """Fetch url to target via a temp file in the same folder: size and SHA-256 checked, fsynced, renamed.

    On any failure nothing is left at target nor beside it, and DownloadError("<url>: <problem>") is raised.
    """
    target = Path(target)

    def write(out):
        digest, got = _transfer(url, out, progress, timeout)
        if digest != sha256:
            raise DownloadError(f"{url}: checksum mismatch: expected sha256 {sha256}, got {digest} "
                                f"({got} bytes); the file was not kept")
    try:
        atomic_write(target, write, prefix=f".{target.name}.", suffix=".part")
    except DownloadError:
        raise
    except OSError as e:
        raise DownloadError(f"{url}: cannot write into {target.parent} ({e.strerror or e})") from None
    return target


def _transfer(url, out, progress, timeout):
    """Copy the response body to out; returns (sha256 hex, bytes). Short bodies and network errors raise."""
    h = hashlib.sha256()
    got = 0
    req = urllib.request.Request(url, headers={"User-Agent": "gpucnn"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _Progress(url, total, progress)
            while True:
                try:
                    chunk = resp.read(1 << 16)
                except http.client.IncompleteRead:
                    chunk = b""  # the length check below reports it
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
                got += len(chunk)
                bar.update(got)
            bar.close()
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: cannot connect ({e.reason})") from None
    except (OSError, http.client.HTTPException, socket.timeout) as e:
        raise DownloadError(f"{url}: transfer failed ({type(e).__name__}: {e})") from None
    if total is not None and got != total:
        raise DownloadError(f"{url}: interrupted: got {got} of {total} bytes; the partial file was not kept")
    return h.hexdigest(), got


class _Progress:
    """A text progress bar on stderr: redrawn in place on a terminal, start and end lines otherwise."""

    def __init__(self, url, total, enabled):
        self.url, self.total = url, total
        self.enabled = bool(enabled) or (enabled is None and sys.stderr.isatty())
        self.tty = sys.stderr.isatty()
        self.last = -1
        if self.enabled and not self.tty:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"downloading {url}{size} ...", file=sys.stderr, flush=True)

    def update(self, got):
        if not (self.enabled and self.tty):
            return
        frac = got / self.total if self.total else 0.0
        step = int(frac * 100) if self.total else got >> 20
        if step == self.last:
            return
        self.last = step
        bar = "#" * int(frac * 30)
        tail = f"{frac:4.0%} of {self.total / 1e6:.1f} MB" if self.total else f"{got / 1e6:.1f} MB"
        sys.stderr.write(f"\r{self.url.rsplit('/', 1)[-1]} [{bar:<30}] {tail}")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n" if self.tty else f"downloaded {self.url}\n")
            sys.stderr.flush()


# -------------------------------------------------------------------------------------------- loader

AUGMENTATIONS = ("crop", "flip")


class DataLoader:
    """Mini-batches of (x, y) on a device: x float NCHW, normalised; y int64 (PyTorch's target dtype).

    The order of epoch e is drawn from ``np.random.default_rng([seed, e])``, and so are that epoch's crops and
    flips: resuming at epoch e needs only ``set_epoch(e)``, no saved state. Each ``iter(loader)`` runs the
    current epoch and then advances it by one; a trainer may instead call ``set_epoch(e)`` before each epoch.
    Normalisation is ``(x/255 - mean) / std`` per channel for uint8 images (``x/255`` alone when
    ``normalize=False``); float images are taken as already scaled to [0, 1]. mean/std come from the Dataset,
    the arguments, or are computed from the images given. ``limit`` keeps the first n examples.
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
            images, labels = np.asarray(images), np.asarray(labels)
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
