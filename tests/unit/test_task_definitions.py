"""Kibana's task definitions honoured: concurrency limits per node (held in the ledger), priority per
type, timeouts, removed types (stub engine, fakeredis; worked examples of each rule).

Given/When/Then in each name.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import fakeredis

from elastask.config import KibanaNode, KibanaSettings
from elastask.core.documents import new_task
from elastask.core.messages import DispatchJob
from elastask.loops.claim.loop import claim_available_tasks
from elastask.parts.ledger import Ledger
from elastask.runtime import Runtime
from elastask.task_types import Catalogue, TaskTypeRule, effective_rule, parse_catalogue
from tests.unit.helpers import NOW
from tests.unit.stubs import MakeRuntime, StubEngine

LEASE = NOW + timedelta(minutes=5)
REPORTING = {
    "report:execute": TaskTypeRule(max_concurrency=1, concurrency_group="reporting", cost=10),
    "report:execute-scheduled": TaskTypeRule(max_concurrency=1, concurrency_group="reporting", cost=10),
}


def seed(engine: StubEngine, prefix: str, task_type: str, count: int, *, age_s: float) -> None:
    for i in range(count):
        doc = new_task(f"{prefix}{i}", task_type, now=NOW - timedelta(seconds=age_s - i / 1000))
        engine.put(doc.id, doc.to_source())


def claimed_types(jobs: list[DispatchJob]) -> list[str]:
    return sorted(str(t.body["taskType"]) for job in jobs for t in job.tasks)


def test_given_a_group_at_its_limit_on_a_node_then_the_ledger_reserves_no_more_of_it_there() -> None:
    ledger = Ledger(fakeredis.FakeRedis())
    first = ledger.reserve("kibana:a", 20, [("r1", 2, LEASE, "reporting", 1), ("r2", 2, LEASE, "reporting", 1)], NOW)
    assert first == {"r1"}  # one slot of the group, though the node has room for nine more
    assert ledger.reserve("kibana:a", 20, [("s1", 2, LEASE, "reporting", 1), ("n1", 2, LEASE)], NOW) == {"n1"}
    assert ledger.reserve("kibana:b", 20, [("r2", 2, LEASE, "reporting", 1)], NOW) == {"r2"}  # per node
    ledger.release("kibana:a", ["r1"])
    assert ledger.reserve("kibana:a", 20, [("s1", 2, LEASE, "reporting", 1)], NOW) == {"s1"}
    assert ledger.view(["kibana:a"]).group_counts == {"kibana:a": {"reporting": 1}}
    assert ledger.used_units(["kibana:a"]) == {"kibana:a": 4}  # the group mark does not change the units


def test_given_thirty_reports_with_limit_one_ahead_of_normal_tasks_then_the_normal_ones_are_not_starved(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    seed(engine, "report", "report:execute", 30, age_s=60)  # older: first in the claim order
    seed(engine, "normal", "sample", 5, age_s=10)
    rt = make_runtime(task_types=REPORTING)
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    # One report (the node's limit), and every normal task beside it (the report costs 10 of 20 units).
    assert claimed_types(jobs) == ["report:execute", *["sample"] * 5]


def test_given_redis_lost_the_ledger_during_a_limited_run_then_the_rebuilt_slot_still_holds_the_limit(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given a report running on the only node (limit 1 per node) and a second one due.
    seed(engine, "report", "report:execute", 2, age_s=60)
    rt = make_runtime(task_types=REPORTING)
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    assert claimed_types(jobs) == ["report:execute"]
    # When Redis loses everything and the ledger is rebuilt from the engine's running leases,
    rt.redis.flushall()
    claim_available_tasks(rt, NOW + timedelta(seconds=1), jobs.append, sessions=False)
    # Then the rebuilt slot counts against the group's limit: the second report waits.
    assert claimed_types(jobs) == ["report:execute"]


def test_given_two_types_in_one_group_then_they_share_its_limit_per_node(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    seed(engine, "now", "report:execute", 2, age_s=30)
    seed(engine, "scheduled", "report:execute-scheduled", 2, age_s=20)
    node_b = KibanaNode(url="http://kibana-b:5601", id="kibana:b")
    rt = make_runtime(task_types=REPORTING)
    rt.settings = replace(rt.settings, kibana=KibanaSettings(hosts=(*rt.settings.kibana.hosts, node_b)))
    rt.nodes.settings = rt.settings
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    per_node = {job.owner_id: [t.body["taskType"] for t in job.tasks] for job in jobs}
    assert sorted(per_node) == ["kibana:a", "kibana:b"] and all(len(types) == 1 for types in per_node.values())


def test_given_a_low_priority_type_and_a_normal_one_waiting_then_the_normal_ones_are_claimed_first(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    seed(engine, "low", "cleanup", 10, age_s=60)  # older, but Low (1)
    seed(engine, "normal", "sample", 10, age_s=10)
    rt = make_runtime(kibana_capacity=5, task_types={"cleanup": TaskTypeRule(priority=1)})
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    assert claimed_types(jobs) == ["sample"] * 5


def test_given_a_document_with_its_own_priority_then_it_wins_over_its_types(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    seed(engine, "low", "cleanup", 3, age_s=60)
    urgent = new_task("urgent", "cleanup", now=NOW - timedelta(seconds=1), priority=90)
    engine.put(urgent.id, urgent.to_source())
    seed(engine, "normal", "sample", 3, age_s=10)
    rt = make_runtime(kibana_capacity=1, task_types={"cleanup": TaskTypeRule(priority=1)})
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    assert [t.doc_id for job in jobs for t in job.tasks] == ["task:urgent"]


def test_a_type_kibana_removed_is_never_claimed(engine: StubEngine, rt: Runtime) -> None:
    seed(engine, "gone", "old-type", 2, age_s=30)
    seed(engine, "ok", "sample", 1, age_s=10)
    rt.settings = replace(rt.settings, catalogue=Catalogue(removed=frozenset({"old-type"})))
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    assert claimed_types(jobs) == ["sample"]


def test_rules_come_from_elastask_yaml_over_the_catalogue_over_the_defaults_field_by_field() -> None:
    catalogue = parse_catalogue(
        {
            "task_types": {
                "alerting:*": {"timeout": "5m", "cost": "normal", "source": "alerting/rule_type_registry.ts"},
                "alerting:siem.*": {"timeout": "1h"},
                "report:execute": {"timeout": "20m", "max_attempts": 1, "cost": "extra-large", "max_concurrency": 1},
            },
            "removed_types": {"types": ["old-type"]},
        },
        "catalogue",
    )
    mine = {"report:execute": TaskTypeRule(max_attempts=3)}
    report = effective_rule("report:execute", mine, catalogue, timeout_ms=300_000, max_attempts=3)
    assert (report.timeout_ms, report.max_attempts, report.cost, report.max_concurrency) == (1_200_000, 3, 10, 1)
    assert report.sources["max_attempts"] == "elastask.yaml" and report.sources["timeout_ms"].startswith("catalogue")
    assert report.concurrency_group == "report:execute"  # a limit of its own when no group is named
    siem = effective_rule("alerting:siem.queryRule", {}, catalogue, timeout_ms=300_000, max_attempts=3)
    assert siem.timeout_ms == 3_600_000  # the longest pattern wins
    es_query = effective_rule("alerting:.es-query", {}, catalogue, timeout_ms=300_000, max_attempts=3)
    assert es_query.sources["timeout_ms"] == "catalogue: alerting/rule_type_registry.ts"
    other = effective_rule("sample", {}, catalogue, timeout_ms=300_000, max_attempts=3)
    assert (other.timeout_ms, other.cost, other.priority, other.sources["cost"]) == (300_000, 2, None, "default")
    assert catalogue.removed == frozenset({"old-type"})


def test_the_shipped_catalogue_holds_kibanas_reporting_limit_and_removed_types() -> None:
    from elastask.task_types import load_catalogue

    catalogue = load_catalogue()
    for report in ("report:execute", "report:execute-scheduled"):
        rule = effective_rule(report, {}, catalogue, timeout_ms=300_000, max_attempts=3)
        assert (rule.max_concurrency, rule.concurrency_group) == (1, "reporting"), report
        assert rule.sources["max_concurrency"].startswith("catalogue: x-pack/platform/plugins/private/reporting")
    connector = effective_rule("actions:.email", {}, catalogue, timeout_ms=300_000, max_attempts=3)
    assert connector.cost == 1  # actions:* are tiny
    assert "alerting:siem.signals" in catalogue.removed and "search_sessions_monitor" in catalogue.removed
    assert all(rule.source for rule in catalogue.rules.values())  # every entry cites its Kibana file


def test_config_show_prints_each_task_types_effective_rule_and_where_it_came_from(tmp_path: object) -> None:
    from pathlib import Path

    from click.testing import CliRunner

    from elastask.entry.cli import cli

    config = Path(str(tmp_path)) / "elastask.yaml"
    config.write_text('task_types:\n  "report:execute":\n    timeout: 30m\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "config", "show"], env={"ELASTASK_CONFIG": ""})
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("report:execute:"))
    assert "timeout 1800s [elastask.yaml]" in line
    assert "max_concurrency 1 per node, group reporting [catalogue: x-pack/platform/plugins/private/reporting" in line
    assert "removed by Kibana, never claimed:" in result.output
