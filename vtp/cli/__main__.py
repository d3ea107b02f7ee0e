"""`python -m vtp.cli`: the `vtp` command."""

import sys

from vtp.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
