"""Run a multi-tenant scenario described in YAML or JSON: the engine of ``tcloud vnpu`` and the demo.

A scenario names the pNPU configuration, backend and policy, and a list of tenants; each tenant
gets a vNPU, a program and a number of runs. Every run's outputs are checked against the golden
model running that tenant alone. Example::

    config: small
    backend: verilator
    policy: harvest
    tenants:
      - name: gemm
        vnpu: {mes: 1, ves: 1, sram_kib: 64, hbm_mib: 4}
        program: gemm 96x96x96
      - name: residual
        vnpu: {mes: 3, ves: 1, sram_kib: 64, hbm_mib: 4, priority: 1}
        program: elementwise 32x64 passes=4 block=256
        runs: 2

``program`` is ``gemm MxKxN``, ``elementwise RxC [passes=P] [block=B]``, or the path of a program
image (``.tcimg``) or assembly file (``.s``), relative to the scenario file.
"""

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tcloud.firmware import Footprint, elementwise, elementwise_footprint, gemm, gemm_footprint
from tcloud.isa import PRESETS, Policy, ProgramImage, assemble, get_config
from tcloud.isa.errors import TcloudError

from .api import format_utilization, run_timing
from .backends import BACKENDS, FunctionalDevice
from .execute import DeviceFault, run_image
from .files import parse_document, read_bytes, read_text
from .hypervisor import Hypervisor, VNPUSpec

DEFAULT_SCENARIO = {
    "config": "small",
    "backend": "verilator",
    "policy": "harvest",
    "tenants": [
        {"name": "gemm-tenant", "vnpu": {"mes": 1, "ves": 1, "sram_kib": 96, "hbm_mib": 4},
         "program": "gemm 96x128x96"},
        {"name": "vector-tenant", "vnpu": {"mes": 3, "ves": 1, "sram_kib": 64, "hbm_mib": 4, "priority": 1},
         "program": "elementwise 32x64 passes=4 block=256"},
    ],
}
"""The embedded scenario of ``tcloud demo``: an ME-heavy and a VE-heavy tenant sharing a pNPU."""

_SCENARIO_KEYS = {"config", "backend", "policy", "pnpus", "oversubscribe", "tenants"}
_TENANT_KEYS = {"name", "vnpu", "program", "runs", "seed"}


class ScenarioError(TcloudError, ValueError):
    """A malformed scenario file: the message names the file, tenant and field."""


@dataclass
class TenantReport:
    """What one tenant's runs gave.

    Attributes
    ----------
    verified : list of bool
        For every run that completed: whether its outputs equal the golden model's.
    faults : list of dict
        For every run that faulted: ``run`` (its index), ``fault`` (the code's name), ``pc`` and
        ``message``.
    error : str
        Any other failure of a run.
    """

    name: str
    vnpu: str
    program: str
    runs: int = 0
    latencies: list = field(default_factory=list)
    verified: list = field(default_factory=list)
    faults: list = field(default_factory=list)
    usage: object = None
    bill: object = None
    error: str = ""

    @property
    def ok(self):
        """Every run completed and matched the golden model."""
        return len(self.verified) == self.runs and all(self.verified) and not self.faults and not self.error

    def to_dict(self):
        """The report as JSON-ready data (usage as counters, the bill as lines and total)."""
        return {"name": self.name, "vnpu": self.vnpu, "program": self.program, "runs": self.runs, "ok": self.ok,
                "latency_cycles": self.latencies, "matches_golden_model": self.verified, "faults": self.faults,
                "error": self.error, "usage": asdict(self.usage) if self.usage else None,
                "bill": asdict(self.bill) if self.bill else None}


def load_scenario(path):
    """Read a scenario from a YAML or JSON file; raise :class:`ScenarioError` if it is malformed."""
    path = Path(path)
    try:
        text = read_text(path, "a scenario (YAML or JSON text)")
    except TcloudError as exc:
        raise ScenarioError(str(exc)) from None
    try:
        data = parse_document(text, path)
    except ValueError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    check_scenario(data, str(path))
    return data, path.parent


