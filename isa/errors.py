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
        if source is not None or line is not None:
            where = f"{source or '<text>'}:{line if line is not None else '?'}: "
        super().__init__(where + message)


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
