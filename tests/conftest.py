import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tcloud.isa import Instr, Machine, encode_stream

settings.register_profile("default", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")


class Tenant:
    """One context of a golden :class:`Machine` with windows and a helper to load a program."""

    def __init__(self, machine, ctx, hbm_base, hbm_size, sram_base, sram_size, code_at):
        self.machine, self.ctx, self.code_at = machine, ctx, code_at
        self.hbm_base, self.sram_base = hbm_base, sram_base
        machine.host(Instr("ctx.hbm", ctx=ctx, base=hbm_base, size=hbm_size))
        machine.host(Instr("ctx.sram", ctx=ctx, base=sram_base, size=sram_size))

    def load(self, program):
        code = program if isinstance(program, bytes) else encode_stream(program)
        self.write_hbm(self.code_at, code)
        self.machine.host(Instr("ctx.start", ctx=self.ctx, pc=self.code_at))

    def write_sram(self, addr, data):
        data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        self.machine.sram[self.sram_base + addr:self.sram_base + addr + data.size] = data

    def write_hbm(self, addr, data):
        data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        self.machine.hbm[self.hbm_base + addr:self.hbm_base + addr + data.size] = data

    def read_sram(self, addr, count, dtype):
        size = count * np.dtype(dtype).itemsize
        return self.machine.sram[self.sram_base + addr:self.sram_base + addr + size].view(dtype).copy()

    def read_hbm(self, addr, count, dtype):
        size = count * np.dtype(dtype).itemsize
        return self.machine.hbm[self.hbm_base + addr:self.hbm_base + addr + size].view(dtype).copy()

    @property
    def state(self):
        return self.machine.contexts[self.ctx]


def new_tenant(config="tiny"):
    """A fresh machine with context 0: 64 KiB HBM window at 0x10000, the whole scratchpad."""
    machine = Machine(config)
    return Tenant(machine, 0, 0x10000, 0x10000, 0, machine.config.sram_bytes, code_at=0x8000)


@pytest.fixture
def tenant():
    return new_tenant()


def utop(cls, body, **header):
    """A uTOp header followed by its body (as a list of Instr)."""
    return [Instr("utop", cls=int(cls), len=len(body), **header), *body]
