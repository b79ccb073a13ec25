"""The Lua scripts in ``lua/``, read once and registered with a client (they reload after NOSCRIPT).

Each ``.lua`` file's header names its KEYS and ARGV. The ledger's scripts start with ``now.lua``
(Redis's clock) and ``prune.lua`` (drop expired leases): one copy of each, included at load.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script


@cache
def source(name: str, *includes: str) -> str:
    """The text of ``lua/<name>.lua``, after the ``includes`` in order."""
    folder = files("elastask.parts") / "lua"
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in (*includes, name))


def register(client: redis.Redis, name: str, *includes: str) -> Script:
    """A script object that runs by its SHA and loads itself again on NOSCRIPT (a promoted replica)."""
    return client.register_script(source(name, *includes))
