"""Build uTOp programs from a dependency graph, assigning synchronisation tokens automatically.

Kernels describe *what depends on what*; :class:`ProgramBuilder` turns that into ``utop`` headers
with token waits and signals that are correct under the ISA's rules:

* the uTOps of a context issue in program order and may complete out of order;
* a token is a counting semaphore: a producer increments it when it completes, a consumer waits
  until it holds ``count`` signals and consumes them when it issues.

A dependency that another dependency already implies (a producer of a producer, since a uTOp
issues only after its own producers completed) is dropped first, so a kernel may name everything
a uTOp needs — weights loaded once at the start, say — without keeping a token live across the
whole kernel. Every consumer then gets one token per group of at most 15 producers (a wait slot's
count is 4 bits); the token is live from the first producer's issue to the consumer's issue. Live ranges that never
overlap share a token (interval colouring over program order), which is safe because no signal
can be pending on a token when a new group starts using it.
"""

from dataclasses import dataclass, field

from tcloud.isa import Instr, get_config
from tcloud.isa.cost import utop_units
from tcloud.isa.errors import TcloudError
from tcloud.isa.table import BY_MNEMONIC, NUM_TOKENS, UTOP_CLASSES, EngineClass

_MAX_COUNT = (1 << BY_MNEMONIC["utop"].field("count0").width) - 1
_MAX_COST = BY_MNEMONIC["utop"].field("cost").max_value
_WAIT_SLOTS = sum(1 for f in BY_MNEMONIC["utop"].fields if f.kind == "token")
MAX_DEPENDENCIES = _WAIT_SLOTS * _MAX_COUNT
"""The most uTOps one uTOp may depend on (since the last fence): its wait slots times their count."""
PROGRESS_STEP = 4096
"""Instructions between two calls of a ``progress`` callback."""


class FirmwareError(TcloudError, ValueError):
    """A kernel cannot be lowered for the requested shape or configuration."""


@dataclass(frozen=True)
class Footprint:
    """The scratchpad and HBM bytes a kernel's image needs, known before its code is built (the
    ``sram_bytes`` and ``hbm_bytes`` its :class:`~tcloud.isa.ProgramImage` will have)."""

    sram_bytes: int
    hbm_bytes: int


@dataclass
class UtopRef:
    """Handle of a uTOp inside a :class:`ProgramBuilder` (pass it in ``deps=``)."""

    index: int


@dataclass
class _Utop:
    engine: EngineClass
    body: list
    deps: list
    signal: int = 0
    waits: list = field(default_factory=list)


