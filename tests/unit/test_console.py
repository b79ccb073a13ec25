"""The console's rules: its figures from canned answers, who may use the controls, the controls
themselves on fakeredis, and the recent starts it reads. Its page in a real browser:
tests/integration/test_console.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from elastask.config import Settings
from elastask.config.values import Secret
from elastask.console import figures
from elastask.console.access import Access
from elastask.console.controls import audited, pause_entry, perform
from elastask.core.pauses import entry
from elastask.errors import ElastaskError
from elastask.ops.recent import RecentReader, Start, parse_start, queue_started
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime
from tests.unit.stubs import OWNER

NOW_MS = 1_800_000_000_000


def bucket(task_type: str, due: int, overdue: int, oldest: tuple[str, str] | None) -> dict[str, Any]:
    hits = [] if oldest is None else [{"_id": oldest[0], "_source": {"task": {"runAt": oldest[1]}}}]
    return {"key": task_type, "doc_count": due, "overdue": {"doc_count": overdue}, "oldest": {"hits": {"hits": hits}}}


def test_the_backlog_lists_each_type_oldest_first_and_survives_a_date_it_cannot_parse() -> None:
    answer = {
        "aggregations": {
            "due": {
                "doc_count": 12,
                "overdue": {"doc_count": 3},
                "types": {
                    "buckets": [
                        bucket("a", 5, 0, ("task:a1", "10")),
                        bucket("b", 4, 3, ("task:b1", "0")),
                        bucket("odd", 1, 0, ("task:o", "not a date")),
                    ]
                },
            },
            "status": {"buckets": [{"key": "idle", "doc_count": 12}, {"key": "failed", "doc_count": 2}]},
        }
    }

    def parse_ms(text: str) -> int:
        return NOW_MS - int(text) * 1000 - 60_000  # "10": 70 s ago

    rows = figures.backlog(answer, NOW_MS, parse_ms)
    assert rows["due_now"] == 12 and rows["overdue"] == 3 and rows["other_types_due"] == 2
    assert [r["task_type"] for r in rows["by_type"]] == ["a", "b", "odd"]
    assert rows["by_type"][0]["waiting_s"] == 70.0 and rows["by_type"][0]["oldest_id"] == "task:a1"
    assert rows["by_type"][2]["waiting_s"] is None  # said as unknown, never an exception
    assert figures.status_counts(answer) == {"idle": 12, "failed": 2}
    assert figures.backlog({}, NOW_MS, parse_ms) == {"due_now": 0, "overdue": 0, "by_type": [], "other_types_due": 0}


def test_the_backlog_query_is_one_search_with_the_loops_own_due_query() -> None:
    due = {"bool": {"filter": [{"term": {"type": "task"}}]}}
    body = figures.backlog_query(due, "2026-01-01T00:00:00.000Z")
    assert body["size"] == 0 and body["aggs"]["due"]["filter"] is due
    assert set(body["aggs"]) == {"status", "recurring", "due"}
    answer = {"aggregations": {"recurring": {"interval": {"buckets": [{"key": "1m", "doc_count": 30}]}}}}
    assert figures.recurring_per_minute(answer) == 30.0


def test_drift_is_bucketed_per_type_and_for_all_with_gaps_left_out() -> None:
    starts = [
        Start(NOW_MS - 1_000, OWNER, "a", 0.1),
        Start(NOW_MS - 2_000, OWNER, "a", 0.3),
        Start(NOW_MS - 2_500, OWNER, "b", 2.0),
        Start(NOW_MS - 100_000, OWNER, "a", 1.0),  # another bucket
        Start(NOW_MS - 11 * 60_000, OWNER, "a", 9.0),  # before the span
    ]
    drift = figures.drift_series(starts, NOW_MS, minutes=10, bucket_s=20)
    series = drift["series"]
    assert list(series) == ["all types", "a", "b"]
    assert [p["n"] for p in series["a"]] == [1, 2] and [p["n"] for p in series["all types"]] == [1, 3]
    assert series["b"][0]["p50_ms"] == 2000.0 and series["a"][-1]["p99_ms"] == 300.0
    assert drift["kibana_pull_target_ms"] == 500 and drift["to_ms"] == NOW_MS


def test_rotation_in_words() -> None:
    assert figures.rotation({"open_until_ms": 0, "failures": 1}, NOW_MS) == {"state": "in", "failures": 1}
    out = figures.rotation({"open_until_ms": NOW_MS + 1, "failures": 3, "outage_since_ms": NOW_MS - 5000}, NOW_MS)
    assert out["state"] == "out" and out["out_for_s"] == 5.0
    assert figures.rotation({"open_until_ms": NOW_MS - 1, "failures": 3}, NOW_MS)["state"] == "probing"


def node(owner: str, used: int, capacity: int = 20, state: str = "in", paused: bool = False) -> dict[str, Any]:
    return {
        "owner_id": owner,
        "in_flight_units": used,
        "capacity_units": capacity,
        "rotation": {"state": state},
        "paused": paused,
    }


def test_the_headline_says_how_much_is_in_use_and_what_to_do_when_short() -> None:
    fine = figures.headline([node("a", 20), node("b", 10), node("c", 0)], 0, {"proposed": {"nodes_needed": 2}})
    assert fine["words"] == "1.5 of 3 nodes' capacity in use; 0 overdue" and fine["level"] == "ok"
    assert fine["advice"] == []
    short = figures.headline(
        [node("a", 20), node("b", 20, state="out")],
        7,
        {"proposed": {"nodes_needed": 3, "minutes_to_drain_overdue": None}},
    )
    assert short["level"] == "warn"
    assert "1 more out of rotation, paused or drained" in short["words"] and "7 overdue" in short["words"]
    assert any("add 2 Kibana node(s)" in a for a in short["advice"])
    assert any("cannot drain them" in a for a in short["advice"])
    none = figures.headline([node("a", 0, paused=True)], None, {})
    assert none["level"] == "error" and "unknown overdue" in none["words"]


def test_the_controls_are_off_without_a_password_or_when_read_only() -> None:
    assert Access.from_settings(Settings()).why_read_only() is not None
    assert not Access.from_settings(Settings()).admits("admin", "")
    settings = Settings()
    with_password = Access("ops", "s3cret", read_only=False)
    assert with_password.why_read_only() is None
    assert with_password.admits("ops", "s3cret")
    assert not with_password.admits("ops", "s3cre") and not with_password.admits("op", "s3cret")
    forced = Access("ops", "s3cret", read_only=True)
    assert not forced.admits("ops", "s3cret") and "console.read_only" in (forced.why_read_only() or "")
    from dataclasses import replace

    configured = replace(settings, console=replace(settings.console, password=Secret("pw")))
    assert Access.from_settings(configured).admits("admin", "pw")


@pytest.mark.parametrize("target", ["everything", "type:", "node", "kind:x"])
def test_a_pause_target_names_all_a_type_or_a_node(target: str) -> None:
    with pytest.raises(ElastaskError, match="all, type:<task type>"):
        pause_entry(target)


def test_pause_resume_and_drain_do_what_the_cli_does_and_every_action_is_kept(rt: Runtime) -> None:
    assert pause_entry(" type:alerting:* ") == entry("type", "alerting:*")
    assert perform(rt, "pause", "type:report") == "paused type:report"
    assert [p.text for p in PauseStore(rt.redis).read(rt.ledger.now_ms()).pauses] == ["type:report"]
    assert perform(rt, "drain", OWNER).startswith("draining http://kibana-a:5601")
    assert perform(rt, "resume", "type:report").startswith("resumed type:report; still paused: node:" + OWNER)
    assert perform(rt, "undrain", OWNER) == f"undrained {OWNER}"
    refused = audited(rt, {"action": "drain", "target": "kibana:nowhere"}, "ops", "10.0.0.9")
    assert not refused["ok"] and "no configured Kibana node is called 'kibana:nowhere'" in refused["message"]
    assert not audited(rt, {"action": "explode", "target": "x"}, "ops", "10.0.0.9")["ok"]
    _starts, _last, _restarts, actions = RecentReader(rt.redis).read(0)
    assert [a["action"] for a in actions] == ["explode", "drain"]
    assert actions[1] | {"at": "-"} == {
        "at": "-",
        "who": "ops",
        "from": "10.0.0.9",
        "action": "drain",
        "target": "kibana:nowhere",
        "ok": False,
        "message": refused["message"],
    }


def test_recent_starts_round_trip_newest_first_and_skip_what_they_cannot_read(rt: Runtime) -> None:
    pipe = rt.redis.pipeline()
    queue_started(pipe, OWNER, [("a", 0.25), ("b", 1.5)], NOW_MS - 5000)
    queue_started(pipe, OWNER, [("a", 0.05)], NOW_MS)
    queue_started(pipe, OWNER, [], NOW_MS + 1)  # nothing accepted: nothing written
    pipe.execute()
    rt.redis.lpush("elastask:recent:starts", "garbage")
    starts, last_push, _restarts, _actions = RecentReader(rt.redis).read(NOW_MS - 1000)
    assert starts == [Start(NOW_MS, OWNER, "a", 0.05)]
    assert last_push == {OWNER: NOW_MS}
    assert parse_start("1|o|x|t") is None and parse_start(b"1|o|0.5|a|b") == Start(1, "o", "a|b", 0.5)
    assert json.loads(json.dumps(figures.drift_series(starts, NOW_MS, 1, 10)))  # JSON as the page reads it
