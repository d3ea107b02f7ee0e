import sys

from localfaas.cli import main

sys.exit(main())
