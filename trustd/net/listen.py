"""A TCP address to listen on, written ``host:port``: the one parser of it.

``127.0.0.1:9879``, ``0.0.0.0:9879``, ``localhost:9879``, ``[::1]:9879``. An IPv6 address is
written in brackets (``::1:9879`` is ambiguous) and returned without them, as ``bind()`` takes it.
"""

from __future__ import annotations

import json
import re

_HOST_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


class InvalidListenAddress(ValueError):
    """Not a ``host:port`` address; the message says what is wrong, as a config message does
    after the key (``port must be a number from 1 to 65535``)."""

    def __init__(self, problem: str, *, not_host_port: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        # The whole form is wrong (not a bad host or port): callers may say how to write it.
        self.not_host_port = not_host_port


def parse_listen_address(
    text: str, *, default_host: str | None = None, any_port: bool = False
) -> tuple[str, int]:
    """``(host, port)`` of ``text``, IPv6 hosts without brackets. ``:port`` means
    ``default_host`` when one is given; port 0 (the system picks one) only with ``any_port``."""
    host, colon, port = text.rpartition(":")
    if not host and colon and default_host is not None:
        host = default_host
    if not colon or not host:
        raise InvalidListenAddress('must be host:port, e.g. "127.0.0.1:9879"', not_host_port=True)
    lowest = 0 if any_port else 1
    if not (port.isascii() and port.isdigit()) or not lowest <= int(port) <= 65535:
        raise InvalidListenAddress(f"port must be a number from {lowest} to 65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidListenAddress("IPv6 address must be in brackets, e.g. [::1]:9879")
        import ipaddress  # only here: `trustctl` starts quicker without it

        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidListenAddress(f"{host} is not an IPv6 address") from None
        return host[1:-1], int(port)
    if ":" in host:
        raise InvalidListenAddress("IPv6 address must be in brackets, e.g. [::1]:9879")
    if not _HOST_NAME.fullmatch(host):
        shown = json.dumps(host[:200] + ("..." if len(host) > 200 else ""))
        raise InvalidListenAddress(f"{shown} is not a host name or IPv4 address")
    return host, int(port)
