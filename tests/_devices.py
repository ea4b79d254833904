"""Device helpers the tests share: a guard that a block makes no host sync on a GPU, and fresh device buffers
that hold NaN (or a sentinel) so that outputs a kernel leaves unwritten show."""
import contextlib

import numpy as np

from gpucnn import devices as backend


@contextlib.contextmanager
def no_host_sync(device):
    """Fail if the block waits for the device: on CUDA by CuPy's own guard (cupyx.allow_synchronize(False)
    raises cupyx.DeviceSynchronized at any .get() or device synchronisation), on the emulated device by its
    sync counter; nothing is checked on the CPU."""
    dev = backend.get_device(device)
    if dev.kind == "cuda":
        import cupyx
        with cupyx.allow_synchronize(False):
            yield
    elif dev.kind == "emulated":
        with backend.count_device_ops() as counts:
            yield
        assert counts.syncs == 0, f"host syncs in a block that must have none: {dict(counts.by_sync)}"
    else:
        yield


def poison_empty(monkeypatch, device):
    """Make xp.empty on `device` return NaN-filled (floats) or -123456-filled (ints) arrays."""
    dev = backend.get_device(device)
    xp = dev.xp
    real_full = xp.full

    def empty(shape, dtype=float, order="C"):
        dtype = np.dtype(dtype)
        return real_full(shape, np.nan if dtype.kind == "f" else -123456, dtype=dtype, order=order)
    monkeypatch.setattr(xp, "empty", empty)