class ProgramBuilder:
    """Accumulate uTOps and control instructions, then emit a code segment.

    Parameters
    ----------
    rng : numpy.random.Generator, optional
        For constrained-random tests: spread each uTOp's producers over a random number of wait
        slots and give each group a random free token. The program stays correctly synchronised.

    Examples
    --------
    >>> b = ProgramBuilder()
    >>> load = b.utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=0, rows=1, row_bytes=4)])
    >>> _ = b.utop(EngineClass.VE, [Instr("ve.relu", dst=4, src=0, n=1)], deps=[load])
    >>> len(b.build()) // 16
    5
    """

    def __init__(self, rng=None):
        self._items = []  # _Utop or Instr (control)
        self._rng = rng
        self.instructions = 0
        """Instructions appended so far (headers included, the final ``halt`` not)."""
        self.inserted_fences = 0
        """Fences :meth:`build` inserted because more dependency groups than tokens would be live."""

    @property
    def utop_count(self):
        return sum(isinstance(item, _Utop) for item in self._items)

    @property
    def position(self):
        """Items (uTOps and control instructions) appended so far: a mark for :meth:`utop_classes`."""
        return len(self._items)

    def utop_classes(self, start=0):
        """uTOps per engine class name (``"DMA"``, ``"ME"``, ``"VE"``) appended since ``start``."""
        counts = {cls.name: 0 for cls in UTOP_CLASSES}
        for item in self._items[start:]:
            if isinstance(item, _Utop):
                counts[item.engine.name] += 1
        return counts

    def utop(self, engine, body, deps=()):
        """Append a uTOp running ``body`` on an engine of class ``engine``.

        Parameters
        ----------
        engine : EngineClass
            DMA, ME or VE.
        body : list of Instr
            Body instructions, all of that class.
        deps : iterable of UtopRef
            uTOps that must complete before this one starts.

        Returns
        -------
        UtopRef
        """
        engine = EngineClass(engine)
        if engine not in UTOP_CLASSES:
            raise FirmwareError(f"a uTOp runs on DMA, ME or VE, not {engine.name}")
        if not body:
            raise FirmwareError("a uTOp needs at least one body instruction")
        for instr in body:
            if instr.engine != engine:
                raise FirmwareError(f"{instr.mnemonic} cannot run in a {engine.name} uTOp")
        deps = sorted({d.index for d in deps if d is not None})
        if deps and deps[-1] >= len(self._items):
            raise FirmwareError("a uTOp can only depend on uTOps emitted before it")
        self._items.append(_Utop(engine, list(body), deps))
        self.instructions += 1 + len(body)
        return UtopRef(len(self._items) - 1)

    def fence(self):
        """Append a ``fence``: everything before it completes before anything after it starts."""
        self._items.append(Instr("fence"))
        self.instructions += 1

    def build(self, config=None, progress=None):
        """Assign tokens, append ``halt`` and return the encoded code segment.

        Parameters
        ----------
        config : ArchConfig or str, optional
            When given, every uTOp header declares its exact cost (:func:`tcloud.isa.cost.utop_units`),
            which lets the ``harvest`` policy run it on engines its context does not own. A uTOp too
            large to declare (more than the ``cost`` field holds) stays undeclared.
        progress : callable, optional
            Called as ``progress(done)`` with the number of instructions encoded so far, every
            :data:`PROGRESS_STEP` instructions or so.

        Raises
        ------
        FirmwareError
            If a uTOp depends on more uTOps than its wait slots hold.

        Notes
        -----
        Where more dependency groups would be live at once than a context has tokens, a ``fence`` is
        inserted just before the uTOp that would open one more (just after it, if a fence already
        precedes it): the dependencies that span the fence become implied by it, so every live group
        closes. The program only loses overlap there; :attr:`inserted_fences` counts them.
        """
        self._assign_tokens()
        config = get_config(config) if config is not None else None
        out = []
        for item in self._items:
            if isinstance(item, Instr):
                out.append(item)
                continue
            waits = {}
            for slot, (token, count) in enumerate(item.waits):
                waits[f"wait{slot}"], waits[f"count{slot}"] = token, count
            units = utop_units(item.body, config) if config is not None else 0
            cost = units if units <= _MAX_COST else 0
            out.append(Instr("utop", cls=int(item.engine), len=len(item.body), signal=item.signal, cost=cost,
                             **waits))
            out.extend(item.body)
            if progress is not None and len(out) // PROGRESS_STEP != (len(out) - len(item.body) - 1) // PROGRESS_STEP:
                progress(len(out))
        out.append(Instr("halt"))
        return b"".join(i.encode() for i in out)

    def _insert_fence(self, position):
        self._items.insert(position, Instr("fence"))
        self.instructions += 1
        self.inserted_fences += 1
        for item in self._items:
            if isinstance(item, _Utop):
                item.deps = [d + (d >= position) for d in item.deps]

    def _assign_tokens(self):
        """Give every dependency group a token, one stretch between fences at a time (no group spans a
        fence), inserting a fence where a stretch would need more tokens than a context has."""
        start = 0
        while start < len(self._items):
            end = next((i for i in range(start, len(self._items)) if isinstance(self._items[i], Instr)),
                       len(self._items))
            try:
                self._assign_stretch(start, end)
            except _TokenPressure as pressure:
                after_fence = pressure.start > 0 and isinstance(self._items[pressure.start - 1], Instr)
                self._insert_fence(pressure.start + 1 if after_fence else pressure.start)
                continue
            start = end + 1

    def _assign_stretch(self, first, end):
        last_fence = first - 1
        groups = []  # (first producer, consumer, producers)
        ancestors = {}  # uTOp index → bit mask (bit i - last_fence - 1) of the uTOps it waits for, transitively
        for index in range(first, end):
            item = self._items[index]
            item.signal, item.waits = 0, []
            live = [d for d in item.deps if d > last_fence]
            implied = 0
            for d in live:
                implied |= ancestors[d]
            direct = sum(1 << (d - last_fence - 1) for d in live)
            ancestors[index] = implied | direct
            live = [d for d in live if not implied >> (d - last_fence - 1) & 1]
            chunks = [live[i:i + _MAX_COUNT] for i in range(0, len(live), _MAX_COUNT)]
            if len(chunks) > _WAIT_SLOTS:
                raise FirmwareError(f"uTOp #{index} depends on {len(live)} uTOps; at most "
                                    f"{_WAIT_SLOTS * _MAX_COUNT} fit its wait slots")
            if self._rng is not None and live:
                count = max(len(chunks), int(self._rng.integers(1, min(_WAIT_SLOTS, len(live)) + 1)))
                shuffled = [int(d) for d in self._rng.permutation(live)]
                chunks = [sorted(shuffled[i::count]) for i in range(count)]
            groups += [(chunk[0], index, chunk) for chunk in chunks]
        free_at = [-1] * NUM_TOKENS  # program index after which the token is free again
        for start, end, producers in sorted(groups):
            free = [t for t in range(NUM_TOKENS) if free_at[t] <= start]
            if not free:
                raise _TokenPressure(start)
            token = free[0] if self._rng is None else free[int(self._rng.integers(0, len(free)))]
            free_at[token] = end
            for p in producers:
                self._items[p].signal |= 1 << token
            self._items[end].waits.append((token, len(producers)))


