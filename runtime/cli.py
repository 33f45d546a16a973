"""The ``tcloud`` command line."""

import argparse
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tcloud.firmware import Requant, gemm
from tcloud.isa import PRESETS, Policy, ProgramImage, assemble, disassemble, get_config
from tcloud.isa.asm import instruction_lines
from tcloud.isa.doc import isa_markdown
from tcloud.isa.errors import TcloudError
from tcloud.rtl.pnpu import rtl_refusal

from .api import format_utilization, run_timing
from .backends import BACKENDS, FunctionalDevice, make_device
from .execute import load_image, read_outputs, run_image
from .files import load_npy, output_dir, output_file, read_bytes, read_text, write_file
from .progress import Progress


def _write_text(text, output):
    if output:
        write_file(output, text)
    else:
        sys.stdout.write(text)


def cmd_isa_doc(args):
    from tcloud.isa.csr import csr_markdown

    _write_text(isa_markdown() + "\n" + csr_markdown(), args.output)


def cmd_verilog(args):
    from tcloud.rtl.verilog import LINT_WAIVERS, lint

    from .backends.verilator import VERILOG_SECONDS, pnpu_verilog, recorded_seconds

    cfg = get_config(args.config)
    output_file(args.output, "Verilog file")  # refuse a bad target before the long generation
    text, seconds = pnpu_verilog(cfg, args.top, announce=lambda: Progress(
        f"generating Verilog for {cfg.name!r}", estimate=recorded_seconds(cfg.name, VERILOG_SECONDS)))
    write_file(args.output, text, "Verilog file")
    print(f"{args.output}: pNPU for {cfg.name!r}, {len(text.splitlines())} lines, top module {args.top!r}"
          + (" (generated before, from the cache)" if seconds is None else ""))
    if args.no_lint:
        return
    with Progress("verilator --lint-only -Wall"):
        result = lint(text, args.top)
    print(f"verilator --lint-only -Wall: {'clean' if result.ok else 'FAILED'} with waivers "
          f"{', '.join(LINT_WAIVERS)} (reasons: tcloud.rtl.verilog.LINT_WAIVERS)")
    for message in result.messages[:20]:
        print(f"  {message}")
    if not result.ok:
        raise TcloudError(f"lint reported {len(result.messages)} message(s)")


def cmd_config(args):
    names = [args.name] if args.name else list(PRESETS)
    for name in names:
        cfg = get_config(name)
        print(f"{cfg.name}: fingerprint {cfg.fingerprint().hex()}, peak {cfg.peak_tops:.3g} TOPS")
        refusal = rtl_refusal(cfg)
        without_rtl = [name for name in BACKENDS if name not in ("amaranth", "verilator")]
        print(f"  backends        {', '.join(without_rtl) + ' (no RTL: ' + refusal + ')' if refusal else ', '.join(BACKENDS)}")
        for key, value in cfg.to_dict().items():
            if key != "name":
                print(f"  {key:15} {value}")


def cmd_asm(args):
    text = read_text(args.source, "an assembly file")
    image = assemble(text, config=args.config, source=args.source)
    if not args.no_check:
        _check_program(image, args.source, instruction_lines(text), "; --no-check writes the image anyway")
    output = args.output or str(Path(args.source).with_suffix(".tcimg"))
    write_file(output, image.to_bytes(), "image file")
    print(f"{output}: {len(image.code) // 16} instructions, {len(image.symbols)} symbols, "
          f"config {image.config_name}")


def _check_program(image, source, lines, hint=""):
    from tcloud.verif import check_program

    if image.config_name not in PRESETS:
        print(f"{source}: not checked: config {image.config_name!r} is not a preset", file=sys.stderr)
        return
    result = check_program(image, image.config_name)
    findings = result.findings(source, lines)
    if findings:
        print("\n".join(findings), file=sys.stderr)
        raise TcloudError(f"{source}: the check found {len(findings)} problem(s){hint}")
    print(f"{source}: no races among {result.utops} uTOps, ends with halt")


