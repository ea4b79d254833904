"""The devices wing: the only place that imports cupy or knows what a device is.

:mod:`.core` (Device, get_device, array modules, transfers, timers, random state), :mod:`.cuda` (cupy and
CUDA status), :mod:`.emulated` (the GPU stand-in's arrays), :mod:`.emulator` (kernels/*.cu run on the CPU),
:mod:`.kernels` (compile once per device, launch) beside :mod:`.twins` (their numpy references), :mod:`.ops`
(kernel or twin, by the array's device) and :mod:`.dlpack` (other libraries' arrays without a copy). Importing this
package registers the emulated device with the core.
"""
from . import core, cuda, emulated, emulator
from .core import (CPU, DEVICE_ENV, EMULATED, CudaUnavailableError, Device, DeviceMismatchError, DeviceTimer,
                   device_of, get_array_module, get_device, get_rng_state, host_rng, is_gpu_array, random_uniform,
                   seed, set_rng_state, synchronize, to_cpu, to_device)
from .cuda import cuda_status, cupy_module
from .dlpack import from_dlpack
from .emulated import EmulatedArray, emulated_xp, transfer_stats

core.register_kind("emulated", xp=emulated.emulated_xp, array_type=emulated.EmulatedArray, upload=emulated.upload,
                   download=emulated.download, compile_module=lambda code, options: emulator.RawModule(
                       code=code, options=options))

__all__ = ["CPU", "EMULATED", "DEVICE_ENV", "CudaUnavailableError", "Device", "DeviceMismatchError",
           "DeviceTimer", "EmulatedArray", "cuda_status", "cupy_module", "device_of", "emulated_xp", "from_dlpack",
           "get_array_module", "get_device", "get_rng_state", "host_rng", "is_gpu_array", "random_uniform", "seed",
           "set_rng_state", "synchronize", "to_cpu", "to_device", "transfer_stats"]
