"""The dispatcher's three loops: claim (claim.py), dispatch (dispatch.py), retry (retry.py)."""
