"""The alert rules and the dashboard on a real Prometheus (Debian's 2.42) scraping a running elastask.

Given/When/Then in each name: promtool accepts the rules; every PromQL expression of the rules and
of the dashboard evaluates without error, the key ones return data; a node taken down makes its
alert go pending.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import SimulatorProcess
from elastask_bed.testbed.process import ManagedProcess, free_port, port_open
from tests.integration.harness import Dispatcher, now, seed, task_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "elastask.json"


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus (scripts/test installs it)"
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_given_something_paused_then_the_paused_too_long_alert_fires_after_an_hour_and_not_before(
    tmp_path: Path,
) -> None:
    # promtool's rule tests: the series /metrics exports for a type paused at t=0 in Kibana and one
    # paused the same way with elastask pause (one series each: the source is a label).
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus (scripts/test installs it)"
    series = 'elastask_paused_since_timestamp_seconds{scope="type",name="reports",source="%s"}'
    alert = {"alertname": "ElastaskPausedTooLong", "scope": "type", "name": "reports", "severity": "warning"}
    rule = next(
        r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if r["alert"] == alert["alertname"]
    )

    def annotations(source: str) -> dict[str, str]:
        labels = {**alert, "source": source}
        rendered = {}
        for key, text in rule["annotations"].items():
            for label, value in labels.items():
                text = text.replace("{{ $labels." + label + " }}", value)
            rendered[key] = text
        return rendered

    case = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series % "kibana", "values": "0x120"},
                    {"series": series % "redis", "values": "0x120"},
                ],
                "alert_rule_test": [
                    {"eval_time": "50m", "alertname": "ElastaskPausedTooLong", "exp_alerts": []},
                    {
                        "eval_time": "70m",
                        "alertname": "ElastaskPausedTooLong",
                        "exp_alerts": [
                            {"exp_labels": {**alert, "source": source}, "exp_annotations": annotations(source)}
                            for source in ("kibana", "redis")
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "paused_test.yml"
    path.write_text(yaml.safe_dump(case))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_given_prometheus_scraping_a_running_elastask_then_every_expression_evaluates_and_a_down_node_alerts(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: Callable[..., SimulatorProcess],
    dispatcher_factory: Callable[..., Dispatcher],
    tmp_path: Path,
) -> None:
    sim = simulator(nodes=2, run_ms="100")
    dispatcher = dispatcher_factory(sim)
    dispatcher.worker(concurrency=2)
    dispatcher.beat()
    exporter_port, prometheus_port = free_port(), free_port()
    dispatcher.exporter(exporter_port)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "elastask", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
                ],
            }
        )
    )
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: apt-get install prometheus (scripts/test installs it)"
    prometheus = ManagedProcess(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        tmp_path / "prometheus.log",
    )
    prometheus.start()
    try:
        prometheus.wait_until(lambda: port_open(prometheus_port), 60)
        base = f"http://127.0.0.1:{prometheus_port}"
        seed(store.client, [new_task(f"prom-{i}", "sample", now=now()) for i in range(60)])
        wait_for(lambda: task_count(store.client) == 0, 90, "the tasks run")
        time.sleep(3)  # a few scrapes after the work

        for name, expr in [*rule_exprs().items(), *((f"panel {e}", e) for e in dashboard_exprs())]:
            answer = api(base, "/api/v1/query", query=expr)
            assert answer["status"] == "success", f"{name}: {answer}"
        for key in (
            "elastask_node_in_rotation",
            "elastask_node_capacity_units",
            'elastask_dependency_up{dependency="redis"}',
            'elastask_dependency_up{dependency="elasticsearch"}',
            "elastask_tasks_overdue",
            "elastask_claimed_total",
            "elastask_start_drift_seconds_bucket",
            "elastask_capacity_nodes_needed",
            "elastask_capacity_mean_hold_seconds",
        ):
            # Prometheus's first scrapes may come seconds after it opens its port on a loaded machine.
            wait_for(
                lambda key=key: bool(api(base, "/api/v1/query", query=key)["data"]["result"]), 60, f"{key} scraped"
            )

        # When a node stops answering, its alert goes pending.
        sim.set_mode(0, "5xx")  # it answers 500 to every push
        seed(store.client, [new_task(f"prom-down-{i}", "sample", now=now()) for i in range(20)])

        def node_alert_pending() -> bool:
            alerts = api(base, "/api/v1/alerts")["data"]["alerts"]
            return any(a["labels"]["alertname"] == "ElastaskNodeOutOfRotation" for a in alerts)

        try:
            wait_for(node_alert_pending, 60, "ElastaskNodeOutOfRotation pending")
        except AssertionError as e:
            rotation = api(base, "/api/v1/query", query="elastask_node_in_rotation")["data"]["result"]
            alerts = api(base, "/api/v1/alerts")
            raise AssertionError(f"rotation {rotation}; alerts {alerts}; {sim.stats()['totals']}") from e
    finally:
        prometheus.stop()
