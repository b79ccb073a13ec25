"""Simulated Kibana nodes: ``_run_now`` exactly as Kibana's contract, failure modes and statistics."""
