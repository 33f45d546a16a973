"""Functional coverage of the cocotb benches, collected with cocotb-coverage.

Cover points and crosses (bins derived from the ISA table and :mod:`tcloud.rtl.hbm`):

* ``coverage.program``: every tenant opcode executed × the scheduling policy in force;
* ``coverage.context``: how each context ended (fault code, ``none`` for done) × the policy;
* ``coverage.utop``: each uTOp's engine class × its token pattern (how many distinct tokens it waits
  on, 0 .. the header's wait slots, and whether one of them needs more than one signal);
* ``coverage.hbm``: each HBM request's kind (fetch, read, write) × whether the HBM stalled it.

:func:`sample_case` and :func:`sample_hbm` feed them; :func:`write_report` exports the database to
YAML and logs every item with its uncovered bins.
"""

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
STALLS = ["stalled", "not stalled"]


def _cross(group, first, second):
    """A sampling function ``f(x, y)``: a cover point ``tcloud.<group>.<name>`` for each of ``first``
    and ``second`` (``(name, bins)``), and their cross ``tcloud.<group>.<first>_x_<second>``."""
    (x_name, x_bins), (y_name, y_bins) = first, second
    points = [f"coverage.{group}.{x_name}", f"coverage.{group}.{y_name}"]

    @CoverPoint(points[0], xf=lambda x, y: x, bins=x_bins)
    @CoverPoint(points[1], xf=lambda x, y: y, bins=y_bins)
    @CoverCross(f"coverage.{group}.{x_name}_x_{y_name}", items=points)
    def sample(x, y):
        pass
    return sample


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
    _hbm(transaction.kind, "stalled" if transaction.stalled else "not stalled")


def uncovered():
    """Item name → its bins with no hit, for every cover point and cross."""
    return {name: [bin_ for bin_, hits in item.detailed_coverage.items() if not hits]
            for name, item in sorted(coverage_db.items()) if isinstance(item, (CoverPoint, CoverCross))}


def write_report(path, log):
    """Export the coverage database to YAML at ``path`` and log each item with its uncovered bins."""
    coverage_db.export_to_yaml(str(path))
    missing = uncovered()
    for name, item in sorted(coverage_db.items()):
        line = f"{name}: {item.coverage}/{item.size} bins ({item.cover_percentage:.0f} %)"
        if missing.get(name):
            line += "; uncovered: " + ", ".join(str(bin_) for bin_ in missing[name])
        log(line)
