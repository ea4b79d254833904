"""The ten-second summary of a benchmarks/gpu_acceptance.sh run, from its results.tsv and stage logs.

    python benchmarks/acceptance_summary.py OUT_FOLDER

Prints each stage's status, time and key result, a table of training-step images/s per case and precision
(gpucnn on the GPU, gpucnn on the CPU, PyTorch on the GPU, gpucnn/PyTorch, and gpucnn's speed-up over its own
fp32), and the overall result.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

BENCH_LINE = re.compile(r"^(torch )?(\w+) train on (\S+?)(?: in (\w+))?, batch (\d+) of \S+: ([\d.]+) ms/step, "
                        r"(\d+) images/s", re.M)


def read(folder: Path, name: str) -> str:
    path = folder / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def env_result(log: str) -> str:
    gpu = re.search(r"^cupy sees (\d+) GPU\(s\); 0: (.*?);", log, re.M)
    cuda = re.search(r"^CUDA: (.*?):", log, re.M)
    times = re.findall(r"^  (\S+\.cu) \(.*\): (\S+ s|FAILED.*)$", log, re.M)
    where = re.search(r"^compiling every kernel for (\S+)", log, re.M)
    parts = [f"{gpu.group(2)} x{gpu.group(1)}" if gpu else "no GPU seen by cupy",
             f"CUDA {cuda.group(1)}" if cuda else "gpucnn info failed"]
    if times:
        parts.append(f"kernels compiled for {where.group(1) if where else '?'}: "
                     + ", ".join(f"{s} {t}" for s, t in times))
    return "; ".join(parts)


def pytest_result(log: str) -> str:
    lines = [line for line in log.splitlines() if re.search(r"\b(passed|failed|skipped|error|no tests ran)\b", line)]
    failed = [line.split(" - ")[0] for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))]
    result = lines[-1].strip("= ") if lines else "no summary line"
    return result + (f"; first failures: {', '.join(failed[:3])}" if failed else "")


def train_result(log: str) -> str:
    checks = re.findall(r"^CHECK: (.*)$", log, re.M)
    return "; ".join(checks) if checks else (log.strip().splitlines() or ["no output"])[-1][:160]


def ops_result(log: str) -> str:
    found = re.findall(r"^(\w+) training step, batch (\d+) of \S+ on \S+: (\d+) device ops, (\d+) host syncs", log, re.M)
    return "; ".join(f"{m} b{b}: {ops} ops, {syncs} syncs per step" for m, b, ops, syncs in found) or "no counts"


def bench_result(log: str) -> str:
    found = BENCH_LINE.findall(log)
    compile_times = re.findall(r"^kernel compilation: ([\d.]+) s", log, re.M)
    text = ", ".join(f"{m} b{b}{' ' + p if p else ''} {int(ips)} img/s" for _, m, _, p, b, _, ips in found) \
        or "no results"
    return text + (f" (compile {max(map(float, compile_times)):.2f} s, untimed)" if compile_times else "")


RESULTS = {"env": env_result, "pytest": pytest_result, "train": train_result, "ops": ops_result}


def bench_table(folder: Path) -> list[str]:
    columns = {"bench-gpu": "gpucnn GPU", "bench-cpu": "gpucnn CPU", "bench-torch": "torch GPU"}
    values: dict[tuple[str, str, str], dict[str, float]] = {}
    devices = {}
    for stage, column in columns.items():
        for torch_flag, model, device, precision, batch, _, ips in BENCH_LINE.findall(read(folder, stage)):
            values.setdefault((model, batch, precision or "fp32"), {})[column] = float(ips)
            devices[column] = device
    if not values:
        return []
    head = (["training step, images/s"] + [f"{c} ({devices.get(c, '-')})" for c in columns.values()]
            + ["gpucnn/torch", "x own fp32"])
    rows = [head]
    for (model, batch, precision), got in values.items():
        ratio = (f"{got['gpucnn GPU'] / got['torch GPU']:.2f}" if "gpucnn GPU" in got and "torch GPU" in got
                 else "-")
        fp32 = values.get((model, batch, "fp32"), {}).get("gpucnn GPU")
        speedup = f"{got['gpucnn GPU'] / fp32:.2f}" if fp32 and "gpucnn GPU" in got else "-"
        rows.append([f"{model} b{batch} {precision}"] + [f"{got[c]:.0f}" if c in got else "-" for c in columns.values()]
                    + [ratio, speedup])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            for r in rows]


def main(folder: str) -> int:
    folder = Path(folder)
    results = folder / "results.tsv"
    rows = [line.split("\t") for line in results.read_text().splitlines() if line] if results.exists() else []
    print("gpucnn GPU acceptance")
    print(f"{'stage':<12} {'status':<8} {'time':>6} {'limit':>6}  result")
    for name, status, seconds, limit in rows:
        log = read(folder, name)
        describe = RESULTS.get(name, bench_result)
        print(f"{name:<12} {status:<8} {seconds + ' s':>6} {limit + ' s':>6}  {describe(log)}")
    table = bench_table(folder)
    if table:
        print()
        print("\n".join(table))
    bad = [name for name, status, *_ in rows if status != "PASS"]
    print()
    print(f"RESULT: {'PASS' if rows and not bad else 'FAIL'}" + (f" ({', '.join(bad)})" if bad else "")
          + f"; logs in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/acceptance-out"))
