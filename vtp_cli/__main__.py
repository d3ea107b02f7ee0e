"""`python -m vtp_cli`: the `vtp` command."""

import sys

from vtp_cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
