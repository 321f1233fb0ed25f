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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
