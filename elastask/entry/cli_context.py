"""What every subcommand of the ``elastask`` command shares: its context, and how it fails and prints JSON."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

from elastask.config import Settings, load_settings


class Context:
    """What every subcommand shares: the --config path, settings loaded on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    def runtime(self) -> Any:
        """The clients of this command (engine, Redis, Kibana), from the settings."""
        from elastask.runtime import build_runtime

        return build_runtime(self.settings)


def fail(error: Exception) -> NoReturn:
    """Print one line naming what is wrong and exit non-zero."""
    click.echo(f"elastask: {error}", err=True)
    sys.exit(2)


def dumps(value: Any) -> str:
    """JSON for --json outputs."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def now() -> datetime:
    """This machine's clock, for the commands that write or judge task documents."""
    return datetime.now(UTC)
