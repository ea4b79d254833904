"""The training step's kernels (kernels/optim.cu, check.cu, data.cu) against their numpy twins
(gpucnn.devices.step_twins) on the emulated GPU and a real GPU (`gpu` cases of `kernel_device`): every
optimizer option over several steps on odd sizes (and one past the twins' block size), the non-finite check,
the metrics accumulation (ties, NaN rows) and the batch gather (crops, flips, padding), for launches of fewer
and of more threads than elements. On the emulated GPU the updates and the gather are bit-identical to the
twins (the same operations in the same order, one rounding each, and g++ contracts nothing); on CUDA they
agree to the kernel tolerance (NVRTC fuses multiply-adds).
"""
import numpy as np
import pytest

import tolerances
from _devices import no_host_sync
from gpucnn import devices as backend
from gpucnn.devices import step_kernels as kernels, step_twins as twins

LAUNCHES = {"default": None, "one-block-of-32": ((1,), (32,)), "oversized": ((997,), (64,)), "odd": ((3,), (7,))}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
SIZES = pytest.mark.parametrize("size", [1, 37, twins.BLOCK + 5], ids=["1", "37", "block+5"])


def on(device):
    return lambda a: None if a is None else backend.to_device(a, device)


def same(got, want, device, what):
    if device.kind == "emulated":
        tolerances.assert_exact(got, want, what)
    else:
        tolerances.assert_close(got, want, device, what, tol="kernel")


# Each rule: (state fields, twin call, kernel call) with the hyper-parameters of a case and the step number.
RULES = {
    "sgd": (("buf",),
            lambda a, hp, step: twins.sgd_step(a["p"], a["g"], a.get("buf"), 0.1, hp["wd"], hp["momentum"], step == 1,
                                               hp["dampening"], hp["nesterov"]),
            lambda a, hp, step, launch: kernels.sgd_step(a["p"], a["g"], a.get("buf"), 0.1, hp["wd"], hp["momentum"],
                                                         step == 1, hp["dampening"], hp["nesterov"], launch=launch)),
    "adagrad": (("sum",),
                lambda a, hp, step: twins.adagrad_step(a["p"], a["g"], a["sum"], 0.1 / (1 + (step - 1) * 0.01),
                                                       hp["wd"], 1e-10),
                lambda a, hp, step, launch: kernels.adagrad_step(a["p"], a["g"], a["sum"],
                                                                 0.1 / (1 + (step - 1) * 0.01), hp["wd"], 1e-10,
                                                                 launch=launch)),
    "rmsprop": (("square_avg", "grad_avg", "buf"),
                lambda a, hp, step: twins.rmsprop_step(a["p"], a["g"], a["square_avg"], a.get("grad_avg"), a.get("buf"),
                                                       0.01, hp["wd"], 0.9, 1e-8, hp["centered"], hp["momentum"]),
                lambda a, hp, step, launch: kernels.rmsprop_step(a["p"], a["g"], a["square_avg"], a.get("grad_avg"),
                                                                 a.get("buf"), 0.01, hp["wd"], 0.9, 1e-8, hp["centered"],
                                                                 hp["momentum"], launch=launch)),
    "adam": (("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             lambda a, hp, step: twins.adam_step(a["p"], a["g"], a["exp_avg"], a["exp_avg_sq"], a.get("max_exp_avg_sq"),
                                                 1e-2, hp["wd"], hp["decoupled"], (0.9, 0.99), 1e-8, hp["amsgrad"], step),
             lambda a, hp, step, launch: kernels.adam_step(a["p"], a["g"], a["exp_avg"], a["exp_avg_sq"],
                                                           a.get("max_exp_avg_sq"), 1e-2, hp["wd"], hp["decoupled"],
                                                           (0.9, 0.99), 1e-8, hp["amsgrad"], step, launch=launch)),
}
BASE = {"wd": 0.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "centered": False, "decoupled": False,
        "amsgrad": False}
