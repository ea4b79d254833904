"""Throughput of a model zoo network on any device: images per second of training steps or inference passes.

A training step is forward, softmax cross-entropy, backward and an SGD-with-momentum update. Random inputs
and labels are made on the device, warm-up steps run first (kernel compilation, buffer allocation), then the
timed steps run under :class:`gpucnn.devices.DeviceTimer`: wall clock on the CPU, CUDA events and a final
synchronisation on a GPU, so work still queued on the device is counted.
"""
from __future__ import annotations

import numbers

from . import devices
from . import models
from .layers import SoftmaxCrossEntropy
from .optim import SGD

__all__ = ["benchmark", "format_result"]


def _count(value, what, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"benchmark: {what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def default_input(name):
    """(channels, size) a model is benchmarked at by default: 1x28x28 for the MNIST nets, 3x32x32 otherwise."""
    return (1, 28) if models.canonical_name(name) in ("lenet5", "simple_convnet") else (3, 32)


def benchmark(model_name, batch_size, device, steps=20, warmup=3, train=True, input_size=None,
              in_channels=None, num_classes=10) -> dict:
    """Time `steps` training steps (or inference passes with train=False) of a zoo model on `device`.

    input_size/in_channels default to default_input(model_name). Returns a dict with
    model, device, mode, batch, input_shape, steps, seconds, ms_per_step and images_per_second.
    """
    name = models.canonical_name(model_name)
    batch_size = _count(batch_size, "batch_size", 1)
    steps = _count(steps, "steps", 1)
    warmup = _count(warmup, "warmup", 0)
    dev = devices.get_device(device)
    default_c, default_size = default_input(name)
    c = default_c if in_channels is None else in_channels
    size = default_size if input_size is None else input_size
    net = models.get(name, in_channels=c, input_size=size, num_classes=num_classes).to(dev)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch_size, c, h, w)

    like = next(iter(net.params.values()))
    x = devices.random_uniform(shape, like=like) * 2 - 1
    labels = (devices.random_uniform((batch_size,), like=like) * num_classes).astype("int32")
    loss, opt = SoftmaxCrossEntropy(), SGD(lr=1e-3, momentum=0.9)

    def step():
        if train:
            loss.forward(net.forward(x, train=True), labels)
            net.backward(loss.backward())
            opt.update(net.params, net.grads)
        else:
            net.forward(x, train=False)

    for _ in range(warmup):
        step()
    devices.synchronize(dev)
    with devices.DeviceTimer(dev) as timer:
        for _ in range(steps):
            step()
    seconds = timer.seconds
    return {"model": name, "device": str(dev), "mode": "train" if train else "inference", "batch": batch_size,
            "input_shape": shape[1:], "steps": steps, "seconds": seconds,
            "ms_per_step": seconds / steps * 1e3, "images_per_second": batch_size * steps / seconds}


def format_result(result: dict) -> str:
    """One line, e.g. 'lenet5 train on cpu, batch 128 of 1x28x28: 18.20 ms/step, 7033 images/s'."""
    shape = "x".join(str(s) for s in result["input_shape"])
    return (f"{result['model']} {result['mode']} on {result['device']}, batch {result['batch']} of {shape}: "
            f"{result['ms_per_step']:.2f} ms/step, {result['images_per_second']:.0f} images/s")
