"""RTL verification: scoreboards against the golden model, program checkers and (with the RTL)
cocotb testbenches and bus-functional models."""

from .races import Race, find_races, happens_before

__all__ = ["Race", "find_races", "happens_before"]

from .random_programs import random_program  # noqa: E402

__all__ += ["random_program"]
