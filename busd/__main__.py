"""`python -m busd …` is the `bus` command."""

import sys

from busd.cli import main

sys.exit(main())