class _TokenPressure(Exception):
    """More dependency groups than tokens would be live at the uTOp ``start``."""

    def __init__(self, start):
        super().__init__(start)
        self.start = start


class DeferredStores:
    """The store uTOps of a double-buffered block loop, each appended one block late.

    uTOps issue in program order, so a block's store appended right after its computation would hold the
    next block's load and computation back until that computation had ended: the blocks would run one
    after the other. Appended after the next block's uTOps instead, two blocks are in flight (on two
    engines of a class, or a transfer beside a computation). With one buffer set, the next block's load
    needs the store first, so :meth:`reuse` appends it there: the blocks stay in order.

    Parameters
    ----------
    prog : ProgramBuilder
    sets : int
        Buffer sets the loop alternates between: block ``i`` reuses the buffers of block ``i - sets``.
    """

    def __init__(self, prog, sets=2):
        self._prog, self._sets = prog, sets
        self._pending = None
        self.stores = []
        """The appended store uTOps, in block order (complete after :meth:`flush`)."""

    def reuse(self, index):
        """The store block ``index`` waits for before reusing the buffers of block ``index - sets``
        (``None`` for the first blocks); appended now if it was still queued."""
        if index < self._sets:
            return None
        if len(self.stores) <= index - self._sets:
            self._append()
        return self.stores[index - self._sets]

    def add(self, body, deps):
        """Queue the store of the current block (DMA ``body`` after ``deps``), appending the previous one."""
        self._append()
        self._pending = (body, deps)

    def flush(self):
        """Append the last queued store; returns :attr:`stores`."""
        self._append()
        return self.stores

    def _append(self):
        if self._pending is not None:
            self.stores.append(self._prog.utop(EngineClass.DMA, *self._pending))
            self._pending = None
