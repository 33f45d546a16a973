"""Runtime: scripting calls, device backends and (later) the compiler and hypervisor."""

from .api import InputError, matmul
from .device import BACKENDS, ContextInfo, Device, DeviceError, FunctionalDevice, make_device
from .execute import (DeviceFault, HbmWindow, HostAccessError, LoadPlan, Placement, RunLimitError, load_image,
                      plan_load, read_outputs, run_image)

__all__ = ["matmul", "InputError", "Device", "FunctionalDevice", "ContextInfo", "DeviceError",
           "BACKENDS", "make_device", "DeviceFault", "RunLimitError", "HbmWindow",
           "HostAccessError", "Placement", "LoadPlan", "plan_load", "load_image",
           "read_outputs", "run_image"]
