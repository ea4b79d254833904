"""CPU training step with ReLU's backward pass and dropout selecting through np.where (before) and through the
bit mask of gpucnn.devices.fused_twins.keep_or_zero (now), side by side in one process.

np.where with a data-dependent mask branches on every element, and a ReLU's or dropout's mask is about half
True at random; the bit mask multiplies the values' bit patterns by the mask in integers, with the same
results to the bit (tests/test_fused_kernels.py). Both variants alternate ROUNDS times on the same net and
batch; the fastest round of each is compared. Single-threaded BLAS, as each process of the two-process recipe.

usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/select_mask.py [--model small_vgg] [--batch 64]
Measured on the 2-core AMD EPYC development machine: small_vgg batch 64, 73.7 against 71.1 ms/step (1.04x).
"""
import contextlib

import numpy as np

from _alternate import alternate, arguments, training_step
from gpucnn.devices import ops


def where_relu_backward(y, dout):
    return np.where(y <= 0, dout.dtype.type(0), dout)


def where_keep_or_zero(keep, a):
    return np.where(keep, a, a.dtype.type(0))


@contextlib.contextmanager
def selecting_with(relu_backward, keep_or_zero):
    saved = ops.relu_backward, ops.keep_or_zero
    ops.relu_backward, ops.keep_or_zero = relu_backward, keep_or_zero
    try:
        yield
    finally:
        ops.relu_backward, ops.keep_or_zero = saved


def main():
    a = arguments(__doc__)
    variants = {"np.where": lambda: selecting_with(where_relu_backward, where_keep_or_zero), "bit mask": None}
    times = alternate(training_step(a.model, a.batch), variants, a.rounds, a.steps)
    for name, values in times.items():
        print(f"{name:9s} " + " ".join(f"{v:.1f}" for v in values) + f"  fastest {min(values):.1f} ms/step")
    print(f"{a.model} batch {a.batch}: bit mask {min(times['np.where']) / min(times['bit mask']):.3f}x")


if __name__ == "__main__":
    main()
