"""Use cases: capture, settlement, reconciliation, expiry. They own transactions (unit of work)."""
