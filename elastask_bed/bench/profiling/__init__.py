"""CPU profiles of a benchmark's workers (``elastask bench --profile DIR``): sitecustomize.py writes them,
report.py reads them."""

from __future__ import annotations

import os
from pathlib import Path

#: This directory: on a worker's PYTHONPATH, Python imports its sitecustomize.py at start-up.
HOOK_DIR = Path(__file__).resolve().parent


def profiling_env(directory: Path) -> dict[str, str]:
    """The variables that make a worker profile itself into ``directory`` (made here)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(HOOK_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"ELASTASK_PROFILE_DIR": str(directory), "PYTHONPATH": path}
