"""Registry credentials as kubelet sends them with a pull."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Credentials:
    """Registry credentials, as kubelet sends them with a pull (CRI AuthConfig).

    The secrets never appear in ``repr``, so they cannot leak into a log line or a message.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.username or self.identity_token or self.registry_token)
