"""Time one training step (forward, backward, optimizer update) and one inference pass of gpucnn against
PyTorch on the CPU: same architecture, batch, dtype and thread count, the two alternated in one process.

    python benchmarks/compare_torch.py [--rounds 7] [--steps 10] [--threads 2] [--only lenet5|alexnet|resnet]

Prints the median time per step of each and their ratio (gpucnn / torch: lower is better for gpucnn), and the
load average before each case: other processes on the machine distort both (OpenBLAS threads spin badly when
the cores are busy), so compare ratios taken at low load. numpy's BLAS threads are set from --threads through
the environment before numpy is imported (threadpoolctl is used too when installed). The process runs with
gpucnn.devices.keep_host_memory, as `gpucnn train` on the CPU does; PyTorch's CPU arrays come from the same
glibc malloc, so both get it (GPUCNN_HOST_MEMORY=system measures both without it).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics


def gpucnn_nets():
    from gpucnn.bench import alexnet_style
    from gpucnn.models import lenet5, resnet
    return {"lenet5": lambda: lenet5(in_channels=1, input_size=28, num_classes=10), "alexnet": alexnet_style,
            "resnet": lambda: resnet(in_channels=1, input_size=28, num_classes=10)}


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
    from torch_bench import make_step   # the PyTorch twins and step of torch_bench.py, on the CPU
    return make_step({"alexnet": "alexnet_style"}.get(name, name), CASES[name][0], "cpu")


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
    from gpucnn.devices import keep_host_memory
    from torch_bench import wall_seconds_per_call
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    kept = keep_host_memory()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"numpy {np.__version__}, torch {torch.__version__}; median of {args.rounds} rounds x {args.steps} steps; "
          f"host memory {'kept' if kept else 'as the system allocates it'}")
    print(f"{'case':<22}{'gpucnn ms':>11}{'torch ms':>11}{'ratio':>8}{'load':>7}")
    for name in ([args.only] if args.only else list(CASES)):
        g_train, g_infer = make_gpucnn_step(name)
        t_train, t_infer = make_torch_step(name)
        for kind, g, t in (("train", g_train, t_train), ("inference", g_infer, t_infer)):
            load = os.getloadavg()[0]
            g(), t(), g(), t()  # warm-up
            gs, ts = [], []
            for _ in range(args.rounds):
                gs.append(wall_seconds_per_call(g, args.steps))
                ts.append(wall_seconds_per_call(t, args.steps))
            gm, tm = statistics.median(gs) * 1e3, statistics.median(ts) * 1e3
            batch = CASES[name][0]
            print(f"{name + ' ' + kind + ' b' + str(batch):<22}{gm:>11.2f}{tm:>11.2f}{gm / tm:>8.2f}{load:>7.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
