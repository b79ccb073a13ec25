"""The dispatch job: one claim cycle's tasks for one Kibana node, pushed to its ``_run_now``.

``job.py`` pushes the tasks due at once and leaves those claimed ahead to the process's push schedule
(``parts/push_schedule.py``), each behind its push marker (a claim is pushed at most once, and never
both pushed and given back), which ``push_checks.py`` sets after the checks before a push; a job that
waited past its leases' slack renews them first (``renewal.py``); ``outcomes.py`` records what became
of each push (accepted, refused, rejected, ambiguous) and gives back what never reached Kibana.
"""
