"""One data-parallel training run, for tests/test_distributed.py: run in every process of an MPI job
(``mpiexec -n N python -m mpi4py tests/_dist_worker.py CASE DATA OUT``), or called in the test's own process
with ``distributed=False`` for the single-process reference.

Cases (CASES): "bn" a network with batch norm and dropout (synchronised BN, dropout draws, crops), SGD with
momentum, an uneven last batch smaller than three processes, a validation split (evaluation shares summed);
"skip" a NaN image in one process's share of a step with ``on_nonfinite="skip"`` (the same decision on every
process); "emulated" the "bn" case on the emulated GPU (the NCCL stand-in's device path). Process 0 writes
OUT/result.npz: the history rows (JSON), the skipped steps and the final parameters and buffers (on the host).
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _synth import NET_SOURCE, patch_images  # noqa: E402

import gpucnn  # noqa: E402
from gpucnn import devices  # noqa: E402
from gpucnn.data import Dataset  # noqa: E402

# 66 training images (83 less a validation split of 17 where there is one) in batches of 32: 32, 32, 2, the last
# one smaller than three processes (one of them pads)
N_TRAIN, BATCH = 66, 32


def _net(in_channels, input_size, num_classes):
    space = {}
    exec(NET_SOURCE, space)
    return space["build"](in_channels, input_size, num_classes)


def _data(case):
    n = N_TRAIN if case == "skip" else N_TRAIN + 17
    images, labels = patch_images(n + 15, size=8, classes=4, rng=np.random.default_rng(3))
    images = images.astype(np.float32) / 255
    if case == "skip":
        images[40, 0, 3, 3] = np.nan   # one image of one process's share of a step, in each epoch
    train = Dataset(images[:n], labels[:n], ["a", "b", "c", "d"], mean=(0.3,), std=(0.25,))
    test = Dataset(images[n:], labels[n:], ["a", "b", "c", "d"], mean=(0.3,), std=(0.25,))
    return train, test


def run(case: str, distributed, out=None):
    """(history rows, skipped steps per epoch, {name: host array} of the final parameters and buffers, {device
    collective: count})."""
    train, test = _data(case)
    skip = case == "skip"
    with devices.count_device_ops() as counts:
        history = gpucnn.fit(_net, train, test=test, validation=None if skip else 0.2, epochs=2, batch_size=BATCH,
                             optimizer="sgd", lr=0.05, weight_decay=1e-3, schedule="constant",
                             augment=False if skip else "crop",
                             device="emulated" if case == "emulated" else "cpu", seed=5, log=None, out=out,
                             on_nonfinite="skip" if skip else "stop", distributed=distributed)
    model = history.model
    state = {f"p:{k}": devices.to_cpu(v) for k, v in model.params.items()}
    state.update({f"b:{k}": devices.to_cpu(v) for k, v in model.buffers.items()})
    rows = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")} for row in history.rows]
    collectives = {k: v for k, v in counts.by_op.items() if k.startswith("nccl:")}
    return rows, [row["skipped_steps"] for row in history.rows], state, collectives


CASES = ("bn", "skip", "emulated")


def main(case, out):
    from mpi4py import MPI
    rows, skipped, state, collectives = run(case, True, out=os.path.join(out, "run"))
    if MPI.COMM_WORLD.rank == 0:
        np.savez(os.path.join(out, "result.npz"), rows=json.dumps(rows), skipped=np.array(skipped),
                 collectives=json.dumps(collectives), **state)


if __name__ == "__main__":
    main(*sys.argv[1:])
