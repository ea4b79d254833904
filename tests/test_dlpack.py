"""Other libraries' arrays without a copy: gpucnn.from_dlpack and layers taking torch tensors (DLPack, the CUDA
array interface). Zero-copy is checked by writing through one side and reading through the other; device
mismatches (a CUDA tensor for a CPU model, a host tensor for the emulated GPU) raise errors naming the layer."""
import numpy as np
import pytest
import torch

import gpucnn
from gpucnn import devices
from gpucnn import layers as L
from gpucnn import models

CUDA_USABLE = devices.cuda_status()[0]


def test_from_dlpack_shares_memory_both_ways():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = gpucnn.from_dlpack(t)
    assert type(a) is np.ndarray and a.dtype == np.float32 and a.shape == (3, 4)
    a[0, 0] = 42          # written through numpy, read through torch
    t[2, 3] = -7          # and the other way
    assert t[0, 0].item() == 42 and a[2, 3] == -7
    v = gpucnn.from_dlpack(t.t())   # a strided view stays a view
    assert v.shape == (4, 3) and np.shares_memory(v, a) and v[3, 2] == -7
    assert gpucnn.from_dlpack(t, device="cpu").base is not None
    back = torch.from_dlpack(a)     # and gpucnn -> torch, no copy either
    back[1, 1] = 5
    assert a[1, 1] == 5 and t[1, 1].item() == 5


def test_gpucnn_arrays_pass_through_without_export():
    x = np.ones((2, 3), np.float32)
    assert gpucnn.from_dlpack(x) is x
    e = gpucnn.to_device(x, "emulated")
    devices.transfer_stats.reset()
    assert gpucnn.from_dlpack(e) is e and gpucnn.from_dlpack(e, device="emulated") is e
    assert devices.transfer_stats.device_to_host == 0
    with pytest.raises(gpucnn.DeviceMismatchError, match=r"is on emulated but cpu was asked for.*to_device"):
        gpucnn.from_dlpack(e, device="cpu")


def test_a_host_tensor_is_refused_for_another_device():
    with pytest.raises(gpucnn.DeviceMismatchError, match=r"torch.Tensor is on cpu but emulated was asked for; "
                                                         r"from_dlpack never copies.*to_device\(x, 'emulated'\)"):
        gpucnn.from_dlpack(torch.ones(2), device="emulated")
    model = L.Conv2D(1, 2, 3).to("emulated")
    with pytest.raises(gpucnn.DeviceMismatchError, match=r"Conv2D\(1, 2.*input is on cpu but the layer's arrays "
                                                         r"are on emulated"):
        model(torch.ones(1, 1, 4, 4))


def test_a_model_takes_torch_tensors_as_it_takes_numpy():
    gpucnn.seed(0)
    model = models.vgg(1, 16, 5, widths=(4, 8))
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    labels = np.array([0, 3, 1, 4])
    loss_layer = L.SoftmaxCrossEntropy()
    expect_loss = loss_layer(model.forward(x, train=False), labels)
    model.backward(loss_layer.backward())
    expect_grads = {k: v.copy() for k, v in model.grads.items()}
    logits = model.forward(torch.from_numpy(x), train=False)
    assert type(logits) is np.ndarray
    loss = loss_layer(torch.from_numpy(logits), torch.from_numpy(labels))   # the loss takes tensors too
    assert loss == expect_loss
    model.backward(torch.from_numpy(loss_layer.backward()))                # and backward a torch dout
    for k, g in model.grads.items():
        np.testing.assert_array_equal(g, expect_grads[k])


def test_a_layer_uses_the_tensors_memory():
    """Flatten returns a view of its input: a write into the torch tensor shows in the layer's output."""
    t = torch.zeros(2, 3, 4)
    y = L.Flatten()(t)
    t[1, 2, 3] = 9
    assert y.shape == (2, 12) and y[1, 11] == 9


