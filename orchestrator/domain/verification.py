"""When Lunas asks a provider whether a live attempt was paid: pure schedule arithmetic.

Webhooks are the fast path; the schedule is the safety net for the webhook that never comes. Each
rail gets its own rhythm because customers pay on different clocks: a QR code or an e-wallet
approval is paid within minutes or not at all, a virtual account is often paid hours later from a
branch ATM. Manual transfer has no status API: its source of truth is the mutation feed, so it has
no schedule here.

A schedule is a list of gaps: the first check comes ``gaps[0]`` after the attempt is created, the
n-th ``gaps[n-1]`` after the previous one, and the last gap repeats until the attempt leaves the
live states (paid, expired, failed) — the order's deadline then ends it through expiry.

A paid attempt on a rail with a schedule is read a few more times (``settled_reads``), to find
the refund or chargeback whose notification was lost: nothing else would ever read it again.
Those gaps do not repeat: after the last one the attempt is left alone.
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

DEFAULT_SETTLED_READS: tuple[timedelta, ...] = (timedelta(days=1), timedelta(days=6))
"""A paid attempt is read again one day after its payment, then a week after it.

The first read comes once every notification of a reversal made on the day of the payment has
had its chances: Midtrans retries a notification for about six hours (RAILS.md §1), so a refund
made that day whose notification has not arrived by the next day never will. Refunds at the
provider mostly follow a cancelled order within days (out of stock, the customer changed their
mind); the second read, a week after the payment, finds those, after Xendit's own retries (about
two days) are over too. Later reversals (a chargeback weeks on) are left to the provider's
reports. Two reads per paid gateway attempt cost little of the status pace: 10,000 payments a
day cost 20,000 reads, about 2 % of the 864,000 a day a pace of 600 a minute allows, and they
only take slots the reads of unpaid orders leave free (``services/settled_reads.py``).
``LUNAS_SETTLED_RECHECKS`` changes them; set empty, a paid attempt is never read again."""

REVERSIBLE_RAILS = frozenset({Rail.QRIS, Rail.EWALLET})
"""Rails whose paid attempts are read again for a reversal (``settled_reads``). A QRIS or
e-wallet payment can be refunded, voided or charged back at the provider; a virtual account
payment is a bank transfer neither provider takes back (Midtrans refunds only cards, GoPay,
ShopeePay, DANA, OVO, QRIS and pay-later: docs.midtrans.com "Refund Transactions"; a legacy
Xendit VA has no refund, RAILS.md §2.2), so reading it again costs the provider's pace and can
find nothing; manual transfer has no status API, and its reversals are the mutation matcher's
(a debit of a paid credit's amount)."""


@dataclass(frozen=True)
class VerificationSchedule:
    gaps: Mapping[Rail, tuple[timedelta, ...]] = field(default_factory=lambda: DEFAULT_GAPS)
    retry_after_failure: timedelta = timedelta(seconds=30)
    """A status read that failed (not refused by an open breaker) is tried again this soon; if
    the failures trip the route's breaker, the next try is deferred instead."""
    settled_reads: tuple[timedelta, ...] = DEFAULT_SETTLED_READS
    """Gaps of the reads of a paid attempt (``DEFAULT_SETTLED_READS``): the first after the
    payment, each next one after the read before; empty: never read again."""

    def __post_init__(self) -> None:
        for rail, gaps in self.gaps.items():
            if not gaps or any(g <= timedelta(0) for g in gaps):
                raise ValueError(f"verification gaps for {rail.value} must be positive")
        if any(g <= timedelta(0) for g in self.settled_reads):
            raise ValueError("the gaps of a paid attempt's reads must be positive")

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

    def next_settled_read(self, rail: Rail, *, reads_done: int,
                          last: datetime) -> datetime | None:
        """When a paid attempt on ``rail`` is read for the ``reads_done + 1``-th time, ``last``
        being its payment (``reads_done`` 0) or its previous read. ``None``: never, for a rail
        whose payments no provider reports taken back (``REVERSIBLE_RAILS``) or once the last
        gap is read (the gaps do not repeat)."""
        if (rail not in REVERSIBLE_RAILS or not self.gaps.get(rail)
                or not 0 <= reads_done < len(self.settled_reads)):
            return None
        return last + self.settled_reads[reads_done]

    @classmethod
    def with_gaps(cls, gaps: Mapping[Rail, tuple[timedelta, ...]], *,
                  retry_after_failure: timedelta,
                  settled_reads: tuple[timedelta, ...] = DEFAULT_SETTLED_READS,
                  ) -> VerificationSchedule:
        """The default schedule with the rails given gaps replaced (an empty tuple: the
        default)."""
        merged = {**DEFAULT_GAPS, **{rail: g for rail, g in gaps.items() if g}}
        return cls(gaps=MappingProxyType(merged), retry_after_failure=retry_after_failure,
                   settled_reads=settled_reads)


UNREADABLE_MAX_GAP = timedelta(minutes=30)
"""The longest wait between two reads of an attempt whose answers Lunas cannot read (or two
tries of a provider call that failed for a reason other than an open breaker or a 429)."""


def unreadable_gap(base: timedelta, in_a_row: int) -> timedelta:
    """``base`` doubled for each unreadable read in a row after the first, capped."""
    return min(base * (1 << max(0, min(in_a_row - 1, 20))), UNREADABLE_MAX_GAP)
