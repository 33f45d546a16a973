"""Kernel library: tensor operators lowered to uTOp programs for a given ArchConfig."""

from .elementwise import elementwise, elementwise_reference
from .gemm import GemmPlan, Requant, gemm, plan_gemm, requantf_reference, requantf_scale_words
from .program import FirmwareError, ProgramBuilder, UtopRef

__all__ = ["gemm", "elementwise", "elementwise_reference", "plan_gemm", "GemmPlan", "Requant",
           "requantf_scale_words", "requantf_reference", "ProgramBuilder", "UtopRef", "FirmwareError"]
