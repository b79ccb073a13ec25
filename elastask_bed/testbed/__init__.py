"""The test bed: real search engine, compatibility proxy, Redis and simulated Kibana, on loopback."""

from __future__ import annotations

from elastask_bed.testbed.bed import Testbed

__all__ = ["Testbed"]
