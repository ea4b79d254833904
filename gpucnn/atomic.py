"""Crash-safe file writes, for checkpoints and downloads alike: a temporary file beside the target, flushed
and fsynced, renamed over the target (``os.replace`` is atomic), then the folder fsynced. Killing the
process at any moment leaves the old file or the new one, never a torn one."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path, write, prefix: str = ".gpucnn-", suffix: str = ".tmp"):
    """Call write(binary file) on a temp file next to `path`, then make it `path` atomically.

    If write raises (e.g. a failed checksum), the temp file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory):
    """Make a rename in `directory` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
