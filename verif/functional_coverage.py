"""Functional coverage of the cocotb benches, collected with cocotb-coverage.

Cover points and crosses (bins derived from the ISA table and :mod:`tcloud.rtl.hbm`):

* ``coverage.program``: every tenant opcode executed × the scheduling policy in force;
* ``coverage.context``: how each context ended (fault code, ``none`` for done) × the policy;
* ``coverage.utop``: each uTOp's engine class × its token pattern (how many distinct tokens it waits
  on, 0 .. the header's wait slots, and whether one of them needs more than one signal);
* ``coverage.hbm``: each HBM request's kind (fetch, read, write) × how long the HBM stalled it
  (:data:`STALLS`: not, 1-3, 4-15 or 16 and more cycles of ``valid & ~ready``).

Every :class:`~tcloud.isa.FaultCode` is a bin of ``coverage.context.fault``: the pNPU raises each one
(the front end and the uTOp scheduler in ``rtl/scheduler.py``, the engines in ``rtl/engine.py``,
``rtl/dma.py``, ``rtl/matrix_engine.py`` and ``rtl/vector_engine.py``; ``KILLED`` and ``WATCHDOG``
after the host's ``ctx.kill`` and ``ctx.budget``), none is reserved. Bins that cannot be hit are
left out of an item by :data:`EXCLUDED`, each with the reason, and the report lists them.

:func:`sample_case` and :func:`sample_hbm` feed them; :func:`write_report` exports the database to
YAML, with each item's uncovered and excluded bins, and logs every item with its uncovered bins.
"""

import yaml
from cocotb_coverage.coverage import CoverCross, CoverPoint, coverage_db

from tcloud.isa import INSTRUCTIONS, ContextStatus, DecodeError, EngineClass, FaultCode, Policy, decode
from tcloud.isa.table import INSTRUCTION_BYTES, UTOP_CLASSES, spec_for

OPCODES = [spec.mnemonic for spec in INSTRUCTIONS if spec.engine != EngineClass.HOST]
POLICIES = [policy.name.lower() for policy in Policy]
FAULTS = [fault.name.lower() for fault in FaultCode]
CLASSES = [cls.name.lower() for cls in UTOP_CLASSES]
WAIT_SLOTS = sum(field.name.startswith("count") for field in spec_for("utop").fields)
TOKEN_PATTERNS = [f"waits on {n}" + (" count>1" if multi else "")
                  for n in range(WAIT_SLOTS + 1) for multi in (False, True) if n or not multi]
HBM_KINDS = ["fetch", "read", "write"]
STALL_LEVELS = [(0, "not stalled"), (1, "stalled 1-3 cycles"), (4, "stalled 4-15 cycles"),
                (16, "stalled 16+ cycles")]
"""(fewest stalled cycles, bin) of each HBM backpressure level."""
STALLS = [name for _, name in STALL_LEVELS]

_NO_ENGINE_REASON = ("NO_ENGINE is raised only under the static and harvest policies; under temporal "
                     "and operator a context may run uTOps on engines it does not own")
EXCLUDED = {
    "coverage.context.fault": {},
    "coverage.context.fault_x_policy": {("no_engine", policy.name.lower()): _NO_ENGINE_REASON
                                        for policy in (Policy.TEMPORAL, Policy.OPERATOR)},
}
"""Item → {bin: why no program can hit it}: bins left out of the item (and listed in the report)."""


def _cross(group, first, second):
    """A sampling function ``f(x, y)``: a cover point ``tcloud.<group>.<name>`` for each of ``first``
    and ``second`` (``(name, bins)``), and their cross ``tcloud.<group>.<first>_x_<second>``; the bins
    of :data:`EXCLUDED` are left out."""
    (x_name, x_bins), (y_name, y_bins) = first, second
    points = [f"coverage.{group}.{x_name}", f"coverage.{group}.{y_name}"]
    cross = f"coverage.{group}.{x_name}_x_{y_name}"
    x_bins = [b for b in x_bins if b not in EXCLUDED.get(points[0], {})]
    y_bins = [b for b in y_bins if b not in EXCLUDED.get(points[1], {})]

    @CoverPoint(points[0], xf=lambda x, y: x, bins=x_bins)
    @CoverPoint(points[1], xf=lambda x, y: y, bins=y_bins)
    @CoverCross(cross, items=points, ign_bins=list(EXCLUDED.get(cross, {})))
    def sample(x, y):
        pass
    return sample


