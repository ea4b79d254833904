"""The CPU kernel emulator (gpucnn.emulator): full-grid launches, CuPy-faithful argument checks, build cache."""
import numpy as np
import pytest

from gpucnn import devices as backend
from gpucnn.devices import emulator, kernels
from gpucnn.devices.emulator import KernelArgumentError

SOURCE = r"""
// Each thread of the whole (3-D) grid counts itself once and records the launch shape it saw.
extern "C" __global__ void census(int* __restrict__ hits, int* __restrict__ shape) {
  const long long block = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
  const long long thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  hits[block * blockDim.x * blockDim.y * blockDim.z + thread] += 1;
  shape[0] = gridDim.x; shape[1] = gridDim.y; shape[2] = gridDim.z;
  shape[3] = blockDim.x; shape[4] = blockDim.y; shape[5] = blockDim.z;
}

extern "C" __global__ void axpy(long long n, float a, const float* __restrict__ x, float* __restrict__ y,
                                int every) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x)
    if (i % every == 0) y[i] += a * x[i];
}

extern "C" __global__ void wide(long long n, double scale, double* __restrict__ out) {
  if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = (double)n * scale;
}
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty build cache; yields a unique tag so sources hash differently from other tests."""
    monkeypatch.setenv(emulator.CACHE_ENV, str(tmp_path))
    return f"// test build {tmp_path.name}\n"


@pytest.fixture(scope="module")
def module():
    mod = emulator.RawModule(code=SOURCE, options=("--std=c++17",))
    mod.compile()
    return mod


def dev(a):
    return backend.to_device(np.asarray(a), "emulated")


def axpy_args(size=10, **override):
    args = dict(n=np.int64(size), a=np.float32(2.0), x=dev(np.arange(size, dtype=np.float32)),
                y=dev(np.ones(size, dtype=np.float32)), every=np.int32(1))
    args.update(override)
    return tuple(args.values())


# ------------------------------------------------------------------------------------------ launches

@pytest.mark.parametrize("grid, block", [(1, 1), (3, 32), ((2, 3), (4, 5)), ((2, 3, 4), (8, 2, 3)), (5, (7, 1, 2))])
def test_every_thread_of_the_grid_runs_once(module, grid, block):
    g = (grid,) if isinstance(grid, int) else grid
    b = (block,) if isinstance(block, int) else block
    total = int(np.prod(g)) * int(np.prod(b))
    hits, shape = dev(np.zeros(total, np.int32)), dev(np.zeros(6, np.int32))
    module.get_function("census")(grid, block, (hits, shape))
    assert (backend.to_cpu(hits) == 1).all()
    assert tuple(backend.to_cpu(shape)) == (g + (1,) * (3 - len(g))) + (b + (1,) * (3 - len(b)))


@pytest.mark.parametrize("grid, block", [(1, 1), (1, 32), (2, 3), (100, 256)])
def test_grid_stride_kernel_covers_all_elements_for_any_launch(module, grid, block):
    n = 1000
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = dev(np.ones(n, np.float32))
    module.get_function("axpy")(grid, block, (np.int64(n), np.float32(0.5), dev(x), y, np.int32(3)))
    want = np.ones(n, np.float32)
    want[::3] += np.float32(0.5) * x[::3]
    np.testing.assert_array_equal(backend.to_cpu(y), want)


def test_python_int_and_float_are_fine_where_cupy_passes_them_right(module):
    out = dev(np.zeros(1))
    module.get_function("wide")(1, 1, (7, 0.5, out))      # long long <- Python int, double <- Python float
    assert backend.to_cpu(out)[0] == 3.5


def test_lists_of_arguments_are_accepted_like_tuples(module):
    args = axpy_args(size=4)
    module.get_function("axpy")((1,), (4,), list(args))
    np.testing.assert_array_equal(backend.to_cpu(args[3]), [1, 3, 5, 7])


# ------------------------------------------------------------------------------------- refused arguments

def refused(module, args, *fragments, kernel="axpy"):
    with pytest.raises(KernelArgumentError) as e:
        module.get_function(kernel)(1, 32, args)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return str(e.value)


def test_python_int_for_int_parameter_is_refused(module):
    refused(module, axpy_args(every=1), "axpy", "every", "Python int", "64-bit", "np.int32(")


def test_python_float_for_float_parameter_is_refused(module):
    refused(module, axpy_args(a=2.0), "axpy", "parameter a", "Python float", "double", "np.float32(")


@pytest.mark.parametrize("name, value, want", [("a", np.float64(2.0), "float32"), ("every", np.int64(1), "int32"),
                                               ("n", np.int32(10), "int64"), ("every", np.float32(1), "int32")])
def test_numpy_scalar_of_the_wrong_width_is_refused(module, name, value, want):
    refused(module, axpy_args(**{name: value}), f"parameter {name}", f"np.{want}(")


