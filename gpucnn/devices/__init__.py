"""The devices wing: the only place that imports cupy or knows what a device is.

:mod:`.core` (Device, get_device, array modules, device scopes, transfers, timers, random state), :mod:`.cuda`
(cupy and CUDA status), :mod:`.emulated` (the GPU stand-in's arrays, as strict as cupy's) with
:mod:`.cupy_model` (what each call costs on CuPy) and :mod:`.counters` (device operations, host syncs and
transfers counted on it), :mod:`.emulator` (kernels/*.cu run on the CPU), :mod:`.kernels` (compile once per
device, launch) beside :mod:`.twins` (their numpy references), :mod:`.ops` (kernel or twin, by the array's
device), :mod:`.dlpack` (other libraries' arrays without a copy) and :mod:`.precision` (fp32, tf32 and bf16
scopes) and :mod:`.host_memory` (the CPU's freed memory kept for the next step). Importing this package
registers the emulated device with the core.
"""
from . import core, counters, cuda, emulated, emulator, precision
from . import flat  # noqa: F401 (gpucnn.devices.flat: flat parameter buffers, used as devices.flat)
from .core import (CPU, DEVICE_ENV, EMULATED, CudaUnavailableError, Device, DeviceMismatchError, DeviceTimer,
                   batch_rows, device_of, device_scope, get_array_module, get_device, get_rng_state, host_rng,
                   is_gpu_array, random_uniform, seed, set_rng_state, synchronize, to_cpu, to_device)
from .counters import DeviceOpCounts, count_device_ops, transfer_stats
from .cuda import cuda_status, cupy_module
from .dlpack import from_dlpack
from .emulated import EmulatedArray, emulated_xp
from .host_memory import keep_host_memory
from .precision import PRECISIONS, PrecisionError, get_precision

core.register_kind("emulated", xp=emulated.emulated_xp, array_type=emulated.EmulatedArray,
                   count=emulated.GPU_COUNT, upload=emulated.upload, copy_to=emulated.copy_to,
                   download=emulated.download, index_of=emulated.index_of, scope=emulated.scope,
                   generator=emulated.Generator,
                   compile_module=lambda code, options, index: emulator.RawModule(code=code, options=options,
                                                                                  device=index))

__all__ = ["CPU", "EMULATED", "DEVICE_ENV", "CudaUnavailableError", "Device", "DeviceMismatchError",
           "DeviceOpCounts", "DeviceTimer", "EmulatedArray", "batch_rows", "count_device_ops", "counters", "cuda",
           "cuda_status", "cupy_module", "device_of", "device_scope", "emulated_xp", "from_dlpack", "get_array_module",
           "get_device", "get_precision", "get_rng_state", "precision", "PRECISIONS", "PrecisionError", "host_rng",
           "is_gpu_array", "keep_host_memory", "random_uniform", "seed", "set_rng_state",
           "synchronize", "to_cpu", "to_device", "transfer_stats"]