def cmd_check(args):
    from tcloud.verif import read_program

    image, lines = read_program(args.program, args.config)
    _check_program(image, args.program, lines)


def cmd_disasm(args):
    image = ProgramImage.from_bytes(read_bytes(args.image))
    _write_text(disassemble(image), args.output)


def cmd_gemm(args):
    if args.mult is None and (args.shift is not None or args.zp is not None):
        raise TcloudError("--shift and --zp configure the requantization, which --mult enables; give --mult too")
    requant = Requant(args.mult, args.shift or 0, args.zp or 0) if args.mult is not None else None
    output_file(args.output, "image file")
    with Progress(f"lowering GEMM {args.m}x{args.k}x{args.n} for {args.config!r}", unit="instr") as progress:
        image = gemm(args.config, args.m, args.k, args.n, bias=args.bias, requant=requant, progress=progress.update)
    write_file(args.output, image.to_bytes(), "image file")
    print(f"{args.output}: GEMM {args.m}x{args.k}x{args.n} for {args.config}, "
          f"{len(image.code) // 16} instructions")


def _input_files(pairs):
    """The arrays of ``--input NAME=FILE.npy`` options, by name."""
    arrays = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise TcloudError(f"--input expects NAME=FILE.npy, got {pair!r}")
        arrays[name] = load_npy(path, f"input {name!r}:")
    return arrays


def _parse_inputs(pairs, image, seed):
    rng = np.random.default_rng(seed)
    arrays = _input_files(pairs)
    for symbol in image.inputs:
        if symbol.name not in arrays:
            info = np.iinfo(np.int8 if symbol.dtype == "i8" else np.int16)
            arrays[symbol.name] = rng.integers(info.min, info.max + 1, symbol.shape)
            print(f"input {symbol.name}: random {symbol.dtype} {symbol.shape} (seed {seed})")
    return arrays


def cmd_run(args):
    image = ProgramImage.from_bytes(read_bytes(args.image))
    config = get_config(args.config or image.config_name)
    image.check_config(config)
    if image.metadata:
        return _run_model(args, image)
    if args.vnpu:
        raise TcloudError("--vnpu runs compiled models (tcloud compile); run scenarios of programs with tcloud vnpu")
    inputs = _parse_inputs(args.input, image, args.seed)
    save = output_dir(args.save, "--save directory") if args.save else None
    vcd = output_file(args.vcd, "waveform file") if args.vcd else None
    device = make_device(args.backend, config, vcd=vcd)
    before = device.stats()
    try:
        outputs, info = run_image(device, image, inputs)
        timing = run_timing(before, device.stats())
    finally:
        if vcd:
            device.close()  # completes the waveform, also of a run that faulted
            print(f"waveform: {vcd}")
    print(f"context 0: {info.status.name}; counters {info.counters}")
    if "cycles" in timing:
        print(f"{timing['cycles']} cycles; engine busy: {format_utilization(timing['utilization'])} "
              f"({format_utilization(timing['engine_utilization']).lower()})")
    for name, array in outputs.items():
        print(f"output {name}: {array.dtype} {array.shape}, checksum {int(array.astype(np.int64).sum())}")
        if args.print_outputs:
            with np.printoptions(threshold=array.size + 1, linewidth=120):
                print(array)
        if save:
            try:
                np.save(save / f"{name}.npy", array)
            except OSError as exc:
                raise TcloudError(f"cannot write {save / name}.npy: {exc.strerror}") from None
    if args.backend != FunctionalDevice.name:
        expected = run_image(FunctionalDevice(config), image, inputs)[0]
        wrong = [name for name in expected if not np.array_equal(outputs[name], expected[name])]
        print(f"outputs vs golden model: {'MISMATCH in ' + ', '.join(wrong) if wrong else 'all match'}")
        if wrong:
            raise TcloudError(f"the {args.backend} backend's outputs {', '.join(wrong)} differ from the golden model's")


