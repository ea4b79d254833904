"""Throughput of a network on any device (images per second of training steps or inference passes), and the
device operations a training step costs, counted on the emulated device.

A training step is forward, softmax cross-entropy, backward and an SGD-with-momentum update. Random inputs
and labels are made on the device; every kernel is compiled before anything is timed (the compile time is
reported apart), warm-up steps run first (buffer allocation, optimizer state), then the timed steps run under
:class:`gpucnn.devices.DeviceTimer`: wall clock on the CPU, CUDA events and a final synchronisation on a GPU,
so work still queued on the device is counted.

Networks: the model zoo's (:mod:`gpucnn.models`) and ``alexnet_style``, the AlexNet-style net of the README's
speed table and of benchmarks/compare_torch.py.
"""
from __future__ import annotations

import contextlib
import numbers

import numpy as np

from . import devices
from . import models
from .layers import Affine, Conv2D, MaxPool2D, ReLU, Sequential, SoftmaxCrossEntropy
from . import optim
from .optim import SGD

__all__ = ["alexnet_style", "benchmark", "count_step_ops", "format_result", "format_op_counts", "names"]


def alexnet_style(in_channels: int = 3, input_size=32, num_classes: int = 10):
    """The AlexNet-style benchmark net for 32x32 inputs: conv 64, 192, 384, 256, 256 (3x3, padding 1, ReLU),
    2x2 max-pools after the first, second and fifth, affine 4096-1024-1024-classes; 25.6 M parameters.
    Its PyTorch twin is in benchmarks/torch_bench.py."""
    if tuple(models._size(input_size)) != (32, 32):
        raise ValueError(f"alexnet_style: takes 32x32 inputs, got {input_size!r}")
    return Sequential(
        Conv2D(in_channels, 64, 3, padding=1), ReLU(), MaxPool2D(2),
        Conv2D(64, 192, 3, padding=1), ReLU(), MaxPool2D(2),
        Conv2D(192, 384, 3, padding=1), ReLU(),
        Conv2D(384, 256, 3, padding=1), ReLU(),
        Conv2D(256, 256, 3, padding=1), ReLU(), MaxPool2D(2),
        Affine(4096, 1024), ReLU(), Affine(1024, 1024), ReLU(), Affine(1024, num_classes))


BENCH_MODELS = {"alexnet_style": alexnet_style}
# The reference cases: the README's speed table, the GPU acceptance run, and `gpucnn bench --count-ops`.
REFERENCE_CASES = (("lenet5", 128), ("alexnet_style", 32))


def names() -> list[str]:
    """Networks benchmark() takes: the model zoo's and BENCH_MODELS."""
    return models.names() + list(BENCH_MODELS)


def canonical_name(name: str) -> str:
    """'AlexNet-style' -> 'alexnet_style', 'LeNet-5' -> 'lenet5'; ValueError listing the names if unknown."""
    squeeze = lambda s: str(s).strip().lower().replace("-", "").replace("_", "")
    for key in BENCH_MODELS:
        if squeeze(key) == squeeze(name):
            return key
    try:
        return models.canonical_name(name)
    except ValueError:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(names())}") from None


def _count(value, what, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"benchmark: {what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def default_input(name):
    """(channels, size) a model is benchmarked at by default: 1x28x28 for the MNIST nets and small_vgg (the
    Fashion-MNIST recipe's), 3x32x32 otherwise."""
    return (1, 28) if canonical_name(name) in ("lenet5", "simple_convnet", "small_vgg") else (3, 32)


def _setup(model_name, batch_size, dev, input_size, in_channels, num_classes):
    """(name, net on dev, x, labels, loss layer, optimizer, input shape) for a step of random data."""
    name = canonical_name(model_name)
    batch_size = _count(batch_size, "batch_size", 1)
    default_c, default_size = default_input(name)
    c = default_c if in_channels is None else in_channels
    size = default_size if input_size is None else input_size
    build = BENCH_MODELS.get(name) or models.MODELS[name]
    net = build(in_channels=c, input_size=size, num_classes=num_classes).to(dev)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch_size, c, h, w)
    like = next(iter(net.params.values()))
    with devices.device_scope(dev):
        x = devices.random_uniform(shape, like=like) * 2 - 1
        labels = (devices.random_uniform((batch_size,), like=like) * num_classes).astype("int64")
    return name, net, x, labels, SoftmaxCrossEntropy(), SGD(lr=1e-3, momentum=0.9), shape


def _no_phase(name):
    return contextlib.nullcontext()


def _train_step(net, x, labels, loss, opt, phase=_no_phase):
    """One training step; `phase(name)` is entered around the loss's and the optimizer's parts."""
    logits = net.forward(x, train=True)
    with phase("loss forward"):
        loss.forward(logits, labels)
    with phase("loss backward"):
        dout = loss.backward()
    net.backward(dout)
    with phase("optimizer"):
        opt.update(net.params, net.grads)


