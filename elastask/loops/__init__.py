"""The dispatcher's loops, one folder each: ``claim/`` (beat's claim job: claim due tasks, send one
dispatch job per node), ``dispatch/`` (a dispatch job: push its tasks to their node), ``retry/`` (beat's
retry job: take back leases that ran out, a dead worker's claims, a restarted node's runs) and
``pauses/`` (what may not be claimed or pushed now). The Redis stores they share are in ``parts/``.
"""
