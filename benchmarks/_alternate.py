"""What the side-by-side CPU step benchmarks (select_mask.py, cpu_paths.py) share: their arguments, a training
step of a built-in model on one random batch, and the variants' rounds alternated in one process."""
import argparse
import contextlib
import time

import numpy as np

from gpucnn import models
from gpucnn.devices import keep_host_memory
from gpucnn.layers import SoftmaxCrossEntropy
from gpucnn.optim import SGD


def arguments(doc):
    """--model (default small_vgg), --batch (64), --rounds (6), --steps (8) per round."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", default="small_vgg")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=8)
    return p.parse_args()


def training_step(model, batch):
    """One SGD-Nesterov step of `model` (1x28x28 inputs, 10 classes) on a fixed random batch, with glibc
    keeping freed memory as `gpucnn train` does on the CPU: a function of no arguments."""
    keep_host_memory()
    net = models.get(model, in_channels=1, input_size=28, num_classes=10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    loss, opt = SoftmaxCrossEntropy(label_smoothing=0.1), SGD(lr=0.01, momentum=0.9, nesterov=True)

    def step():
        loss.forward(net.forward(x, True), y)
        net.backward(loss.backward())
        opt.update(net.params, net.grads)
    return step


def alternate(step, variants, rounds, steps):
    """{name: [ms per step of each round]}: 3 warm-up steps, then `rounds` rounds in which every variant, in
    turn, runs one untimed step and `steps` timed ones inside its context (`variants`: name -> a function of no
    arguments returning a context manager, or None for none)."""
    times = {name: [] for name in variants}
    for _ in range(3):
        step()
    for _ in range(rounds):
        for name, context in variants.items():
            with context() if context else contextlib.nullcontext():
                step()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                times[name].append((time.perf_counter() - start) / steps * 1e3)
    return times
