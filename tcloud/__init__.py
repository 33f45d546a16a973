"""TCloud: hardware-assisted NPU virtualization.

The rooms are subpackages: :mod:`tcloud.isa`, :mod:`tcloud.rtl`, :mod:`tcloud.firmware`,
:mod:`tcloud.runtime`, :mod:`tcloud.cluster` and :mod:`tcloud.verif`. ``python -m tcloud`` is the
``tcloud`` command line.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tcloud-npu")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"
