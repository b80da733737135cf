"""`python -m distinception.cli`: the same as the `distinception` command."""

import sys

from distinception.cli import main

sys.exit(main())
