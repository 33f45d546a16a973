"""`tcloud check`, and the check `tcloud asm` runs by default (issue 11, item 9), as a user runs them."""

import pytest

from test_cli import EXAMPLES, tcloud


RACY = """.config tiny
.footprint hbm=0x400 sram=0x200
.entry 0x200
.input X i32 4x8 offset=0x0
.output Y i32 4x8 offset=0x100
utop cls=dma signal=t0
  dma.load sram=0x0 hbm=0x0 rows=4 row_bytes=32 hbm_stride=32 sram_stride=32
utop cls=ve signal=t1                          # forgot: wait0=t0 count0=1
  ve.shape rows=4 dst_stride=32 src1_stride=32
  ve.relu dst=0x0 src=0x0 n=8
utop cls=dma wait0=t1 count0=1
  dma.store sram=0x0 hbm=0x100 rows=4 row_bytes=32 hbm_stride=32 sram_stride=32
halt
"""


def test_check_finds_a_missing_wait_and_asm_refuses_it_unless_told(tmp_path):
    source = tmp_path / "racy.s"
    source.write_text(RACY)
    result = tcloud("check", str(source))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{source}:8: write-after-write race with the uTOp at line 6 on sram byte 0x0" in result.stderr
    assert "tcloud: error:" in result.stderr.splitlines()[-1]
    image = tmp_path / "racy.tcimg"
    result = tcloud("asm", str(source), "-o", str(image))
    assert result.returncode == 1 and "--no-check" in result.stderr and not image.exists()
    result = tcloud("asm", str(source), "-o", str(image), "--no-check")
    assert result.returncode == 0 and image.exists(), result.stderr
    result = tcloud("check", str(image))  # an image has no source lines: pcs instead
    assert result.returncode == 1 and f"{image}: pc 0x220: write-after-write race with the uTOp at pc 0x200" \
        in result.stderr
    fixed = tmp_path / "fixed.s"
    fixed.write_text(RACY.replace("utop cls=ve signal=t1", "utop cls=ve signal=t1 wait0=t0 count0=1"))
    result = tcloud("asm", str(fixed))
    assert result.returncode == 0 and "no races among 3 uTOps" in result.stdout, result.stderr


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.s")), ids=lambda p: p.name)
def test_check_passes_the_examples(example):
    result = tcloud("check", str(example))
    assert result.returncode == 0 and "no races" in result.stdout, result.stderr


def test_asm_refuses_a_wrong_body_at_its_line_and_warns_of_a_fault(tmp_path):
    bad = tmp_path / "bad.s"
    bad.write_text(".config tiny\nutop cls=ve len=2\n  ve.fill dst=0 n=1\nhalt\n")
    result = tcloud("asm", str(bad))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{bad}:2: utop declares len=2 but 1 body instruction(s) follow it" in result.stderr
    faulty = tmp_path / "faulty.s"
    faulty.write_text(".config tiny\n.footprint hbm=0x100 sram=0x40\nutop cls=ve\n  ve.fill dst=0x40 n=1\nhalt\n")
    result = tcloud("asm", str(faulty), "--no-check")  # a test of the hardware's fault: assembled, with a warning
    assert result.returncode == 0 and f"{faulty}:4: AsmWarning: the program faults here with SRAM_BOUNDS" \
        in result.stderr and "ve.fill dst=0x40 n=1" in result.stderr
    result = tcloud("check", str(faulty))
    assert result.returncode == 1 and f"{faulty}:4: the program faults with SRAM_BOUNDS" in result.stderr


def test_check_refuses_what_is_not_a_program(tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\xff\xfe\x00binary")
    result = tcloud("check", str(blob))
    assert result.returncode == 1 and "neither a program image nor assembly text" in result.stderr
    assert "Traceback" not in result.stderr
