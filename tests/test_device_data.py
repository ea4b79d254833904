"""The DataLoader on a GPU keeps uint8 images on the device: the same batches as on the CPU (bit for bit on the
emulated GPU), one device operation and no transfer per batch, one upload per epoch."""
import numpy as np
import pytest

import tolerances
from gpucnn import devices as backend
from gpucnn.data import DataLoader

IMAGES = np.random.default_rng(0).integers(0, 256, (23, 3, 6, 5), dtype=np.uint8)
LABELS = np.random.default_rng(1).integers(0, 10, 23)


def loader(device, **kw):
    args = dict(batch_size=5, seed=3, device=device, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), pad=2)
    return DataLoader((IMAGES, LABELS), **{**args, **kw})


@pytest.mark.parametrize("augment", [(), ("crop",), ("flip",), ("crop", "flip")], ids=["none", "crop", "flip", "both"])
@pytest.mark.parametrize("shuffle, drop_last", [(True, False), (False, False), (True, True)])
def test_batches_on_the_device_are_the_cpus(augment, shuffle, drop_last, gpu_device):
    cpu, dev = (loader(d, augment=augment, shuffle=shuffle, drop_last=drop_last) for d in ("cpu", gpu_device))
    for epoch in (1, 2):
        cpu.set_epoch(epoch)
        dev.set_epoch(epoch)
        pairs = list(zip(cpu, dev))
        assert len(pairs) == len(cpu) == len(dev) == (4 if drop_last else 5)
        for (x, y), (xd, yd) in pairs:
            assert backend.device_of(xd) == gpu_device and xd.dtype == np.float32 and yd.dtype == np.int64
            if gpu_device.kind == "emulated":
                tolerances.assert_exact(xd, x, "x")
            else:
                tolerances.assert_close(xd, x, gpu_device, "x", tol="kernel")
            tolerances.assert_exact(yd, y, "y")


def test_a_batch_costs_one_device_operation_and_no_transfer():
    dev = loader("emulated", augment=("crop", "flip"))
    with backend.count_device_ops() as start:
        batches = iter(dev)
    assert start.host_to_device == 5 and start.ops == 0   # images, labels, scale, shift; the epoch's draws
    for _ in range(len(dev)):
        with backend.count_device_ops() as step:
            next(batches)
        assert (step.ops, step.host_to_device, step.syncs) == (1, 0, 0), step.as_dict()
        assert step.by_op["kernel:gather_batch_f32"] == 1
    with backend.count_device_ops() as second:
        list(dev)
    assert second.host_to_device == 1 and second.ops == len(dev)   # only the new epoch's draws


def test_a_loader_without_shuffling_or_augmentation_uploads_its_draws_once():
    dev = loader("emulated", shuffle=False)
    list(dev)
    with backend.count_device_ops() as again:
        list(dev)
    assert again.host_to_device == 0 and again.ops == len(dev)


def test_float_images_are_batched_on_the_host():
    dev = DataLoader((IMAGES.astype(np.float32) / 255, LABELS), batch_size=5, device="emulated")
    with backend.count_device_ops() as counts:
        batches = list(dev)
    assert counts.host_to_device == 2 * len(batches) and counts.ops == 0


def test_draws_are_the_epochs_order_crops_and_flips():
    a = loader("cpu", augment=("crop", "flip"))
    table = a.draws(4)
    assert table.dtype == np.int32 and table.shape == (23, 4)
    np.testing.assert_array_equal(table[:, 0], a.order(4))
    assert set(table[:, 1]) | set(table[:, 2]) <= set(range(5)) and set(table[:, 3]) == {0, 1}
    np.testing.assert_array_equal(a.draws(4), table)
    assert not np.array_equal(a.draws(5), table)
    np.testing.assert_array_equal(loader("cpu").draws(4)[:, 1:], 0)
