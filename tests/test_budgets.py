"""Device operations per training step, held to the budgets of the GPU-speed issue: a step as gpucnn.fit's
Trainer runs it (the batch from a loader keeping uint8 images on the device, forward, loss, backward, the
non-finite check, AdamW with the trainer's two parameter groups, the epoch's sums), counted on the emulated
device (gpucnn.devices.counters: each call that would launch a kernel, a cuBLAS routine, a copy or a memset
on CuPy 14.2). At ~5-10 us of host time per operation on a GPU, the count bounds a step's launch overhead."""
import numpy as np
import pytest

from gpucnn import bench, models
from gpucnn import devices as backend
from gpucnn.data import DataLoader
from gpucnn.layers import SoftmaxCrossEntropy
from gpucnn.train.fitting import make_optimizer
from gpucnn.train.loop import Trainer
from gpucnn import optim

BUDGETS = [("lenet5", 128, 60), ("alexnet_style", 32, 150)]


@pytest.mark.parametrize("model, batch, budget", BUDGETS, ids=[m for m, _, _ in BUDGETS])
def test_a_training_step_stays_within_its_device_op_budget(model, batch, budget):
    result = bench.count_step_ops(model, batch)
    total = result["total"]
    assert total.ops <= budget, bench.format_op_counts(result)
    assert (total.syncs, total.host_to_device, total.device_to_host) == (0, 0, 0), total.as_dict()
    assert result["data"].ops == 1 and result["check"].ops == 1 and result["metrics"].ops == 1
    assert result["optimizer"].ops == 2, "one launch per parameter group"


def test_an_epoch_uploads_once_and_reads_back_once():
    """The whole epoch as the trainer runs it: one upload (the epoch's draws) and one read-back (its sums),
    whatever the number of steps; each step the same number of device operations."""
    dev = backend.get_device("emulated")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 40)
    net = models.lenet5(in_channels=1, input_size=28, num_classes=10).to(dev)
    loader = DataLoader((images, labels), batch_size=8, device=dev, mean=0.3, std=0.3, augment=("crop", "flip"))
    trainer = Trainer(net, make_optimizer("adamw", 1e-3, None), optim.make_schedule("constant", 1e-3, 10), loader,
                      loss_layer=SoftmaxCrossEntropy())
    trainer.train_epoch(1, 2)                     # uploads the data set, compiles, lays the state out
    steps, real = [], trainer.step

    def counted(*args):
        with backend.count_device_ops() as counts:
            lr = real(*args)
        steps.append(counts)
        return lr
    trainer.step = counted
    with backend.count_device_ops() as epoch:
        trainer.train_epoch(2, 2)
    assert len(steps) == 5 and len({c.ops for c in steps}) == 1, [c.ops for c in steps]
    assert all(c.syncs == c.host_to_device == 0 for c in steps)
    assert epoch.host_to_device == 1 and epoch.device_to_host == epoch.syncs == 1, epoch.as_dict()
