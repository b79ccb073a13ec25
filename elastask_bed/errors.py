"""The test bed's one error: a part could not be started (it names the part and what to install)."""

from __future__ import annotations

from elastask.errors import ElastaskError


class TestbedError(ElastaskError):
    """A part of the test bed (engine, proxy, Redis, simulator) could not be started; final."""

    __test__ = False  # not a pytest test class
