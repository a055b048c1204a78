"""``python -m probcat ...``: the ``probcat`` command, for an environment whose scripts
folder is not on ``PATH`` (a batch job's Python, a notebook's ``!python -m probcat``)."""

import sys

from probcat.cli import main

if __name__ == "__main__":
    sys.exit(main())
