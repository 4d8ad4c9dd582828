"""`python -m tools ...` is the `ddfs` command (for tests and source checkouts)."""

import sys

from tools.cli import main

sys.exit(main())