def _compile_kernels(dev) -> float:
    """Compile every kernel for a GPU device now (not inside a timed step); the seconds it took this process."""
    if not dev.is_gpu:
        return 0.0
    from .devices import kernels
    return sum(kernels.compile_all(dev).values())


def benchmark(model_name, batch_size, device, steps=20, warmup=3, train=True, input_size=None,
              in_channels=None, num_classes=10, precision="fp32") -> dict:
    """Time `steps` training steps (or inference passes with train=False) of a network on `device`.

    input_size/in_channels default to default_input(model_name). Kernel compilation is done before the
    warm-up and never timed. Returns a dict with model, device, mode, batch, input_shape, steps, seconds,
    ms_per_step, images_per_second, precision and compile_seconds (this process's compilation of the kernels, 0
    when they were compiled before or the device is the CPU). `precision`: 'fp32', 'tf32' or 'bf16' (see
    gpucnn.devices.precision; PrecisionError, a ValueError, for tf32/bf16 on the CPU). Raises ValueError for bad
    arguments.
    """
    steps = _count(steps, "steps", 1)
    warmup = _count(warmup, "warmup", 0)
    dev = devices.get_device(device)
    precision = devices.precision.check(precision, dev)
    if not dev.is_gpu:   # as gpucnn.fit does: the step's temporaries reuse freed memory
        devices.keep_host_memory()
    name, net, x, labels, loss, opt, shape = _setup(model_name, batch_size, dev, input_size, in_channels,
                                                    num_classes)
    compile_seconds = _compile_kernels(dev)

    def step():
        if train:
            _train_step(net, x, labels, loss, opt)
        else:
            net.forward(x, train=False)

    with devices.precision.precision(precision, dev):
        for _ in range(warmup):
            step()
        devices.synchronize(dev)
        with devices.DeviceTimer(dev) as timer:
            for _ in range(steps):
                step()
    seconds = timer.seconds
    return {"model": name, "device": str(dev), "mode": "train" if train else "inference", "batch": shape[0],
            "input_shape": shape[1:], "steps": steps, "seconds": seconds,
            "ms_per_step": seconds / steps * 1e3, "images_per_second": shape[0] * steps / seconds,
            "compile_seconds": compile_seconds, "precision": precision}


def format_result(result: dict) -> str:
    """One line, e.g. 'lenet5 train on cpu, batch 128 of 1x28x28: 18.20 ms/step, 7033 images/s'."""
    shape = "x".join(str(s) for s in result["input_shape"])
    precision = "" if result.get("precision", "fp32") == "fp32" else f" in {result['precision']}"
    return (f"{result['model']} {result['mode']} on {result['device']}{precision}, batch {result['batch']} of {shape}: "
            f"{result['ms_per_step']:.2f} ms/step, {result['images_per_second']:.0f} images/s")


# ------------------------------------------------------------------------------------- device op counts

