"""The operator's console of ``elastask serve``: app.py (the server), state.py (what it reads),
figures.py (pure), controls.py (the CLI's operations, audited), access.py (who may use them)."""