CASES = [("sgd", {}), ("sgd", {"wd": 0.05, "momentum": 0.9}), ("sgd", {"momentum": 0.8, "dampening": 0.3}),
         ("sgd", {"momentum": 0.9, "nesterov": True, "wd": 1e-3}), ("adagrad", {}), ("adagrad", {"wd": 0.1}),
         ("rmsprop", {}), ("rmsprop", {"centered": True, "momentum": 0.5, "wd": 0.01}), ("rmsprop", {"momentum": 0.9}),
         ("adam", {}), ("adam", {"wd": 0.05, "decoupled": True}), ("adam", {"wd": 0.05, "amsgrad": True}),
         ("adam", {"wd": 0.02, "decoupled": True, "amsgrad": True})]


def state_for(rule, hp, size, dtype, rng):
    fields = [f for f in RULES[rule][0] if not (
        (f == "buf" and not hp["momentum"]) or (f == "grad_avg" and not hp["centered"]) or
        (f == "max_exp_avg_sq" and not hp["amsgrad"]))]
    start = {"sum": 0.1, "square_avg": 0.0}
    return {f: np.full(size, start.get(f, 0.0), dtype) for f in fields}


@DTYPES
@SIZES
@pytest.mark.parametrize("rule, options", CASES, ids=[f"{r}-{'-'.join(o) or 'plain'}" for r, o in CASES])
def test_optimizer_kernels_match_their_twins_over_steps(rule, options, size, dtype, kernel_device):
    hp = {**BASE, **options}
    rng = np.random.default_rng(0)
    host = {"p": rng.standard_normal(size).astype(dtype), **state_for(rule, hp, size, dtype, rng)}
    d = on(kernel_device)
    launches = list(LAUNCHES.items()) if size < 100 else [("default", None)]
    for name, launch in launches:
        want = {k: v.copy() for k, v in host.items()}
        dev = {k: d(v) for k, v in host.items()}
        for step in (1, 2, 3):
            g = rng.standard_normal(size).astype(dtype)
            want["g"], dev["g"] = g, d(g)
            RULES[rule][1](want, hp, step)
            RULES[rule][2](dev, hp, step, launch)
        for k in host:
            same(dev[k], want[k], kernel_device, f"{rule} {options} {k} after 3 steps, launch {name}")


def test_optimizer_kernels_read_nothing_back(gpu_device):
    d = on(gpu_device)
    p, g, m, v = (d(np.ones(10, np.float32)) for _ in range(4))
    with no_host_sync(gpu_device), backend.count_device_ops() as counts:
        kernels.adam_step(p, g, m, v, None, 1e-3, 0.01, True, (0.9, 0.999), 1e-8, False, 7)
    assert gpu_device.kind != "emulated" or (counts.ops == 1 and counts.host_to_device == 0)


def test_update_launchers_refuse_mismatched_arrays():
    d = on(backend.EMULATED)
    with pytest.raises(ValueError, match="adam_step: parameters, gradients and state must have the same size"):
        kernels.adam_step(d(np.ones(3, np.float32)), d(np.ones(4, np.float32)), d(np.ones(3, np.float32)),
                          d(np.ones(3, np.float32)), None, 1e-3, 0.0, False, (0.9, 0.999), 1e-8, False, 1)
    with pytest.raises(TypeError, match="sgd_step"):
        kernels.sgd_step(d(np.ones(3, np.float32)), d(np.ones(3)), None, 0.1, 0.0, 0.0, True, 0.0, False)


# ------------------------------------------------------------------------------------ non-finite check

