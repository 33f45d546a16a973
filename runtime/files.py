"""Reading and writing the files a user names: one rule for every command, and errors that name the path."""

import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import yaml

from tcloud.isa.errors import TcloudError


def output_file(path, what="output"):
    """The one rule for every file a command writes: refuse a directory, another file that is not a
    regular one (a device, a pipe) or a directory the process cannot write into (:func:`write_file`
    replaces the file through a new one beside it, so a read-only file in a writable directory is
    replaced, as ``mv -f`` would), create missing parent directories, and turn any
    failure into a :class:`TcloudError` naming the path (so a command can check its outputs before
    its work).

    Returns
    -------
    Path
    """
    path = Path(path)
    mode = _mode(path, f"cannot write {what} {path}")
    if mode is not None and stat.S_ISDIR(mode):
        raise TcloudError(f"{what} {path} is a directory; give a file name")
    if mode is not None and not stat.S_ISREG(mode):
        raise TcloudError(f"{what} {path} exists and is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TcloudError(f"cannot create the directory of {what} {path}: {exc.strerror}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise TcloudError(f"cannot write {what} {path}: its directory is not writable")
    return path


def _mode(path, failure):
    """``path``'s ``st_mode``, ``None`` if there is nothing there, or a :class:`TcloudError` starting with
    ``failure`` (e.g. a directory on the way that cannot be searched)."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise TcloudError(f"{failure}: {exc.strerror}") from None


def output_dir(path, what="output directory"):
    """Create ``path`` (and its parents) now, before any work, or raise :class:`TcloudError`."""
    path = Path(path)
    mode = _mode(path, f"cannot create {what} {path}")
    if mode is not None and not stat.S_ISDIR(mode):
        raise TcloudError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TcloudError(f"cannot create {what} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TcloudError(f"{what} {path} is not writable")
    return path


def write_file(path, data, what="output"):
    """Write ``data`` (str or bytes) to ``path`` under :func:`output_file`'s rule, atomically: into a
    temporary file beside it, renamed over ``path`` once complete, so a failure or an interrupt never
    leaves a half-written file (an existing file stays as it was)."""
    path = output_file(path, what)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise TcloudError(f"cannot write {what} {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; give it a new file's mode
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TcloudError(f"cannot write {what} {path}: {exc.strerror}") from None
        raise
    return path


def write_figure(fig, path, what="plot", dpi=110):
    """Write the matplotlib figure ``fig`` as a PNG at ``path`` with :func:`write_file` (atomically,
    errors naming the path), close it and return the path."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return write_file(path, buffer.getvalue(), what)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_bytes(path):
    """The bytes of ``path``, or a :class:`TcloudError` naming it (also for a device or a pipe, which
    need not end)."""
    path = Path(path)
    mode = _mode(path, f"cannot read {path}")
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise TcloudError(f"cannot read {path}: not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TcloudError(f"cannot read {path}: {exc.strerror}") from None


def read_text(path, what="a text file"):
    """The text (UTF-8) of ``path``, or a :class:`TcloudError` naming it, e.g. for a binary file."""
    try:
        return read_bytes(path).decode()
    except UnicodeDecodeError as exc:
        raise TcloudError(f"{path} is not {what} (byte {exc.start} is not UTF-8 text)") from None


def parse_document(text, path):
    """The YAML or JSON (by ``path``'s suffix) document in ``text``, refusing a key given twice in one
    mapping (both parsers would keep the last silently).

    Raises
    ------
    ValueError
        ``not valid YAML: ...`` or ``not valid JSON: ...``, with the line where the parser stopped.
    """
    kind = "JSON" if Path(path).suffix == ".json" else "YAML"
    try:
        if kind == "JSON":
            return json.loads(text, object_pairs_hook=unique_pairs)
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"not valid {kind}: {exc}") from None
    except RecursionError:
        raise ValueError(f"not valid {kind}: nested too deeply") from None


def unique_pairs(pairs):
    """``object_pairs_hook`` for ``json.loads`` that refuses a key given twice in one object (ValueError)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} given twice in one object")
        seen.add(key)
    return dict(pairs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # SafeLoader names the node it expected
            return super().construct_mapping(node, deep)
        first = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # keys merged in (<<) may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                again = key in first
            except TypeError:  # an unhashable key: SafeLoader names it
                continue
            if again:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found key {key!r} again (first given on line {first[key] + 1})", key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"


NPY_MAGIC = b"\x93NUMPY"


def load_npy(path, what="input"):
    """The array in the ``.npy`` file ``path`` (no pickled objects), or a :class:`TcloudError` saying why not."""
    if not read_bytes(path).startswith(NPY_MAGIC):
        raise TcloudError(f"{what} {path} is not a .npy file (write arrays with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TcloudError(f"cannot load {what} {path}: {exc}") from None
