"""The race checker finds missing dependencies and accepts correctly synchronised programs."""

from tcloud.isa import EngineClass, Instr
from tcloud.verif import find_races, happens_before

from conftest import new_tenant, utop


def trace_of(program):
    tenant = new_tenant()
    tenant.machine.trace = []
    tenant.load(program + [Instr("halt")])
    tenant.machine.run()
    return tenant.machine.trace


def fill(addr, **header):
    return utop(EngineClass.VE, [Instr("ve.fill", dst=addr, n=4, value=1)], **header)


def copy(dst, src, **header):
    return utop(EngineClass.VE, [Instr("ve.copy", dst=dst, src=src, n=4)], **header)


def test_missing_dependency_is_a_race():
    races = find_races(trace_of(fill(0x0) + copy(0x100, 0x0)))
    assert len(races) == 1
    race = races[0]
    assert race.kind == "read-after-write" and race.space == "sram" and race.address == 0x0
    assert "read-after-write race" in str(race)


def test_token_dependency_removes_the_race():
    assert find_races(trace_of(fill(0x0, signal=1) + copy(0x100, 0x0, wait0=0, count0=1))) == []


def test_write_after_read_and_write_after_write():
    kinds = {r.kind for r in find_races(trace_of(copy(0x100, 0x0) + fill(0x0) + fill(0x108)))}
    assert kinds == {"write-after-read", "write-after-write"}


def test_partial_consumption_orders_nothing():
    # Two producers signal t0 but the consumer waits for one signal: it cannot know which finished.
    program = fill(0x0, signal=1) + fill(0x40, signal=1) + copy(0x100, 0x0, wait0=0, count0=1)
    assert len(find_races(trace_of(program))) == 1
    program = fill(0x0, signal=1) + fill(0x40, signal=1) + copy(0x100, 0x0, wait0=0, count0=2)
    assert find_races(trace_of(program)) == []


def test_fence_orders_everything_before_it():
    assert find_races(trace_of(fill(0x0) + [Instr("fence")] + copy(0x100, 0x0))) == []


def test_ordering_is_transitive():
    program = (fill(0x0, signal=1) + fill(0x200, wait0=0, count0=1, signal=2)
               + copy(0x100, 0x0, wait0=1, count0=1))
    assert happens_before(trace_of(program)[:3]) == [0, 0b1, 0b11]
    assert find_races(trace_of(program)) == []


def test_disjoint_interleaved_rows_do_not_conflict():
    # Two uTOps write alternate rows of one region: bounding boxes overlap, bytes do not.
    rows = lambda start: utop(EngineClass.VE, [Instr("ve.shape", rows=4, dst_stride=32),
                                              Instr("ve.fill", dst=start, n=4, value=1)])
    assert find_races(trace_of(rows(0x0) + rows(0x10))) == []
    assert len(find_races(trace_of(rows(0x0) + rows(0x1C)))) == 1


def test_check_program_runs_an_image_and_names_source_lines():
    from tcloud.isa import assemble
    from tcloud.isa.asm import instruction_lines
    from tcloud.verif import check_program

    text = (".config tiny\nutop cls=ve signal=t0\n  ve.fill dst=0x0 n=4\nutop cls=ve\n"
            "  ve.copy dst=0x100 src=0x0 n=4\nhalt\n")
    result = check_program(assemble(text))
    assert result.utops == 2 and len(result.races) == 1
    assert result.findings("p.s", instruction_lines(text)) == [
        "p.s:4: read-after-write race with the uTOp at line 2 on sram byte 0x0: no token wait or fence orders them"]
    fixed = text.replace("utop cls=ve\n", "utop cls=ve wait0=t0 count0=1\n")
    assert check_program(assemble(fixed)).findings("p.s") == []
