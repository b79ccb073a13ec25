"""Settings known to fall behind or to run unsafely are named, with the key and what to set."""

from __future__ import annotations

from dataclasses import replace

from elastask.config import ElasticsearchSettings, Settings
from elastask.core.advice import interval_advice, settings_advice


def test_the_defaults_draw_no_advice() -> None:
    assert settings_advice(Settings()) == []


def test_a_polling_interval_beyond_the_claim_ahead_window_is_named_with_its_measured_effect() -> None:
    [advice] = settings_advice(replace(Settings(), source="elastask.yaml", polling_interval_ms=3000))
    assert advice.startswith("elastask.yaml: polling_interval: 3000 ms")
    assert "up to 2000 ms late" in advice and "default 500" in advice


def test_an_idle_interval_shorter_than_the_busy_one_is_named() -> None:
    [advice] = settings_advice(replace(Settings(), idle_polling_interval_ms=200))
    assert "idle_polling_interval (200 ms)" in advice


def test_nodes_too_small_for_an_extralarge_task_are_named() -> None:
    [advice] = settings_advice(replace(Settings(), source="elastask.yaml", kibana_capacity=4))
    assert advice.startswith("elastask.yaml: kibana_capacity:") and "extralarge (10 units)" in advice
    assert "at least 5" in advice
    assert settings_advice(replace(Settings(), kibana_capacity=5)) == []


def test_certificate_verification_turned_off_is_named() -> None:
    settings = replace(Settings(), elasticsearch=ElasticsearchSettings(verify_certs=False))
    [advice] = settings_advice(settings)
    assert "elasticsearch.verify_certs: false" in advice and "ca_certs" in advice


def test_a_task_type_due_more_often_than_the_claim_loop_looks_is_named() -> None:
    settings = replace(Settings(), polling_interval_ms=3000)
    advice = interval_advice(settings, "alerting:fast", 1000)
    assert advice is not None and "'alerting:fast' runs every 1000 ms" in advice and "at most 1000" in advice
    assert interval_advice(settings, "alerting:slow", 60_000) is None
