"""The deterministic simulation (``elastask simulate``): elastask's real loops as processes, stepped one
at a time by a seeded scheduler on a virtual clock, with faults, checked against the invariants after
every step (world.py). The stub engine it runs on (engine.py) is the unit tests' too."""
