"""elastask.yaml: defaults, original keys, environment overrides, one-line errors, no secret leaks."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from elastask.config import COSTS, Secret, Settings, env_name, load_settings
from elastask.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "elastask.yaml"
    path.write_text(text)
    return path


def test_the_shipped_elastask_yaml_loads_with_its_documented_defaults() -> None:
    settings = load_settings(REPO / "elastask.yaml", env={})
    assert settings.index == ".kibana_task_manager"
    assert settings.kibana_capacity == 10
    assert settings.polling_interval_ms == 500 and settings.idle_polling_interval_ms == 3000
    assert settings.max_attempts == 3 and settings.task_timeout_ms == 300_000
    assert settings.elasticsearch.verify_certs is True


def test_the_shipped_elastask_yaml_states_exactly_the_code_defaults() -> None:
    shipped = load_settings(REPO / "elastask.yaml", env={})
    assert replace(shipped, source="<defaults>", catalogue=Settings().catalogue) == Settings()
    assert len(shipped.catalogue.rules) > 50  # Kibana's own task types come with every load


def test_the_shipped_elastask_yaml_is_the_listing_rendered_from_the_declarations() -> None:
    from elastask.config.listing import render

    assert (REPO / "elastask.yaml").read_text() == render(), (
        "elastask.yaml differs from the declarations in elastask/config/settings.py: "
        "run `.venv/bin/python -m elastask.config.listing > elastask.yaml`"
    )


def test_every_declared_key_is_listed_documented_or_grouped_and_has_one_environment_variable() -> None:
    from elastask.config import SCHEMA, known_env_names

    listing = (REPO / "elastask.yaml").read_text()
    for name in SCHEMA:
        assert f"{name.rpartition('.')[2]}:" in listing, name
    assert len(known_env_names()) == len(SCHEMA)  # ELASTASK_CONFIG plus one per key but task_types
    assert "ELASTASK_REDIS_MASTER_NAME" in known_env_names()


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.source == "<defaults>"
    assert settings.redis_url.reveal() == "redis://localhost:6379/0"


def test_original_keys_of_the_proof_of_concept_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
elasticsearch:
  host: https://es.example.com:9200
  username: elastic
  password: changeme
polling_interval: 500
kibana_capacity: 4
kibana:
  hosts:
    - http://kibana-1:5601
    - url: http://kibana-2:5601
      capacity: 20
      id: kibana:fixed-id
""",
    )
    settings = load_settings(path, env={})
    assert settings.elasticsearch.host == "https://es.example.com:9200"
    assert settings.elasticsearch.password == Secret("changeme")
    assert settings.polling_interval_ms == 500
    first, second = settings.kibana.hosts
    assert first.url == "http://kibana-1:5601" and first.capacity is None
    assert settings.capacity_units(first) == 4 * COSTS["normal"]
    assert second.capacity == 20 and second.id == "kibana:fixed-id"


def test_environment_overrides_follow_one_rule(tmp_path: Path) -> None:
    path = write(tmp_path, "kibana_capacity: 4\nelasticsearch:\n  host: http://a:9200\n")
    env = {
        "ELASTASK_ELASTICSEARCH_HOST": "http://b:9200",
        "ELASTASK_REDIS_URL": "redis://:pw@r:6380/2",
        "ELASTASK_KIBANA_CAPACITY": "7",
        "ELASTASK_KIBANA_HOSTS": "http://k1:5601, http://k2:5601",
        "ELASTASK_ELASTICSEARCH_VERIFY_CERTS": "false",
        "ELASTASK_TASK_TIMEOUT": "90s",
    }
    settings = load_settings(path, env=env)
    assert settings.elasticsearch.host == "http://b:9200"
    assert settings.redis_url.reveal() == "redis://:pw@r:6380/2"
    assert settings.kibana_capacity == 7
    assert [n.url for n in settings.kibana.hosts] == ["http://k1:5601", "http://k2:5601"]
    assert settings.elasticsearch.verify_certs is False
    assert settings.task_timeout_ms == 90_000
    assert env_name("elasticsearch.host") == "ELASTASK_ELASTICSEARCH_HOST"


def test_config_path_comes_from_elastask_config(tmp_path: Path) -> None:
    path = write(tmp_path, "index: my-tasks\n")
    assert load_settings(env={"ELASTASK_CONFIG": str(path)}).index == "my-tasks"


def test_task_type_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
max_attempts: 5
task_types:
  "alerting:.es-query": {timeout: 1m, cost: tiny}
  "reports:generate": {max_attempts: 1, cost: extra-large}
