"""Images per second of a PyTorch training step on any torch device, for the same networks, batch, dtype and
step as `gpucnn bench` (forward, cross-entropy, backward, SGD with momentum 0.9, lr 1e-3), so the two can be
put side by side (benchmarks/gpu_acceptance.sh does, on the same GPU).

    python benchmarks/torch_bench.py --device cuda --model alexnet_style --batch-size 32 [--steps 20 --warmup 3]
        [--precision fp32 tf32 bf16]

Prints one line in `gpucnn bench`'s format, e.g. 'torch lenet5 train on cuda, batch 128 of 1x28x28: 1.20 ms/step,
106667 images/s'. On CUDA the steps are timed with CUDA events after a synchronisation (as gpucnn's
DeviceTimer); cuDNN autotuning is off (torch's default). The networks are also used by compare_torch.py.
--precision as gpucnn's, one or several (one line each, in one process: torch is imported once): fp32 (TF32 off for matmuls and cuDNN convolutions), tf32 (both on:
torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) or bf16 (the forward pass and loss under
torch.autocast with dtype bfloat16, PyTorch's mixed precision; no gradient scaler, which bfloat16 does not need).
"""
from __future__ import annotations

import argparse
import time


def torch_nets():
    """PyTorch twins of gpucnn's lenet5 and resnet (1x28x28) and bench.alexnet_style (3x32x32), 10 classes."""
    import torch.nn as nn

    class Block(nn.Module):   # gpucnn.models.resnet's basic block
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.shortcut(x))

    def resnet():
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                             Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(64, 10))

    def lenet5():
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def alexnet_style():
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return {"lenet5": lenet5, "alexnet_style": alexnet_style, "resnet": resnet}


INPUT_SHAPES = {"lenet5": (1, 28, 28), "alexnet_style": (3, 32, 32), "resnet": (1, 28, 28)}


def make_step(name, batch, device, precision="fp32"):
    """(train_step, infer) closures over random data already on `device`, in `precision` (see the module doc)."""
    import contextlib

    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else \
        contextlib.nullcontext
    net = torch_nets()[name]().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((batch, *INPUT_SHAPES[name]), generator=gen).to(device)
    t = torch.randint(0, 10, (batch,), generator=gen).to(device)
    lossf = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = lossf(net(x), t)
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad(), autocast():
            net(x)
    return train_step, infer


def seconds_per_step(fn, steps, warmup, device):
    """Mean seconds of fn() over `steps` calls after `warmup` ones: CUDA events on a GPU, wall clock else."""
    import torch
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    return wall_seconds_per_call(fn, steps)


def wall_seconds_per_call(fn, steps):
    """Mean wall-clock seconds of fn() over `steps` calls (CPU timing; compare_torch.py uses it too)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="a torch device: cuda, cuda:1, cpu (default cuda)")
    ap.add_argument("--model", choices=sorted(INPUT_SHAPES), default="lenet5")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), nargs="+", default=["fp32"])
    args = ap.parse_args(argv)
    import torch
    device = torch.device(args.device)
    for precision in args.precision:
        report(args, device, precision)


def report(args, device, precision):
    """Time one case in one precision and print its line."""
    import torch
    train_step, _ = make_step(args.model, args.batch_size, device, precision)
    s = seconds_per_step(train_step, args.steps, args.warmup, device)
    shape = "x".join(str(v) for v in INPUT_SHAPES[args.model])
    precision = "" if precision == "fp32" else f" in {precision}"
    print(f"torch {args.model} train on {device}{precision}, batch {args.batch_size} of {shape}: {s * 1e3:.2f} ms/step, "
          f"{args.batch_size / s:.0f} images/s (torch {torch.__version__})", flush=True)


if __name__ == "__main__":
    main()