def test_refused_tensors_name_the_layer_and_the_fix():
    conv = L.Conv2D(1, 2, 3)
    x = torch.ones(1, 1, 4, 4)
    with pytest.raises(TypeError, match=r"Conv2D\(1, 2.*requires? grad.*detach\(\)"):
        conv(x.requires_grad_())
    with pytest.raises(TypeError, match=r"Conv2D\(1, 2.*float32 or float64 input, got dtype float16.*x.float\(\) "
                                        r"for a torch tensor"):
        conv(torch.ones(1, 1, 4, 4, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"Conv2D\(1, 2.*expected float32 input.*got float64.*x.float\(\)"):
        conv(torch.ones(1, 1, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"ReLU\(\): torch.Tensor could not be shared without a copy: .*dtype"):
        L.ReLU()(torch.ones(2, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="expected an array offering __dlpack__ or __cuda_array_interface__"):
        gpucnn.from_dlpack([1.0, 2.0])


class FakeDevice:
    """An array in the memory of DLPack device type `kind` (2: CUDA, 10: ROCm); its export must not be called."""

    def __init__(self, kind, index=0):
        self.kind, self.index = kind, index

    def __dlpack_device__(self):
        return (self.kind, self.index)

    def __dlpack__(self, **kwargs):
        raise AssertionError("exported although its device cannot be read")


class FakeCudaInterface:
    __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (1 << 40, False), "version": 3}


@pytest.mark.skipif(CUDA_USABLE, reason="CUDA is usable here: CUDA memory is then taken")
def test_cuda_memory_without_cuda_is_refused_by_name():
    for model, name in [(models.lenet5(), r"Sequential"), (L.Conv2D(1, 6, 5), r"Conv2D\(1, 6.*\)")]:
        for fake, where in [(FakeDevice(2, 1), r"on cuda:1"),
                            (FakeCudaInterface(), r"it offers __cuda_array_interface__")]:
            with pytest.raises(gpucnn.CudaUnavailableError, match=rf"^{name}: test_dlpack.Fake\w+ is in CUDA GPU "
                                                                  rf"memory \({where}\), but CUDA is not usable.*"
                                                                  rf"tensor.cpu\(\)"):
                model(fake)
    with pytest.raises(gpucnn.DeviceMismatchError, match=r"is on cuda:0 but cpu was asked for"):
        gpucnn.from_dlpack(FakeDevice(2), device="cpu")


def test_memory_of_other_devices_is_refused_by_name():
    with pytest.raises(TypeError, match=r"DLPack device type 10 \(kDLROCM\), which gpucnn cannot read"):
        gpucnn.from_dlpack(FakeDevice(10))


@pytest.mark.gpu
def test_cuda_tensors_and_cupy_arrays_share_memory():
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    t = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    a = gpucnn.from_dlpack(t)
    assert str(devices.device_of(a)) == "cuda:0"
    a[0, 0] = 42
    assert t[0, 0].item() == 42
    back = torch.from_dlpack(a)
    back[1, 2] = -1
    assert float(a[1, 2]) == -1
    model = models.lenet5().to("cuda")
    x = torch.randn(2, 1, 28, 28, device="cuda")
    np.testing.assert_array_equal(gpucnn.to_cpu(model(x, train=False)),
                                  gpucnn.to_cpu(model(gpucnn.from_dlpack(x), train=False)))
    with pytest.raises(gpucnn.DeviceMismatchError, match="input is on cuda:0 but the layer's arrays are on cpu"):
        models.lenet5()(x)


def readme_block(name):
    """The python code between <!-- name --> and <!-- /name --> in the README."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(rf"<!-- {name} -->\s*```python\n(.*?)```\s*<!-- /{name} -->", text, re.S)
    assert block, f"README has no {name} block"
    return block.group(1)


def test_readme_dlpack_round_trip_on_the_cpu_runs():
    exec(compile(readme_block("interop-cpu"), "README.md:interop-cpu", "exec"), {})


@pytest.mark.gpu
def test_readme_dlpack_round_trip_on_a_gpu_runs():
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    exec(compile(readme_block("interop-gpu"), "README.md:interop-gpu", "exec"), {})


def test_to_device_takes_torch_tensors():
    """gpucnn.to_device takes a CPU tensor as it takes a numpy array (no copy for the CPU)."""
    t = torch.arange(4, dtype=torch.float32)
    a = gpucnn.to_device(t, "cpu")
    t[0] = 9
    assert type(a) is np.ndarray and a[0] == 9
    e = gpucnn.to_device(t, "emulated")
    assert str(devices.device_of(e)) == "emulated" and gpucnn.to_cpu(e).tolist() == [9, 1, 2, 3]
