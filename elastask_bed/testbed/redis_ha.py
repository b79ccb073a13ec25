"""Redis made highly available for the test bed: one master, one replica, three sentinels (Debian's redis-server).

``url`` is what elastask's ``redis.url`` takes (``sentinel://...;...``) with ``master_name``; the
fault helpers kill the master and hold the replica back so a failover loses the last writes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, cast

import redis

from elastask_bed.errors import TestbedError
from elastask_bed.testbed.process import ManagedProcess, free_port, port_open
from elastask_bed.testbed.redis_server import REDIS_HINT, RedisServer

MASTER_NAME = "elastask"


class RedisSentinelGroup:
    """A master, a replica and three sentinels on loopback ports (quorum 2, down after 1 s)."""

    def __init__(self, workdir: Path, *, down_after_ms: int = 1000) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        # DEBUG SLEEP holds a replica back (Redis 7 turns the command off by default).
        debug = ["--enable-debug-command", "yes"]
        self.servers = [
            RedisServer(workdir / "redis-a", extra_args=debug, name="Redis A"),
            RedisServer(workdir / "redis-b", extra_args=debug, name="Redis B"),
        ]
        self.sentinel_ports: list[int] = []
        self.sentinels: list[ManagedProcess] = []

    @property
    def url(self) -> str:
        """``redis.url`` for elastask: every sentinel."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)

    def env(self) -> dict[str, str]:
        """The ``ELASTASK_*`` variables that point elastask at this group."""
        return {"ELASTASK_REDIS_URL": self.url, "ELASTASK_REDIS_MASTER_NAME": MASTER_NAME}

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise TestbedError(f"redis-server not found: {REDIS_HINT}")
        master, replica = self.servers
        master.start()
        replica.extra_args = [*replica.extra_args, "--replicaof", "127.0.0.1", str(master.port)]
        replica.start()
        for index in range(3):
            port = free_port()
            folder = self.workdir / f"sentinel-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            process = ManagedProcess(f"Sentinel {index}", [binary, str(config), "--sentinel"], folder / "sentinel.log")
            process.start()
            process.wait_until(lambda port=port: port_open(port), 30)  # type: ignore[misc]
            self.sentinel_ports.append(port)
            self.sentinels.append(process)
        self.wait_until(lambda: self.replica_in_sync(), 30, "the replica to sync")

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        client = redis.Redis(port=self.sentinel_ports[0], socket_timeout=2)
        try:
            _host, port = client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", MASTER_NAME
            )
            return int(port)
        finally:
            client.close()

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def replica_in_sync(self) -> bool:
        master = redis.Redis(port=self.master().port, socket_timeout=2)
        try:
            info = cast(dict[str, Any], master.info("replication"))
            return int(info.get("connected_slaves", 0)) >= 1
        finally:
            master.close()

    def hold_replica_back(self, seconds: float) -> None:
        """Block the replica (``DEBUG SLEEP``): writes to the master meanwhile are not replicated yet."""
        replica = next(s for s in self.servers if s.port != self.master_port())
        client = redis.Redis(port=replica.port, socket_timeout=1)
        try:
            client.execute_command("DEBUG", "SLEEP", str(seconds))  # type: ignore[no-untyped-call]
        except redis.TimeoutError:
            pass  # the command holds the server; the answer comes when it wakes
        finally:
            client.close()

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        master = self.master()
        assert master.process is not None
        master.process.kill()
        return master.port

    def wait_for_failover(self, old_port: int, timeout_s: float = 60) -> float:
        """Wait until the sentinels name a new master; the seconds it took."""
        started = time.monotonic()
        self.wait_until(lambda: self._safe_master_port() not in (old_port, None), timeout_s, "a failover")
        return time.monotonic() - started

    def _safe_master_port(self) -> int | None:
        try:
            return self.master_port()
        except redis.RedisError:
            return None

    @staticmethod
    def wait_until(predicate: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)
        raise TestbedError(f"timed out after {timeout_s:.0f}s waiting for {what}")

    def stop(self) -> None:
        for process in self.sentinels:
            process.stop()
        for server in self.servers:
            server.stop()
