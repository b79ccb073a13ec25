"""Kibana's own execution pause (loops/pauses/kibana.py), honoured like ``elastask pause``.

The client against a throwaway local server answering as Kibana's routes do; the rest on fakeredis
and the stub engine with the node's answer scripted. On real processes: tests/integration/test_pauses.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fakeredis
import pytest

from elastask.config import KibanaNode, KibanaSettings
from elastask.core.messages import DispatchJob
from elastask.loops.claim.loop import claim_available_tasks
from elastask.loops.pauses import kibana as kibana_pause
from elastask.loops.pauses.read import read_pauses
from elastask.ops import pausing
from elastask.parts.kibana import ExecutionControl, KibanaClient
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, node_of, running, seeded_two_types
from tests.unit.stubs import MakeRuntime, StubEngine

KIBANA_BODY = {
    "paused": False,
    "paused_task_types": ["report"],
    "updated_at": "2026-11-30T10:00:00.000Z",
    "updated_by": "elastic",
}


class ExecutionStatus(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: Any = self.server
        server.headers.append(dict(self.headers))
        status, body = server.answer
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def kibana() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), ExecutionStatus)
    httpd.answer, httpd.headers = (200, KIBANA_BODY), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def ask(kibana: Any) -> ExecutionControl | None:
    node = KibanaNode(url=f"http://127.0.0.1:{kibana.server_address[1]}", username="elastic")
    client = KibanaClient(KibanaSettings(hosts=(node,), request_timeout_s=2))
    try:
        return client.execution_control(node)
    finally:
        client.session.close()


def test_the_client_reads_kibanas_answer_and_says_why_when_it_cannot(kibana: Any) -> None:
    answer = ask(kibana)
    assert answer == ExecutionControl(
        "read", paused=False, paused_types=("report",), updated_at="2026-11-30T10:00:00.000Z", updated_by="elastic"
    )
    assert kibana.headers[-1]["x-elastic-internal-origin"] == "kibana"  # Kibana 9 refuses internal routes without
    kibana.answer = (404, {"statusCode": 404, "error": "Not Found"})
    absent = ask(kibana)
    assert absent is not None and absent.answer == "absent" and "has no execution pause" in absent.detail
    kibana.answer = (403, {"statusCode": 403, "error": "Forbidden"})
    refused = ask(kibana)
    assert refused is not None and refused.answer == "refused" and "superuser" in refused.detail
    assert "/internal/task_manager/execution/_status answered 403" in refused.detail
    for unusable in (
        (500, {}),
        (200, "<html>login</html>"),
        (200, {"paused": "yes"}),
        (200, {"paused": True, "paused_task_types": [1]}),
    ):
        kibana.answer = unusable
        assert ask(kibana) is None, unusable


def scripted(monkeypatch: pytest.MonkeyPatch, rt: Runtime, *answers: ExecutionControl | None) -> list[int]:
    """The node answers these in turn (the last one again after); returns the count of questions."""
    asked = [0]

    def answer(_node: KibanaNode, timeout_s: float = 2.0) -> ExecutionControl | None:
        asked[0] += 1
        return answers[min(asked[0], len(answers)) - 1]

    monkeypatch.setattr(rt.kibana, "execution_control", answer)
    return asked


def test_a_type_kibana_paused_is_not_claimed_the_others_are_and_lifting_it_in_kibana_claims_it(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded_two_types(engine)
    scripted(monkeypatch, rt, ExecutionControl("read", paused_types=("report",), updated_at="2026-11-30T10:00:00.000Z"))
    kibana_pause.ask_kibana(rt, [node_of(rt)])
    pauses = read_pauses(rt, NOW)
    assert [(p.text, p.source) for p in pauses.pauses] == [("type:report", "kibana")]
    assert pauses.pauses[0].since_ms == int(datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp() * 1000)
    sent: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, sent.append, sessions=False)
    assert running(engine) == {"task:sample-0", "task:sample-1", "task:sample-2"}
    assert pausing.resume(rt, [])[0] == []  # elastask resume does not lift Kibana's
    assert any("lifted in Kibana" in line for line in pausing.lines(read_pauses(rt, NOW)))
    scripted(monkeypatch, rt, ExecutionControl("read"))
    kibana_pause.ask_kibana(rt, [node_of(rt)])
    claim_available_tasks(rt, NOW + timedelta(seconds=1), sent.append, sessions=False)
    assert {d for d in running(engine) if "report" in d} == {"task:report-0", "task:report-1", "task:report-2"}


def test_kibana_paused_everything_claims_nothing(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded_two_types(engine)
    scripted(monkeypatch, rt, ExecutionControl("read", paused=True))
    kibana_pause.ask_kibana(rt, [node_of(rt)])
    sent: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, sent.append, sessions=False)
    assert running(engine) == set() and sent == []
    assert pausing.described(rt, NOW)["kibana_execution_pause"]["paused"] is True


def test_a_refusal_or_no_answer_keeps_the_pause_known_and_a_kibana_without_the_route_has_none(
    rt: Runtime, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused = ExecutionControl("read", paused=True)
    refused = ExecutionControl("refused", detail="GET x answered 403: needs a superuser")
    scripted(monkeypatch, rt, paused, refused, None)
    for _ in range(3):
        kibana_pause.ask_kibana(rt, [node_of(rt)])
        assert read_pauses(rt, NOW).everything  # never lifted by a refusal or a failed read
    assert caplog.text.count("needs a superuser") == 1  # said once, not every 5 s
    absent = ExecutionControl("absent", detail="GET x answered 404: this Kibana has no execution pause")
    scripted(monkeypatch, rt, absent)
    kibana_pause.ask_kibana(rt, [node_of(rt)])
    assert not read_pauses(rt, NOW)


def test_one_process_at_a_time_asks_kibana_and_no_more_than_every_five_seconds(
    make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = fakeredis.FakeRedis()
    first, second = make_runtime(), make_runtime(engine=StubEngine())
    first.redis = second.redis = client
    asked_first = scripted(monkeypatch, first, ExecutionControl("read"))
    asked_second = scripted(monkeypatch, second, ExecutionControl("read"))
    question = kibana_pause.watch_kibana_pause(first, [node_of(first)])
    assert question is not None
    question.result(timeout=5)
    assert kibana_pause.watch_kibana_pause(second, [node_of(second)]) is None  # not its turn
    assert asked_first[0] == 1 and asked_second[0] == 0
    assert client.pttl("elastask:paused:kibana:turn") > 4000
    client.delete("elastask:paused:kibana:turn")
    first.memory.next_step_ms.clear()  # a second later
    assert kibana_pause.watch_kibana_pause(first, []) is None  # no node in rotation: nobody to ask
