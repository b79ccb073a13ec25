"""``python -m elastask``: the elastask command."""

from elastask.entry.cli import main

main()
