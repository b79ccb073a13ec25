"""TLS and authentication end to end, on real servers: an HTTPS proxy in front of the engine with basic
auth and API keys, HTTPS simulated Kibana nodes with basic auth, Redis on a TLS port with a password.

Given/When/Then in each name. Each way it goes wrong is named by ``elastask check`` on its own row.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import TLS_CREDENTIALS, ProxyProcess
from elastask_bed.testbed.fleet import CeleryFleet
from tests.integration.harness import assert_no_violations, now, seed, task_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def tls_bed(testbed: Testbed) -> Iterator[Testbed]:
    """A TLS test bed sharing the session's engine: its own HTTPS proxy, HTTPS nodes and TLS Redis."""
    bed = Testbed(kibana_nodes=2, tls=True, engine=testbed.engine)
    bed.start()
    yield bed
    bed.stop()


def check(env: dict[str, str]) -> dict[str, str]:
    """``elastask check`` with only these settings: row name -> the row and its fix."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("ELASTASK_")}
    full.update(env, ELASTASK_CONFIG="")
    result = subprocess.run(
        [sys.executable, "-m", "elastask", "check"], capture_output=True, text=True, timeout=120, env=full
    )
    rows: dict[str, str] = {}
    current = ""
    for line in result.stdout.splitlines():
        if line.startswith(("ok", "PROBLEM", "WARNING")):
            current = line.split("  ")[1].strip() if "  " in line else line
            current = " ".join(line.split()[1:4])
            rows[current] = line
        elif current:
            rows[current] += "\n" + line
    rows["exit"] = str(result.returncode)
    secrets = [v for k, v in TLS_CREDENTIALS.items() if "password" in k or "key" in k]
    assert not any(secret in result.stdout + result.stderr for secret in secrets), "a secret was printed"
    return rows


def row(rows: dict[str, str], starts: str) -> str:
    found = [text for name, text in rows.items() if name.startswith(starts)]
    assert found, f"no row {starts!r} in {list(rows)}"
    return found[0]


def test_a_program_that_knows_only_the_exported_variables_reaches_every_part(
    tls_bed: Testbed, store: TaskStore, tmp_path: object
) -> None:
    env = tls_bed.env()
    assert env["ELASTASK_ELASTICSEARCH_HOST"].startswith("https://")
    assert env["ELASTASK_REDIS_URL"].startswith("rediss://") and env["ELASTASK_KIBANA_HOSTS"].startswith("https://")
    rows = check(env)
    assert rows["exit"] == "0", rows
    # And the dispatcher runs on them: 20 tasks pushed over HTTPS with basic auth, ledger on TLS Redis.
    assert tls_bed.simulator is not None
    seed(store.client, [new_task(f"tls-{i}", "sample", now=now()) for i in range(20)])
    fleet = CeleryFleet(tmp_path / "fleet", tls_bed, tls_bed.simulator, env=env)  # type: ignore[operator]
    try:
        fleet.worker(concurrency=2)
        fleet.beat()
        wait_for(lambda: task_count(store.client) == 0, 90, "20 tasks run over TLS")
    finally:
        fleet.stop()
    stats = tls_bed.simulator.stats()
    assert stats["totals"]["runs_finished"] == 20 and stats["totals"]["runs_started"] == 20  # each once
    assert_no_violations(stats)  # cap held, no overlapping run


def test_an_api_key_works_as_elasticsearch_takes_it(tls_bed: Testbed) -> None:
    env = tls_bed.env()
    del env["ELASTASK_ELASTICSEARCH_USERNAME"], env["ELASTASK_ELASTICSEARCH_PASSWORD"]
    env["ELASTASK_ELASTICSEARCH_API_KEY"] = base64.b64encode(TLS_CREDENTIALS["es_api_key"].encode()).decode()
    assert row(check(env), "search engine").startswith("ok")


def test_an_unknown_ca_is_named_for_each_server_with_the_ca_certs_key(tls_bed: Testbed) -> None:
    env = tls_bed.env()
    for key in ("ELASTASK_ELASTICSEARCH_CA_CERTS", "ELASTASK_KIBANA_CA_CERTS", "ELASTASK_REDIS_CA_CERTS"):
        del env[key]
    rows = check(env)
    engine, redis_row = row(rows, "search engine"), row(rows, "redis")
    kibana = row(rows, f"kibana {tls_bed.simulator.urls[0]}")  # type: ignore[union-attr]
    assert "signed by a CA elastask does not trust" in engine and "elasticsearch.ca_certs" in engine
    assert "signed by a CA elastask does not trust" in kibana and "kibana.ca_certs" in kibana
    assert "signed by a CA elastask does not trust" in redis_row and "redis.ca_certs" in redis_row
    assert rows["exit"] == "1"


@pytest.mark.parametrize(
    ("pair", "expected"),
    [("expired", "certificate is expired"), ("wrong_host", "not for this host name")],
)
def test_an_expired_certificate_and_another_hosts_certificate_are_named(
    tls_bed: Testbed, pair: str, expected: str
) -> None:
    assert tls_bed.pki is not None
    proxy: ProxyProcess = tls_bed.start_proxy(tls=getattr(tls_bed.pki, pair))
    proxy.start()
    try:
        env = {**tls_bed.env(), "ELASTASK_ELASTICSEARCH_HOST": proxy.url}
        engine = row(check(env), "search engine")
        assert engine.startswith("PROBLEM") and expected in engine and proxy.url in engine
    finally:
        proxy.stop()


def test_wrong_passwords_are_named_for_each_server(tls_bed: Testbed) -> None:
    env = tls_bed.env()
    env["ELASTASK_ELASTICSEARCH_PASSWORD"] = "wrong"
    env["ELASTASK_KIBANA_PASSWORD"] = "wrong"
    env["ELASTASK_REDIS_URL"] = env["ELASTASK_REDIS_URL"].replace(TLS_CREDENTIALS["redis_password"], "wrong")
    rows = check(env)
    assert "authentication failed (401)" in row(rows, "search engine")
    assert "authentication failed (401)" in row(rows, f"kibana {tls_bed.simulator.urls[0]}")  # type: ignore[union-attr]
    assert "authentication failed" in row(rows, "redis")
    assert "wrong" not in "".join(rows.values())  # no secret echoed


def test_plain_http_against_https_and_the_reverse_are_named(tls_bed: Testbed, testbed: Testbed) -> None:
    env = tls_bed.env()
    env["ELASTASK_ELASTICSEARCH_HOST"] = tls_bed.es_url.replace("https://", "http://")
    env["ELASTASK_REDIS_URL"] = env["ELASTASK_REDIS_URL"].replace("rediss://", "redis://")
    rows = check(env)
    assert "does the port speak TLS" in row(rows, "search engine") and "https://" in row(rows, "search engine")
    assert "does the port speak TLS" in row(rows, "redis")
    # https:// to the session's plain proxy
    reverse = {**tls_bed.env(), "ELASTASK_ELASTICSEARCH_HOST": testbed.es_url.replace("http://", "https://")}
    engine = row(check(reverse), "search engine")
    assert "does not speak TLS" in engine and "http://" in engine


def test_redis_with_a_password_refuses_a_client_without_one(tls_bed: Testbed) -> None:
    assert tls_bed.pki is not None
    client = redis.Redis(
        host="127.0.0.1", port=tls_bed.redis.port, ssl=True, ssl_ca_certs=str(tls_bed.pki.ca), socket_timeout=5
    )
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()


@pytest.mark.slow
def test_testbed_run_tls_exports_what_a_program_needs_and_check_passes_under_it() -> None:
    # The whole bed, started by the documented command; the program knows only what it exports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTASK_")}
    env["ELASTASK_CONFIG"] = ""
    program = [sys.executable, "-m", "elastask", "check"]
    result = subprocess.run(
        [sys.executable, "-m", "elastask", "testbed", "run", "--tls", "--kibana-nodes", "1", "--", *program],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "ELASTASK_ELASTICSEARCH_HOST=https://" in result.stderr
    assert TLS_CREDENTIALS["es_password"] not in result.stderr + result.stdout  # exported, never printed
