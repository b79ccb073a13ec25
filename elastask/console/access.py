"""Who may use the console's controls (pure): ``console.username`` / ``console.password`` of elastask.yaml.

No password configured, or ``console.read_only: true``: the console shows everything and changes
nothing (every control refuses). With one, a control needs a login with these credentials and the
page's CSRF token (console/app.py).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from elastask.config import Settings


@dataclass(frozen=True)
class Access:
    username: str
    password: str | None
    read_only: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        console = settings.console
        password = None if console.password is None else console.password.reveal()
        return cls(console.username, password or None, console.read_only or not password)

    def why_read_only(self) -> str | None:
        """Why the controls are off, in words that say how to turn them on (None: they are on)."""
        if self.password is None:
            return (
                "read-only: no console.password is configured (set it in elastask.yaml, ELASTASK_CONSOLE_PASSWORD "
                "or console.password_file, then restart elastask serve)"
            )
        if self.read_only:
            return "read-only: console.read_only is true in elastask.yaml"
        return None

    def admits(self, username: str, password: str) -> bool:
        """True for the configured credentials (compared in constant time); always False when read-only."""
        if self.read_only or self.password is None:
            return False
        same_user = hmac.compare_digest(username.encode(), self.username.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_user and same_password
