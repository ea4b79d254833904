"""CPU training step with ReLU's backward pass and dropout selecting through np.where (before) and through the
bit mask of gpucnn.devices.fused_twins.keep_or_zero (now), side by side in one process.

np.where with a data-dependent mask branches on every element, and a ReLU's or dropout's mask is about half
True at random; the bit mask multiplies the values' bit patterns by the mask in integers, with the same
results to the bit (tests/test_fused_kernels.py). Both variants alternate ROUNDS times on the same net and
batch; the fastest round of each is compared. Single-threaded BLAS, as each process of the two-process recipe.

usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/select_mask.py [--model small_vgg] [--batch 64]
Measured on the 2-core AMD EPYC development machine: small_vgg batch 64, 73.7 against 71.1 ms/step (1.04x).
"""
import argparse
import time

import numpy as np

from gpucnn import models
from gpucnn.devices import keep_host_memory, ops
from gpucnn.layers import SoftmaxCrossEntropy
from gpucnn.optim import SGD


def where_relu_backward(y, dout):
    return np.where(y <= 0, dout.dtype.type(0), dout)


def where_keep_or_zero(keep, a):
    return np.where(keep, a, a.dtype.type(0))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small_vgg")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    keep_host_memory()
    net = models.get(a.model, in_channels=1, input_size=28, num_classes=10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, a.batch)
    loss, opt = SoftmaxCrossEntropy(label_smoothing=0.1), SGD(lr=0.01, momentum=0.9, nesterov=True)
    variants = {"np.where": (where_relu_backward, where_keep_or_zero),
                "bit mask": (ops.relu_backward, ops.keep_or_zero)}

    def step():
        loss.forward(net.forward(x, True), y)
        net.backward(loss.backward())
        opt.update(net.params, net.grads)

    times = {name: [] for name in variants}
    for _ in range(3):
        step()
    for _ in range(a.rounds):
        for name, (relu_backward, keep_or_zero) in variants.items():
            ops.relu_backward, ops.keep_or_zero = relu_backward, keep_or_zero
            step()
            start = time.perf_counter()
            for _ in range(a.steps):
                step()
            times[name].append((time.perf_counter() - start) / a.steps * 1e3)
    ops.relu_backward, ops.keep_or_zero = variants["bit mask"]
    for name, values in times.items():
        print(f"{name:9s} " + " ".join(f"{v:.1f}" for v in values) + f"  fastest {min(values):.1f} ms/step")
    print(f"{a.model} batch {a.batch}: bit mask {min(times['np.where']) / min(times['bit mask']):.3f}x")


if __name__ == "__main__":
    main()