def check_scenario(data, where="scenario"):
    """Validate the structure of a scenario mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: the top level must be a mapping")
    unknown = sorted(set(data) - _SCENARIO_KEYS)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {unknown}; known: {sorted(_SCENARIO_KEYS)}")
    for key, names in (("config", list(PRESETS)), ("backend", list(BACKENDS)),
                       ("policy", [p.name.lower() for p in Policy])):
        if key in data and data[key] not in names:
            raise ScenarioError(f"{where}: {key} must be one of {', '.join(names)}, got {data[key]!r}")
    _check_int(data.get("pnpus", 1), 1, f"{where}: pnpus")
    if not isinstance(data.get("oversubscribe", False), bool):
        raise ScenarioError(f"{where}: oversubscribe must be true or false, got {data['oversubscribe']!r}")
    tenants = data.get("tenants")
    if not isinstance(tenants, list) or not tenants:
        raise ScenarioError(f"{where}: 'tenants' must be a non-empty list")
    for i, tenant in enumerate(tenants):
        label = f"{where}: tenant {i}"
        if not isinstance(tenant, dict):
            raise ScenarioError(f"{label} must be a mapping")
        unknown = sorted(set(tenant) - _TENANT_KEYS)
        if unknown:
            raise ScenarioError(f"{label}: unknown key(s) {unknown}; known: {sorted(_TENANT_KEYS)}")
        if "program" not in tenant:
            raise ScenarioError(f"{label}: 'program' is required")
        if not isinstance(tenant.get("name", ""), str):
            raise ScenarioError(f"{label}: name must be a string, got {tenant['name']!r}")
        _check_int(tenant.get("runs", 1), 1, f"{label}: runs")
        _check_int(tenant.get("seed", 0), 0, f"{label}: seed")
        try:
            VNPUSpec.from_dict(tenant.get("vnpu", {}))
        except TcloudError as exc:
            raise ScenarioError(f"{label} ({tenant.get('name', 'unnamed')}): {exc}") from None


def _check_int(value, low, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ScenarioError(f"{what} must be {kind}, got {value!r}")


_GEMM = re.compile(r"gemm\s+(\d+)x(\d+)x(\d+)$")
_ELEMENTWISE = re.compile(r"elementwise\s+(\d+)x(\d+)((?:\s+\w+=\d+)*)$")
_KERNEL_FORMS = {"gemm": "'gemm MxKxN' with positive integers M, K and N",
                 "elementwise": "'elementwise RxC [passes=P] [block=B]' with positive integers"}


def build_program(text, config, base=Path(".")):
    """Return the :class:`ProgramImage` a tenant's ``program`` entry names."""
    text = str(text).strip()
    if kernel := _kernel_call(text):
        name, args, options = kernel
        return {"gemm": gemm, "elementwise": elementwise}[name](config, *args, **options)
    return _program_file(text, config, base)


def program_footprint(text, config, base=Path(".")):
    """The scratchpad and HBM bytes (a :class:`~tcloud.firmware.Footprint`) of the image a
    ``program`` entry names: for ``gemm`` and ``elementwise`` without building their code, so a
    shape that does not fit is refused at once; a file is read (and assembled) as
    :func:`build_program` does."""
    text = str(text).strip()
    if kernel := _kernel_call(text):
        name, args, options = kernel
        return {"gemm": gemm_footprint, "elementwise": elementwise_footprint}[name](config, *args, **options)
    image = _program_file(text, config, base)
    return Footprint(image.sram_bytes, image.hbm_bytes)


def _kernel_call(text):
    """``(kernel, args, options)`` of a ``gemm`` or ``elementwise`` entry, ``None`` for anything else."""
    if match := _GEMM.match(text):
        return "gemm", [int(v) for v in match.groups()], {}
    if match := _ELEMENTWISE.match(text):
        options = dict(part.split("=") for part in match.group(3).split())
        unknown = sorted(set(options) - {"passes", "block"})
        if unknown:
            raise ScenarioError(f"program {text!r}: unknown option(s) {unknown}; known: passes, block")
        return "elementwise", [int(match.group(1)), int(match.group(2))], {
            "passes": int(options.get("passes", 1)),
            "block_elements": int(options["block"]) if "block" in options else None}
    return None


def _program_file(text, config, base):
    kernel = text.split(maxsplit=1)[0] if text else ""
    if kernel in _KERNEL_FORMS and not (base / text).is_file():
        raise ScenarioError(f"program {text!r}: expected {_KERNEL_FORMS[kernel]}")
    path = base / text
    if not path.is_file():
        raise ScenarioError(f"program {text!r} is neither 'gemm MxKxN', 'elementwise RxC ...' nor a file "
                            f"(looked for {path})")
    if path.suffix == ".s":
        return assemble(read_text(path, "an assembly file"), config=config, source=str(path))
    return ProgramImage.from_bytes(read_bytes(path), config)


def random_inputs(image, rng):
    """Random inputs for every input symbol: full range for int8, +-2^20 for int32."""
    return {s.name: (rng.integers(-128, 128, s.shape, dtype=np.int8) if s.dtype == "i8"
                     else rng.integers(-(1 << 20), 1 << 20, s.shape, dtype=np.int32)) for s in image.inputs}


