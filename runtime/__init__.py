"""Runtime: the scripting calls (:func:`matmul`, :func:`compile`), the :class:`Device` protocol and its
backends, the image loader, the hypervisor (:class:`Hypervisor`) and the ``tcloud`` command line."""

from .api import InputError, matmul
from .compiler import CompiledModel, CompileError, compile
from .backends import BACKENDS, ContextInfo, Device, DeviceError, FunctionalDevice, make_device
from .execute import (DeviceFault, HbmWindow, HostAccessError, LoadPlan, Placement, RunLimitError, load_image,
                      plan_load, read_outputs, run_image)
from .hypervisor import (VNPU, AllocationError, Bill, Hypervisor, PriceTable, Usage, VNPUSpec, VNPUSpecError,
                         VNPUStateError)

__all__ = ["matmul", "compile", "CompiledModel", "CompileError", "InputError", "Device", "FunctionalDevice", "ContextInfo", "DeviceError",
           "BACKENDS", "make_device", "DeviceFault", "RunLimitError", "HbmWindow",
           "HostAccessError", "Placement", "LoadPlan", "plan_load", "load_image",
           "read_outputs", "run_image", "Hypervisor", "VNPU", "VNPUSpec", "Usage", "Bill", "PriceTable",
           "AllocationError", "VNPUSpecError", "VNPUStateError"]
