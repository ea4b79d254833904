"""The emulated GPU is as strict as CuPy 14.2: each refusal below is checked on the emulated device and, with
the `gpu` marker, on a real GPU with the same test body (so the acceptance run proves the emulator raises
where CuPy raises); and it counts device operations, host syncs and transfers as CuPy would incur them."""
import operator

import numpy as np
import pytest

from gpucnn import devices as backend
from gpucnn.devices import counters, kernels


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def gpu(request):
    """The emulated GPU, and a real one where there is one."""
    return backend.get_device(request.param)


def on(dev, a):
    return backend.to_device(np.asarray(a), dev)


def host(shape=(2, 3)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


# ------------------------------------------------------------------------------- what CuPy refuses

def test_implicit_conversion_to_numpy_is_refused(gpu):
    x = on(gpu, host())
    for convert in (np.asarray, np.array, lambda a: np.zeros((2, 3), np.float32) + np.asarray(a)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        x.__array__()
    np.testing.assert_array_equal(x.get(), host())   # the explicit way


@pytest.mark.parametrize("mix", [
    lambda x, h: x + h, lambda x, h: h * x, lambda x, h: np.add(x, h), lambda x, h: x @ h.T,
    lambda x, h: np.maximum(x, h[0, 0:1]), lambda x, h: x - np.float32(1) * h,
    lambda x, h: x * np.asarray(np.float32(2)),         # a 0-d host array is refused too
    lambda x, h: np.concatenate([x, h]), lambda x, h: np.stack([h, x]), lambda x, h: np.where(x > 0, x, h),
    lambda x, h: backend.get_array_module(x).concatenate([x, h]),
], ids=["add", "radd", "ufunc", "matmul", "broadcast", "scalar-times-host", "0-d", "concatenate", "stack",
        "where", "xp.concatenate"])
def test_host_arrays_do_not_mix_with_device_arrays(gpu, mix):
    x = on(gpu, host())
    with pytest.raises(TypeError):
        mix(x, host())


def test_comparisons_take_0d_host_arrays_as_scalars(gpu):
    x = on(gpu, host())
    assert backend.to_cpu(x > np.asarray(np.float32(2))).sum() == 3


def test_a_host_out_array_is_refused(gpu):
    x = on(gpu, host())
    with pytest.raises(TypeError):
        np.multiply(x, 2, out=host())


def test_assignment_of_a_host_array_to_a_device_slice_is_refused(gpu):
    x = on(gpu, host())
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x[...] = host()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x[0] = host()[0]
    x[0] = np.asarray(np.float32(7))                   # 0-d: a fill value
    x[1, 1:] = 5
    x[:, 0] = on(gpu, np.array([1, 2], np.float32))    # device to device
    x[np.array([1]), :2] = np.array([[8, 9]], np.float32)   # an index array: CuPy uploads the value
    np.testing.assert_array_equal(backend.to_cpu(x), [[1, 7, 7], [8, 9, 5]])


def test_scalar_conversions_of_arrays_that_are_not_0d(gpu):
    x = on(gpu, host())
    one = on(gpu, np.array([3.0], np.float32))
    for convert in (float, int, complex):
        with pytest.raises(TypeError):
            convert(x)
        with pytest.raises(TypeError):
            convert(one)
    with pytest.raises(ValueError, match="more than one element"):
        bool(x)
    with pytest.raises(ValueError):
        x.item()
    with pytest.raises(TypeError):
        operator.index(on(gpu, np.array(2)))
    assert float(x.sum()) == 15.0 and bool(one) and one.item() == 3.0


def test_dlpack_does_not_hand_out_host_memory(gpu):
    x = on(gpu, host())
    assert x.__dlpack_device__()[0] == 2   # kDLCUDA
    with pytest.raises(BufferError):
        np.from_dlpack(x)
    with pytest.raises(ValueError, match="without copy"):
        x.__dlpack__(dl_device=(1, 0), copy=False)


def test_dlpack_copy_to_the_host_on_request_is_a_counted_transfer():
    x = on("emulated", host())
    with backend.count_device_ops() as c:
        capsule = x.__dlpack__(dl_device=(1, 0))
    assert c.device_to_host == 1 and capsule is not None


# --------------------------------------------------------------------------------- several GPUs

def test_arrays_of_another_gpu_than_the_current_one_are_refused():
    a, b = on("emulated:1", host()), on("emulated:1", host())
    assert backend.device_of(a) == backend.Device("emulated", 1) and str(backend.device_of(a)) == "emulated:1"
    with pytest.raises(ValueError, match=r"resides \(1\) is different from the current device \(0\)"):
        a + b
    with backend.device_scope(a):
        c = a + b
        z = backend.emulated_xp.zeros(3)
    assert backend.device_of(c) == backend.device_of(z) == backend.Device("emulated", 1)
    moved = backend.to_device(c, "emulated")
    assert backend.device_of(moved) == backend.EMULATED
    np.testing.assert_array_equal(backend.to_cpu(moved), 2 * host())
    with pytest.raises(ValueError, match="emulated GPUs"):
        backend.get_device("emulated:2")


def test_kernels_launch_only_on_their_own_gpu():
    x = on("emulated:1", np.ones((1, 1, 4, 4), np.float32))
    fn = kernels.get_function("pooling.cu", "maxpool_forward_f32", backend.Device("emulated", 1))
    with pytest.raises(ValueError, match="GPU 0 is current"):
        fn((1,), (32,), (None,) * len(fn.params))
    with backend.device_scope(x):
        y, _ = kernels.maxpool_forward(x, 2, 2, 2, 2, 0, 0)
    assert backend.device_of(y) == backend.Device("emulated", 1)


# ---------------------------------------------------------------------------------------- counting

def counted(fn):
    with backend.count_device_ops() as c:
        fn()
    return c


def test_each_call_is_counted_as_cupy_launches_it():
    xp = backend.emulated_xp
    a = on("emulated", host((4, 6)))
    cases = [
        (lambda: a * 2 + 1, {"ufunc:multiply": 1, "ufunc:add": 1}),
        (lambda: a.sum(axis=0), {"reduce:sum": 1}),
        (lambda: xp.zeros((3, 3)), {"memset": 1}),
        (lambda: xp.ones((3, 3)), {"fill": 1}),
        (lambda: a.fill(0), {"memset": 1}),
        (lambda: a.T.copy().fill(2), {"copy": 1, "fill": 1}),
        (lambda: xp.empty((3, 3)), {}),
        (lambda: a.reshape(6, 4).T[::2], {}),                               # views
        (lambda: a.T.reshape(-1), {"copy": 1}),                             # a reshape that must copy
        (lambda: a.astype(np.float32, copy=False), {}),
        (lambda: a.astype(np.float64), {"copy": 1}),
        (lambda: xp.ascontiguousarray(a), {}),
        (lambda: xp.ascontiguousarray(a.T), {"copy": 1}),
        (lambda: xp.matmul(a, a.T), {"matmul": 1}),                         # a.T is F-contiguous: no copy
        (lambda: xp.matmul(a[:, ::2], a[:, ::2].T), {"copy": 2, "matmul": 1}),
        (lambda: xp.matmul(a.reshape(2, 2, 6), a.reshape(2, 6, 2)), {"matmul": 1}),
        (lambda: a[xp.arange(2)], {"xp.arange": 1, "kernel:take": 1}),
        (lambda: xp.stack([a[i] for i in range(3)]), {"copy": 3}),
        (lambda: xp.stack([a[0, :1] for _ in range(9)]), {"kernel:concatenate": 1}),
        (lambda: xp.linalg.norm(a), {"ufunc:multiply": 1, "reduce:sum": 1, "ufunc:sqrt": 1}),
    ]
    for fn, want in cases:
        c = counted(fn)
        assert dict(c.by_op) == want, (want, dict(c.by_op))
        assert c.ops == sum(want.values()) and c.syncs == 0 and c.device_to_host == 0


def test_syncs_inside_library_calls_are_counted():
    xp = backend.emulated_xp
    a = on("emulated", np.array([0, 2, 2, 5]))
    cases = [(lambda: xp.bincount(a, minlength=7), 2), (lambda: xp.nonzero(a), 1), (lambda: a[a > 1], 1),
             (lambda: xp.where(a > 1), 1), (lambda: xp.unique(a), 1), (lambda: float(a[0]), 1),
             (lambda: a.tolist(), 1), (lambda: backend.to_cpu(a), 1), (lambda: backend.synchronize("emulated"), 1),
             (lambda: xp.where(a > 1, a, 0), 0), (lambda: (a > 1).any(), 0)]
    for fn, syncs in cases:
        c = counted(fn)
        assert c.syncs == syncs, (syncs, c.by_sync)
    c = counted(lambda: xp.bincount(a))
    assert c.device_to_host == 2 and set(c.by_sync) == {"bincount: (x < 0).any()", "bincount: int(x.max())"}


def test_transfers_are_counted():
    xp = backend.emulated_xp
    with backend.count_device_ops() as c:
        x = backend.to_device(host(), "emulated")
        y = xp.asarray(host())
        xp.asarray(1.5)
        x[np.array([0])] = 1.0        # a host index array is uploaded, and so is the value
        backend.to_cpu(x + y)
    assert (c.host_to_device, c.device_to_host, c.syncs) == (5, 1, 1)


def test_uploads_are_copies_not_views_of_host_memory():
    h = host()
    for x in (backend.to_device(h, "emulated"), backend.emulated_xp.asarray(h)):
        h[0, 0] = 99
        assert backend.to_cpu(x)[0, 0] == 0
        h[0, 0] = 0


def test_raw_kernel_launches_are_counted_and_blocks_nest():
    x = on("emulated", np.ones((1, 1, 4, 4), np.float32))
    with backend.count_device_ops() as outer:
        with backend.count_device_ops() as inner:
            kernels.maxpool_forward(x, 2, 2, 2, 2, 0, 0)
        x * 2
    assert inner.by_op["kernel:maxpool_forward_f32"] == 1 and inner.ops == 1
    assert outer.ops == 2 and outer.by_op["ufunc:multiply"] == 1
    assert counters.transfer_stats.ops >= 2


def test_random_draws_run_on_the_device():
    like = on("emulated:1", np.zeros(1, np.float32))
    with backend.count_device_ops() as c:
        u = backend.random_uniform((3, 4), like)
    assert backend.device_of(u) == backend.Device("emulated", 1) and u.dtype == np.float32
    assert dict(c.by_op) == {"kernel:random": 1} and c.host_to_device == 0