def run_scenario(data, base=Path("."), *, backend=None, policy=None, log=print, vcd=None):
    """Run a scenario on one hypervisor and return ``(reports, pnpu stats)``.

    Tenants' runs are all submitted before any is awaited, so the tenants of a pNPU run
    concurrently. ``backend`` and ``policy`` override the scenario's; ``vcd`` asks the RTL
    backends for a waveform (see :class:`~tcloud.runtime.Hypervisor`).
    """
    check_scenario(data)
    config = get_config(data.get("config", "small"))
    tenants = data["tenants"]
    images = [build_program(t["program"], config, base) for t in tenants]
    with Hypervisor(config, backend or data.get("backend", "verilator"), policy or data.get("policy", "harvest"),
                    pnpus=data.get("pnpus", 1), oversubscribe=data.get("oversubscribe", False), vcd=vcd) as hv:
        log(f"hypervisor: {len(hv.pnpus)} pNPU(s) of {config.name!r} on {hv.backend}, policy "
            f"{hv.policy.name.lower()}")
        vnpus, reports, jobs = [], [], []
        for i, (tenant, image) in enumerate(zip(tenants, images)):
            name = tenant.get("name", f"tenant{i}")
            try:
                vnpu = hv.create_vnpu(VNPUSpec.from_dict(tenant.get("vnpu", {})), name=name)
                vnpu.load(image)
            except TcloudError as exc:
                raise type(exc)(f"tenant {i} ({name}): {exc}") from None
            log(f"  created {vnpu}; program: {tenant['program']}")
            vnpus.append(vnpu)
            reports.append(TenantReport(vnpu.name, repr(vnpu), str(tenant["program"]), tenant.get("runs", 1)))
            rng = np.random.default_rng(tenant.get("seed", i))
            jobs.append([random_inputs(image, rng) for _ in range(tenant.get("runs", 1))])
        futures = [[vnpu.submit(inputs) for inputs in runs] for vnpu, runs in zip(vnpus, jobs)]
        for vnpu, report, image, runs, pending in zip(vnpus, reports, images, jobs, futures):
            for run, (inputs, future) in enumerate(zip(runs, pending)):
                try:
                    outputs = future.result()
                except DeviceFault as exc:
                    report.faults.append({"run": run, "fault": exc.fault.name, "pc": exc.pc, "message": str(exc)})
                    continue
                except TcloudError as exc:
                    report.error = str(exc)
                    continue
                expected = run_image(FunctionalDevice(config), image, inputs)[0]
                report.verified.append(all(np.array_equal(outputs[k], expected[k]) for k in expected))
            report.latencies = [run.latency_cycles for run in vnpu.runs]
            report.usage, report.bill = vnpu.usage(), vnpu.bill()
        stats = hv.stats()
    return reports, stats


def print_reports(reports, stats, log=print):
    """Print per-tenant results, latency, utilization, usage and bill, then pNPU utilization."""
    for report in reports:
        usage = report.usage
        log(f"\n{report.name}: {report.program}")
        if report.error:
            log(f"  FAILED: {report.error}")
        for fault in report.faults:
            log(f"  run {fault['run']} FAULTED {fault['fault']}: {fault['message']}")
        if report.verified:
            wrong = report.verified.count(False)
            checks = "all match" if not wrong else f"MISMATCH in {wrong}"
            log(f"  runs: {report.runs}, {len(report.verified)} completed; outputs vs golden model alone: {checks}")
        else:
            log(f"  runs: {report.runs}, none completed")
        if any(latency is not None for latency in report.latencies):
            log(f"  latency (cycles from start to halt): {', '.join(str(v) for v in report.latencies)}")
            active = max(usage.active_cycles, 1)
            log(f"  ME engine-cycles: {usage.me_owned_cycles} owned + {usage.me_harvested_cycles} harvested "
                f"({(usage.me_owned_cycles + usage.me_harvested_cycles) / active:.2f} MEs busy on average); "
                f"VE: {usage.ve_owned_cycles} owned + {usage.ve_harvested_cycles} harvested; "
                f"DMA: {usage.dma_cycles}")
            log(f"  waited {usage.reclaim_wait_cycles} cycles for owned engines that others had harvested")
        log(f"  moved {usage.hbm_bytes_read} B from and {usage.hbm_bytes_written} B to HBM; {usage.macs} MACs")
        log(f"  bill (credits):\n{report.bill}")
    for i, pnpu in enumerate(pnpu_timing(stats)):
        if pnpu.get("cycles"):
            log(f"\npNPU {i}: {pnpu['cycles']} cycles since reset; engine utilization "
                f"{format_utilization(pnpu['utilization'])}")
    return all(report.ok for report in reports)


def pnpu_timing(stats):
    """Per pNPU: cycles since reset, busy cycles per engine and utilization per engine class
    (:func:`~tcloud.runtime.api.run_timing` from reset; only the backend's name when untimed)."""
    return [run_timing({"cycles": 0, "engine_busy_cycles": dict.fromkeys(pnpu["engine_busy_cycles"], 0)}, pnpu)
            if "cycles" in pnpu else run_timing(pnpu, pnpu) for pnpu in stats]


def reports_json(reports, stats):
    """What :func:`print_reports` prints, as JSON-ready data."""
    return {"ok": all(report.ok for report in reports), "tenants": [report.to_dict() for report in reports],
            "pnpus": pnpu_timing(stats)}
