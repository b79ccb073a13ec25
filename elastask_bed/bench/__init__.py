"""The benchmark harness: push (elastask) against Kibana's pull model on the same engine and tasks."""
