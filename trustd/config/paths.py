"""Where the config file is: the one default, and the one way of choosing it.

``trustd``, ``trustctl`` and the image verifier all take the config file from ``-c FILE`` (or
``--config FILE``) when given, else from ``$TRUSTD_CONFIG`` when set and not empty, else
``DEFAULT_CONFIG``. The short-lived programs' fast paths import this module, so it imports nothing
the interpreter has not loaded at start-up.
"""

from __future__ import annotations

import os

DEFAULT_CONFIG = "/etc/trustd/trustd.toml"
CONFIG_VARIABLE = "TRUSTD_CONFIG"
# server.verifier_socket's default; the fast paths need it without reading the config's modules.
DEFAULT_VERIFIER_SOCKET = "/run/trustd/verify.sock"


def config_file(option: str | None) -> str:
    """The config file to read: ``option`` (the ``-c`` argument), else ``$TRUSTD_CONFIG``, else
    the default; an empty option or variable counts as not given."""
    return option or os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG
