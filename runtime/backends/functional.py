"""The functional backend: the golden model behind the :class:`~tcloud.runtime.backends.Device` protocol."""

import numpy as np

from tcloud.isa import Machine, get_config, parse_policy
from tcloud.isa import csr

from .device import ContextInfo, check_context_index, check_hbm_range


class GoldenMemory:
    """HBM access of a backend that keeps its memory in a golden :class:`~tcloud.isa.Machine`
    (``self.machine``), checked against the device's HBM (``self.config``)."""

    def write_hbm(self, address, data):
        check_hbm_range(self.config, address, len(data))
        self.machine.hbm[address:address + len(data)] = np.frombuffer(bytes(data), dtype=np.uint8)

    def read_hbm(self, address, size):
        check_hbm_range(self.config, address, size)
        return self.machine.hbm[address:address + size].tobytes()


class FunctionalDevice(GoldenMemory):
    """The golden model behind the :class:`Device` protocol (instant, no timing).

    Parameters
    ----------
    config : ArchConfig or str
    trace : bool
        Record the golden model's uTOp trace (see :mod:`tcloud.verif.races`).
    """

    name = "functional"

    def __init__(self, config, *, trace=False):
        self.config = get_config(config)
        self.machine = Machine(self.config, trace=trace)

    def host(self, command):
        self.machine.host(command)

    def set_policy(self, policy, *, quantum=None, starvation=None, harvest_cost=None, harvest_grace=None):
        csr.config_writes(parse_policy(policy), quantum=quantum, starvation=starvation, harvest_cost=harvest_cost,
                          harvest_grace=harvest_grace)  # refuses what the pNPU refuses
        self.machine.policy = parse_policy(policy)  # the untimed model has no slices, aging or harvesting

    def run(self, max_cycles=None):
        return self.machine.run(max_steps=max_cycles)

    def context(self, index):
        check_context_index(self.config, index)
        ctx = self.machine.contexts[index]
        return ContextInfo(ctx.status, ctx.fault, ctx.fault_pc, ctx.fault_detail, ctx.counters.as_dict(), {})

    def stats(self):
        return {"backend": self.name}
