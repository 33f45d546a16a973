"""RTL verification: scoreboards against the golden model, program checkers and (with the RTL)
cocotb testbenches and bus-functional models."""

from .races import ProgramCheck, Race, check_program, find_races, happens_before, read_program

__all__ = ["ProgramCheck", "Race", "check_program", "find_races", "happens_before", "read_program"]

from .random_programs import random_program  # noqa: E402

__all__ += ["random_program"]
