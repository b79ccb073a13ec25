"""The Kibana client's classification against answers of every shape, from a throwaway local server."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from elastask.config import KibanaNode, KibanaSettings
from elastask.config.values import Secret
from elastask.parts.kibana import KibanaClient, PushOutcome
from elastask_bed.testbed.tls import make_pki


class Garbage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self) -> None:
        mode = self.path.split("mode=")[-1] if "mode=" in self.path else self.server.mode  # type: ignore[attr-defined]
        if mode == "html":
            body = b"<html>not kibana</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif mode == "reset":
            self.wfile.write(b"\x00garbage that is not HTTP\r\n\r\n")
            self.close_connection = True
        elif mode == "401":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "/login?mode=html")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "echo":
            body = b'{"statusCode":400,"message":"[request body.params]: bad","params":"secret-token"}'
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif mode.isdigit():
            self.send_response(int(mode))
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    httpd.mode = "html"  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


CLIENTS: list[KibanaClient] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while CLIENTS:
        CLIENTS.pop().session.close()


def client_for(server: ThreadingHTTPServer) -> tuple[KibanaClient, KibanaNode]:
    node = KibanaNode(url=f"http://127.0.0.1:{server.server_address[1]}")
    client = KibanaClient(KibanaSettings(hosts=(node,), request_timeout_s=2))
    CLIENTS.append(client)
    return client, node


def test_garbage_status_gives_no_owner_id(server: ThreadingHTTPServer) -> None:
    client, node = client_for(server)
    with pytest.raises(ValueError):
        client.status_uuid(node)
    assert not client.is_available(node)


def test_a_2xx_with_a_garbage_body_is_accepted(server: ThreadingHTTPServer) -> None:
    client, node = client_for(server)
    assert client.push(node, {"id": "task:x"}).outcome is PushOutcome.ACCEPTED


def test_garbage_instead_of_http_after_sending_is_ambiguous(server: ThreadingHTTPServer) -> None:
    server.mode = "reset"  # type: ignore[attr-defined]
    client, node = client_for(server)
    result = client.push(node, {"id": "task:x"})
    assert result.outcome is PushOutcome.AMBIGUOUS


def test_refused_and_rejected_pushes_are_refused(server: ThreadingHTTPServer) -> None:
    server.mode = "401"  # type: ignore[attr-defined]
    client, node = client_for(server)
    rejected = client.push(node, {"id": "task:x"})
    assert rejected.outcome is PushOutcome.REFUSED and "credentials" in rejected.detail
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    nobody = KibanaNode(url=f"http://127.0.0.1:{closed_port}")
    refused = client.push(nobody, {"id": "task:x"})
    assert refused.outcome is PushOutcome.REFUSED and refused.connection_refused


@pytest.mark.parametrize("status", ["400", "413", "422"])
def test_a_deterministic_4xx_is_rejected_so_the_task_burns_an_attempt_instead_of_coming_back_forever(
    server: ThreadingHTTPServer, status: str
) -> None:
    server.mode = status  # type: ignore[attr-defined]
    client, node = client_for(server)
    result = client.push(node, {"id": "task:x"})
    assert result.outcome is PushOutcome.REJECTED and result.status_code == int(status)
    assert f"answered {status}" in result.detail


@pytest.mark.parametrize("status", ["429", "503", "500", "404", "401"])
def test_an_answer_about_the_node_not_the_task_is_refused(server: ThreadingHTTPServer, status: str) -> None:
    server.mode = status  # type: ignore[attr-defined]
    client, node = client_for(server)
    assert client.push(node, {"id": "task:x"}).outcome is PushOutcome.REFUSED


@pytest.mark.parametrize("status", ["502", "504"])
def test_a_gateway_error_is_ambiguous_the_gateway_may_have_forwarded_the_push(
    server: ThreadingHTTPServer, status: str
) -> None:
    server.mode = status  # type: ignore[attr-defined]
    client, node = client_for(server)
    assert client.push(node, {"id": "task:x"}).outcome is PushOutcome.AMBIGUOUS


def test_a_redirect_is_not_followed_so_a_login_page_answering_200_is_never_taken_as_accepted(
    server: ThreadingHTTPServer,
) -> None:
    server.mode = "redirect"  # type: ignore[attr-defined]
    client, node = client_for(server)
    result = client.push(node, {"id": "task:x"})
    assert result.outcome is PushOutcome.REFUSED
    assert "redirect" in result.detail and "/login" in result.detail


def test_a_5mb_state_parses() -> None:
    import json
    from datetime import UTC, datetime

    from elastask.core.documents import new_task, parse_source

    big = {"blob": "x" * (5 * 1024 * 1024)}
    doc = new_task("big", "sample", now=datetime.now(UTC), state=big)
    parsed = parse_source(doc.id, json.loads(json.dumps(doc.to_source())))
    assert len(parsed.state["blob"]) == 5 * 1024 * 1024


def test_a_rejection_keeps_kibanas_message_but_never_the_body_that_may_echo_the_task(
    server: ThreadingHTTPServer,
) -> None:
    server.mode = "echo"  # type: ignore[attr-defined]
    client, node = client_for(server)
    result = client.push(node, {"id": "task:x", "params": "secret-token"})
    assert result.outcome is PushOutcome.REJECTED
    assert "[request body.params]: bad" in result.detail and "secret-token" not in result.detail


class Proxy(BaseHTTPRequestHandler):
    """Answers 204 to anything and remembers the request lines it got (a proxy gets absolute URLs)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_the_proxy_variables_are_honoured_once_per_node_and_no_proxy_bypasses_them(
    server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    proxy.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        server.mode = "204"  # type: ignore[attr-defined]
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client, node = client_for(server)
        assert client.push(node, {"id": "task:x"}).outcome is PushOutcome.ACCEPTED
        assert proxy.seen == [f"{node.url}/api/task_manager/_run_now"]  # through the proxy
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct, node = client_for(server)
        assert direct.push(node, {"id": "task:x"}).outcome is PushOutcome.ACCEPTED
        assert len(proxy.seen) == 1  # NO_PROXY covers the node: straight to it
    finally:
        proxy.shutdown()
        proxy.server_close()


class Recording(BaseHTTPRequestHandler):
    """Answers 204 and remembers each push's path, credentials and the client port it came from."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Kibana answers

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen = (
            self.path,
            self.headers.get("Authorization"),
            self.headers.get("kbn-xsrf"),
            self.client_address[1],
            body,
        )
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        """``/api/status`` with the metrics the restart watch reads."""
        self.server.seen.append((self.path, self.headers.get("Authorization"), None, self.client_address[1], b""))  # type: ignore[attr-defined]
        body = b'{"uuid":"u","metrics":{"process":{"uptime_in_millis":12345},"collection_interval_in_millis":5000}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_nodes_pushes_keep_its_base_path_and_credentials_over_one_kept_connection() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    httpd.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        node = KibanaNode(
            url=f"http://127.0.0.1:{httpd.server_address[1]}/kbn", username="elastic", password=Secret("pw")
        )
        client = KibanaClient(KibanaSettings(hosts=(node,), request_timeout_s=2))
        CLIENTS.append(client)
        for n in range(3):
            assert client.push(node, {"id": f"task:{n}"}).outcome is PushOutcome.ACCEPTED
        seen = httpd.seen  # type: ignore[attr-defined]
        assert [path for path, *_ in seen] == ["/kbn/api/task_manager/_run_now"] * 3
        assert {auth for _, auth, *_ in seen} == {"Basic ZWxhc3RpYzpwdw=="}  # elastic:pw
        assert {xsrf for _, _, xsrf, *_ in seen} == {"elastask"}
        assert len({port for *_, port, _ in seen}) == 1  # one connection, kept
        assert [body for *_, body in seen] == [f'{{"id": "task:{n}"}}'.encode() for n in range(3)]
        # Closed (a fork's new runtime closes the old one): the next push opens a new pool, and works.
        client.close()
        assert client.push(node, {"id": "task:3"}).outcome is PushOutcome.ACCEPTED
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_restart_watchs_uptime_questions_keep_the_base_path_and_credentials_over_one_kept_connection() -> None:
    # Asked of every node holding leases once a second: one kept connection per node, as its pushes.
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    httpd.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        node = KibanaNode(url=f"http://127.0.0.1:{httpd.server_address[1]}/kbn", api_key=Secret("k"))
        client = KibanaClient(KibanaSettings(hosts=(node,), request_timeout_s=2))
        CLIENTS.append(client)
        answers = [client.uptime(node) for _ in range(3)]
        assert [(a.ms, a.sampled_every_ms) for a in answers if a is not None] == [(12345, 5000)] * 3
        seen = httpd.seen  # type: ignore[attr-defined]
        assert [path for path, *_ in seen] == ["/kbn/api/status"] * 3
        assert {auth for _, auth, *_ in seen} == {"ApiKey k"}
        assert len({port for *_, port, _ in seen}) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("mode", ["html", "401", "503", "reset"])
def test_an_uptime_answer_without_usable_metrics_is_none(server: ThreadingHTTPServer, mode: str) -> None:
    server.mode = mode  # type: ignore[attr-defined]
    client, node = client_for(server)
    assert client.uptime(node) is None


def test_an_unanswering_node_gives_no_uptime() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        node = KibanaNode(url=f"http://127.0.0.1:{listener.getsockname()[1]}")
        client = KibanaClient(KibanaSettings(hosts=(node,), request_timeout_s=2))
        CLIENTS.append(client)
        started = time.monotonic()
        assert client.uptime(node, timeout_s=0.3) is None
        assert time.monotonic() - started < 2


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, Path, dict[str, Any]]]:
    """A TLS server on loopback: ``mode`` handshake-then-drop (reads the push, closes without an answer)
    or unknown-ca (a certificate the client does not trust: the handshake fails, nothing is sent)."""
    pki = make_pki(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()
    mode: dict[str, Any] = {"cert": pki.server}

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(mode["cert"].cert), str(mode["cert"].key))
            try:
                conn = context.wrap_socket(raw, server_side=True)
                conn.recv(65536)  # the whole push arrived
                if mode.get("answer") == "corrupt":  # a TLS record the client cannot decrypt (a bad middlebox)
                    os.write(conn.fileno(), b"\x17\x03\x03\x00\x20" + os.urandom(32))
                    time.sleep(0.2)
                conn.close()  # and the connection drops before any answer, without a TLS close
            except (ssl.SSLError, OSError):
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, pki.ca, pki.unknown_ca.cert, mode
    stop.set()
    thread.join(2)
    listener.close()


def test_a_tls_connection_lost_after_the_push_was_sent_is_ambiguous_not_refused(
    tls_server: tuple[int, Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    # Refused would give the task back and push it again while Kibana may already run it.
    port, ca, _, mode = tls_server
    client = KibanaClient(KibanaSettings(ca_certs=str(ca)))
    for answer in ("drop", "corrupt"):
        mode["answer"] = answer
        result = client.push(KibanaNode(url=f"https://127.0.0.1:{port}"), {"id": "task:t", "taskType": "sample"})
        assert result.outcome is PushOutcome.AMBIGUOUS, (answer, result)


TlsServer = tuple[int, Path, Path, dict[str, Any]]


def test_a_tls_handshake_that_fails_is_refused_nothing_was_sent(tls_server: TlsServer) -> None:
    port, _, unknown_ca, _mode = tls_server
    client = KibanaClient(KibanaSettings(ca_certs=str(unknown_ca)))  # trusts a CA that did not sign the server
    result = client.push(KibanaNode(url=f"https://127.0.0.1:{port}"), {"id": "task:t", "taskType": "sample"})
    assert result.outcome is PushOutcome.REFUSED, result
