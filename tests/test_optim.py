"""Optimizers, schedules and clipping against torch (the oracle) on each device; state round trips; no host
syncs on a GPU."""
import json
import math

import numpy as np
import pytest
import torch

import tolerances
from _devices import no_host_sync
from gpucnn.devices import step_twins
from gpucnn import devices as backend
from gpucnn import optim

SHAPES = {"0.W": (4, 3, 3, 3), "0.b": (4,), "1.W": (10, 7), "1.b": (10,)}
STEPS = 10

# (ours, torch class, torch kwargs)
CONFIGS = [
    (lambda: optim.SGD(lr=0.1), torch.optim.SGD, dict(lr=0.1)),
    (lambda: optim.SGD(lr=0.05, momentum=0.9), torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (lambda: optim.SGD(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01), torch.optim.SGD,
     dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    (lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (lambda: optim.AdaGrad(lr=0.1), torch.optim.Adagrad, dict(lr=0.1)),
    (lambda: optim.AdaGrad(lr=0.1, weight_decay=0.01, initial_accumulator_value=0.1, lr_decay=0.05, eps=1e-8),
     torch.optim.Adagrad, dict(lr=0.1, weight_decay=0.01, initial_accumulator_value=0.1, lr_decay=0.05, eps=1e-8)),
    (lambda: optim.RMSprop(lr=0.01), torch.optim.RMSprop, dict(lr=0.01)),
    (lambda: optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.01), torch.optim.RMSprop,
     dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.01)),
    (lambda: optim.RMSprop(lr=0.01, centered=True, eps=1e-6), torch.optim.RMSprop,
     dict(lr=0.01, centered=True, eps=1e-6)),
    (lambda: optim.RMSprop(lr=0.01, centered=True, momentum=0.9), torch.optim.RMSprop,
     dict(lr=0.01, centered=True, momentum=0.9)),
    (lambda: optim.Adam(lr=0.01), torch.optim.Adam, dict(lr=0.01)),
    (lambda: optim.Adam(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1), torch.optim.Adam,
     dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    (lambda: optim.Adam(lr=0.01, amsgrad=True, eps=1e-6), torch.optim.Adam, dict(lr=0.01, amsgrad=True, eps=1e-6)),
    (lambda: optim.AdamW(lr=0.01), torch.optim.AdamW, dict(lr=0.01)),
    (lambda: optim.AdamW(lr=0.01, weight_decay=0.1, amsgrad=True), torch.optim.AdamW,
     dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
IDS = [f"{c[1].__name__}-{'-'.join(f'{k}={v}' for k, v in c[2].items())}" for c in CONFIGS]


def tol(device, dtype, kind="optim"):
    rtol, atol = tolerances.tolerance(kind, device, dtype)
    return dict(rtol=rtol, atol=atol)


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def make_grads(dtype, steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: (rng.standard_normal(s) * rng.uniform(0.1, 3)).astype(dtype) for k, s in SHAPES.items()}
            for _ in range(steps)]


def run(opt, params, grad_seq):
    for grads in grad_seq:
        opt.update(params, grads)
    return params


def run_torch(cls, kwargs, params, grad_seq):
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = cls(list(tp.values()), **kwargs)
    for grads in grad_seq:
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tp.items()}


def on(device, arrays):
    return {k: backend.to_device(v, device) for k, v in arrays.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ours,tcls,tkw", CONFIGS, ids=IDS)
def test_matches_torch(ours, tcls, tkw, dtype, any_device):
    params, grad_seq = make_params(dtype), make_grads(dtype)
    expected = run_torch(tcls, tkw, params, grad_seq)
    params, grad_seq = on(any_device, params), [on(any_device, g) for g in grad_seq]
    ids = {k: id(v) for k, v in params.items()}
    opt = ours()
    got = run(opt, params, grad_seq)
    for k in SHAPES:
        assert id(got[k]) == ids[k], "update must work in place"
        assert got[k].dtype == dtype and backend.device_of(got[k]) == any_device
        np.testing.assert_allclose(backend.to_cpu(got[k]), expected[k], **tol(any_device, dtype), err_msg=k)
    for before, after in zip(make_grads(dtype), grad_seq):
        for k in SHAPES:
            np.testing.assert_array_equal(before[k], backend.to_cpu(after[k]),
                                          err_msg="gradients must not be modified")
    for key, value in opt.state_dict().items():
        if isinstance(value, np.ndarray) and key.startswith("state/") and not key.endswith("/shape"):
            assert value.dtype == dtype, key


@pytest.mark.parametrize("ours,tcls,tkw", CONFIGS, ids=IDS)
def test_host_update_in_blocks_is_bit_identical_to_whole_arrays(ours, tcls, tkw, monkeypatch):
    """Host parameters are updated block by block; cutting them must not change a bit (a Fortran-ordered
    parameter is updated whole, in place)."""
    params, grad_seq = make_params(np.float32), make_grads(np.float32)
    params["1.W"] = np.asfortranarray(params["1.W"])
    results = []
    for block in (10 ** 9, 5):
        monkeypatch.setattr(step_twins, "BLOCK", block)
        p = {k: v.copy(order="K") for k, v in params.items()}
        ids = {k: id(v) for k, v in p.items()}
        run(ours(), p, grad_seq)
        assert {k: id(v) for k, v in p.items()} == ids
        results.append(p)
    for k in SHAPES:
        assert not np.array_equal(results[1][k], params[k]), k
        np.testing.assert_array_equal(results[1][k], results[0][k], err_msg=k)


@pytest.mark.parametrize("ours,tcls,tkw", CONFIGS, ids=IDS)
def test_gpu_no_sync_and_same_result(ours, tcls, tkw, gpu_device):
    """No host sync in updates; bit-identical to the CPU on the emulated GPU (numpy's arithmetic, elementwise
    in the same order), to rounding on CUDA (fused multiply-adds)."""
    params, grad_seq = make_params(np.float32), make_grads(np.float32)
    cpu = run(ours(), {k: v.copy() for k, v in params.items()}, grad_seq)
    dev_params = on(gpu_device, params)
    dev_grads = [on(gpu_device, g) for g in grad_seq]
    ids = {k: id(v) for k, v in dev_params.items()}
    opt = ours()
    with no_host_sync(gpu_device):
        run(opt, dev_params, dev_grads)
    same = "exact" if gpu_device.kind == "emulated" else "step"
    for k in SHAPES:
        assert id(dev_params[k]) == ids[k]
        assert backend.device_of(dev_params[k]) == gpu_device
        tolerances.assert_close(dev_params[k], cpu[k], gpu_device, k, same)
    for st in opt._state.values():
        for field, arr in st.items():
            if field != "step":
                assert backend.device_of(arr) == gpu_device, field


@pytest.mark.parametrize("ours,tcls,tkw", CONFIGS, ids=IDS)
def test_an_update_is_one_float32_kernel_per_parameter_or_per_flat_buffer(ours, tcls, tkw):
    """Separate parameters: one launch of the rule's float32 kernel each (the emulator refuses float64 scalars
    for a float32 kernel, so nothing widens); parameters and gradients in flat buffers: one launch in all."""
    params = on("emulated", make_params(np.float32))
    grads = [on("emulated", g) for g in make_grads(np.float32, 3)]
    opt = ours()
    opt.update(params, grads[0])            # the first update lays the state out
    with backend.count_device_ops() as counts:
        opt.update(params, grads[1])
    assert counts.ops == len(params) and counts.syncs == counts.host_to_device == 0
    assert all(op.startswith("kernel:") and op.endswith("_step_f32") for op in counts.by_op), counts.by_op
    layer_params = {k: v.copy() for k, v in params.items()}
    flat_p = backend.flat.FlatArrays(layer_params)
    flat_g = backend.flat.FlatArrays(grads[2])
    with backend.count_device_ops() as counts:
        opt.update(flat_p.views, flat_g.views)   # the state is laid out again, in the flat buffers' order
    with backend.count_device_ops() as again:
        opt.update(flat_p.views, flat_g.views)
    assert again.ops == 1 and list(again.by_op)[0].endswith("_step_f32"), again.by_op


@pytest.mark.parametrize("ours,tcls,tkw", CONFIGS, ids=IDS)
def test_state_dict_resume_is_bit_identical(ours, tcls, tkw, tmp_path):
    params, grad_seq = make_params(np.float32), make_grads(np.float32)
    straight = run(ours(), {k: v.copy() for k, v in params.items()}, grad_seq)

    first = ours()
    half = run(first, {k: v.copy() for k, v in params.items()}, grad_seq[:5])
    sd = first.state_dict()
    np.savez(tmp_path / "opt.npz", **sd)
    run(first, {k: v.copy() for k, v in half.items()}, grad_seq[5:])  # the saved dict must not change
    for key, value in first.state_dict().items():
        if key.startswith("state/") and key.endswith("/step"):
            assert value == 10

    arrays = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    via_json = {**json.loads(json.dumps({k: v for k, v in sd.items() if k not in arrays})), **arrays}
    for source in (sd, dict(np.load(tmp_path / "opt.npz")), via_json):
        resumed = type(first)()  # default hyper-parameters: the state dict brings the saved ones
        resumed.load_state_dict(source)
        assert repr(resumed) == repr(first)
        got = run(resumed, {k: v.copy() for k, v in half.items()}, grad_seq[5:])
        for k in SHAPES:
            np.testing.assert_array_equal(got[k], straight[k], err_msg=k)


def test_resume_on_a_gpu_moves_state_lazily(gpu_device):
    params, grad_seq = make_params(np.float32), make_grads(np.float32)
    straight = run(optim.Adam(lr=0.01, amsgrad=True), {k: v.copy() for k, v in params.items()}, grad_seq)
    first = optim.Adam(lr=0.01, amsgrad=True)
    half = run(first, on(gpu_device, params), [on(gpu_device, g) for g in grad_seq[:5]])
    sd = first.state_dict()
    resumed = optim.Adam()
    resumed.load_state_dict(sd)
    dev_grads = [on(gpu_device, g) for g in grad_seq[5:]]
    with backend.count_device_ops() as c:
        run(resumed, half, dev_grads)
    assert c.device_to_host == 0
    for k in SHAPES:
        tolerances.assert_close(half[k], straight[k], gpu_device, k,
                                "exact" if gpu_device.kind == "emulated" else "step")


def test_state_dict_values_are_plain_or_host_arrays():
    opt = optim.RMSprop(momentum=0.9, centered=True)
    run(opt, on("emulated", make_params(np.float32)), [on("emulated", g) for g in make_grads(np.float32, 2)])
    for key, value in opt.state_dict().items():
        assert type(value) in (str, int, float, bool, list, np.ndarray), (key, type(value))
        if isinstance(value, np.ndarray):
            assert type(value) is np.ndarray, key


def test_load_rejects_other_optimizer_type():
    sgd = optim.SGD(momentum=0.9)
    run(sgd, make_params(np.float64), make_grads(np.float64, 2))
    with pytest.raises(ValueError, match=r"Adam.*expected a state dict saved by Adam.*SGD"):
        optim.Adam().load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="AdamW.*Adam"):
        optim.AdamW().load_state_dict(optim.Adam().state_dict())
    with pytest.raises(ValueError, match="without an 'optimizer' entry"):
        optim.SGD().load_state_dict({})


def test_load_rejects_unknown_or_missing_parameter_names():
    opt = optim.Adam()
    params = make_params(np.float64)
    run(opt, params, make_grads(np.float64, 2))
    renamed = {("2.W" if k == "1.W" else k): v for k, v in params.items()}
    resumed = optim.Adam()
    resumed.load_state_dict(opt.state_dict())
    grads = {k: np.zeros_like(v) for k, v in renamed.items()}
    with pytest.raises(ValueError, match=r"Adam.load_state_dict.*1\.W.*2\.W"):
        resumed.update(renamed, grads)
    with pytest.raises(ValueError, match=r"missing from the model: \['1\.W'\]"):
        optim.Adam().load_state_dict(opt.state_dict(), params=renamed)


def test_load_rejects_shape_mismatch():
    opt = optim.SGD(momentum=0.9)
    params = make_params(np.float64)
    run(opt, params, make_grads(np.float64, 2))
    params["0.b"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"'0\.b' has shape \(5,\).*\(4,\)"):
        optim.SGD(momentum=0.9).load_state_dict(opt.state_dict(), params=params)
    sd = opt.state_dict()
    sd["state/1.W/momentum_buffer"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"momentum_buffer.*'1\.W'.*\(3, 3\).*\(10, 7\)"):
        optim.SGD().load_state_dict(sd)


def test_load_rejects_state_fields_not_matching_hyperparameters():
    opt = optim.Adam(amsgrad=True)
    run(opt, make_params(np.float64), make_grads(np.float64, 1))
    sd = opt.state_dict()
    sd["hparams/amsgrad"] = False
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        optim.Adam().load_state_dict(sd)


def test_update_rejects_missing_or_misshapen_gradient():
    params = make_params(np.float64)
    with pytest.raises(ValueError, match=r"SGD.update: no gradient for parameter '0\.b'"):
        optim.SGD().update(params, {k: v for k, v in make_grads(np.float64, 1)[0].items() if k != "0.b"})
    with pytest.raises(ValueError, match=r"'0\.b' has shape \(4,\), its gradient has shape \(3,\)"):
        optim.SGD().update(params, {**make_grads(np.float64, 1)[0], "0.b": np.zeros(3)})


def test_update_rejects_host_gradient_for_device_parameter():
    params = on("emulated", make_params(np.float32))
    with pytest.raises(backend.DeviceMismatchError):
        optim.Adam().update(params, make_grads(np.float32, 1)[0])


@pytest.mark.parametrize("make,match", [
    (lambda: optim.SGD(lr=-0.1), r"SGD: lr must be"),
    (lambda: optim.SGD(momentum=-0.5), r"SGD: momentum must be"),
    (lambda: optim.SGD(nesterov=True), r"SGD: nesterov=True needs momentum"),
    (lambda: optim.SGD(momentum=0.9, nesterov=True, dampening=0.1), r"SGD: nesterov=True needs .*dampening"),
    (lambda: optim.SGD(weight_decay=-1), r"SGD: weight_decay must be"),
    (lambda: optim.AdaGrad(eps=-1e-3), r"AdaGrad: eps must be"),
    (lambda: optim.AdaGrad(lr_decay=-1), r"AdaGrad: lr_decay must be"),
    (lambda: optim.RMSprop(alpha=1.5), r"RMSprop: alpha must be"),
    (lambda: optim.RMSprop(momentum=-1), r"RMSprop: momentum must be"),
    (lambda: optim.Adam(betas=(1.0, 0.999)), r"Adam: betas\[0\] must be in \[0, 1\), got 1.0"),
    (lambda: optim.Adam(betas=(0.9, -0.1)), r"Adam: betas\[1\] must be"),
    (lambda: optim.AdamW(lr=-1e-3), r"AdamW: lr must be"),
    (lambda: optim.AdamW(eps=float("nan")), r"AdamW: eps must be"),
])
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_numeric_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match="Adam: lr must be a real number"):
        optim.Adam(lr="fast")
    with pytest.raises(TypeError, match="Adam: betas must be a pair"):
        optim.Adam(betas=0.9)


def test_factory():
    assert optim.names() == ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
    for name in optim.names():
        assert isinstance(optim.get(name), optim.Optimizer)
    m = optim.get("momentum", lr=0.5, weight_decay=None)
    assert (type(m), m.momentum, m.lr, m.weight_decay) == (optim.SGD, 0.9, 0.5, 0.0)
    n = optim.get("Nesterov")
    assert n.nesterov and n.momentum == 0.9
    assert type(optim.get("adamw")) is optim.AdamW and optim.get("adamw").weight_decay == 1e-2
    with pytest.raises(ValueError, match="unknown optimizer 'lion'.*adamw"):
        optim.get("lion")


def test_lr_is_a_plain_attribute_read_at_each_update():
    params, grad_seq = make_params(np.float64), make_grads(np.float64, 4)
    lrs = [0.1, 0.05, 0.0, 0.2]
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = torch.optim.SGD(list(tp.values()), lr=0.1, momentum=0.9)
    opt = optim.SGD(lr=0.1, momentum=0.9)
    for lr, grads in zip(lrs, grad_seq):
        opt.lr = lr
        opt.update(params, grads)
        topt.param_groups[0]["lr"] = lr
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
    for k in SHAPES:
        np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------ schedules

def torch_lrs(make_sched, base_lr, steps):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = make_sched(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_lr_matches_torch():
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5), 0.3, 40)
    s = optim.StepLR(0.3, step_size=7, gamma=0.5)
    np.testing.assert_allclose([s.lr_at(i) for i in range(40)], expected, rtol=1e-12)


