"""The test bed's Redis: Debian's redis-server on a free loopback port, no persistence."""

from __future__ import annotations

import shutil
from pathlib import Path

from elastask_bed.errors import TestbedError
from elastask_bed.testbed.process import ManagedProcess, free_port, port_open
from elastask_bed.testbed.tls import CertPair

REDIS_HINT = "install Redis: apt-get install redis-server"


class RedisServer:
    """redis-server on 127.0.0.1; ``restart`` keeps the port and loses the data, like a crash."""

    def __init__(
        self,
        workdir: Path,
        *,
        extra_args: list[str] | None = None,
        name: str = "Redis",
        tls: CertPair | None = None,
        ca: Path | None = None,
        password: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.ca = ca
        self.password = password
        self.port = 0
        self.extra_args = extra_args or []
        self.name = name
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The URL of database 0: ``rediss://`` with TLS, with the password when one is required."""
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port (or the same one on restart) and wait until it accepts connections."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise TestbedError(f"redis-server not found: {REDIS_HINT}")
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--protected-mode",
            "yes",
            *self.extra_args,
            *self._tls_args(),
        ]
        self.process = ManagedProcess(self.name, argv, self.workdir / "redis.log")
        self.process.start()
        self.process.wait_until(lambda: port_open(self.port), 30)

    def _tls_args(self) -> list[str]:
        args = ["--requirepass", self.password] if self.password else []
        if self.tls is None:
            return args
        # TLS only: the plain port is closed, clients are not asked for certificates.
        return [
            *args,
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls.cert),
            "--tls-key-file",
            str(self.tls.key),
            "--tls-ca-cert-file",
            str(self.ca),
            "--tls-auth-clients",
            "no",
        ]

    def restart(self) -> None:
        """Kill and start again on the same port with an empty dataset."""
        if self.process is not None:
            self.process.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None:
            self.process.stop()
            self.process = None
