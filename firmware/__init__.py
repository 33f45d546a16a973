"""Kernel library: tensor operators lowered to uTOp programs for a given ArchConfig."""

from .elementwise import elementwise, elementwise_footprint, elementwise_reference
from .gemm import GemmPlan, Requant, gemm, gemm_footprint, plan_gemm, requantf_reference, requantf_scale_words
from .program import FirmwareError, Footprint, ProgramBuilder, UtopRef

__all__ = ["gemm", "gemm_footprint", "elementwise", "elementwise_footprint", "elementwise_reference", "plan_gemm",
           "GemmPlan", "Requant", "requantf_scale_words", "requantf_reference", "Footprint", "ProgramBuilder",
           "UtopRef", "FirmwareError"]