@pytest.mark.parametrize("min_lr", [0.0, 0.01])
def test_cosine_lr_matches_torch(min_lr):
    total = 50
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=min_lr),
                         0.1, total + 1)
    s = optim.CosineLR(0.1, total, min_lr=min_lr)
    np.testing.assert_allclose([s.lr_at(i) for i in range(total + 1)], expected, rtol=1e-9, atol=1e-15)
    assert s.lr_at(total + 10) == min_lr


@pytest.mark.parametrize("min_lr", [0.0, 0.02])
def test_linear_lr_matches_torch(min_lr):
    total, base = 37, 0.1
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=min_lr / base,
                                                                    total_iters=total), base, total + 5)
    s = optim.LinearLR(base, total, min_lr=min_lr)
    np.testing.assert_allclose([s.lr_at(i) for i in range(total + 5)], expected, rtol=1e-9, atol=1e-15)
    assert s.lr_at(0) == base and s.lr_at(total) == s.lr_at(total + 100) == min_lr
    with pytest.raises(ValueError, match="LinearLR: total_steps"):
        optim.LinearLR(base, 0)


def test_warmup_matches_torch_linear_lr():
    w = 8
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / w, total_iters=w - 1),
                         0.2, 20)
    s = optim.WarmupLR(0.2, w)
    np.testing.assert_allclose([s.lr_at(i) for i in range(20)], expected, rtol=1e-12)
    assert s.lr_at(0) > 0


