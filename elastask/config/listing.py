"""elastask.yaml, the commented listing of every key with its default, rendered from the declarations.

``python -m elastask.config.listing > elastask.yaml`` writes it; a unit test keeps the shipped file
equal to it.
"""

from __future__ import annotations

from typing import Any

import yaml

from elastask.config.load import SCHEMA
from elastask.config.values import env_name

HEADER = """\
# elastask configuration. Every key is shown with its default.
# The file comes from --config or ELASTASK_CONFIG (default ./elastask.yaml).
# Any key can be overridden by an environment variable: ELASTASK_ + the key upper-cased with dots
# as underscores, e.g. ELASTASK_ELASTICSEARCH_HOST, ELASTASK_REDIS_URL, ELASTASK_KIBANA_CAPACITY;
# ELASTASK_KIBANA_HOSTS takes comma-separated URLs. Prefer the environment for secrets.
# (Generated from elastask/config/settings.py: python -m elastask.config.listing > elastask.yaml)
"""


def render() -> str:
    """The listing: a header, then each key's doc as comments above ``key: default``, by section."""
    lines = [HEADER.rstrip("\n")]
    current = None
    for name, key in SCHEMA.items():
        section, _, leaf = name.rpartition(".")
        indent = "  " if section else ""
        if section != current:
            lines.append("")
            if section:
                lines.append(f"{section}:")
            current = section
        elif key.doc and not section:
            lines.append("")
        lines.extend(f"{indent}# {line}".rstrip() for line in key.doc.splitlines())
        lines.append(f"{indent}{leaf}:{_value(key.default, indent)}{_env_hint(name, key.kind)}")
    return "\n".join(lines) + "\n"


def _value(value: Any, indent: str) -> str:
    if isinstance(value, list):
        return "".join(f"\n{indent}  - {_scalar(item)}" for item in value) if value else " []"
    return " " + _scalar(value)


def _scalar(value: Any) -> str:
    if value == {}:
        return "{}"
    text: str = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _env_hint(name: str, kind: str) -> str:
    """Secrets say their environment variable: the better place for them."""
    return f"  # {env_name(name)}" if kind.startswith("secret") else ""


if __name__ == "__main__":
    print(render(), end="")
