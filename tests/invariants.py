"""The rules of state (ARCHITECTURE.md §3), asserted at the end of a chaos-style test
(chaos/invariants.py checks them; game days report them)."""

from __future__ import annotations

from collections.abc import Iterable

from chaos.invariants import check_rules_of_state
from orchestrator.store.database import Database

__all__ = ["assert_rules_of_state"]


async def assert_rules_of_state(db: Database, acknowledged: Iterable[str], *,
                                settled: bool = True) -> dict[str, int]:
    """Every rule holds for the orders a client saw acknowledged; returns orders by state.

    ``settled=False`` skips the check that every order ended (for one in the middle of a run)."""
    report = await check_rules_of_state(db, acknowledged, settled=settled)
    assert report.ok, "\n".join(report.violations)
    return report.by_state