""",
    )
    settings = load_settings(path, env={})
    query = settings.for_type("alerting:.es-query")
    assert (query.timeout_ms, query.max_attempts, query.cost) == (60_000, 5, 1)
    report = settings.for_type("reports:generate")
    assert (report.timeout_ms, report.max_attempts, report.cost) == (300_000, 1, 10)
    other = settings.for_type("anything")
    assert (other.timeout_ms, other.max_attempts, other.cost) == (300_000, 5, 2)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("kibana_capacity: lots\n", "kibana_capacity", "positive integer"),
        ("kibana_capacity: 0\n", "kibana_capacity", "positive integer"),
        ("polling_intervall: 500\n", "polling_intervall", "unknown key"),
        ("elasticsearch:\n  hots: http://x\n", "elasticsearch.hots", "unknown key"),
        ("elasticsearch:\n  host: es.example.com:9200\n", "elasticsearch.host", "http:// or https:// URL"),
        ("redis:\n  url: http://r:6379\n", "redis.url", "redis://"),
        ("kibana:\n  hosts: [ftp://k]\n", "kibana.hosts", "url must be an http(s) URL"),
        ("kibana:\n  hosts: [{url: 'http://k', capacty: 3}]\n", "kibana.hosts", "unknown keys"),
        ("task_timeout: soon\n", "task_timeout", "interval"),
        ("task_types:\n  x: {cost: huge}\n", "task_types.x.cost", "tiny, normal, large, extra-large"),
        ("elasticsearch: [1, 2]\n", "elasticsearch", "mapping"),
        ("elasticsearch:\n  verify_certs: maybe\n", "elasticsearch.verify_certs", "true or false"),
    ],
)
def test_a_bad_value_names_the_file_and_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert expected in message
    assert "\n" not in message


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "index: a\nkibana:\n  hosts: [http://x\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value).startswith(f"{path}: line ")


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_secrets_never_show_in_errors_or_repr(tmp_path: Path) -> None:
    path = write(tmp_path, "elasticsearch:\n  password: hunter2-secret\n  api_key: [not, a, string]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert "'not'" not in str(caught.value) and "a list" in str(caught.value)
    good = load_settings(
        write(tmp_path, "elasticsearch:\n  password: hunter2-secret\n"),
        env={"ELASTASK_REDIS_URL": "redis://:redis-secret@r:1/0"},
    )
    shown = repr(good) + str(good) + f"{good.elasticsearch.password}"
    assert "hunter2-secret" not in shown and "redis-secret" not in shown


def test_a_malformed_yaml_makes_the_cli_exit_non_zero_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "kibana_capacity: -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "elastask", "--config", str(path), "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "kibana_capacity" in lines[0]


def test_a_malformed_yaml_makes_celery_exit_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "kibana:\n  hosts: nope\n")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "elastask", "report"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "ELASTASK_CONFIG": str(path)},
    )
    assert result.returncode != 0
    assert f"{path}: kibana.hosts:" in result.stderr


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "es-password"
    secret.write_text("from-a-file\n")
    settings = load_settings(env={"ELASTASK_ELASTICSEARCH_PASSWORD_FILE": str(secret), "ELASTASK_CONFIG": ""})
    assert settings.elasticsearch.password == Secret("from-a-file")
    with pytest.raises(ConfigError, match=r"kibana\.api_key_file: cannot read"):
        load_settings(env={"ELASTASK_KIBANA_API_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("elasticsearch.host", "elasticsearch:\n  host: https://elastic:s3cret@es.example.com:9200\n"),
        ("kibana.hosts", "kibana:\n  hosts: [https://elastic:s3cret@kb.example.com:5601]\n"),
    ],
)
def test_credentials_inside_a_url_are_refused_naming_the_keys_to_use_and_never_echoed(
    tmp_path: Path, key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text), env={})
    message = str(raised.value)
    assert key in message and ".username" in message and ".password" in message
    assert "s3cret" not in message and "elastic:" not in message


def test_a_rediss_broker_and_ledger_verify_the_certificate_against_the_configured_ca(tmp_path: Path) -> None:
    import ssl

    from elastask.entry.celeryapp import create_app

    text = "redis:\n  url: rediss://:pw@redis.example.com:6380/0\n  ca_certs: /etc/elastask/redis-ca.pem\n"
    settings = load_settings(write(tmp_path, text), env={})
    app = create_app(settings)
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/elastask/redis-ca.pem"}
    assert settings.redis_tls() == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/elastask/redis-ca.pem"}
    plain = load_settings(write(tmp_path, "redis:\n  url: redis://localhost:6379/0\n"), env={})
    assert plain.redis_tls() == {} and not create_app(plain).conf.broker_use_ssl


def test_a_sentinel_url_lists_the_sentinels_and_needs_the_master_name(tmp_path: Path) -> None:
    from elastask.entry.celeryapp import create_app
    from elastask.parts.redis_client import build_redis

    url = "sentinel://:master-pw@10.0.0.1:26379;sentinel://10.0.0.2:26380"
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, f"redis:\n  url: '{url}'\n"), env={})
    assert "redis.master_name" in str(raised.value) and "master-pw" not in str(raised.value)
    text = f"redis:\n  url: '{url}'\n  master_name: elastask\n"
    settings = load_settings(write(tmp_path, text), env={"ELASTASK_REDIS_SENTINEL_PASSWORD": "s-pw"})
    assert settings.redis_sentinels() == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert settings.redis_master_password() == "master-pw"
    options = create_app(settings).conf.broker_transport_options
    assert options["master_name"] == "elastask" and options["sentinel_kwargs"] == {"password": "s-pw"}
    assert options["visibility_timeout"] == 3600  # elastask's own options stay
    client = build_redis(settings)  # no connection yet: a client that asks the sentinels for the master
    assert type(client.connection_pool).__name__ == "SentinelConnectionPool"
    client.close()


def test_a_task_type_costlier_than_every_node_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "elastask.yaml"
    path.write_text(
        "kibana_capacity: 4\ntask_types:\n  ml:job:\n    cost: extra-large\n  report:execute:\n    cost: large\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert "task_types.ml:job.cost" in str(caught.value) and "could never run" in str(caught.value)
    path.write_text("kibana_capacity: 4\ntask_types:\n  report:execute:\n    cost: large\n")
    assert load_settings(path, env={}).for_type("report:execute").cost == 4
