"""gpucnn.devices.keep_host_memory: with it, a step's large temporaries reuse freed memory instead of
faulting in fresh pages; GPUCNN_HOST_MEMORY=system leaves glibc as it is; fit and bench use it on the CPU only."""
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpucnn
from gpucnn import bench, devices
from gpucnn.devices import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Eight 3 MiB arrays made and freed per round, as a step makes its activations and frees them: with glibc's
# defaults the freed 24 MiB exceed its trim threshold (twice the largest block freed so far) and go back to
# the system, so every round faults its pages in again (3 MiB stays below numpy's huge-page advice, 4 MiB).
ROUNDS = textwrap.dedent("""
    import resource, numpy as np
    from gpucnn.devices import keep_host_memory
    kept = keep_host_memory()
    def rounds(k):
        for _ in range(k):
            arrays = [np.ones(3 * 2**20 // 4, np.float32) for _ in range(8)]
            del arrays
    rounds(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(8)
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(setting):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(host_memory.ENV, None)
    if setting is not None:
        env[host_memory.ENV] = setting
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    kept, faults = _faults(None)
    system_kept, system_faults = _faults("System")      # any case
    assert kept and not system_kept
    pages = 8 * 8 * 3 * 2**20 // 4096                   # what eight rounds touch
    assert faults < pages // 100, f"{faults} page faults in rounds that reuse freed memory"
    assert system_faults > pages // 2, (f"only {system_faults} page faults with glibc's defaults: the rounds no "
                                        f"longer show what keep_host_memory is for")


def test_keep_host_memory_is_idempotent_and_off_elsewhere(monkeypatch):
    first = devices.keep_host_memory()
    assert devices.keep_host_memory() is first
    assert first is (GLIBC and os.environ.get(host_memory.ENV, "").lower() != "system")
    monkeypatch.setitem(host_memory._state, "kept", None)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert host_memory.keep_host_memory() is False


@pytest.mark.parametrize("device,expected", [("cpu", 1), ("emulated", 0)])
def test_fit_and_bench_keep_host_memory_on_the_cpu_only(monkeypatch, device, expected):
    calls = []
    monkeypatch.setattr(devices, "keep_host_memory", lambda: calls.append(1) or True)
    x = np.random.default_rng(0).integers(0, 255, (16, 1, 8, 8), dtype=np.uint8)
    y = np.arange(16) % 2
    gpucnn.fit("simple_convnet", (x, y), epochs=1, batch_size=8, device=device, log=None, log_every=1e9)
    assert len(calls) == expected
    bench.benchmark("simple_convnet", 2, device, steps=1, warmup=0, input_size=8, in_channels=1)
    assert len(calls) == 2 * expected
