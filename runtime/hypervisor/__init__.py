"""The hypervisor: vNPUs sold pay-as-you-go on pNPUs.

* :mod:`.spec` — :class:`VNPUSpec`, what a tenant buys;
* :mod:`.allocator` — which context, engines and windows of which pNPU it gets;
* :mod:`.billing` — :class:`Usage`, :class:`PriceTable`, :class:`Bill`;
* :mod:`.vnpu` — the tenant's :class:`VNPU` handle (load, run, submit, usage, kill, destroy);
* :mod:`.driver` — the :class:`Hypervisor` that owns the pNPUs and clocks them.
"""

from .allocator import AllocationError
from .billing import Bill, BillLine, PriceTable, Usage
from .driver import Hypervisor
from .spec import KIB, MIB, VNPUSpec, VNPUSpecError
from .vnpu import VNPU, RunRecord, VNPUStateError

__all__ = ["Hypervisor", "VNPU", "VNPUSpec", "VNPUSpecError", "AllocationError", "VNPUStateError", "Usage",
           "Bill", "BillLine", "PriceTable", "RunRecord", "KIB", "MIB"]
