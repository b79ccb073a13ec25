"""Reading a Kibana node's setup for push from its status and task manager health (worked examples)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from elastask.core.intervals import format_date
from elastask.core.kibana_setup import setup_findings
from tests.unit.helpers import NOW

STATUS = {"version": {"number": "8.18.0"}}


def health(*, claiming: bool | None = False, request_capacity: int | None = 10, enabled: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {"poll_interval": 500}
    if request_capacity is not None or not enabled:
        config["ephemeral_tasks"] = {"enabled": enabled, "request_capacity": request_capacity}
    if claiming is not None:
        config["unsafe"] = {"disable_task_claiming": not claiming}
    return {"stats": {"configuration": {"value": config}, "runtime": {"value": {"polling": {}}}}}


def test_a_node_set_up_as_documented_has_no_findings() -> None:
    assert setup_findings(STATUS, health(), 10, NOW) == []


def test_claiming_left_on_is_a_problem_with_the_kibana_yml_line() -> None:
    [finding] = setup_findings(STATUS, health(claiming=True), 10, NOW)
    assert finding.problem and "claims tasks on its own" in finding.detail
    assert finding.fix == "in kibana.yml: xpack.task_manager.unsafe.disable_task_claiming: true"


def test_without_the_setting_a_recent_poll_shows_the_node_claims() -> None:
    polled = health(claiming=None)
    polled["stats"]["runtime"]["value"]["polling"]["last_successful_poll"] = format_date(NOW - timedelta(seconds=2))
    assert any("on its own" in f.detail for f in setup_findings(STATUS, polled, 10, NOW))
    stale = health(claiming=None)
    stale["stats"]["runtime"]["value"]["polling"]["last_successful_poll"] = format_date(NOW - timedelta(hours=2))
    assert setup_findings(STATUS, stale, 10, NOW) == []


def test_an_ephemeral_queue_smaller_than_elastasks_capacity_is_a_problem() -> None:
    [finding] = setup_findings(STATUS, health(request_capacity=4), 10, NOW)
    assert finding.problem and "runs 4 pushed tasks at once but elastask pushes up to 10" in finding.detail
    assert "xpack.task_manager.ephemeral_tasks.request_capacity: 10" in finding.fix


def test_ephemeral_tasks_off_is_a_problem() -> None:
    [finding] = setup_findings(STATUS, health(enabled=False, request_capacity=None), 10, NOW)
    assert "xpack.task_manager.ephemeral_tasks.enabled: true" in finding.fix


def test_a_version_the_push_route_is_not_known_on_is_a_warning() -> None:
    [finding] = setup_findings({"version": {"number": "9.1.0"}}, health(), 10, NOW)
    assert not finding.problem and "Kibana 9.1.0" in finding.detail
    assert setup_findings({"version": {"number": "9.1.0"}}, None, 10, NOW)[0].detail == finding.detail