def test_warmup_of_cosine_matches_torch_chained():
    w, total = 5, 30

    def chained(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / w, total_iters=w - 1)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total)
        return torch.optim.lr_scheduler.ChainedScheduler([lin, cos])

    expected = torch_lrs(chained, 0.1, total)
    s = optim.WarmupLR(optim.CosineLR(0.1, total), w)
    np.testing.assert_allclose([s.lr_at(i) for i in range(total)], expected, rtol=1e-9)
    assert s.base_lr == 0.1


def test_schedule_apply_and_factory():
    opt = optim.Adam(lr=1.0)
    s = optim.make_schedule("cosine", 0.1, 100, warmup_steps=10)
    assert isinstance(s, optim.WarmupLR) and isinstance(s.schedule, optim.CosineLR)
    assert s.apply(opt, 50) == opt.lr == s.lr_at(50)
    assert isinstance(opt.lr, float)
    assert optim.make_schedule("step", 0.1, 90).step_size == 30
    assert optim.make_schedule("constant", 0.1, 90).lr_at(89) == 0.1
    assert optim.schedule_names() == ["constant", "step", "cosine", "linear"]
    assert isinstance(optim.make_schedule("linear", 0.1, 90), optim.LinearLR)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'onecycle'"):
        optim.make_schedule("onecycle", 0.1, 10)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: optim.StepLR(0.1, 0), ValueError, "StepLR: step_size"),
    (lambda: optim.CosineLR(0.1, 0), ValueError, "CosineLR: total_steps"),
    (lambda: optim.CosineLR(0.1, 10, min_lr=0.2), ValueError, "CosineLR: min_lr"),
    (lambda: optim.WarmupLR(0.1, -1), ValueError, "WarmupLR: warmup_steps"),
    (lambda: optim.ConstantLR(-0.1), ValueError, "ConstantLR: base_lr"),
    (lambda: optim.ConstantLR(0.1).lr_at(-1), ValueError, "ConstantLR: step must be >= 0"),
    (lambda: optim.StepLR(0.1, 3).lr_at(1.5), TypeError, "StepLR: step must be an integer"),
])
def test_schedule_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ------------------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(dtype, max_norm):
    grads = make_grads(dtype, 1)[0]
    tg = [torch.tensor(g) for g in grads.values()]
    ts = [torch.zeros_like(t, requires_grad=True) for t in tg]
    for t, g in zip(ts, tg):
        t.grad = g.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    ids = {k: id(v) for k, v in grads.items()}
    norm = optim.clip_grad_norm(grads, max_norm)
    assert isinstance(norm, np.ndarray) and norm.shape == () and norm.dtype == dtype
    np.testing.assert_allclose(norm, expected_norm.numpy(), **tol("cpu", dtype))
    for (k, g), t in zip(grads.items(), ts):
        assert id(g) == ids[k]
        np.testing.assert_allclose(g, t.grad.numpy(), **tol("cpu", dtype))
    if max_norm > 1e3:
        np.testing.assert_array_equal(list(grads.values())[0], list(make_grads(dtype, 1)[0].values())[0])


