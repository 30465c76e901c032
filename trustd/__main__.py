"""``python3 -m trustd``: the same as the ``trustd`` command."""

import sys

from trustd.programs.cli import trustd_main

sys.exit(trustd_main())