def stall_level(cycles):
    """The :data:`STALLS` bin of a request stalled ``cycles`` cycles."""
    return next(name for fewest, name in reversed(STALL_LEVELS) if cycles >= fewest)


_opcode = _cross("program", ("opcode", OPCODES), ("policy", POLICIES))
_ending = _cross("context", ("fault", FAULTS), ("policy", POLICIES))
_utop = _cross("utop", ("class", CLASSES), ("tokens", TOKEN_PATTERNS))
_hbm = _cross("hbm", ("kind", HBM_KINDS), ("backpressure", STALLS))


def token_pattern(header):
    """The :data:`TOKEN_PATTERNS` bin of a ``utop`` header."""
    need = {}
    for slot in range(WAIT_SLOTS):
        if header[f"count{slot}"]:
            need[header[f"wait{slot}"]] = need.get(header[f"wait{slot}"], 0) + header[f"count{slot}"]
    return f"waits on {len(need)}" + (" count>1" if any(count > 1 for count in need.values()) else "")


def executed(image, status, fault_pc):
    """The instructions a context ran through: its straight-line code from the entry point up to
    ``halt`` when it is done, up to and including the faulting one when it faulted."""
    code, end = image.code, len(image.code)
    if status == ContextStatus.FAULTED:
        end = min(end, fault_pc - image.entry + INSTRUCTION_BYTES)
    instructions = []
    for offset in range(0, end, INSTRUCTION_BYTES):
        try:
            instr = decode(code[offset:offset + INSTRUCTION_BYTES])
        except DecodeError:
            break
        instructions.append(instr)
        if instr.mnemonic == "halt":
            break
    return instructions


def sample_case(image, policy, context):
    """Sample one context's run: its opcodes, uTOp token patterns and how it ended.

    Parameters
    ----------
    image : ProgramImage
    policy : Policy
    context : dict
        ``status``, ``fault`` and ``fault_pc`` as the pNPU reported them.
    """
    policy = Policy(policy).name.lower()
    for instr in executed(image, context["status"], context["fault_pc"]):
        _opcode(instr.mnemonic, policy)
        if instr.mnemonic == "utop":
            _utop(EngineClass(instr["cls"]).name.lower(), token_pattern(instr))
    _ending(context["fault"].name.lower(), policy)


def sample_hbm(transaction):
    """Sample an :class:`~tcloud.verif.cocotb_bench.HbmTransaction` (a monitor subscriber)."""
    _hbm(transaction.kind, stall_level(transaction.stalled))


def uncovered():
    """Item name → its bins with no hit, for every cover point and cross."""
    return {name: [bin_ for bin_, hits in item.detailed_coverage.items() if not hits]
            for name, item in sorted(coverage_db.items()) if isinstance(item, (CoverPoint, CoverCross))}


def write_report(path, log):
    """Export the coverage database to YAML at ``path``, each cover point and cross with two more
    keys, ``uncovered`` (its bins with no hit) and ``excluded`` (bin → why it is not one, from
    :data:`EXCLUDED`), and log each item with its uncovered and excluded bins."""
    coverage_db.export_to_yaml(str(path))
    with open(path) as file:
        report = yaml.safe_load(file)
    missing = uncovered()
    for name, bins in missing.items():
        report[name]["uncovered"] = [str(bin_) for bin_ in bins]
        report[name]["excluded"] = {str(bin_): reason for bin_, reason in EXCLUDED.get(name, {}).items()}
    with open(path, "w") as file:
        yaml.safe_dump(report, file)
    for name, item in sorted(coverage_db.items()):
        line = f"{name}: {item.coverage}/{item.size} bins ({item.cover_percentage:.0f} %)"
        if name in missing:
            line += "; uncovered: " + (", ".join(str(bin_) for bin_ in missing[name]) or "none")
        for bin_, reason in EXCLUDED.get(name, {}).items():
            line += f"; excluded {bin_}: {reason}"
        log(line)
