"""``python -m tcloud``: the ``tcloud`` command line.

``tcloud`` stays a namespace package (each room is a folder of its own, mapped to ``tcloud.<folder>``
in pyproject.toml); this module is all that lives at its top.
"""

import sys

from tcloud.runtime.cli import main

sys.exit(main())
