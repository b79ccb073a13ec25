"""The retry loop: claims taken back when no outcome will come.

Beat's ``elastask.retry`` job runs ``loop.py`` under the retry lock: first the claims of workers that
stopped beating and never pushed them go back to idle (``orphans.py``), then every lease that ran out
is retried, failed at its maximum attempts, or moved to its next interval (the rules are in
``core/policy.py``). The claim cycle asks nodes holding leases for their uptime; a restarted node's
lost runs end at once (``node_restarts.py``).
"""
