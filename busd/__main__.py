"""`python -m busd …` is the `bus` command."""

import sys

from busd.cli.main import main

sys.exit(main())
