"""The TCloud instruction set: table, encoding, assembler, program images and the golden model.

The declarative table in :mod:`tcloud.isa.table` is the single source of truth; everything here is
derived from it.
"""

from .asm import assemble, assemble_code, disassemble, disassemble_code
from .config import PRESETS, ArchConfig, get_config
from .encoding import DecodeError, Instr, decode, decode_stream, encode, encode_stream
from .errors import (AsmError, AsmWarning, BadMagicError, ConfigError, ConfigMismatchError,
                     CorruptImageError, EncodingError, HostCommandError, ImageError, TcloudError,
                     TruncatedImageError, UnsupportedVersionError)
from .golden import Machine, requantize, requantize_fp32
from .image import ProgramImage, Segment, Symbol
from .table import (INSTRUCTIONS, NUM_TOKENS, POLICY_DOCS, ContextStatus, EngineClass, FaultCode,
                    InstructionSpec, Policy, parse_policy)

__all__ = [
    "ArchConfig", "PRESETS", "get_config",
    "Instr", "encode", "decode", "encode_stream", "decode_stream", "DecodeError",
    "assemble", "assemble_code", "disassemble", "disassemble_code",
    "ProgramImage", "Segment", "Symbol",
    "Machine", "requantize", "requantize_fp32",
    "INSTRUCTIONS", "NUM_TOKENS", "InstructionSpec", "EngineClass", "FaultCode", "ContextStatus",
    "Policy", "POLICY_DOCS", "parse_policy",
    "TcloudError", "ConfigError", "EncodingError", "AsmError", "AsmWarning", "ImageError",
    "BadMagicError", "UnsupportedVersionError", "ConfigMismatchError", "TruncatedImageError",
    "CorruptImageError", "HostCommandError",
]
