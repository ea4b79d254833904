"""Where datasets come from: lookup in data_dir, $GPUCNN_DATA, ~/.cache/gpucnn/<name> and (Fashion-MNIST) the
Debian package's folder, then a verified download (published SHA-256, written atomically)."""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .datasets import (CIFAR_ARCHIVE, CIFAR_FOLDER, Dataset, DatasetError, dataset_spec)
from .files import is_path, load_path
from .readers import read_cifar10, read_mnist

DATA_ENV = "GPUCNN_DATA"
MIRROR_ENV = "GPUCNN_MIRROR"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TIMEOUT = 30.0


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
    """One split of 'mnist', 'fashion-mnist' or 'cifar10', from the first place that has it, else downloaded;
    or of your own data: `name` a path to an .npz file or an image folder (see :mod:`.files`; split "train",
    "test" or "val"; data_dir and download do not apply).

    Looks in :func:`search_places` order; downloads into ``<data_dir>/<name>`` (or ``~/.cache/gpucnn/<name>``)
    from ``mirror`` / ``$GPUCNN_MIRROR`` / the official URLs, verifying SHA-256. Files found but corrupt raise
    DatasetError rather than being skipped. A known data set name means the built-in one; anything else that
    looks like a path (a separator, an .npz suffix, or an existing file or folder) is read as your own data.
    """
    if is_own_data(name):
        return load_path(name, split)
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


def is_own_data(name) -> bool:
    """True when a data set argument is a path to your own data rather than a built-in data set's name."""
    try:
        dataset_spec(name)
        return False
    except DatasetError:
        return is_path(name)


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
        msg.append("Downloading was turned off (--no-download).")
    msg += [f"Download failed: {e}" for e in failures]
    msg.append("To get it:")
    if spec.hint:
        msg.append(f"  - {spec.hint}")
    base = _base_urls(spec, mirror)[0]
    msg.append(f"  - {'or ' if spec.hint else ''}download {', '.join(base + n for n in names)} by hand into "
               f"one of the folders above (or into a folder you pass with --data-dir)")
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
