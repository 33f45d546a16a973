"""``python -m tcloud`` and the ``tcloud`` console script.

``tcloud`` stays a namespace package (each room is a folder of its own, mapped to ``tcloud.<folder>``
in pyproject.toml); this module is all that lives at its top.
"""

import sys


def run():
    """Entry point of the ``tcloud`` command: :func:`tcloud.runtime.cli.main`, imported here so that an
    interrupt while the libraries load exits as one later does (status 130, no traceback)."""
    try:
        from tcloud.runtime.cli import main
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
