"""Which lines of one import can be matched as a batch, and which must go one by one (pure).

Matching a statement line by line lets each line see what the lines before it did: a credit
that settles an order closes its attempt and retires the order's other attempts, which moves
their windows, and a second credit for the same order becomes a second payment. A batch sees
none of that, so a line is only matched in a batch when nothing else in the import can touch
the order it would pay. Then the order in which lines are applied cannot change any outcome,
and the batch reaches exactly the state the line-by-line path would.

``plan_batch`` sorts the new lines of one import:

* debits are ignored (``decide`` says so whatever the candidates);
* a credit with no candidate attempt is unmatched: settling never makes an attempt hold a
  transfer amount it did not hold, so no earlier line can give it one;
* a credit with one candidate, whose order no other line of the import can reach, is decided
  by ``decide`` on that candidate: matched, or unmatched when outside the window;
* everything else goes to the line-by-line path, in file order: credits that name an order in
  their description, and every credit whose candidate order another line can also reach (by
  amount or by a reference).

The candidate of a credit is the attempt holding its amount on the statement's account: at most
one, because the held transfer amount is unique per account (``uq_payment_attempts_held_
transfer_amount``). The caller re-checks a batch match under the row locks before settling it,
and sends it to the line-by-line path if anything changed since the candidates were read.

On PostgreSQL the import runs these rules as SQL over the whole statement at once (``_PLAN`` and
``_SETTLE`` in ``services/reconciliation.py``): ``plan_batch`` and ``still_matches`` are their
statement in Python, and ``settle_rule`` hands the SQL the state machines' answer for every
pair of states, so the domain rules stay written once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.domain.errors import TransitionRefused
from orchestrator.domain.order import (
    AttemptState,
    AttemptTrigger,
    OrderState,
    PaymentVerdict,
    judge_payment,
    next_attempt_state,
    next_order_state,
)
from orchestrator.reconciliation.matcher import (
    Candidate,
    MatchKind,
    MutationFacts,
    decide,
    referenced_order_ids,
)


@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """Line indexes by outcome. ``matched`` maps a line to the attempt it pays (still to be
    re-checked under lock); ``sequential`` is in file order."""

    ignored: list[int] = field(default_factory=list)
    unmatched: list[int] = field(default_factory=list)
    matched: dict[int, Candidate] = field(default_factory=dict)
    sequential: list[int] = field(default_factory=list)


def plan_batch(
    lines: Mapping[int, MutationFacts], candidates: Mapping[int, Candidate]
) -> BatchPlan:
    """``lines``: the new lines of one import by index (file order); ``candidates``: the attempt
    holding each credit's amount on the account, for the credits that have one."""
    plan = BatchPlan()
    reach: Counter[str] = Counter()
    referencing: set[int] = set()
    for index, facts in lines.items():
        if facts.direction != "CR":
            continue
        reached = set(referenced_order_ids(facts.description))
        if reached:
            referencing.add(index)
        if (candidate := candidates.get(index)) is not None:
            reached.add(candidate.order_id)
        reach.update(reached)
    for index in sorted(lines):
        facts = lines[index]
        candidate = candidates.get(index)
        if facts.direction != "CR":
            plan.ignored.append(index)
        elif index in referencing or (candidate is not None and reach[candidate.order_id] > 1):
            plan.sequential.append(index)
        elif candidate is None:
            plan.unmatched.append(index)
        elif decide(facts, [candidate]).kind is MatchKind.MATCHED:
            plan.matched[index] = candidate
        else:
            plan.unmatched.append(index)
    return plan


def still_matches(facts: MutationFacts, locked: Candidate | None, planned: Candidate) -> bool:
    """Whether a batch match still holds once its attempt is locked: the attempt still holds
    the amount on the account (``locked`` is None otherwise) and ``decide`` still picks it."""
    if locked is None or locked.attempt_id != planned.attempt_id:
        return False
    decision = decide(facts, [locked])
    return decision.kind is MatchKind.MATCHED and decision.attempt_id == planned.attempt_id


def in_file_order(*groups: Sequence[int]) -> list[int]:
    return sorted(i for group in groups for i in group)


@dataclass(frozen=True, kw_only=True)
class SettleTransition:
    """A batch line whose locked order and attempt are in ``order_from`` and ``attempt_from``
    settles them into ``order_to`` and ``attempt_to``."""

    order_from: str
    attempt_from: str
    order_to: str
    attempt_to: str


def settle_transitions() -> list[SettleTransition]:
    """Every (order state, attempt state) in which a payment of exactly the transfer amount is
    the plain ``settle`` the batch writes: ``judge_payment`` says settle, the attempt is not yet
    paid and may become paid, and the order becomes paid. Any other pair sends the line to the
    line-by-line path (which also raises, as it always has, for a transition the state machines
    refuse). A batch line's amount is its attempt's transfer amount by construction.

    Judged with no review reason, so an order in review is never among them: an exact payment
    settles one only for some reasons (``judge_payment``), which the SQL does not read, and
    settling it also moves the cases it waited for (``settlement``). Its line goes one by one,
    through ``apply_payment``, as on the line-by-line path."""
    allowed = []
    for order_state in OrderState:
        decision = judge_payment(order_state=order_state, expected=1, received=1)
        if decision.verdict is not PaymentVerdict.SETTLE or decision.order_trigger is None:
            continue
        for attempt_state in AttemptState:
            if attempt_state is AttemptState.PAID:
                continue
            try:
                attempt_to = next_attempt_state(attempt_state, AttemptTrigger.PAID)
                order_to = next_order_state(order_state, decision.order_trigger)
            except TransitionRefused:
                continue
            if order_to is OrderState.PAID:
                allowed.append(SettleTransition(
                    order_from=order_state.value, attempt_from=attempt_state.value,
                    order_to=order_to.value, attempt_to=attempt_to.value))
    return allowed


@dataclass(frozen=True, kw_only=True)
class SettleRule:
    """``settle_transitions`` as the batch's SQL takes it: the pairs of states a line settles
    from, written ``"order_state/attempt_state"``, and the one pair they all settle into."""

    from_pairs: tuple[str, ...]
    order_to: str
    attempt_to: str


def settle_rule() -> SettleRule:
    """One target for every starting pair (today: the order and the attempt become paid),
    so the SQL tests a pair with ``= ANY`` per row instead of joining a table of transitions.
    Raises if the state machines ever disagree, rather than let the batch write the wrong
    state: the SQL would need the table back."""
    transitions = settle_transitions()
    targets = {(t.order_to, t.attempt_to) for t in transitions}
    if len(targets) != 1:
        raise RuntimeError(f"settling ends in {sorted(targets)} depending on where it starts; "
                           "the batch import writes a single target")
    [(order_to, attempt_to)] = targets
    return SettleRule(from_pairs=tuple(f"{t.order_from}/{t.attempt_from}" for t in transitions),
                      order_to=order_to, attempt_to=attempt_to)
