"""``python -m elastask.simulator``: serve simulated Kibana nodes."""

from elastask.simulator.server import main

main()
