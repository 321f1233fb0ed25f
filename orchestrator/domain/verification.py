"""When Lunas asks a provider whether a live attempt was paid: pure schedule arithmetic.

Webhooks are the fast path; the schedule is the safety net for the webhook that never comes. Each
rail gets its own rhythm because customers pay on different clocks: a QR code or an e-wallet
approval is paid within minutes or not at all, a virtual account is often paid hours later from a
branch ATM. Manual transfer has no status API: its source of truth is the mutation feed, so it has
no schedule here.

A schedule is a list of gaps: the first check comes ``gaps[0]`` after the attempt is created, the
n-th ``gaps[n-1]`` after the previous one, and the last gap repeats until the attempt leaves the
live states (paid, expired, failed) — the order's deadline then ends it through expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from orchestrator.rails.base import Rail

_MINUTE, _HOUR = timedelta(minutes=1), timedelta(hours=1)

DEFAULT_GAPS: Mapping[Rail, tuple[timedelta, ...]] = MappingProxyType({
    Rail.QRIS: (2 * _MINUTE, 3 * _MINUTE, 5 * _MINUTE),
    Rail.EWALLET: (2 * _MINUTE, 3 * _MINUTE, 5 * _MINUTE),
    Rail.VA: (_HOUR, 3 * _HOUR, 6 * _HOUR),
})


@dataclass(frozen=True)
class VerificationSchedule:
    gaps: Mapping[Rail, tuple[timedelta, ...]] = field(default_factory=lambda: DEFAULT_GAPS)
    retry_after_failure: timedelta = timedelta(seconds=30)
    """A status read that failed (not refused by an open breaker) is tried again this soon; if
    the failures trip the route's breaker, the next try is deferred instead."""

    def __post_init__(self) -> None:
        for rail, gaps in self.gaps.items():
            if not gaps or any(g <= timedelta(0) for g in gaps):
                raise ValueError(f"verification gaps for {rail.value} must be positive")

    def first_check(self, rail: Rail, created_at: datetime) -> datetime | None:
        """When a new attempt on ``rail`` is first read; ``None`` for a rail with no status API."""
        return self.next_check(rail, checks_done=0, last=created_at)

    def next_check(self, rail: Rail, *, checks_done: int, last: datetime) -> datetime | None:
        gaps = self.gaps.get(rail)
        if not gaps:
            return None
        return last + gaps[min(checks_done, len(gaps) - 1)]

    def next_watch(self, rail: Rail, *, reads_done: int, last: datetime) -> datetime | None:
        """The next read of a closed instrument its provider would not cancel, watched through
        the code quarantine (``gateway_jobs._watch_uncancelled``): the rail's first gap, doubled
        after each read. Such an instrument is paid, if at all, around its deadline, so the
        reads thin out; on the live schedule a Xendit QR cost 14 reads (28 paced requests) an
        hour, and a shop's abandoned QRs would crowd the reads of orders still waiting on
        their payment out of the provider's pace. ``None`` for a rail with no status API."""
        gaps = self.gaps.get(rail)
        if not gaps:
            return None
        return last + gaps[0] * (1 << min(max(reads_done, 0), 20))

    @classmethod
    def with_gaps(cls, gaps: Mapping[Rail, tuple[timedelta, ...]], *,
                  retry_after_failure: timedelta) -> VerificationSchedule:
        """The default schedule with the rails given gaps replaced (an empty tuple: the
        default)."""
        merged = {**DEFAULT_GAPS, **{rail: g for rail, g in gaps.items() if g}}
        return cls(gaps=MappingProxyType(merged), retry_after_failure=retry_after_failure)


UNREADABLE_MAX_GAP = timedelta(minutes=30)
"""The longest wait between two reads of an attempt whose answers Lunas cannot read (or two
tries of a provider call that failed for a reason other than an open breaker or a 429)."""


def unreadable_gap(base: timedelta, in_a_row: int) -> timedelta:
    """``base`` doubled for each unreadable read in a row after the first, capped."""
    return min(base * (1 << max(0, min(in_a_row - 1, 20))), UNREADABLE_MAX_GAP)
