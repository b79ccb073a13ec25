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


def test_a_failed_send_is_raised_at_the_next_hand_over_and_at_close() -> None:
    failed = threading.Event()

    def send(j: DispatchJob, _p: Any) -> None:
        if j.owner_id == "bad":
            failed.set()
            raise ConnectionError("broker gone")

    publisher = BackgroundPublisher(send, producer)
    publisher(job("bad"))
    assert failed.wait(5)
    for _ in range(100):  # the thread records the error right after the send raised
        try:
            publisher(job("next"))
        except ConnectionError:
            break
        threading.Event().wait(0.01)
    else:
        pytest.fail("the broker failure was never raised to the claim loop")
    with pytest.raises(ConnectionError):
        publisher.close()


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
