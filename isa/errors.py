"""Exceptions shared by every TCloud layer.

Every error a user can cause derives from :class:`TcloudError`, so a command-line front end can
catch it, print its message and exit non-zero without a traceback.
"""


class TcloudError(Exception):
    """Base class of every error caused by bad input to TCloud."""


class ConfigError(TcloudError, ValueError):
    """An :class:`~tcloud.isa.config.ArchConfig` is inconsistent or unknown."""


class EncodingError(TcloudError, ValueError):
    """An instruction cannot be encoded or decoded (unknown mnemonic/opcode, field out of range)."""


class AsmError(TcloudError, ValueError):
    """Assembly text is malformed; the message names the line.

    Parameters
    ----------
    message : str
        What is wrong.
    line : int, optional
        1-based line number in the source text.
    source : str, optional
        Name of the source (file path) for the message.
    """

    def __init__(self, message, *, line=None, source=None):
        self.line = line
        self.source = source
        where = ""
        if line is not None:
            where = f"{source or '<text>'}:{line}: "
        elif source is not None:
            where = f"{source}: "
        super().__init__(where + message)


class AsmWarning(UserWarning):
    """Assembly text that assembles but would fault when run (an address outside the
    ``.footprint``, a wait no earlier uTOp can satisfy, ...).

    The assembler issues it with :func:`warnings.warn_explicit` at the source file and line, so
    Python prints ``file.s:LINE: AsmWarning: ...`` followed by the line itself. It is a warning, not an
    :class:`AsmError`, because a program written to provoke a fault (a test of the hardware's
    isolation) is legitimate.
    """


class ImageError(TcloudError, ValueError):
    """A program image cannot be loaded."""


class BadMagicError(ImageError):
    """The file is not a TCloud program image."""


class UnsupportedVersionError(ImageError):
    """The image was written in a format version this loader does not read."""


class ConfigMismatchError(ImageError):
    """The image was built for a different :class:`ArchConfig`."""


class TruncatedImageError(ImageError):
    """The image ends before its header says it should."""


class CorruptImageError(ImageError):
    """The image's checksum or internal layout is wrong."""


class HostCommandError(TcloudError, ValueError):
    """A privileged (hypervisor) command was rejected by the device."""
