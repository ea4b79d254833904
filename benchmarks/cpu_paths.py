"""CPU training step with and without the CPU-only paths of the 93.5% recipe's speed work, side by side in one
process: Conv2D's input gradient tap by tap (Conv2D._dx_by_tap, else the column gradient and col2im), the
2x2/stride-2 max pool's own forward pass (twins._halving, else the general pass), and the weight gradient's GEMM
order for row-major columns (conv._weight_gradient: a @ col3, else (col3^T a^T)^T). Every path gives its
alternative's result (the max pool's bit for bit, tests/test_speed_discipline.py; the others to rounding,
tests/test_conv_variants.py), so only the time differs. The forward GEMM's operand order, changed with the
weight gradient's, is not toggled here (Conv2D._forward; 32->64 channels on 14x14 at batch 64: 8.1 against
9.3 ms), so "all off" is not quite the code before these paths.

Each variant turns one path off ("all off" turns off all three); the variants alternate ROUNDS times on the same
net and batch, and the fastest round of each is compared with "all on". Single-threaded BLAS, as each process
of the two-process recipe.

usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/cpu_paths.py [--model small_vgg] [--batch 64]
"""
import contextlib

import numpy as np

from _alternate import alternate, arguments, training_step
from gpucnn.devices import twins
from gpucnn.layers import conv

_weight_gradient = conv._weight_gradient


def transposed_weight_gradient(xp, a, col3):
    """The weight gradient's GEMM in the order used before for every CPU layer: (col3^T a^T)^T."""
    if xp is np:
        return np.matmul(col3.transpose(0, 2, 1), a.transpose(0, 2, 1)).transpose(0, 2, 1)
    return _weight_gradient(xp, a, col3)


OFF = {
    "dx by tap": (conv.Conv2D, "_dx_by_tap", lambda self, xp, x, wk: False),
    "maxpool halving": (twins, "_halving", lambda *a: False),
    "dW order": (conv, "_weight_gradient", transposed_weight_gradient),
}


@contextlib.contextmanager
def paths_off(names):
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in (OFF[n] for n in names)]
    try:
        for name in names:
            owner, attr, replacement = OFF[name]
            setattr(owner, attr, replacement)
        yield
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)


def main():
    a = arguments(__doc__)
    variants = {"all on": None, **{f"{name} off": (lambda n=name: paths_off([n])) for name in OFF},
                "all off": lambda: paths_off(list(OFF))}
    times = alternate(training_step(a.model, a.batch), variants, a.rounds, a.steps)
    best = min(times["all on"])
    for name, values in times.items():
        print(f"{name:22s} " + " ".join(f"{v:.1f}" for v in values) +
              f"  fastest {min(values):.1f} ms/step  ({min(values) / best:.3f}x the time of all on)")


if __name__ == "__main__":
    main()
