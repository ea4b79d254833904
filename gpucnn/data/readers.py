"""Validating readers for the idx (MNIST, Fashion-MNIST) and CIFAR-10 python formats; every error names the file."""
from __future__ import annotations

import codecs
import gzip
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .datasets import CIFAR_FOLDER, DATASETS, DatasetError

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
