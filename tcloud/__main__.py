"""``python -m tcloud``: the ``tcloud`` command line."""

import sys

from tcloud.runtime.cli import main

sys.exit(main())