def count_step_ops(model_name="lenet5", batch_size=128, device="emulated", input_size=None, in_channels=None,
                   num_classes=10, optimizer="adamw", precision="fp32") -> dict:
    """Device operations, host syncs and transfers of one training step as :func:`gpucnn.fit`'s Trainer runs
    it on an emulated device, in all and per part: the batch from a loader holding uint8 images on the device,
    forward, loss, backward, the non-finite check, the update (`optimizer` with the trainer's defaults: AdamW
    with weight decay 0.05 except on biases and normalisation parameters, a second group) and the epoch's
    sums; after a warm-up step (kernels compiled, parameters made flat, optimizer state laid out); in
    `precision` ('fp32', 'tf32', 'bf16').

    Returns {"model", "batch", "input_shape", "device", "total": DeviceOpCounts, "layers": [(index, repr,
    forward DeviceOpCounts, backward DeviceOpCounts)] for the network's top-level layers, "data", "loss
    forward", "loss backward", "check", "optimizer", "metrics": DeviceOpCounts, "optimizer_name"}. Raises
    ValueError for a device that is not emulated (the counts are recorded by the emulated device only; see
    gpucnn.devices.counters) or a bad argument.
    """
    from .data import DataLoader
    from .train.fitting import make_optimizer
    from .train.loop import EpochSums, Trainer

    dev = devices.get_device(device)
    if dev.kind != "emulated":
        raise ValueError(f"count_step_ops: device operations are counted on the emulated device, got {dev}")
    name = canonical_name(model_name)
    batch_size = _count(batch_size, "batch_size", 1)
    default_c, default_size = default_input(name)
    c = default_c if in_channels is None else in_channels
    size = default_size if input_size is None else input_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    net = (BENCH_MODELS.get(name) or models.MODELS[name])(in_channels=c, input_size=size,
                                                           num_classes=num_classes).to(dev)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2 * batch_size, c, h, w), dtype=np.uint8)
    loader = DataLoader((images, rng.integers(0, num_classes, 2 * batch_size)), batch_size=batch_size, seed=0,
                        device=dev, mean=0.5, std=0.25)
    opt = make_optimizer(optimizer, 1e-3, None)
    trainer = Trainer(net, opt, optim.make_schedule("cosine", 1e-3, 100), loader, loss_layer=SoftmaxCrossEntropy())
    trainer.prepare()
    parts = {}
    layers = list(net.layers)
    wrapped = [(layer, method, (i, "backward" if method == "backward" else "forward"))
               for i, layer in enumerate(layers) for method in ("forward", "forward_relu", "rectified", "backward")
               if hasattr(layer, method)]   # forward_relu/rectified: a ReLU fused into the layer before it
    wrapped += [(trainer.loss_layer, "forward", "loss forward"), (trainer.loss_layer, "backward", "loss backward"),
                (trainer, "note_nonfinite", "check"), (trainer.opt, "update", "optimizer"),
                (trainer, "accumulate", "metrics")]
    with devices.device_scope(dev), devices.precision.precision(precision, dev):
        sums, batches = EpochSums(dev.xp), iter(loader)
        trainer.step(*next(batches), sums)
        for obj, method, key in wrapped:   # instance attributes shadow the methods for the counted step
            setattr(obj, method, _counted(getattr(obj, method), parts, key))
        try:
            with devices.count_device_ops() as total:
                with _recording(parts, "data"):
                    x, y = next(batches)
                trainer.step(x, y, sums)
        finally:
            for obj, method, _ in wrapped:
                delattr(obj, method)
    nothing = devices.DeviceOpCounts()
    groups = f", {len(opt.groups) + 1} groups" if opt.groups else ""
    return {"model": name, "batch": batch_size, "input_shape": (c, h, w), "device": str(dev), "precision": precision,
            "total": total,
            "layers": [(i, repr(layer), parts.get((i, "forward"), nothing), parts.get((i, "backward"), nothing))
                       for i, layer in enumerate(layers)],
            **{k: parts.get(k, nothing) for k in ("data", "loss forward", "loss backward", "check", "optimizer",
                                                  "metrics")},
            "optimizer_name": f"{opt.kind}{groups}"}


@contextlib.contextmanager
def _recording(parts, key):
    with devices.count_device_ops() as counts:
        yield counts
    parts[key] = counts


def _counted(fn, parts, key):
    def counted(*args, **kwargs):
        with _recording(parts, key):
            return fn(*args, **kwargs)
    return counted


def format_op_counts(result: dict, top: int = 8) -> str:
    """A table of a count_step_ops() result: the step's totals, the batch, each layer's forward and backward,
    the loss, the non-finite check, the optimizer and the epoch's sums, and the most frequent operations."""
    t = result["total"]
    shape = "x".join(str(s) for s in result["input_shape"])
    precision = "" if result.get("precision", "fp32") == "fp32" else f" in {result['precision']}"
    lines = [f"{result['model']} training step, batch {result['batch']} of {shape} on {result['device']}{precision}: "
             f"{t.ops} device ops, {t.syncs} host syncs, {t.host_to_device} host-to-device and "
             f"{t.device_to_host} device-to-host copies"]
    rows = [("", "data (gather, crop, flip, normalise)", str(result["data"].ops), "")]
    rows += [(str(i), text, str(f.ops), str(b.ops)) for i, text, f, b in result["layers"]]
    rows += [("", "loss (SoftmaxCrossEntropy)", str(result["loss forward"].ops), str(result["loss backward"].ops)),
             ("", "non-finite check", "", str(result["check"].ops)),
             ("", f"optimizer ({result['optimizer_name']})", "", str(result["optimizer"].ops)),
             ("", "epoch sums (loss, correct)", str(result["metrics"].ops), "")]
    width = max(len(r[1]) for r in rows)
    lines.append(f"  {'#':>2}  {'part':<{width}}  {'forward':>7}  {'backward':>8}")
    lines += [f"  {i:>2}  {text:<{width}}  {f:>7}  {b:>8}".rstrip() for i, text, f, b in rows]
    common = ", ".join(f"{op} {n}" for op, n in t.by_op.most_common(top))
    lines.append(f"  most frequent: {common}")
    if t.syncs:
        lines.append(f"  host syncs: {', '.join(f'{w} {n}' for w, n in t.by_sync.most_common())}")
    return "\n".join(lines)
