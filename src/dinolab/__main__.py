"""`python -m dinolab ...`: the command line where no `dinolab` script is on the PATH (torchrun, a bare checkout)."""

import sys

from dinolab.cli import main

sys.exit(main())