@DTYPES
@pytest.mark.parametrize("where", [None, 0, 40, 99, "loss", "both"])
def test_nonfinite_check_matches_its_twin(where, dtype, kernel_device):
    d = on(kernel_device)
    values, loss = np.ones(100, dtype), np.asarray(dtype(0.5))
    if where == "loss" or where == "both":
        loss = np.asarray(dtype(np.inf))
    if isinstance(where, int) or where == "both":
        values[where if isinstance(where, int) else 7] = np.nan if where != 40 else -np.inf
    for name, launch in LAUNCHES.items():
        for start in (-1, 3):
            want = np.asarray(np.int64(start))
            twins.nonfinite_check(values, loss, 12, want)
            got = d(np.asarray(np.int64(start)))
            kernels.nonfinite_check(d(values), d(loss), 12, got, launch=launch)
            tolerances.assert_exact(got, want, f"{where} from {start}, launch {name}")
            assert int(want) == (12 if where is not None and start < 0 else start)
    got = d(np.asarray(np.int64(-1)))
    kernels.nonfinite_check(d(values), None, 5, got)
    assert int(backend.to_cpu(got)) == (5 if isinstance(where, int) or where == "both" else -1)


# ---------------------------------------------------------------------------------- metrics of a step

@DTYPES
def test_accumulate_metrics_matches_its_twin(dtype, kernel_device):
    rng = np.random.default_rng(1)
    logits = rng.integers(-2, 3, (9, 4)).astype(dtype)     # many ties: the first maximum counts
    logits[2, 1] = np.nan                                  # a NaN is the argmax (the first one)
    logits[3, :] = np.nan
    labels = rng.integers(0, 4, 9).astype(np.int64)
    labels[2], labels[3] = 1, 0
    loss = np.asarray(dtype(0.3))
    d = on(kernel_device)
    for name, launch in LAUNCHES.items():
        want_sum, want_correct = np.zeros((), np.float64), np.zeros((), np.int64)
        got_sum, got_correct = d(want_sum.copy()), d(want_correct.copy())
        for _ in range(2):
            twins.accumulate_metrics(logits, labels, loss, 9, want_sum, want_correct)
            kernels.accumulate_metrics(d(logits), d(labels), d(loss), 9, got_sum, got_correct, launch=launch)
        tolerances.assert_exact(got_correct, want_correct, f"correct, launch {name}")
        tolerances.assert_exact(got_sum, want_sum, f"loss sum, launch {name}")
    assert int(want_correct) == 2 * int(np.sum(np.argmax(logits, axis=1) == labels))


# ---------------------------------------------------------------------------------------------- data

@DTYPES
@pytest.mark.parametrize("crop, flip", [(False, False), (True, False), (False, True), (True, True)])
def test_gather_batch_matches_its_twin(crop, flip, dtype, kernel_device):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (13, 3, 5, 7), dtype=np.uint8)
    labels = rng.integers(0, 10, 13).astype(np.int64)
    pad = 2
    draws = np.stack([rng.permutation(13)[:6], *rng.integers(0, 2 * pad + 1, (2, 6)), rng.random(6) < 0.5],
                     axis=1).astype(np.int32)
    scale, shift = np.array([1 / 255, 2 / 255, 0.5], dtype), np.array([0.1, -0.3, 1.7], dtype)
    want_x, want_y = twins.gather_batch(images, labels, draws, crop, flip, pad, scale, shift, dtype)
    d = on(kernel_device)
    for name, launch in LAUNCHES.items():
        x, y = kernels.gather_batch(d(images), d(labels), d(draws), crop, flip, pad, d(scale), d(shift), dtype,
                                    launch=launch)
        same(x, want_x, kernel_device, f"x, launch {name}")
        tolerances.assert_exact(y, want_y, f"labels, launch {name}")


def test_gather_batch_twin_crops_and_flips_as_described():
    images = np.arange(2 * 1 * 3 * 4, dtype=np.uint8).reshape(2, 1, 3, 4)
    one = np.ones(1)
    x, y = twins.gather_batch(images, np.array([5, 6]), np.array([[1, 0, 2, 1]], np.int32), True, True, 1, one,
                              one * 0, np.float64)
    padded = np.pad(images[1, 0], 1)
    np.testing.assert_array_equal(x[0, 0], padded[0:3, 2:6][:, ::-1])
    assert y.tolist() == [6]
