"""CPU training step with and without gpucnn.devices.keep_host_memory, side by side.

Each measurement is a fresh process (glibc's settings hold for a whole process): `gpucnn bench` on the CPU, with
GPUCNN_HOST_MEMORY=system (glibc's defaults) and without (kept), alternated ROUNDS times; the ratio of the
medians is printed per model. Single-threaded BLAS by default (OMP_NUM_THREADS=1, as each process of the
two-process recipe runs), so the comparison does not depend on what else the machine is doing with its
other core.

usage: python benchmarks/host_memory.py [--rounds 5] [--steps 20] [--threads 1] [model:batch ...]
       (default small_vgg:64 lenet5:128 simple_convnet:128)
"""
import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = ("import sys; from gpucnn import bench; "
        "r = bench.benchmark(sys.argv[1], int(sys.argv[2]), 'cpu', steps=int(sys.argv[3]), warmup=3); "
        "print(r['ms_per_step'])")


def step_ms(model, batch, steps, threads, system):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    env.pop("GPUCNN_HOST_MEMORY", None)
    if system:
        env["GPUCNN_HOST_MEMORY"] = "system"
    out = subprocess.run([sys.executable, "-c", CODE, model, str(batch), str(steps)], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="*", default=["small_vgg:64", "lenet5:128", "simple_convnet:128"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    for case in a.cases:
        model, batch = case.split(":")
        kept, system = [], []
        for _ in range(a.rounds):
            system.append(step_ms(model, int(batch), a.steps, a.threads, True))
            kept.append(step_ms(model, int(batch), a.steps, a.threads, False))
        s, k = statistics.median(system), statistics.median(kept)
        print(f"{model} batch {batch}, {a.threads} thread(s): glibc defaults {s:.1f} ms/step, kept {k:.1f} ms/step "
              f"(median of {a.rounds}): {s / k:.2f}x  [defaults {', '.join(f'{v:.1f}' for v in system)}; "
              f"kept {', '.join(f'{v:.1f}' for v in kept)}]", flush=True)


if __name__ == "__main__":
    main()
