"""The claim loop: due tasks claimed for the node with the most free capacity, under the cap.

Beat's ``elastask.claim`` job runs ``loop.py`` under the claim lock (its TTL: ``timing.py``): one claim
cycle, and while due tasks wait for slots a refill session (``refill.py``: which leases to read
when, the last search's unread hits) that claims the moment a slot frees. Every look is the same
claim cycle (``cycle.py``, its steps in order, on the look's plan; ``state.py`` what they share): it
learns the nodes and the ledger (``reconcile.py``: rebuild it after Redis lost it, free the slots of
what Kibana finished), finds hits (``hits.py``: unread, or searched by ``search.py``; limited types
apart, ``limited.py``), reads them in real time (``fresh_hits.py``), fails tasks no node can hold
(``too_costly.py``), assigns them (``core/policy.py``), reserves their slots (``parts/ledger.py``:
the cap), writes the claims with one conditional ``_bulk`` (``write.py``) and sends one dispatch job
per node (``jobs.py``); ``summary.py`` counts what it did.
"""
