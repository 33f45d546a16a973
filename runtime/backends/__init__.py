"""Backends: the :class:`Device` protocol and the devices behind it.

* ``functional`` (:mod:`.functional`): the golden model, untimed;
* ``amaranth`` (:mod:`.amaranth`): the pNPU RTL in Amaranth's simulator, and :class:`CsrDevice`,
  the host driver every RTL backend shares;
* ``verilator`` (:mod:`.verilator`): the generated Verilog compiled by Verilator, driven by a C++
  harness through ctypes.

:func:`make_device` creates one by name; the RTL backends are imported when first asked for.
"""

from .device import ContextInfo, Device, DeviceError, check_hbm_range
from .factory import BACKENDS, TIMED_BACKENDS, make_device
from .functional import FunctionalDevice

__all__ = ["Device", "DeviceError", "ContextInfo", "check_hbm_range", "FunctionalDevice", "BACKENDS",
           "TIMED_BACKENDS", "make_device"]
