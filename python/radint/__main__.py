"""``python -m radint``: the ``radint`` command (for environments without its entry point on
PATH, e.g. a build tree on PYTHONPATH)."""

import sys

from radint.cli import main

if __name__ == "__main__":
    sys.exit(main())
