"""``python -m elastask``: the elastask command."""

from elastask.cli import main

main()
