"""The randomized fault run (``elastask bench chaos``): overlapping faults from a seed, then the invariants.

Pure: model.py (what is recorded), schedule.py (the faults a seed gives), workload.py (the tasks),
invariants.py (safety), liveness.py (stalls, heal-to-push, drift), evaluate.py (records -> checks),
report.py (lines, JSON, exit status).
I/O: recording_sim.py (simulated Kibana nodes that record every run and can crash), fleet.py (the
workers and beats by role), injector.py (the recording simulator's process; applies a fault and heals
it), index.py (the task index past the proxy), runner.py (one run), command.py (``elastask bench chaos``).
"""