def test_python_bool_and_other_objects_are_refused(module):
    refused(module, axpy_args(every=True), "every", "bool")
    refused(module, axpy_args(every="1"), "every", "str")


def test_array_for_scalar_parameter_is_refused(module):
    refused(module, axpy_args(a=dev(np.float32(2.0))), "parameter a", "scalar")


def test_float64_array_for_float_pointer_is_refused(module):
    refused(module, axpy_args(x=dev(np.zeros(10, np.float64))), "parameter x", "float64", "float*")


def test_int64_array_for_int_pointer_is_refused(module):
    refused(module, (dev(np.zeros(4, np.int64)), dev(np.zeros(6, np.int32))), "census", "hits", "int64",
            kernel="census")


def test_host_numpy_array_is_refused(module):
    refused(module, axpy_args(y=np.ones(10, np.float32)), "parameter y", "host", "to_device")


def test_non_contiguous_array_is_refused(module):
    strided = dev(np.zeros(20, np.float32))[::2]
    refused(module, axpy_args(x=strided), "parameter x", "non-contiguous", "ascontiguousarray")


def test_read_only_output_is_refused(module):
    y = dev(np.ones(10, np.float32))
    y.flags.writeable = False
    refused(module, axpy_args(y=y), "parameter y", "read-only")


def test_none_pointer_is_refused(module):
    refused(module, axpy_args(x=None), "parameter x", "device array")


@pytest.mark.parametrize("drop", [1, -1])
def test_wrong_argument_count_is_refused(module, drop):
    args = axpy_args()
    args = args[:-1] if drop == 1 else args + (np.int32(0),)
    refused(module, args, "axpy", "expected 5 arguments", f"got {len(args)}")


@pytest.mark.parametrize("grid, block", [(0, 32), (1, 2048), ((1, 1, 1, 1), 32), (1.0, 32), (1, (32, 32, 2)),
                                         (1, (1, 1, 65)), ((1, 70000), 1)])
def test_bad_launch_shapes_are_refused(module, grid, block):
    with pytest.raises((TypeError, ValueError), match="axpy"):
        module.get_function("axpy")(grid, block, axpy_args())


def test_unknown_kernel_name_lists_the_ones_there(module):
    with pytest.raises(emulator.KernelNotFoundError, match="axpy.*census|census.*axpy"):
        module.get_function("no_such_kernel")


# ------------------------------------------------------------------------------------- compile and cache

def test_compile_error_carries_the_gxx_log(cache):
    bad = cache + 'extern "C" __global__ void k(int* x) {\n  x[0] = undefined_thing;\n}\n'
    mod = emulator.RawModule(code=bad, options=("--std=c++17",))
    with pytest.raises(emulator.CompileError) as e:
        mod.get_function("k")
    assert "undefined_thing" in str(e.value) and "kernel.cu:3" in str(e.value)


def test_syncthreads_is_refused_at_compile_time(cache):
    code = cache + 'extern "C" __global__ void k(int* x) { x[threadIdx.x] = 1; __syncthreads(); }\n'
    with pytest.raises(emulator.CompileError, match="__syncthreads"):
        emulator.RawModule(code=code).compile()


def test_builds_are_cached_in_process_and_on_disk(cache, tmp_path):
    code = cache + SOURCE
    before = emulator.build_count()
    emulator.RawModule(code=code).compile()
    assert emulator.build_count() == before + 1
    assert len(list(tmp_path.glob("*.so"))) == 1
    emulator.RawModule(code=code).get_function("axpy")          # same source: no new build
    emulator.clear_loaded()                                       # as in a fresh process: load from disk
    mod = emulator.RawModule(code=code)
    args = axpy_args(size=3)
    mod.get_function("axpy")(1, 8, args)
    assert emulator.build_count() == before + 1
    np.testing.assert_array_equal(backend.to_cpu(args[3]), [1, 3, 5])
    emulator.RawModule(code=code, options=("-DVARIANT=1",)).compile()   # options are part of the key
    assert emulator.build_count() == before + 2


def test_parser_reads_signatures_as_written():
    params = emulator.parse_kernels(SOURCE)
    assert list(params) == ["census", "axpy", "wide"]
    assert [str(p) for p in params["axpy"]] == ["long long n", "float a", "const float* x", "float* y", "int every"]