def _model_inputs(pairs, compiled, seed):
    arrays = _input_files(pairs)
    random = compiled.random_inputs(seed)
    for spec in compiled.inputs:
        if spec["name"] not in arrays:
            arrays[spec["name"]] = random[spec["name"]]
            kind = f"ids below {spec['bound']}" if spec.get("ids") else "float32"
            print(f"input {spec['name']}: random {kind} {tuple(spec['shape'])} (seed {seed})")
    return arrays


def _vnpu_spec(text, image):
    """A VNPUSpec from ``mes=2,ves=1,...``; windows default to what ``image`` needs."""
    from .hypervisor import VNPUSpec

    values = {"sram_kib": max(1, -(-image.sram_bytes // 1024)), "hbm_mib": max(1, -(-image.hbm_bytes // (1 << 20)))}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise TcloudError(f"--vnpu expects KEY=VALUE pairs separated by commas, got {item!r}")
        try:
            values[key.strip()] = int(value)
        except ValueError:
            raise TcloudError(f"--vnpu {key.strip()} must be an integer, got {value!r}") from None
    return VNPUSpec.from_dict(values)


def _run_model(args, image):
    from .compiler import CompiledModel

    compiled = CompiledModel(image)
    inputs = _model_inputs(args.input, compiled, args.seed)
    save = output_dir(args.save, "--save directory") if args.save else None
    if args.vnpu:
        from .hypervisor import Hypervisor

        spec = _vnpu_spec(args.vnpu, image)
        with Hypervisor(compiled.config, backend=args.backend, policy="static") as hypervisor:
            vnpu = hypervisor.create_vnpu(spec, name="model")
            outputs = compiled.run(inputs, vnpu=vnpu)
            usage = vnpu.usage()
        print(f"vNPU {spec}: {usage.active_cycles} active cycles, ME {usage.me_owned_cycles} / VE "
              f"{usage.ve_owned_cycles} / DMA {usage.dma_cycles} engine-cycles; bill {vnpu.bill().total:.6f}")
    else:
        outputs = compiled.run(inputs, backend=args.backend)
    for name, array in outputs.items():
        summary = f"output {name}: {array.dtype} {array.shape}"
        if array.ndim == 2:
            summary += f", argmax per sample {array.argmax(axis=1).tolist()[:16]}"
        print(summary)
        if args.print_outputs:
            with np.printoptions(threshold=array.size + 1, linewidth=120):
                print(array)
        if save:
            write_file(save / f"{name}.npy", _npy_bytes(array), "output")
    if args.backend != FunctionalDevice.name or args.vnpu:
        expected = compiled.run(inputs, backend=FunctionalDevice.name)
        wrong = [name for name in expected if not np.array_equal(outputs[name], expected[name])]
        print(f"outputs vs golden model: {'MISMATCH in ' + ', '.join(wrong) if wrong else 'all match'}")
        if wrong:
            raise TcloudError(f"the {args.backend} backend's outputs {', '.join(wrong)} differ from the golden model's")


def _npy_bytes(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def cmd_compile(args):
    from .compiler import compile

    output_file(args.output, "compiled model")  # refuse a bad target before the work
    with Progress(f"compiling {args.model} for {args.config!r}"):
        compiled = compile(args.model, args.config, args.calibration, batch=args.batch, sram_kib=args.sram_kib)
    compiled.save(args.output)
    image = compiled.image
    print(f"{args.output}: {len(compiled.layers)} layers for {args.config!r}, batch {compiled.batch}; HBM "
          f"{image.hbm_bytes:,} bytes, scratchpad {image.sram_bytes:,} bytes, code {len(image.code):,} bytes")
    print(f"  {'layer':<28} {'op':<14} {'GEMM m x k x n':>20} {'MACs':>12} {'VE elements':>12}  uTOps DMA/ME/VE")
    for layer in compiled.layers:
        gemm = " x ".join(str(d) for d in layer["gemm"]) if layer["gemm"] else "-"
        u = layer["utops"]
        print(f"  {layer['name'][:28]:<28} {layer['op'][:14]:<14} {gemm:>20} {layer['macs']:>12,} "
              f"{layer['ve_elements']:>12,}  {u['DMA']}/{u['ME']}/{u['VE']}")
    for spec in compiled.inputs:
        if spec.get("ids"):
            print(f"  input {spec['name']}: int64 ids {tuple(spec['shape'])} in 0 .. {spec['bound'] - 1} (checked on "
                  f"the host)")
        else:
            print(f"  input {spec['name']}: float {tuple(spec['shape'])} -> {spec['dtype']} (scale "
                  f"{spec['scale']:.6g}, zero point {spec['zero_point']})")


def cmd_zoo(args):
    from .compiler import zoo

    if args.zoo_command == "list":
        for name, builder in zoo.BUILDERS.items():
            summary = (builder.__doc__ or "").strip().splitlines()[0]
            settings = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                                for k, v in zoo.options(name).items())
            print(f"{name:<18} {summary}\n{'':<18} {settings}")
        return
    path = output_file(args.output, "model")
    try:
        model = zoo.build(args.name, args.set)
    except ValueError as exc:
        raise TcloudError(str(exc)) from None
    if args.quantize:
        from .compiler.quantize import quantize, random_samples

        with Progress(f"quantizing {args.name} ({args.quantize}, {args.activations} activations)"):
            model = quantize(model, args.quantize, random_samples(model, count=args.samples),
                             activations=args.activations)
    write_file(path, model.SerializeToString())
    print(f"{path}: {args.name}, {len(model.graph.node)} nodes, "
          f"{'float' if not args.quantize else args.quantize + ' int8'}; inputs "
          + ", ".join(f"{i.name} {[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]}"
                      for i in model.graph.input))


def cmd_profile(args):
    from .compiler import CompiledModel
    from .compiler.profile import profile, profile_plot, profile_table

    compiled = CompiledModel.load(args.model)
    plot = output_file(args.plot, "profile plot") if args.plot else None
    inputs = _model_inputs(args.input, compiled, args.seed)
    with Progress(f"running {args.model} on {args.backend}"):
        layers, total = profile(compiled, inputs, backend=args.backend, poll_cycles=args.poll_cycles)
    for line in profile_table(layers, total):
        print(line)
    if plot:
        profile_plot(layers, plot, f"{Path(args.model).name} on {compiled.config.name} ({args.backend})")
        print(f"plot: {plot}")


def cmd_demo(args):
    from tcloud.isa import decode_stream

    cfg = get_config(args.config)
    m, k, n = args.m, args.k, args.n
    rng = np.random.default_rng(args.seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    bias = rng.integers(-5000, 5000, n, dtype=np.int32)
    requant = Requant.from_scale(1 / 512)
    print(f"TCloud demo: int8 GEMM {m}x{k}x{n} + bias, requantized to int8, on config {cfg.name!r} "
          f"({cfg.me_count} MEs of {cfg.me_rows}x{cfg.me_cols}, {cfg.ve_count} VEs)")
    image = gemm(cfg, m, k, n, bias=True, requant=requant)
    text = disassemble(image)
    print(f"1. firmware lowered it to {len(decode_stream(image.code))} instructions; "
          f"disassembly is {len(text.splitlines())} lines:")
    for line in [ln for ln in text.splitlines() if not ln.startswith(".")][:6]:
        print(f"     {line}")
    rebuilt = assemble(text)
    blob = rebuilt.to_bytes()
    same = blob == image.to_bytes()
    print(f"2. assembler rebuilt the image from text: {len(blob)} bytes, identical: {same}")
    loaded = ProgramImage.from_bytes(blob, cfg)
    if args.backend == "verilator":
        print(f"   building/loading the Verilator model of {cfg.name!r} (cached; the first build takes "
              f"a minute or two)...", flush=True)
    device = make_device(args.backend, cfg)
    load_image(device, loaded, {"A": a, "B": b, "bias": bias})
    before, start = device.stats(), time.perf_counter()
    if not device.run():
        raise TcloudError("the device stopped before the program finished")
    seconds = time.perf_counter() - start
    timing = run_timing(before, device.stats())
    outputs, info = read_outputs(device, loaded), device.context(0)
    acc = a.astype(np.int64) @ b.astype(np.int64) + bias
    expected = np.clip(np.round(acc * requant.multiplier / 2.0 ** requant.shift), -128, 127).astype(np.int8)
    match = np.array_equal(outputs["C"], expected)
    c = info.counters
    print(f"3. {args.backend} backend ran it in {seconds * 1e3:.1f} ms: {c['utops']} uTOps, "
          f"{c['macs']} MACs, {c['hbm_bytes_read']} B read, {c['hbm_bytes_written']} B written")
    if "cycles" in timing:
        print(f"   {timing['cycles']} cycles ({timing['cycles'] / seconds / 1e3:.0f} k cycles/s simulated); "
              f"engine busy: {format_utilization(timing['utilization'])}; array efficiency "
              f"{c['macs'] / (timing['cycles'] * cfg.me_macs_per_cycle):.1%} of peak")
    print(f"4. check against NumPy (round half to even): {'PASS' if match else 'FAIL'} "
          f"({outputs['C'].size} int8 values)")
    if not (match and same):
        raise TcloudError("demo check failed")
    if args.single:
        return
    from .tenants import DEFAULT_SCENARIO, print_reports, run_scenario

    print(f"\n5. two tenants on one 'small' pNPU: an ME-heavy GEMM and a VE-heavy residual chain, each in its "
          f"own vNPU, running concurrently under the {args.policy} policy")
    reports, stats = run_scenario(DEFAULT_SCENARIO, backend=args.backend,
                                  policy=args.policy, log=lambda text: print("   " + text.replace("\n", "\n   ")))
    if not print_reports(reports, stats, log=lambda text: print("   " + text.replace("\n", "\n   "))):
        raise TcloudError("demo check failed: a tenant did not match the golden model")


def cmd_cluster(args):
    """``tcloud cluster ...``: handed whole to the cluster layer (:mod:`tcloud.cluster.cli`)."""
    from tcloud.cluster.cli import main as cluster_main

    cluster_main(args.cluster_args)


def cmd_vnpu(args):
    from .tenants import load_scenario, print_reports, reports_json, run_scenario

    data, base = load_scenario(args.scenario)
    log = (lambda text: print(text, file=sys.stderr)) if args.json else print
    vcd = output_file(args.vcd, "waveform file") if args.vcd else None
    reports, stats = run_scenario(data, base, backend=args.backend, policy=args.policy, log=log, vcd=vcd)
    if vcd:
        log(f"waveform: {vcd}" + (" (one file per pNPU: .pnpu<i> before the suffix)" if data.get("pnpus", 1) > 1
                                  else ""))
    if args.json:
        result = reports_json(reports, stats)
        print(json.dumps(result, indent=2))
        ok = result["ok"]
    else:
        ok = print_reports(reports, stats)
    if not ok:
        raise TcloudError("a tenant faulted, failed or did not match the golden model")


def _int_at_least(text, low, kind):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is not {kind}")
    return value


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def seed_int(text):
    """argparse type: a random seed, an integer >= 0."""
    return _int_at_least(text, 0, "a valid seed (an integer >= 0)")


WAVES_HELP = ("write a waveform of every signal (RTL backends; FST if FILE ends with .fst, Verilator only, "
              "else VCD; open it with GTKWave or Surfer)")


def version():
    """The installed distribution's version (``tcloud-npu``)."""
    try:
        return importlib.metadata.version("tcloud-npu")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def cmd_sweep(args):
    from .sweep import load_spec, run_sweep

    if args.num_cpus is not None and args.num_cpus < 1:
        raise TcloudError(f"--num-cpus must be at least 1, got {args.num_cpus}")
    spec = load_spec(args.spec)
    run_sweep(spec, args.out, address=args.address, num_cpus=args.num_cpus)


def build_parser():
    parser = argparse.ArgumentParser(prog="tcloud", description="TCloud: hardware-assisted NPU "
                                     "virtualization — ISA tools, firmware and runtime.")
    parser.add_argument("--version", action="version", version=f"tcloud {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    isa = sub.add_parser("isa", help="ISA reference tools", description="ISA reference tools.")
    isa_sub = isa.add_subparsers(dest="isa_command", required=True, metavar="SUBCOMMAND")
    doc = isa_sub.add_parser("doc", help="print the ISA reference as Markdown",
                             description="Print the ISA reference (generated from the table) as Markdown.")
    doc.add_argument("-o", "--output", help="write to this file instead of stdout")
    doc.set_defaults(func=cmd_isa_doc)

    ver = sub.add_parser("verilog", help="generate the pNPU's Verilog and lint it",
                         description="Generate the whole pNPU as Verilog and run verilator --lint-only on it.")
    ver.add_argument("--config", default="small", choices=list(PRESETS), help="preset (default: %(default)s)")
    ver.add_argument("-o", "--output", default="build/pnpu.v", help="Verilog file (default: build/pnpu.v)")
    ver.add_argument("--top", default="pnpu", help="top module name")
    ver.add_argument("--no-lint", action="store_true", help="skip the Verilator lint")
    ver.set_defaults(func=cmd_verilog)

    cfg = sub.add_parser("config", help="show configuration presets",
                         description="Show ArchConfig presets with their fingerprints.")
    cfg.add_argument("name", nargs="?", help="preset name (default: all)")
    cfg.set_defaults(func=cmd_config)

    asm = sub.add_parser("asm", help="assemble a .s file into a program image",
                         description="Assemble TCloud assembly into a program image (.tcimg).")
    asm.add_argument("source", help="assembly file")
    asm.add_argument("-o", "--output", help="image file (default: source with .tcimg)")
    asm.add_argument("--config", help="target preset (else the file's .config directive)")
    asm.add_argument("--no-check", action="store_true", help="write the image without checking it for races and faults (tcloud check)")
    asm.set_defaults(func=cmd_asm)

    chk = sub.add_parser("check", help="find races and faults in a program",
                         description="Run a program image or assembly file in the golden model and report "
                                     "uTOps that may run concurrently on the hardware and touch the same "
                                     "bytes (a missing token wait), and any fault; exit 1 if there are any.")
    chk.add_argument("program", help="program image (.tcimg) or assembly file")
    chk.add_argument("--config", help="target preset (default: the program's)")
    chk.set_defaults(func=cmd_check)

    dis = sub.add_parser("disasm", help="disassemble a program image",
                         description="Print a program image as assembly that `tcloud asm` rebuilds.")
    dis.add_argument("image", help="program image (.tcimg)")
    dis.add_argument("-o", "--output", help="write to this file instead of stdout")
    dis.set_defaults(func=cmd_disasm)

    gem = sub.add_parser("gemm", help="lower a GEMM to a program image",
                         description="Lower C = requant(A @ B + bias) to a program image.")
    for dim in ("m", "k", "n"):
        gem.add_argument(f"--{dim}", type=positive_int, required=True, help=f"GEMM dimension {dim.upper()}")
    gem.add_argument("--config", default="small", choices=list(PRESETS), help="target preset (default: %(default)s)")
    gem.add_argument("--bias", action="store_true", help="add an int32 bias input")
    gem.add_argument("--mult", type=int, help="requantization multiplier (enables int8 output)")
    gem.add_argument("--shift", type=int, help="requantization shift (default 0; needs --mult)")
    gem.add_argument("--zp", type=int, help="requantization zero point (default 0; needs --mult)")
    gem.add_argument("-o", "--output", required=True, help="image file")
    gem.set_defaults(func=cmd_gemm)

    run = sub.add_parser("run", help="run a program image on a device",
                         description="Run a program image in context 0; inputs not given are random.")
    run.add_argument("image", help="program image (.tcimg)")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                     help="input tensor (repeatable)")
    run.add_argument("--config", help="device preset (default: the image's config)")
    run.add_argument("--backend", default="functional", choices=list(BACKENDS),
                     help="functional (the golden model, instant), amaranth or verilator (the RTL, with cycles, "
                          "engine utilization and a check against the golden model; default: %(default)s)")
    run.add_argument("--print-outputs", action="store_true", help="print every output array in full")
    run.add_argument("--vcd", metavar="FILE", help=WAVES_HELP)
    run.add_argument("--seed", type=seed_int, default=0, help="seed for random inputs (>= 0)")
    run.add_argument("--save", metavar="DIR", help="save outputs as NAME.npy here")
    run.add_argument("--vnpu", metavar="KEY=VALUE,...",
                     help="compiled models: run on a vNPU of this spec (e.g. mes=2,ves=1; windows default to "
                          "what the model needs)")
    run.set_defaults(func=cmd_run)

    comp = sub.add_parser("compile", help="compile an ONNX model to a program image",
                          description="Compile an ONNX model (int8 QDQ or QOperator as onnxruntime's quantizer "
                                      "writes it, or float, quantized here) into a program image whose outputs "
                                      "equal onnxruntime's; run it with `tcloud run`.")
    comp.add_argument("model", help="ONNX model (.onnx)")
    comp.add_argument("-o", "--output", required=True, metavar="FILE.tcimg", help="compiled model")
    comp.add_argument("--config", default="small", choices=list(PRESETS), help="preset (default: %(default)s)")
    comp.add_argument("--calibration", metavar="SAMPLES.npz",
                      help="float models: calibration samples, one array per model input (default: random, "
                           "with a warning)")
    comp.add_argument("--batch", type=positive_int, help="batch size for a dynamic batch dimension (default 1)")
    comp.add_argument("--sram-kib", type=positive_int, help="scratchpad budget, e.g. a vNPU's window (default: all)")
    comp.set_defaults(func=cmd_compile)

    zoo = sub.add_parser("zoo", help="models to compile: list the builders, export one as ONNX",
                         description="The zoo's model builders (seeded random weights): list them, or write "
                                     "one as an ONNX file, float or quantized by onnxruntime.")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="SUBCOMMAND")
    zoo_sub.add_parser("list", help="the builders and their options")
    export = zoo_sub.add_parser("export", help="write one model as ONNX")
    export.add_argument("name", help="builder (see tcloud zoo list)")
    export.add_argument("-o", "--output", required=True, metavar="FILE.onnx")
    export.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option (repeatable), e.g. --set size=28 --set shape=base")
    export.add_argument("--quantize", choices=["qdq", "qop"], help="quantize with onnxruntime (default: float)")
    export.add_argument("--activations", choices=["int8", "uint8"], default="int8", help="default: %(default)s")
    export.add_argument("--samples", type=positive_int, default=8,
                        help="random calibration samples (default: %(default)s)")
    zoo.set_defaults(func=cmd_zoo)

    prof = sub.add_parser("profile", help="per-layer cycles and engine use of a compiled model",
                          description="Run a compiled model once on an RTL backend and print each layer's "
                                      "cycles, array efficiency and ME/VE/DMA busy fractions.")
    prof.add_argument("model", help="compiled model (.tcimg from tcloud compile)")
    prof.add_argument("--backend", default="verilator", choices=["verilator", "amaranth"],
                      help="default: %(default)s")
    prof.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                      help="input tensor (repeatable; default random)")
    prof.add_argument("--seed", type=seed_int, default=0, help="seed for random inputs (>= 0)")
    prof.add_argument("--poll-cycles", type=positive_int, default=64,
                      help="timing resolution in cycles (default: %(default)s)")
    prof.add_argument("--plot", metavar="FILE.png", help="also draw the profile as a PNG")
    prof.set_defaults(func=cmd_profile)

    demo = sub.add_parser("demo", help="GEMM through firmware, assembler, image and device",
                          description="Lower a GEMM, round-trip it through assembly text and the "
                                      "image format, run it and check it against NumPy.")
    demo.add_argument("--config", default="small", choices=list(PRESETS), help="preset (default: %(default)s)")
    demo.add_argument("--backend", default="verilator", choices=list(BACKENDS), help="default: %(default)s")
    demo.add_argument("--m", type=positive_int, default=96, help="GEMM rows of A (default: %(default)s)")
    demo.add_argument("--k", type=positive_int, default=200, help="GEMM depth (default: %(default)s)")
    demo.add_argument("--n", type=positive_int, default=72, help="GEMM columns of B (default: %(default)s)")
    demo.add_argument("--seed", type=seed_int, default=0, help="seed of the random operands (default: %(default)s)")
    demo.add_argument("--policy", default="harvest", choices=[p.name.lower() for p in Policy],
                      help="scheduling policy of the multi-tenant part (which always uses the small preset)")
    demo.add_argument("--single", action="store_true", help="skip the multi-tenant part")
    demo.set_defaults(func=cmd_demo)

    vnpu = sub.add_parser("vnpu", help="run tenants on vNPUs from a YAML/JSON scenario",
                          description="Create one vNPU per tenant of a scenario file (YAML or JSON; see "
                                      "examples/tenants.yaml), run their programs concurrently, check every "
                                      "output against the golden model, and print per-tenant latency, "
                                      "utilization, usage and bill.")
    vnpu.add_argument("scenario", help="scenario file (.yaml, .yml or .json)")
    vnpu.add_argument("--backend", choices=list(BACKENDS), help="override the scenario's backend")
    vnpu.add_argument("--policy", choices=[p.name.lower() for p in Policy], help="override the scenario's policy")
    vnpu.add_argument("--vcd", metavar="FILE", help=WAVES_HELP)
    vnpu.add_argument("--json", action="store_true",
                      help="print the results as JSON on stdout (progress goes to stderr)")
    vnpu.set_defaults(func=cmd_vnpu)

    sweep = sub.add_parser("sweep", help="sweep models x configs x policies x tenants x loads on Ray",
                           description="Run every point of a sweep spec (YAML/JSON: models, configs, policies, "
                                       "tenants, loads; optional hbm_latency, data, poll_cycles) on the perf "
                                       "backend as Ray tasks, and write sweep.csv and sweep.png.")
    sweep.add_argument("spec", help="sweep spec (.yaml, .yml or .json)")
    sweep.add_argument("--out", default="build/sweep", help="output directory (default: %(default)s)")
    sweep.add_argument("--address", help="join this Ray cluster (default: start a local Ray)")
    sweep.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    sweep.set_defaults(func=cmd_sweep)

    cluster = sub.add_parser("cluster", help="serve many models on many pNPUs: simulate, table, train",
                             add_help=False, prefix_chars="\0")
    cluster.add_argument("cluster_args", nargs=argparse.REMAINDER)
    cluster.set_defaults(func=cmd_cluster)
    return parser


def main(argv=None):
    """Run ``tcloud`` with the arguments ``argv`` (default the process's); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
        sys.stdout.flush()
    except TcloudError as exc:
        print(f"tcloud: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): exit as POSIX tools do, without a traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file no check above named (a directory on its path cannot be searched, ...)
        if exc.filename is None:
            raise
        print(f"tcloud: error: cannot access {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
