"""``python3 -m trustd``: the same as the ``trustd`` command."""

import sys

from trustd.programs.trustd_command import main as trustd_main

sys.exit(trustd_main())
