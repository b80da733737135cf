"""`python -m distinception.cli`: the same as the `distinception` command."""

import sys

from distinception.cli import main

if __name__ == "__main__":  # importing this module (as tools that walk packages do) runs nothing
    sys.exit(main())
