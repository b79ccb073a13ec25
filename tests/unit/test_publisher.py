"""The claim loop's background publisher: every job sent, in order, and a broker failure raised to the loop."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from elastask.core.messages import DispatchJob
from elastask.entry.publisher import BackgroundPublisher, background_publisher


def job(owner: str) -> DispatchJob:
    return DispatchJob(owner, f"http://{owner}", ())


@contextlib.contextmanager
def producer() -> Iterator[str]:
    yield "producer"


def test_every_job_handed_over_is_sent_in_order_before_the_publisher_closes() -> None:
    sent: list[tuple[str, Any, str]] = []
    release = threading.Event()

    def send(j: DispatchJob, p: Any) -> None:
        release.wait(5)  # the broker is slow: the hand-over must not wait for it
        sent.append((j.owner_id, p, threading.current_thread().name))

    with background_publisher(send, producer) as publish:
        for owner in ("a", "b", "c"):
            publish(job(owner))
        assert sent == []  # handed over, not sent yet: the loop went on
        release.set()
    assert [(o, p) for o, p, _ in sent] == [("a", "producer"), ("b", "producer"), ("c", "producer")]
    assert {t for _, _, t in sent} == {"elastask-publisher"}


def test_after_a_failed_send_every_job_handed_over_is_given_back_and_close_raises() -> None:
    # A cycle hands over its jobs one by one: the first send fails; the rest of the cycle's jobs must be
    # given back too, not left neither sent nor given back (they waited a whole lease: defect 9).
    failed = threading.Event()

    def send(j: DispatchJob, _p: Any) -> None:
        if j.owner_id == "bad":
            failed.set()
            raise ConnectionError("broker gone")

    unsent: list[str] = []
    publisher = BackgroundPublisher(send, producer, lambda j: unsent.append(j.owner_id))
    publisher(job("bad"))
    assert failed.wait(5)
    for _ in range(100):  # the thread records the error right after the send raised
        if not publisher.sending():
            break
        threading.Event().wait(0.01)
    for owner in ("next-1", "next-2"):
        publisher(job(owner))  # the rest of the cycle: no exception to cut the hand-over short
    with pytest.raises(ConnectionError):
        publisher.close()
    assert sorted(unsent) == ["bad", "next-1", "next-2"]


def test_given_a_failed_send_then_sending_turns_false_and_every_unsent_job_is_handed_back() -> None:
    gate = threading.Event()

    def send(j: DispatchJob, _p: Any) -> None:
        gate.wait(5)
        raise ConnectionError("broker gone")

    unsent: list[str] = []
    publisher = BackgroundPublisher(send, producer, lambda j: unsent.append(j.owner_id))
    for owner in ("a", "b"):
        publisher(job(owner))
    assert publisher.sending()
    gate.set()
    with pytest.raises(ConnectionError):
        publisher.close()
    assert not publisher.sending()  # the claim loop's fence: no claim is written for jobs that cannot go out
    assert unsent == ["a", "b"]  # their tasks are given back, never left to burn an attempt
