"""Reading and writing the files a user names: one rule for every command, and errors that name the path."""

import os
from pathlib import Path

import numpy as np

from tcloud.isa.errors import TcloudError


def output_file(path, what="output"):
    """The one rule for every file a command writes: refuse a directory, create missing parent
    directories, and turn any failure into a :class:`TcloudError` naming the path.

    Returns
    -------
    Path
    """
    path = Path(path)
    if path.is_dir():
        raise TcloudError(f"{what} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TcloudError(f"cannot create the directory of {what} {path}: {exc.strerror}") from None
    return path


def output_dir(path, what="output directory"):
    """Create ``path`` (and its parents) now, before any work, or raise :class:`TcloudError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TcloudError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TcloudError(f"cannot create {what} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise TcloudError(f"{what} {path} is not writable")
    return path


def write_file(path, data, what="output"):
    """Write ``data`` (str or bytes) to ``path`` under :func:`output_file`'s rule."""
    path = output_file(path, what)
    try:
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    except OSError as exc:
        raise TcloudError(f"cannot write {what} {path}: {exc.strerror}") from None
    return path


def read_bytes(path):
    """The bytes of ``path``, or a :class:`TcloudError` naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TcloudError(f"cannot read {path}: {exc.strerror}") from None


def read_text(path, what="a text file"):
    """The text (UTF-8) of ``path``, or a :class:`TcloudError` naming it, e.g. for a binary file."""
    try:
        return read_bytes(path).decode()
    except UnicodeDecodeError as exc:
        raise TcloudError(f"{path} is not {what} (byte {exc.start} is not UTF-8 text)") from None


NPY_MAGIC = b"\x93NUMPY"


def load_npy(path, what="input"):
    """The array in the ``.npy`` file ``path`` (no pickled objects), or a :class:`TcloudError` saying why not."""
    if not read_bytes(path).startswith(NPY_MAGIC):
        raise TcloudError(f"{what} {path} is not a .npy file (write arrays with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TcloudError(f"cannot load {what} {path}: {exc}") from None
