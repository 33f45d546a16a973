"""Kernel library: tensor operators lowered to uTOp programs for a given ArchConfig."""

from .gemm import GemmPlan, Requant, gemm, plan_gemm
from .program import FirmwareError, ProgramBuilder, UtopRef

__all__ = ["gemm", "plan_gemm", "GemmPlan", "Requant", "ProgramBuilder", "UtopRef", "FirmwareError"]
