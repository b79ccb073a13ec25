"""A chaos run's result: one line per invariant and liveness figure, or one JSON object; its exit status. Pure."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from elastask_bed.chaos.model import Check, Window

#: Exit statuses: a safety invariant broken; a liveness bound missed (with --check-liveness only).
SAFETY_VIOLATION = 1
LIVENESS_VIOLATION = 3


@dataclass
class ChaosResult:
    """Everything a run prints: its parameters, the fault windows and the checks."""

    seed: int
    duration_s: float
    quiet_s: float
    settings: dict[str, Any]
    t0: float
    windows: list[Window]
    checks: list[Check]
    counts: dict[str, int] = field(default_factory=dict)
    harness_errors: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def violations(self) -> list[Check]:
        """Broken safety invariants."""
        return [c for c in self.checks if c.safety and c.ok is False]

    @property
    def liveness_failures(self) -> list[Check]:
        """Liveness figures past their bound (only when checked)."""
        return [c for c in self.checks if not c.safety and c.ok is False]

    @property
    def exit_status(self) -> int:
        if self.violations:
            return SAFETY_VIOLATION
        return LIVENESS_VIOLATION if self.liveness_failures else 0

    def verdict(self) -> str:
        if self.violations:
            return "FAIL: " + ", ".join(c.name for c in self.violations)
        if self.liveness_failures:
            return "LIVENESS: " + ", ".join(c.name for c in self.liveness_failures)
        return "PASS"

    def fault_summary(self) -> str:
        kinds = Counter(w.detail.split(":")[0] if w.kind in ("node", "engine") else w.kind for w in self.windows)
        return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"

    def lines(self) -> list[str]:
        """The report as text: a header, one line per check, the verdict."""
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        out = [
            f"chaos: seed {self.seed}, {self.duration_s:g} s ({self.quiet_s:g} s quiet), {counts}",
            f"faults: {len(self.windows)} ({self.fault_summary()})",
        ]
        for check in self.checks:
            label = "invariant" if check.safety else ("liveness" if check.name != "early-starts" else "info")
            status = {True: "ok", False: "VIOLATED" if check.safety else "over bound", None: "reported"}[check.ok]
            out.append(f"{label} {check.name}: {status}: {check.summary}")
        out += [f"harness error: {e}" for e in self.harness_errors[:10]]
        if len(self.harness_errors) > 10:
            out.append(f"harness error: ... and {len(self.harness_errors) - 10} more (see --json)")
        out.append(f"result: {self.verdict()} (exit {self.exit_status}); logs in {self.workdir}")
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "duration_s": self.duration_s,
            "quiet_s": self.quiet_s,
            "settings": self.settings,
            "counts": self.counts,
            "faults": [
                {
                    "kind": w.kind,
                    "target": w.target,
                    "detail": w.detail,
                    "from_s": round(w.start - self.t0, 2),
                    "to_s": None if w.end is None else round(w.end - self.t0, 2),
                }
                for w in self.windows
            ],
            "checks": {c.name: c.as_json() for c in self.checks},
            "harness_errors": self.harness_errors,
            "violations": [c.name for c in self.violations],
            "liveness_failures": [c.name for c in self.liveness_failures],
            "result": self.verdict(),
            "exit_status": self.exit_status,
            "workdir": self.workdir,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_json(), sort_keys=False, default=str)