def test_clip_grad_norm_on_a_gpu_stays_there(gpu_device):
    grads = make_grads(np.float32, 1)[0]
    cpu = {k: v.copy() for k, v in grads.items()}
    cpu_norm = optim.clip_grad_norm(cpu, 1.0)
    dev = on(gpu_device, grads)
    with no_host_sync(gpu_device):
        norm = optim.clip_grad_norm(dev, 1.0)
    assert backend.device_of(norm) == gpu_device and norm.shape == ()
    same = "exact" if gpu_device.kind == "emulated" else "step"
    tolerances.assert_close(norm, cpu_norm, gpu_device, "norm", same)
    for k in SHAPES:
        tolerances.assert_close(dev[k], cpu[k], gpu_device, k, same)


def test_clip_grad_norm_rejects_bad_max_norm():
    with pytest.raises(ValueError, match="clip_grad_norm: max_norm"):
        optim.clip_grad_norm(make_grads(np.float32, 1)[0], 0.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_grads_finite(bad, gpu_device):
    grads = on(gpu_device, make_grads(np.float32, 1)[0])
    if bad is not None:
        grads["1.W"][3, 2] = bad
    with no_host_sync(gpu_device):
        ok = optim.grads_finite(grads)
    assert backend.device_of(ok) == gpu_device and ok.shape == () and ok.dtype == np.bool_
    assert bool(backend.to_cpu(ok)) is (bad is None)
    cpu_ok = optim.grads_finite({k: backend.to_cpu(v) for k, v in grads.items()})
    assert isinstance(cpu_ok, np.ndarray) and bool(cpu_ok) is (bad is None)


def test_every_optimizer_and_clipping_on_any_device(any_device):
    """Same results on the CPU, the emulated GPU and (where there is one) a real GPU."""
    params, grad_seq = make_params(np.float32), make_grads(np.float32, 4)
    for ours, _, _ in CONFIGS:
        cpu = run(ours(), {k: v.copy() for k, v in params.items()}, grad_seq)
        dev = run(ours(), on(any_device, params), [on(any_device, g) for g in grad_seq])
        for k in SHAPES:
            assert backend.device_of(dev[k]) == any_device
            tolerances.assert_close(dev[k], cpu[k], any_device, k)
    cpu_grads = {k: v.copy() for k, v in grad_seq[0].items()}
    grads = on(any_device, grad_seq[0])
    norm = optim.clip_grad_norm(grads, 1.0)
    finite = optim.grads_finite(grads)
    assert backend.device_of(norm) == backend.device_of(finite) == any_device
    tolerances.assert_close(norm, optim.clip_grad_norm(cpu_grads, 1.0), any_device, "norm")
    assert bool(backend.to_cpu(finite))


# ------------------------------------------------------------------------------------- parameter groups

def run_torch_groups(cls, kwargs, groups, params, grad_seq):
    """torch with param groups: `groups` maps a group's names to its torch options; the rest keep `kwargs`."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    grouped = {n for names, _ in groups for n in names}
    torch_groups = [{"params": [tp[n] for n in names], **opts} for names, opts in groups]
    torch_groups.insert(0, {"params": [t for k, t in tp.items() if k not in grouped]})
    opt = cls(torch_groups, **kwargs)
    for grads in grad_seq:
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tp.items()}


@pytest.mark.parametrize("ours,tcls,tkw,group,tgroup", [
    (optim.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1), {"weight_decay": 0.0}, {"weight_decay": 0.0}),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01),
     {"lr_scale": 0.5, "momentum": 0.5}, {"lr": 0.025, "momentum": 0.5}),
    (optim.Adam, torch.optim.Adam, dict(lr=0.01), {"betas": (0.8, 0.9), "eps": 1e-6},
     {"betas": (0.8, 0.9), "eps": 1e-6}),
])
def test_groups_match_torch_param_groups(ours, tcls, tkw, group, tgroup):
    params, grad_seq = make_params(np.float64), make_grads(np.float64)
    expected = run_torch_groups(tcls, tkw, [(["0.b", "1.b"], tgroup)], params, grad_seq)
    opt = ours(**tkw, groups=[{"params": optim.no_weight_decay, **group}])
    got = run(opt, params, grad_seq)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k], **tol(backend.CPU, np.float64), err_msg=k)
    assert opt.groups == [{"params": ["0.b", "1.b"], **group}]   # the rule, resolved into names once


def test_groups_by_name_survive_a_state_dict_round_trip_and_schedules_scale_them():
    params, grad_seq = make_params(np.float32), make_grads(np.float32)
    make = lambda: optim.AdamW(lr=0.01, weight_decay=0.1, groups=[{"params": ["1.W"], "lr_scale": 0.1,
                                                                   "weight_decay": 0.0}])
    straight, sched = make(), optim.CosineLR(0.01, len(grad_seq))
    p1 = {k: v.copy() for k, v in params.items()}
    for i, g in enumerate(grad_seq):
        sched.apply(straight, i)
        straight.update(p1, g)
    first = make()
    p2 = {k: v.copy() for k, v in params.items()}
    for i, g in enumerate(grad_seq[:4]):
        sched.apply(first, i)
        first.update(p2, g)
    sd = first.state_dict()
    assert [k for k in sd if k.startswith("groups/")] == ["groups/0/params", "groups/0/lr_scale",
                                                          "groups/0/weight_decay"]
    resumed = optim.AdamW()                      # no groups given: the state dict brings them
    resumed.load_state_dict(dict(np.load(_saved(sd))))
    for i, g in enumerate(grad_seq[4:], start=4):
        sched.apply(resumed, i)
        resumed.update(p2, g)
    for k in SHAPES:
        np.testing.assert_array_equal(p2[k], p1[k], err_msg=k)


def _saved(sd):
    import io
    f = io.BytesIO()
    np.savez(f, **sd)
    f.seek(0)
    return f


def test_state_dict_order_is_the_run_order_whatever_the_hash_seed():
    """State fields are created and listed in name order, parameters in their first update's order: the dict
    (and so a checkpoint's optim/<n> numbering) is the same in every process."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np; from gpucnn import optim; o = optim.Adam(amsgrad=True); "
            "p = {'b': np.zeros(3), 'a': np.zeros(2)}; o.update(p, {k: np.ones_like(v) for k, v in p.items()}); "
            "print(' '.join(o.state_dict()))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1
    keys = outs.pop().split()
    assert keys[-10:] == [f"state/{p}/{f}" for p in "ba" for f in ("step", "shape", "exp_avg", "exp_avg_sq",
                                                                    "max_exp_avg_sq")]


@pytest.mark.parametrize("groups,exc,match", [
    ([{"params": ["0.W"], "lr": 0.1}], ValueError, r"group 0 sets lr, which a group of SGD cannot set \(a group's "
                                                   r"rate is lr_scale \* lr\)"),
    ([{"params": ["0.W"], "amsgrad": True}], ValueError, r"changes the optimizer's state arrays \(max_exp_avg_sq\)"),
    ([{"weight_decay": 0.0}], TypeError, r"group 0 must be a dict with a 'params' entry"),
    ([{"params": "0.W"}], TypeError, r"'params' must be a list of parameter names or a rule"),
    ({"params": ["0.W"]}, TypeError, r"groups must be a list of dicts"),
    ([{"params": ["0.W"], "lr_scale": -1}], ValueError, r"lr_scale must be a finite number >= 0"),
    ([{"params": ["0.W"], "momentum": -0.5}], ValueError, r"group 0: .*momentum must be"),
])
def test_bad_groups_are_refused_at_construction(groups, exc, match):
    cls = optim.Adam if "amsgrad" in str(groups) else optim.SGD
    with pytest.raises(exc, match=match):
        cls(groups=groups)


def test_groups_naming_missing_parameters_or_a_changed_model_are_refused():
    params = make_params(np.float64)
    grads = make_grads(np.float64, 1)[0]
    with pytest.raises(ValueError, match=r"group 0 names parameters the model does not have: \['2\.W'\]"):
        optim.SGD(groups=[{"params": ["2.W"]}]).update(params, grads)
    opt = optim.SGD(groups=[{"params": optim.no_weight_decay}])
    with pytest.raises(ValueError, match=r"rules, resolved against the parameters at the first update"):
        opt.state_dict()
    opt.update(params, grads)
    with pytest.raises(ValueError, match=r"groups were resolved against .* build a new optimizer"):
        opt.update({**params, "9.W": np.zeros(2)}, {**grads, "9.W": np.zeros(2)})
