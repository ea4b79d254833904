"""Time one training step (forward, backward, optimizer update) and one inference pass of gpucnn against
PyTorch on the CPU: same architecture, batch, dtype and thread count, the two alternated in one process.

    python benchmarks/compare_torch.py [--rounds 7] [--steps 10] [--threads 2] [--only lenet5|alexnet|resnet]

Prints the median time per step of each and their ratio (gpucnn / torch: lower is better for gpucnn), and the
load average before each case: other processes on the machine distort both (OpenBLAS threads spin badly when
the cores are busy), so compare ratios taken at low load. numpy's BLAS threads are set from --threads through
the environment before numpy is imported (threadpoolctl is used too when installed).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def gpucnn_nets():
    from gpucnn import layers as L
    from gpucnn.models import lenet5, resnet
    from gpucnn.layers import Sequential

    def alexnet_small():
        return Sequential([
            L.Conv2D(3, 64, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
            L.Conv2D(64, 192, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
            L.Conv2D(192, 384, 3, padding=1), L.ReLU(),
            L.Conv2D(384, 256, 3, padding=1), L.ReLU(),
            L.Conv2D(256, 256, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
            L.Affine(4096, 1024), L.ReLU(), L.Affine(1024, 1024), L.ReLU(), L.Affine(1024, 10)])
    return {"lenet5": lambda: lenet5(in_channels=1, input_size=28, num_classes=10), "alexnet": alexnet_small,
            "resnet": lambda: resnet(in_channels=1, input_size=28, num_classes=10)}


def torch_nets():
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

    def alexnet_small():
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return {"lenet5": lenet5, "alexnet": alexnet_small, "resnet": resnet}


CASES = {"lenet5": (128, (1, 28, 28)), "alexnet": (32, (3, 32, 32)), "resnet": (128, (1, 28, 28))}


def make_gpucnn_step(name):
    import numpy as np
    from gpucnn import layers as L
    from gpucnn.optim import SGD
    net = gpucnn_nets()[name]()
    loss_layer = L.SoftmaxCrossEntropy()
    opt = SGD(lr=0.001, momentum=0.9)
    batch, shape = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape), dtype=np.float32)
    t = rng.integers(0, 10, batch)

    def train_step():
        loss_layer.forward(net.forward(x, train=True), t)
        net.backward(loss_layer.backward())
        opt.update(net.params, net.grads)

    def infer():
        net.forward(x, train=False)
    return train_step, infer


def make_torch_step(name):
    import numpy as np
    import torch
    net = torch_nets()[name]()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    batch, shape = CASES[name]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, *shape), dtype=np.float32))
    t = torch.from_numpy(rng.integers(0, 10, batch))
    lossf = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        lossf(net(x), t).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            net(x)
    return train_step, infer


def time_per_call(fn, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=sorted(CASES))
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)   # read by the BLAS libraries when numpy/torch load them

    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"numpy {np.__version__}, torch {torch.__version__}; median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'case':<22}{'gpucnn ms':>11}{'torch ms':>11}{'ratio':>8}{'load':>7}")
    for name in ([args.only] if args.only else list(CASES)):
        g_train, g_infer = make_gpucnn_step(name)
        t_train, t_infer = make_torch_step(name)
        for kind, g, t in (("train", g_train, t_train), ("inference", g_infer, t_infer)):
            load = os.getloadavg()[0]
            g(), t(), g(), t()  # warm-up
            gs, ts = [], []
            for _ in range(args.rounds):
                gs.append(time_per_call(g, args.steps))
                ts.append(time_per_call(t, args.steps))
            gm, tm = statistics.median(gs) * 1e3, statistics.median(ts) * 1e3
            batch = CASES[name][0]
            print(f"{name + ' ' + kind + ' b' + str(batch):<22}{gm:>11.2f}{tm:>11.2f}{gm / tm:>8.2f}{load:>7.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
