"""What an image verifier installed before trustd 0.2 imports.

``install.sh --containerd-verifier`` wrote a file into containerd's ``bin_dir`` that runs
``from trustd.verifier import main``; this keeps such a file working after an upgrade, and says
once on stderr that a reinstall writes the current one.
"""

import sys

from trustd.programs.image_verifier import main

sys.stderr.write(
    "trustd-image-verifier: this verifier file predates trustd 0.2; run "
    "install.sh --containerd-verifier again to replace it\n"
)

__all__ = ["main"]
