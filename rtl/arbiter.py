"""Round-robin arbiter."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class RoundRobin(wiring.Component):
    """Grant one of ``count`` requesters per cycle, rotating priority after each grant.

    The requester after the last one granted has the highest priority, so a requester waits at most
    ``count - 1`` grants. Combinational from ``requests`` to ``grant``/``valid``; the rotation
    happens at the clock edge when ``advance`` is high. With ``holds``, a grant offered but not taken
    (``hold``) stays the grant in the next cycle while its requester still requests, whoever else
    does, as a stream's payload must.

    Parameters
    ----------
    count : int
        Number of requesters.
    holds : bool
        Add the ``hold`` input (an arbiter in front of a stream).

    Members
    -------
    requests : In(count)
    advance : In(1)
        The grant was taken this cycle.
    hold : In(1)
        Only with ``holds``: the grant was offered and not taken this cycle; keep it.
    grant : Out(range(count))
    valid : Out(1)
        At least one request.
    """

    def __init__(self, count, holds=False):
        if not isinstance(count, int) or count < 1:
            self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
            raise ValueError(f"RoundRobin count must be a positive integer, got {count!r}")
        self.count, self.holds = count, holds
        members = {"requests": In(count), "advance": In(1), "grant": Out(range(count)), "valid": Out(1)}
        if holds:
            members["hold"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        count = self.count
        m.d.comb += self.valid.eq(self.requests.any())
        last = Signal(range(count), init=count - 1)
        # Rotate so the highest-priority requester (the one after ``last``) is bit 0, keep the lowest
        # set bit, and encode its position: a few word operations instead of a count² priority chain.
        rotated = Signal(count)
        m.d.comb += rotated.eq(Cat(self.requests, self.requests).bit_select(last + 1, count))
        lowest = Signal(count)
        m.d.comb += lowest.eq(rotated & (~rotated + 1))
        position = Signal(range(count))
        m.d.comb += position.eq(Cat(
            (lowest & sum(1 << i for i in range(count) if i >> bit & 1)).any()
            for bit in range(len(position))))
        winner = Signal(range(2 * count))
        m.d.comb += winner.eq(last + 1 + position)
        chosen = Mux(winner >= count, winner - count, winner)
        if self.holds:
            held, held_grant = Signal(), Signal(range(count))
            m.d.sync += [held.eq(self.hold & self.valid & ~self.advance), held_grant.eq(self.grant)]
            chosen = Mux(held & self.requests.bit_select(held_grant, 1), held_grant, chosen)
        m.d.comb += self.grant.eq(chosen)
        with m.If(self.advance & self.valid):
            m.d.sync += last.eq(self.grant)
        return m