def test_project_kernel_signatures_match_what_the_launchers_pass():
    """The contract between kernels/*.cu and gpucnn/devices/kernels.py, spelled out."""
    window = ["int H", "int W", "int kh", "int kw", "int sh", "int sw", "int ph", "int pw"]
    dilated = window + ["int dh", "int dw", "int oh", "int ow"]
    want = {   # inputs, geometry, outputs; im2col/col2im also take the batch, channel and group counts first
        "im2col": (["const T* x"], ["int N", "int C", "int G"] + dilated, ["T* col"]),
        "col2im": (["const T* col"], ["int N", "int C", "int G"] + dilated, ["T* x"]),
        "maxpool_forward": (["const T* x"], dilated, ["T* y", "int* argmax"]),
        "maxpool_backward": (["const T* dy", "const int* argmax"], dilated, ["T* dx"]),
        "avgpool_forward": (["const T* x"], window + ["int oh", "int ow", "int count_include_pad"], ["T* y"]),
        "avgpool_backward": (["const T* dy"], window + ["int oh", "int ow", "int count_include_pad"], ["T* dx"]),
    }
    xent = ["const long long* labels", "const T* weight", "int has_weight", "long long ignore_index", "int smoothing",
            "T keep", "T eps_over_k"]
    fused = {   # the fused kernels (gpucnn/devices/fused.py), whole signatures after `long long total`
        "bias_act": ["const T* src", "const T* bias", "int G", "int OG", "int P", "long long sn", "long long sg",
                     "long long so", "long long sq", "int has_bias", "int relu", "T* y"],
        "relu_backward": ["const T* y", "const T* dout", "T* dx"],
        "xent_forward": ["int K", "const T* logits"] + xent + ["T* losses", "T* wy", "T* stats"],
        "xent_reduce": ["long long N", "const T* losses", "const T* wy", "int mean", "T* out"],
        "xent_backward": ["int K", "const T* logits", "const T* stats"] + xent + [
            "T wsum", "const T* dout", "int dout_mode", "T dout_value", "const T* red", "int mean", "T* grad"],
        "lrn_forward": ["const T* x", "int C", "long long HW", "int before", "int after", "T coef", "T k",
                        "T neg_beta", "T* y", "T* d", "T* scale"],
        "lrn_backward": ["const T* x", "const T* y", "const T* d", "const T* scale", "const T* dout", "int C",
                         "long long HW", "int before", "int after", "T c2", "T* dx"],
        "sgd_step": ["T* p", "const T* g", "T* buf", "T lr", "int decay", "T wd", "int use_momentum", "T momentum",
                     "int first", "int damped", "T keep", "int nesterov"],
        "adagrad_step": ["T* p", "const T* g", "T* sum", "T clr", "int decay", "T wd", "T eps"],
        "rmsprop_step": ["T* p", "const T* g", "T* square_avg", "T* grad_avg", "T* buf", "T lr", "int decay", "T wd",
                         "T alpha", "T one_minus_alpha", "T eps", "int centered", "int use_momentum", "T momentum"],
        "adam_step": ["T* p", "const T* g", "T* exp_avg", "T* exp_avg_sq", "T* max_exp_avg_sq", "int decay", "T wd",
                      "int decoupled", "T shrink", "T one_minus_beta1", "T beta2", "T one_minus_beta2", "int amsgrad",
                      "T bc2_sqrt", "T eps", "T step_size"],
        "nonfinite_check": ["long long n", "const T* values", "const T* loss", "long long step",
                            "long long* first_bad"],
        "accumulate_metrics": ["int K", "const T* logits", "const long long* labels", "const T* loss", "T count",
                               "double* loss_sum", "long long* correct"],
        "gather_batch": ["const unsigned char* images", "const long long* labels", "const int* draws", "int has_crop",
                         "int has_flip", "int pad", "int C", "int H", "int W", "const T* scale", "const T* shift",
                         "T* out", "long long* out_labels"],
    }
    want.update({op: (sig, [], []) for op, sig in fused.items()})
    found = {}
    for path in kernels.sources().values():
        found.update(emulator.parse_kernels(path.read_text()))
    expected = set()
    for op, (src, base) in kernels.KERNELS.items():
        inputs, geometry, outputs = want[op]
        for suffix, t in (("f32", "float"), ("f64", "double")):
            name = f"{base}_{suffix}"
            expected.add(name)
            typed = lambda params: [s.replace("T*", f"{t}*").replace("T ", f"{t} ") for s in params]
            first = "long long N" if op in ("xent_forward", "accumulate_metrics") else "long long total"
            sig = [first] + typed(inputs) + geometry + typed(outputs)
            assert [str(p) for p in found[name]] == sig, name
    # the bf16 variants: bfloat16 GEMM operands in; after a GEMM, float32 out (see gpucnn.devices.precision)
    bf, geometry = "__nv_bfloat16", ["int N", "int C", "int G"] + dilated
    bf16 = {"im2col_bf16": ["long long total", f"const {bf}* x"] + geometry + [f"{bf}* col"],
            "col2im_bf16": ["long long total", f"const {bf}* col"] + geometry + ["float* x"],
            "bias_act_bf16": ["long long total", f"const {bf}* src", "const float* bias"] + fused["bias_act"][2:-1]
            + ["float* y"]}
    assert {f"{kernels.KERNELS[op][1]}_bf16" for op in kernels.BF16_KERNELS} == set(bf16)
    for name, sig in bf16.items():
        assert [str(p) for p in found[name]] == sig, name
    assert set(found) == expected | set(bf16)
