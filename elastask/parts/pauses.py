"""Pauses in Redis (``elastask pause`` / ``resume``), merged with elastask.yaml's ``paused:`` list and
Kibana's own execution pause as a node last reported it (``keys.KIBANA_PAUSE``, loops/pauses/kibana.py).

Redis holds them for every worker and across restarts. If Redis loses them (a flush, a restart
without data, a failover to a replica that missed the write), a process that saw them before says
so loudly and writes back what it remembers: a pause never lifts by accident. The hash keeps a
``_kept`` field after the last resume, so "missing" means lost, not resumed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from elastask import keys
from elastask.core.clock import epoch_ms
from elastask.core.intervals import parse_date
from elastask.core.pauses import Pause, PauseSet, kibana_pauses, parse_entry
from elastask.parts.memory import ProcessMemory
from elastask.parts.redis_errors import redis_errors

log = logging.getLogger(__name__)

_KEPT = "_kept"


@dataclass(frozen=True)
class KibanaPauseState:
    """Kibana's execution pause as ``node_url`` reported it at ``read_ms``. Not ``readable``: the
    node has no such route or refused us (``detail``); what was known before is kept."""

    readable: bool
    paused: bool
    paused_types: tuple[str, ...]
    updated_at: str | None
    updated_by: str | None
    node_url: str
    read_ms: int
    detail: str = ""

    @property
    def since_ms(self) -> int | None:
        try:
            return epoch_ms(parse_date(self.updated_at)) if self.updated_at else None
        except ValueError:
            return None

    def pauses(self) -> tuple[Pause, ...]:
        return kibana_pauses(self.paused, self.paused_types, self.since_ms)

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> KibanaPauseState | None:
        try:
            data: dict[str, Any] = json.loads(raw) if raw else {}
            return cls(**{**data, "paused_types": tuple(data.get("paused_types", ()))}) if data else None
        except (ValueError, TypeError):
            return None  # written by another version: the next question writes it again

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class PauseStore:
    """Reads and changes the pauses; ``configured``: elastask.yaml's ``paused:`` entries."""

    def __init__(self, client: redis.Redis, configured: Sequence[str] = (), seen: ProcessMemory | None = None) -> None:
        """``seen``: the process's memory, where what it last saw in Redis is kept to be written back if
        Redis loses it (a worker's or the exporter's runtime memory; a command's own by default)."""
        self.client = client
        self.configured = tuple(configured)
        self.memory = seen if seen is not None else ProcessMemory()

    def read(self, now_ms: int) -> PauseSet:
        """Everything paused now (Redis's and elastask.yaml's); restores Redis's if it was lost."""
        with redis_errors("reading the pauses"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(keys.PAUSED)
            pipe.get(keys.KIBANA_PAUSE)
            raw, kibana_raw = cast(tuple[dict[bytes, bytes], bytes | None], pipe.execute())
        stored = {k.decode(): int(v) for k, v in raw.items() if k.decode() != _KEPT}
        with self.memory.lock:
            if not raw and self.memory.pauses_seen:
                stored = dict(self.memory.pauses_seen)
                self._restore(stored, now_ms)
            self.memory.pauses_seen = dict(stored)
        pauses = [Pause(*parse_entry(text), since_ms=since, source="redis") for text, since in sorted(stored.items())]
        pauses += [Pause(*parse_entry(text), since_ms=None, source="config") for text in self.configured]
        kibana = KibanaPauseState.from_json(kibana_raw)
        if kibana is not None:
            pauses += kibana.pauses()
        return PauseSet(tuple(pauses))

    def kibana_state(self) -> KibanaPauseState | None:
        """Kibana's execution pause as a node last reported it; None: never read (or Redis lost it)."""
        with redis_errors("reading Kibana's execution pause"):
            return KibanaPauseState.from_json(cast(bytes | None, self.client.get(keys.KIBANA_PAUSE)))

    def record_kibana(self, state: KibanaPauseState) -> None:
        with redis_errors("recording Kibana's execution pause"):
            self.client.set(keys.KIBANA_PAUSE, state.to_json())

    def pause(self, entries: Iterable[str], now_ms: int) -> None:
        """Pause these (``all``, ``type:X``, ``node:Y``); one already paused keeps its ``since``."""
        entries = list(entries)
        for text in entries:
            parse_entry(text)
        pipe = self.client.pipeline(transaction=True)
        for text in entries:
            pipe.hsetnx(keys.PAUSED, text, str(now_ms))
        pipe.hset(keys.PAUSED, _KEPT, "1")
        with redis_errors("pausing"):
            pipe.execute()
        with self.memory.lock:
            self.memory.pauses_seen = {**self.memory.pauses_seen, **dict.fromkeys(entries, now_ms)}

    def resume(self, entries: Iterable[str] | None = None) -> list[str]:
        """Resume these, or (None) everything Redis holds; returns what was resumed. elastask.yaml's
        ``paused:`` entries stay: they are lifted in the file."""
        with redis_errors("resuming"):
            current = [k.decode() for k in cast(list[bytes], self.client.hkeys(keys.PAUSED)) if k.decode() != _KEPT]
            chosen = current if entries is None else [text for text in entries if text in current]
            pipe = self.client.pipeline(transaction=True)
            if chosen:
                pipe.hdel(keys.PAUSED, *chosen)
            pipe.hset(keys.PAUSED, _KEPT, "1")
            pipe.execute()
        with self.memory.lock:
            self.memory.pauses_seen = {k: v for k, v in self.memory.pauses_seen.items() if k not in chosen}
        return chosen

    def restored_at_ms(self) -> int | None:
        """When a worker last wrote back pauses after Redis lost them, if it ever did (and Redis kept that)."""
        with redis_errors("reading when the pauses were restored"):
            value = cast(bytes | None, self.client.get(keys.PAUSES_RESTORED))
        return None if value is None else int(value)

    def _restore(self, remembered: dict[str, int], now_ms: int) -> None:
        log.error(
            "Redis lost the pauses (a flush, a restart without data or a failover to a replica that missed "
            "them): writing back what this process remembers: %s. Check them with `elastask status`; lift "
            "them with `elastask resume`",
            ", ".join(sorted(remembered)),
        )
        pipe = self.client.pipeline(transaction=True)
        for text, since in remembered.items():
            pipe.hsetnx(keys.PAUSED, text, str(since))
        pipe.hset(keys.PAUSED, _KEPT, "1")
        pipe.set(keys.PAUSES_RESTORED, str(now_ms))
        try:
            pipe.execute()
        except redis.RedisError as e:
            log.error("could not write the pauses back to Redis (the next look tries again): %s", e)
