"""``python -m elastask.simulator``: serve simulated Kibana nodes."""

from elastask_bed.simulator.server import main

main()
