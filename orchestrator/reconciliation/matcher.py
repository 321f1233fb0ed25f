"""Which open manual-transfer attempt a credit mutation pays: a pure decision (ARCHITECTURE §4).

A credit matches an attempt on the same account by exact transfer amount within the attempt's
validity window, or by an order reference written in the transfer's description. One candidate
settles; several go to a person; none leaves the mutation unmatched. Several also means a
reference to one order and the exact amount another order holds: the signals conflict. Debits
are not collections.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from orchestrator.domain.clock import WIB

ORDER_REFERENCE = re.compile(r"\bORD_?([0-9A-HJKMNP-TV-Z]{26})\b", re.IGNORECASE)


class MatchKind(enum.StrEnum):
    MATCHED = "matched"
    AMBIGUOUS = "ambiguous"
    UNMATCHED = "unmatched"
    IGNORED = "ignored"


BANK_CLOCK_SKEW = timedelta(minutes=5)
"""How far behind Lunas's clock a bank's may run. An order captured at 00:00:20 WIB and paid a
minute later, by a bank whose clock is two minutes slow, is dated 23:59 the day before: without
this margin the transfer would wait for a person though it is plainly the order's. The margin
widens the window by five minutes on a day-long window: a transfer of the held amount in those
minutes is matched as a transfer of it at 00:01 already was."""

REVERSAL = "reversal"  # fits mutations.match_state (16)
"""A debit's match state when it may take back a credit that paid an order (``reversal_window``):
the order is named on the debit and a review case opened."""
REVERSAL_WINDOW = timedelta(days=3)
"""How long after a credit a debit of the same amount on the account is taken for its reversal
(the bank's correction, or the merchant refunding the customer by hand): banks correct within a
business day or two. Longer finds more late refunds and more coincidences: on an account taking
thousands of transfers a day, some unrelated debit will share an amount with some recent credit.
Configurable (``LUNAS_REVERSAL_WINDOW``; zero turns the check off)."""
DAY_DATED_SLACK = timedelta(days=1)
"""A statement dated by day only posts its debit at 00:00 WIB, before the credit of the same day
it may take back: such a debit reaches to the end of its day."""

LIKELY_DUPLICATE = "likely_duplicate"  # fits mutations.match_state (16)
"""A mutation's match state when the same credit was already matched from another source."""
FOR_PEOPLE = (MatchKind.UNMATCHED.value, MatchKind.AMBIGUOUS.value, LIKELY_DUPLICATE)
"""Mutation states a person resolves: listed as unmatched, and open to a manual match."""
DECIDED_IN_CASE = "decided_in_case"  # fits mutations.match_state (16)
"""A mutation's match state once a person resolved the review case that holds it (a possible
duplicate): the decision about its money is made there, so it is never matched again."""


@dataclass(frozen=True, kw_only=True)
class MutationFacts:
    amount: int
    direction: str
    posted_at: datetime
    description: str


@dataclass(frozen=True, kw_only=True)
class Candidate:
    attempt_id: str
    order_id: str
    transfer_amount: int
    created_at: datetime
    held_until: datetime | None  # None while the attempt is open


@dataclass(frozen=True, kw_only=True)
class MatchDecision:
    kind: MatchKind
    attempt_id: str | None = None
    candidates: tuple[str, ...] = ()


def reversal_window(debit_posted_at: datetime, window: timedelta = REVERSAL_WINDOW
                    ) -> tuple[datetime, datetime]:
    """When (inclusive) a credit must have been posted for a debit of its amount to be its
    reversal: up to ``window`` before the debit, and no later than the debit itself (give or
    take the bank's clock), or than the end of its day when it is dated by day only."""
    if dated_by_day(debit_posted_at):
        return debit_posted_at - window, debit_posted_at + DAY_DATED_SLACK - _TICK
    return debit_posted_at - window, debit_posted_at + BANK_CLOCK_SKEW


_TICK = timedelta(microseconds=1)


def referenced_order_ids(description: str) -> set[str]:
    return {"ord_" + m.upper() for m in ORDER_REFERENCE.findall(description)}


def decide(mutation: MutationFacts, candidates: Sequence[Candidate]) -> MatchDecision:
    if mutation.direction != "CR":
        return MatchDecision(kind=MatchKind.IGNORED)
    in_window = [c for c in candidates if _within_window(mutation.posted_at, c)]
    referenced = referenced_order_ids(mutation.description)
    by_reference = [c for c in in_window if c.order_id in referenced]
    by_amount = [c for c in in_window if c.transfer_amount == mutation.amount]
    # A reference the customer typed names an order, and so does an amount equal to the unique
    # amount an attempt holds on the account. A reference alone may name an order whose amount
    # differs (settlement then flags the discrepancy rather than dropping the money); but when
    # the amount is to the rupiah what another order holds, the two signals disagree, and
    # trusting either would leave a customer who paid in full with an unpaid order.
    chosen = _unique_orders(by_amount)
    if by_reference:
        named = _unique_orders(by_reference)
        chosen = named + [c for c in chosen if c.order_id not in {n.order_id for n in named}]
    if len(chosen) == 1:
        return MatchDecision(kind=MatchKind.MATCHED, attempt_id=chosen[0].attempt_id)
    if len(chosen) > 1:
        return MatchDecision(kind=MatchKind.AMBIGUOUS,
                             candidates=tuple(c.attempt_id for c in chosen))
    return MatchDecision(kind=MatchKind.UNMATCHED)


def _unique_orders(candidates: list[Candidate]) -> list[Candidate]:
    latest: dict[str, Candidate] = {}
    for c in candidates:
        if c.order_id not in latest or c.created_at > latest[c.order_id].created_at:
            latest[c.order_id] = c
    return list(latest.values())


def window_opens(created_at: datetime, posted_at: datetime | None = None) -> datetime:
    """When an attempt created at ``created_at`` may first be paid by a credit the bank dated
    ``posted_at``. Statements often carry a date only (midnight WIB, ``dated_by_day``): such a
    line may be paid from the start of the attempt's WIB day, less the bank's clock skew. A line
    with a time may not be paid before the attempt existed, give or take the bank's clock: a
    unique amount is reused once its quarantine ends, so a transfer timed hours before this
    attempt gave out the amount is another order's customer paying late, never this one's.
    Without ``posted_at``, the day-dated (earliest) opening."""
    if posted_at is not None and not dated_by_day(posted_at):
        return created_at - BANK_CLOCK_SKEW
    day_starts = datetime.combine(created_at.astimezone(WIB).date(), time(0), tzinfo=WIB)
    return day_starts - BANK_CLOCK_SKEW


def dated_by_day(posted_at: datetime) -> bool:
    """A mutation the bank dated by day only: stamped exactly 00:00 WIB."""
    return posted_at.astimezone(WIB).time() == time(0)


def _within_window(posted_at: datetime, candidate: Candidate) -> bool:
    if posted_at < window_opens(candidate.created_at, posted_at):
        return False
    return candidate.held_until is None or posted_at <= candidate.held_until
