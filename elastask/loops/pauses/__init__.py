"""Pauses: what the loops may not claim or push now (``elastask pause``, elastask.yaml ``paused:``, and
Kibana's own execution pause, ``kibana.py``), read once per claim cycle and dispatch job (``read.py``).
"""
