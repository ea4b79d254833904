"""The commands of ``gpucnn`` that look at the install rather than at a run: ``bench`` (a training or inference
step timed, or its device operations counted), ``info`` (versions, CUDA, MPI and NCCL status, every kernel
compiled now) and ``models`` (the zoo with parameter counts). :mod:`gpucnn.cli` parses the arguments, calls these
functions and turns their errors (ValueError, the library's own) into one line and exit code 2.
"""
from __future__ import annotations

import platform
import sys


def cmd_bench(args) -> int:
    from . import bench
    size = channels = None
    if args.input_shape:
        parts = args.input_shape.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--input-shape must look like 3x32x32 (channels x height x width), "
                             f"got {args.input_shape!r}")
        channels, size = int(parts[0]), (int(parts[1]), int(parts[2]))
    if args.count_ops:
        cases = ([(args.model or "lenet5", args.batch_size or 128)] if args.model or args.batch_size
                 else bench.REFERENCE_CASES)
        print("device ops per training step, counted on the emulated device (a model of CuPy 14.2's kernel "
              "launches, cuBLAS calls, copies and memsets; see README 'Counted device operations'); kernel "
              "compilation and the warm-up step are not counted")
        for model, batch in cases:
            print(bench.format_op_counts(bench.count_step_ops(model, batch, args.device or "emulated",
                                                              input_size=size, in_channels=channels,
                                                              precision=args.precision)))
        return 0
    model, batch = args.model or "lenet5", args.batch_size or 128
    for train in (True, False):
        r = bench.benchmark(model, batch, args.device, steps=args.steps, warmup=args.warmup, train=train,
                            input_size=size, in_channels=channels, precision=args.precision)
        if train:
            print(f"kernel compilation: {r['compile_seconds']:.3f} s in this process, before timing "
                  f"(excluded from the figures below)" if r["device"] != "cpu" else
                  "kernel compilation: none on the CPU")
        print(bench.format_result(r))
    return 0


def cmd_info(args) -> int:
    import numpy as np
    from . import __version__
    from . import devices
    print(f"gpucnn {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"numpy {np.__version__}")
    cp = devices.cupy_module()
    print(f"cupy {cp.__version__ if cp is not None else 'not installed'}")
    try:
        import matplotlib
        print(f"matplotlib {matplotlib.__version__}")
    except ImportError:
        print("matplotlib not installed (no curves.png / filters.png; pip install 'gpucnn[plots]')")
    ok, why = devices.cuda_status()
    print(f"CUDA: {'usable' if ok else 'not usable'}: {why}")
    names = ["cpu", "emulated", "emulated:1"]
    if ok:
        names += [f"cuda:{i}" for i in range(cp.cuda.runtime.getDeviceCount())]
    print(f"devices: {', '.join(names)}; auto -> {devices.get_device('auto')}")
    print(f"data-parallel (--distributed): {distributed_status(ok)}")
    _print_kernels(devices.get_device("cuda:0" if ok else "emulated"))
    return 0


def distributed_status(cuda_ok: bool) -> str:
    """mpi4py's version and the mpiexec on PATH (MPI is not started), and NCCL's status where CUDA is usable."""
    import shutil
    try:
        import mpi4py
    except ImportError:
        return "mpi4py not installed (pip install 'gpucnn[distributed]')"
    launcher = shutil.which("mpiexec") or "no mpiexec on PATH (the cluster's MPI, or pip install mpich)"
    text = f"mpi4py {mpi4py.__version__}, {launcher}"
    if cuda_ok:
        from .devices import cuda
        usable, why = cuda.nccl_status()
        text += f"; NCCL {'usable' if usable else 'not usable'}: {why}"
    return text


def _print_kernels(device):
    """Where the kernel sources are, and each one compiled now for `device` with its compile time (the CPU
    path needs no kernel: a failure is reported, not raised)."""
    from .devices import kernels
    try:
        info = kernels.info()
    except Exception as e:
        print(f"kernels: unavailable ({type(e).__name__}: {e})")
        return
    print(f"kernels: {len(info['sources'])} sources from the {info['source_origin']}, options "
          f"{' '.join(info['options'])}")
    names = {}
    for launcher, where in info["kernels"].items():
        names.setdefault(where.split(":")[0], []).append(launcher)
    how = ("NVRTC through cupy; a source found in CuPy's kernel cache (~/.cupy/kernel_cache) only loads"
           if device.kind == "cuda" else "g++ for the kernel emulator; builds are cached on disk")
    print(f"compiling every kernel for {device} ({how}):")
    for source in info["sources"]:
        try:
            seconds = kernels.compile_source(source, device)
            result = f"{seconds:.3f} s"
        except Exception as e:
            result = f"FAILED ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        print(f"  {source} ({', '.join(names.get(source, []))}): {result}")


def cmd_models(args) -> int:
    from . import models
    shapes = ((1, 28), (3, 32))
    rows = [("model", *(f"params {c}x{s}x{s}" for c, s in shapes), "description")]
    for name in models.names():
        counts = []
        for c, s in shapes:
            try:
                counts.append(f"{models.get(name, in_channels=c, input_size=s, num_classes=10).num_params():,}")
            except ValueError:
                counts.append("-")
        doc = (models.MODELS[name].__doc__ or "").strip().splitlines()[0]
        rows.append((name, *counts, doc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:-1], widths[1:])] + [r[-1]]))
    print("(parameter counts for 10 classes)")
    return 0
