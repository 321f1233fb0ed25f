"""The order and payment-attempt state machines, written out as the specification they implement.

Every table below is written by hand from ARCHITECTURE.md §3 (the order states diagram and the
rules of state), not read from ``ORDER_TRANSITIONS`` or ``ATTEMPT_TRANSITIONS``: a reader checks
a row against the diagram, and a change to the code that the table does not describe fails a test.

``REFUSED`` means the machine raises ``TransitionRefused``. Each table lists every trigger for every
state, so adding a state or a trigger fails ``test_*_table_covers_every_pair`` until the
specification says what it does.

Edges that are not arrows in the §3 diagram are marked ``# not drawn:`` with the text that requires
them; the two deviations documented in ``orchestrator/domain/order.py`` are marked ``# deviation:``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from orchestrator.domain import events
from orchestrator.domain.errors import TransitionRefused
from orchestrator.domain.money import reported_currency
from orchestrator.domain.order import (
    LIVE_ATTEMPT_STATES,
    OPEN_ORDER_STATES,
    ORDER_EVENT_ON_ENTRY,
    TERMINAL_ORDER_STATES,
    AttemptState,
    AttemptTrigger,
    OrderState,
    OrderTrigger,
    PaymentDecision,
    PaymentVerdict,
    RecommendedAction,
    ReviewReason,
    case_actions,
    case_decides_order,
    judge_payment,
    next_attempt_state,
    next_order_state,
    nothing_left_to_pay,
    recommended_beside_paid_order,
)

OS = OrderState
OT = OrderTrigger
AS = AttemptState
AT = AttemptTrigger


class _Refused:
    def __repr__(self) -> str:
        return "REFUSED"


REFUSED = _Refused()

# ---------------------------------------------------------------------------------------------
# Order: state × trigger → next state
# ---------------------------------------------------------------------------------------------

ORDER_SPEC: dict[OrderState, dict[OrderTrigger, OrderState | _Refused]] = {
    # captured ──► awaiting_payment; captured ──► cancelled
    OS.CAPTURED: {
        OT.INSTRUCTIONS_ISSUED: OS.AWAITING_PAYMENT,
        OT.CANCEL: OS.CANCELLED,
        # not drawn (documented deviation in order.py): a captured order can hold an attempt whose
        # create outcome was unknown and which turned out live; rule 4 settles money on it.
        OT.PAYMENT_CONFIRMED: OS.PAID,
        OT.PAYMENT_DISCREPANCY: OS.NEEDS_REVIEW,
        # not drawn: §4 Expiry ("Otherwise ... the order expires") and rule 6 (every order reaches
        # a terminal state by its deadline); a captured order has issued no instructions.
        OT.DEADLINE_PASSED: OS.EXPIRED,
        # §4 Expiry: "if a source of truth for any live attempt is unhealthy" -> verifying.
        OT.DEADLINE_PASSED_UNVERIFIABLE: OS.VERIFYING,
        OT.VERIFICATION_WINDOW_EXHAUSTED: REFUSED,
        OT.PAYMENT_AFTER_EXPIRY: REFUSED,
        OT.REVIEW_HONOURED: REFUSED,
        OT.REVIEW_REFUNDED: REFUSED,
        OT.REVIEW_EXPIRED: REFUSED,
    },
    # awaiting_payment ──► paid / verifying / needs_review / cancelled
    OS.AWAITING_PAYMENT: {
        OT.INSTRUCTIONS_ISSUED: REFUSED,
        OT.CANCEL: OS.CANCELLED,
        OT.PAYMENT_CONFIRMED: OS.PAID,
        OT.PAYMENT_DISCREPANCY: OS.NEEDS_REVIEW,
        # not drawn: §4 Expiry — sources of truth healthy and nothing paid: the order expires.
        OT.DEADLINE_PASSED: OS.EXPIRED,
        OT.DEADLINE_PASSED_UNVERIFIABLE: OS.VERIFYING,
        OT.VERIFICATION_WINDOW_EXHAUSTED: REFUSED,
        OT.PAYMENT_AFTER_EXPIRY: REFUSED,
        OT.REVIEW_HONOURED: REFUSED,
        OT.REVIEW_REFUNDED: REFUSED,
        OT.REVIEW_EXPIRED: REFUSED,
    },
    # verifying ──► expired / needs_review; never cancelled (not "before any payment evidence")
    OS.VERIFYING: {
        OT.INSTRUCTIONS_ISSUED: REFUSED,
        OT.CANCEL: REFUSED,
        # not drawn: rule 4 — a payment settles the order if it is still open.
        OT.PAYMENT_CONFIRMED: OS.PAID,
        OT.PAYMENT_DISCREPANCY: OS.NEEDS_REVIEW,
        OT.DEADLINE_PASSED: OS.EXPIRED,
        OT.DEADLINE_PASSED_UNVERIFIABLE: REFUSED,
        OT.VERIFICATION_WINDOW_EXHAUSTED: OS.NEEDS_REVIEW,
        OT.PAYMENT_AFTER_EXPIRY: REFUSED,
        OT.REVIEW_HONOURED: REFUSED,
        OT.REVIEW_REFUNDED: REFUSED,
        OT.REVIEW_EXPIRED: REFUSED,
    },
    # terminal: a paid order stays paid (rule 4)
    OS.PAID: {
        OT.INSTRUCTIONS_ISSUED: REFUSED,
        OT.CANCEL: REFUSED,
        OT.PAYMENT_CONFIRMED: REFUSED,
        OT.PAYMENT_DISCREPANCY: REFUSED,
        OT.DEADLINE_PASSED: REFUSED,
        OT.DEADLINE_PASSED_UNVERIFIABLE: REFUSED,
        OT.VERIFICATION_WINDOW_EXHAUSTED: REFUSED,
        OT.PAYMENT_AFTER_EXPIRY: REFUSED,
        OT.REVIEW_HONOURED: REFUSED,
        OT.REVIEW_REFUNDED: REFUSED,
        OT.REVIEW_EXPIRED: REFUSED,
    },
    # terminal, except money that arrives after expiry (rule 4: never dropped)
    OS.EXPIRED: {
        OT.INSTRUCTIONS_ISSUED: REFUSED,
        OT.CANCEL: REFUSED,
        OT.PAYMENT_CONFIRMED: REFUSED,
        OT.PAYMENT_DISCREPANCY: REFUSED,
        OT.DEADLINE_PASSED: REFUSED,
        OT.DEADLINE_PASSED_UNVERIFIABLE: REFUSED,
        OT.VERIFICATION_WINDOW_EXHAUSTED: REFUSED,
        OT.PAYMENT_AFTER_EXPIRY: OS.NEEDS_REVIEW,  # deviation: expired → needs_review
        OT.REVIEW_HONOURED: REFUSED,
        OT.REVIEW_REFUNDED: REFUSED,
        OT.REVIEW_EXPIRED: REFUSED,
    },
    # terminal: a cancelled order is never resurrected
    OS.CANCELLED: {
        OT.INSTRUCTIONS_ISSUED: REFUSED,
        OT.CANCEL: REFUSED,
        OT.PAYMENT_CONFIRMED: REFUSED,
        OT.PAYMENT_DISCREPANCY: REFUSED,
        OT.DEADLINE_PASSED: REFUSED,
        OT.DEADLINE_PASSED_UNVERIFIABLE: REFUSED,
        OT.VERIFICATION_WINDOW_EXHAUSTED: REFUSED,
        OT.PAYMENT_AFTER_EXPIRY: REFUSED,
        OT.REVIEW_HONOURED: REFUSED,
        OT.REVIEW_REFUNDED: REFUSED,
        OT.REVIEW_EXPIRED: REFUSED,
    },
    # a person decides: honour → paid, or refund
    OS.NEEDS_REVIEW: {
        OT.INSTRUCTIONS_ISSUED: REFUSED,
        OT.CANCEL: REFUSED,
        # deviation: an order in review because its payment could not be verified in time takes
        # the payment proven later (judge_payment allows it for that reason only).
        OT.PAYMENT_CONFIRMED: OS.PAID,
        OT.PAYMENT_DISCREPANCY: OS.NEEDS_REVIEW,
        OT.DEADLINE_PASSED: REFUSED,
        OT.DEADLINE_PASSED_UNVERIFIABLE: REFUSED,
        OT.VERIFICATION_WINDOW_EXHAUSTED: REFUSED,
        OT.PAYMENT_AFTER_EXPIRY: REFUSED,
        OT.REVIEW_HONOURED: OS.PAID,
        OT.REVIEW_REFUNDED: OS.REFUNDED,  # deviation: terminal `refunded`
        OT.REVIEW_EXPIRED: OS.EXPIRED,  # deviation: a person found no payment at the source
    },
    # terminal (deviation)
    OS.REFUNDED: {
        OT.INSTRUCTIONS_ISSUED: REFUSED,
        OT.CANCEL: REFUSED,
        OT.PAYMENT_CONFIRMED: REFUSED,
        OT.PAYMENT_DISCREPANCY: REFUSED,
        OT.DEADLINE_PASSED: REFUSED,
        OT.DEADLINE_PASSED_UNVERIFIABLE: REFUSED,
        OT.VERIFICATION_WINDOW_EXHAUSTED: REFUSED,
        OT.PAYMENT_AFTER_EXPIRY: REFUSED,
        OT.REVIEW_HONOURED: REFUSED,
        OT.REVIEW_REFUNDED: REFUSED,
        OT.REVIEW_EXPIRED: REFUSED,
    },
}

# paid, expired, cancelled are terminal (§3); refunded is the documented deviation.
SPEC_TERMINAL_ORDER_STATES = {OS.PAID, OS.EXPIRED, OS.CANCELLED, OS.REFUNDED}
SPEC_OPEN_ORDER_STATES = {OS.CAPTURED, OS.AWAITING_PAYMENT, OS.VERIFYING}
# The only edges out of a terminal order state: late money on an expired order.
ORDER_LATE_PAYMENT_EDGES = {(OS.EXPIRED, OT.PAYMENT_AFTER_EXPIRY)}


# ---------------------------------------------------------------------------------------------
# Payment attempt: state × trigger → next state
# ---------------------------------------------------------------------------------------------

ATTEMPT_SPEC: dict[AttemptState, dict[AttemptTrigger, AttemptState | _Refused]] = {
    # the create call: answered (issued / refused) or not (outcome unknown)
    AS.CREATING: {
        AT.ISSUED: AS.ACTIVE,
        AT.REFUSED: AS.FAILED,
        AT.OUTCOME_UNKNOWN: AS.UNKNOWN,
        AT.VERIFIED_LIVE: REFUSED,
        AT.VERIFIED_ABSENT: REFUSED,
        AT.SUPERSEDED: REFUSED,
        AT.PAID: REFUSED,
        AT.EXPIRED: REFUSED,
        AT.CANCELLED: REFUSED,
    },
    # "verify, never assume" (rule 3): only evidence moves an unknown attempt; it cannot be
    # cancelled or refused on a guess.
    AS.UNKNOWN: {
        AT.ISSUED: REFUSED,
        AT.REFUSED: REFUSED,
        AT.OUTCOME_UNKNOWN: REFUSED,
        AT.VERIFIED_LIVE: AS.ACTIVE,
        AT.VERIFIED_ABSENT: AS.FAILED,
        AT.SUPERSEDED: AS.SUPERSEDED,  # §4: turns out live after the router moved on
        AT.PAID: AS.PAID,
        AT.EXPIRED: AS.EXPIRED,
        AT.CANCELLED: REFUSED,
    },
    AS.ACTIVE: {
        AT.ISSUED: REFUSED,
        AT.REFUSED: REFUSED,
        AT.OUTCOME_UNKNOWN: REFUSED,
        AT.VERIFIED_LIVE: REFUSED,
        AT.VERIFIED_ABSENT: REFUSED,
        AT.SUPERSEDED: AS.SUPERSEDED,
        AT.PAID: AS.PAID,
        AT.EXPIRED: AS.EXPIRED,
        AT.CANCELLED: AS.FAILED,
    },
    # replaced by failover or by the customer switching method; still watched (rule 4)
    AS.SUPERSEDED: {
        AT.ISSUED: REFUSED,
        AT.REFUSED: REFUSED,
        AT.OUTCOME_UNKNOWN: REFUSED,
        AT.VERIFIED_LIVE: REFUSED,
        AT.VERIFIED_ABSENT: REFUSED,
        AT.SUPERSEDED: REFUSED,
        AT.PAID: AS.PAID,
        AT.EXPIRED: AS.EXPIRED,
        AT.CANCELLED: AS.FAILED,
    },
    AS.PAID: {
        AT.ISSUED: REFUSED,
        AT.REFUSED: REFUSED,
        AT.OUTCOME_UNKNOWN: REFUSED,
        AT.VERIFIED_LIVE: REFUSED,
        AT.VERIFIED_ABSENT: REFUSED,
        AT.SUPERSEDED: REFUSED,
        AT.PAID: REFUSED,
        AT.EXPIRED: REFUSED,
        AT.CANCELLED: REFUSED,
    },
    # money on an expired or failed instrument is still money on it (rule 4)
    AS.EXPIRED: {
        AT.ISSUED: REFUSED,
        AT.REFUSED: REFUSED,
        AT.OUTCOME_UNKNOWN: REFUSED,
        AT.VERIFIED_LIVE: REFUSED,
        AT.VERIFIED_ABSENT: REFUSED,
        AT.SUPERSEDED: REFUSED,
        AT.PAID: AS.PAID,
        AT.EXPIRED: REFUSED,
        AT.CANCELLED: REFUSED,
    },
    AS.FAILED: {
        AT.ISSUED: REFUSED,
        AT.REFUSED: REFUSED,
        AT.OUTCOME_UNKNOWN: REFUSED,
        AT.VERIFIED_LIVE: REFUSED,
        AT.VERIFIED_ABSENT: REFUSED,
        AT.SUPERSEDED: REFUSED,
        AT.PAID: AS.PAID,
        AT.EXPIRED: REFUSED,
        AT.CANCELLED: REFUSED,
    },
}

SPEC_TERMINAL_ATTEMPT_STATES = {AS.PAID, AS.EXPIRED, AS.FAILED}
ATTEMPT_LATE_PAYMENT_EDGES = {(AS.EXPIRED, AT.PAID), (AS.FAILED, AT.PAID)}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _name(value: object) -> str:
    return value.value if isinstance(value, OrderState | AttemptState) else repr(value)


def _transition_cases(spec: Mapping[Any, Mapping[Any, object]]) -> list[Any]:
    return [
        pytest.param(
            state, trigger, expected, id=f"{state.value}-{trigger.value}->{_name(expected)}"
        )
        for state, row in spec.items()
        for trigger, expected in row.items()
    ]


# ---------------------------------------------------------------------------------------------
# order machine
# ---------------------------------------------------------------------------------------------


def test_order_table_covers_every_pair() -> None:
    written = {(state, trigger) for state, row in ORDER_SPEC.items() for trigger in row}
    assert written == set(itertools.product(OrderState, OrderTrigger))


@pytest.mark.parametrize(("state", "trigger", "expected"), _transition_cases(ORDER_SPEC))
def test_order_transition(
    state: OrderState, trigger: OrderTrigger, expected: OrderState | _Refused
) -> None:
    if expected is REFUSED:
        with pytest.raises(TransitionRefused) as refused:
            next_order_state(state, trigger)
        assert (refused.value.machine, refused.value.state, refused.value.trigger) == (
            "order",
            state.value,
            trigger.value,
        )
    else:
        assert next_order_state(state, trigger) is expected


def test_order_state_sets_match_the_specification() -> None:
    assert set(TERMINAL_ORDER_STATES) == SPEC_TERMINAL_ORDER_STATES
    assert set(OPEN_ORDER_STATES) == SPEC_OPEN_ORDER_STATES
    # needs_review is neither: it waits for a person
    assert set(OrderState) - SPEC_TERMINAL_ORDER_STATES - SPEC_OPEN_ORDER_STATES == {
        OS.NEEDS_REVIEW
    }


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        pytest.param(state, trigger, id=f"{state.value}-{trigger.value}")
        for state in sorted(SPEC_TERMINAL_ORDER_STATES)
        for trigger in OrderTrigger
        if (state, trigger) not in ORDER_LATE_PAYMENT_EDGES
    ],
)
def test_terminal_order_refuses(state: OrderState, trigger: OrderTrigger) -> None:
    with pytest.raises(TransitionRefused):
        next_order_state(state, trigger)


def test_late_payment_on_expired_order_goes_to_a_person_not_to_paid() -> None:
    assert next_order_state(OS.EXPIRED, OT.PAYMENT_AFTER_EXPIRY) is OS.NEEDS_REVIEW


# ---------------------------------------------------------------------------------------------
# attempt machine
# ---------------------------------------------------------------------------------------------


def test_attempt_table_covers_every_pair() -> None:
    written = {(state, trigger) for state, row in ATTEMPT_SPEC.items() for trigger in row}
    assert written == set(itertools.product(AttemptState, AttemptTrigger))


@pytest.mark.parametrize(("state", "trigger", "expected"), _transition_cases(ATTEMPT_SPEC))
def test_attempt_transition(
    state: AttemptState, trigger: AttemptTrigger, expected: AttemptState | _Refused
) -> None:
    if expected is REFUSED:
        with pytest.raises(TransitionRefused) as refused:
            next_attempt_state(state, trigger)
        assert (refused.value.machine, refused.value.state, refused.value.trigger) == (
            "attempt",
            state.value,
            trigger.value,
        )
    else:
        assert next_attempt_state(state, trigger) is expected


def test_live_attempt_states_are_the_non_terminal_ones() -> None:
    assert set(LIVE_ATTEMPT_STATES) == set(AttemptState) - SPEC_TERMINAL_ATTEMPT_STATES


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        pytest.param(state, trigger, id=f"{state.value}-{trigger.value}")
        for state in sorted(SPEC_TERMINAL_ATTEMPT_STATES)
        for trigger in AttemptTrigger
        if (state, trigger) not in ATTEMPT_LATE_PAYMENT_EDGES
    ],
)
def test_terminal_attempt_refuses(state: AttemptState, trigger: AttemptTrigger) -> None:
    with pytest.raises(TransitionRefused):
        next_attempt_state(state, trigger)


@pytest.mark.parametrize(
    "state", [pytest.param(state, id=state.value) for state in (AS.EXPIRED, AS.FAILED)]
)
def test_late_payment_on_a_closed_attempt_is_recorded(state: AttemptState) -> None:
    assert next_attempt_state(state, AT.PAID) is AS.PAID


# ---------------------------------------------------------------------------------------------
# judge_payment: order state × (exact, under, over)
# ---------------------------------------------------------------------------------------------

EXPECTED = 150_123
RECEIVED = {"exact": EXPECTED, "under": EXPECTED - 123, "over": EXPECTED + 1}

V = PaymentVerdict
R = ReviewReason
ACT = RecommendedAction

_SETTLE = PaymentDecision(verdict=V.SETTLE, order_trigger=OT.PAYMENT_CONFIRMED)
_UNDERPAID = PaymentDecision(
    verdict=V.DISCREPANCY,
    order_trigger=OT.PAYMENT_DISCREPANCY,
    review_reason=R.AMOUNT_MISMATCH,
    recommended_action=ACT.REFUND,
)
_OVERPAID = PaymentDecision(
    verdict=V.DISCREPANCY,
    order_trigger=OT.PAYMENT_DISCREPANCY,
    review_reason=R.AMOUNT_MISMATCH,
    recommended_action=ACT.HONOUR,
)
_SECOND = PaymentDecision(
    verdict=V.SECOND_PAYMENT,
    order_trigger=None,
    review_reason=R.SECOND_PAYMENT,
    recommended_action=ACT.REFUND,
)
_CLOSED = PaymentDecision(
    verdict=V.ON_CLOSED_ORDER,
    order_trigger=None,
    review_reason=R.PAYMENT_ON_CLOSED_ORDER,
    recommended_action=ACT.REFUND,
)


def _after_expiry(action: RecommendedAction) -> PaymentDecision:
    return PaymentDecision(
        verdict=V.AFTER_EXPIRY,
        order_trigger=OT.PAYMENT_AFTER_EXPIRY,
        review_reason=R.PAYMENT_AFTER_EXPIRY,
        recommended_action=action,
    )


JUDGE_SPEC: dict[OrderState, dict[str, PaymentDecision]] = {
    # Rule 4: a payment "settles the order if the order is still open" — captured is open
    # (OPEN_ORDER_STATES), and PaymentVerdict.ON_CLOSED_ORDER names only cancelled/refunded/review.
    OS.CAPTURED: {"exact": _SETTLE, "under": _UNDERPAID, "over": _OVERPAID},
    OS.AWAITING_PAYMENT: {"exact": _SETTLE, "under": _UNDERPAID, "over": _OVERPAID},
    OS.VERIFYING: {"exact": _SETTLE, "under": _UNDERPAID, "over": _OVERPAID},
    # a paid order stays paid; the case asks for a refund (§3 review cases)
    OS.PAID: {"exact": _SECOND, "under": _SECOND, "over": _SECOND},
    OS.EXPIRED: {
        "exact": _after_expiry(ACT.HONOUR),
        "under": _after_expiry(ACT.REFUND),
        "over": _after_expiry(ACT.REFUND),
    },
    OS.CANCELLED: {"exact": _CLOSED, "under": _CLOSED, "over": _CLOSED},
    OS.NEEDS_REVIEW: {"exact": _CLOSED, "under": _CLOSED, "over": _CLOSED},
    OS.REFUNDED: {"exact": _CLOSED, "under": _CLOSED, "over": _CLOSED},
}

_JUDGE_CASES = [
    pytest.param(state, amount, decision, id=f"{state.value}-{amount}")
    for state, row in JUDGE_SPEC.items()
    for amount, decision in row.items()
]


def test_judge_table_covers_every_state_and_amount() -> None:
    assert set(JUDGE_SPEC) == set(OrderState)
    assert all(set(row) == set(RECEIVED) for row in JUDGE_SPEC.values())


@pytest.mark.parametrize(("state", "amount", "decision"), _JUDGE_CASES)
def test_judge_payment(state: OrderState, amount: str, decision: PaymentDecision) -> None:
    judged = judge_payment(order_state=state, expected=EXPECTED, received=RECEIVED[amount])
    assert judged == decision


@pytest.mark.parametrize(("state", "amount", "decision"), _JUDGE_CASES)
def test_judged_payment_is_never_dropped(
    state: OrderState, amount: str, decision: PaymentDecision
) -> None:
    """The order machine accepts the trigger judge_payment asks for, and every payment that does
    not settle its order reaches a person with a reason and a recommended action (rule 4)."""
    judged = judge_payment(order_state=state, expected=EXPECTED, received=RECEIVED[amount])
    if judged.order_trigger is not None:
        target = next_order_state(state, judged.order_trigger)
        assert target is (OS.PAID if judged.verdict is V.SETTLE else OS.NEEDS_REVIEW)
    if judged.verdict is V.SETTLE:
        assert (judged.review_reason, judged.recommended_action) == (None, None)
    else:
        assert judged.review_reason is not None
        assert judged.recommended_action is not None


# An order in review only because its payment could not be verified in time is still asking
# "was it paid?": a payment proven later answers it as on an open order. Every other review
# reason keeps the order closed to payments (the table above).
_PROVEN_LATE = {"exact": _SETTLE, "under": _UNDERPAID, "over": _OVERPAID}


@pytest.mark.parametrize("amount", sorted(RECEIVED))
def test_a_payment_proven_after_the_verification_window_is_judged_as_on_an_open_order(
    amount: str,
) -> None:
    judged = judge_payment(order_state=OS.NEEDS_REVIEW, expected=EXPECTED,
                           received=RECEIVED[amount],
                           review_reason=R.VERIFICATION_WINDOW_EXHAUSTED.value)
    assert judged == _PROVEN_LATE[amount]
    assert judged.order_trigger is not None
    assert next_order_state(OS.NEEDS_REVIEW, judged.order_trigger) is (
        OS.PAID if amount == "exact" else OS.NEEDS_REVIEW)


# An order in review over a payment of the wrong amount, or one reported in another currency,
# is still waiting for the order's payment: the exact amount in rupiah is it, and settles the
# order (the first payment's case stays, beside it). Another wrong amount is a payment on the
# order in review over another payment, as before, and so is a second foreign one.
_PAID_EXACTLY_AT_LAST = {"exact": _SETTLE, "under": _CLOSED, "over": _CLOSED}
_WAITS_FOR_THE_PAYMENT = (R.AMOUNT_MISMATCH, R.CURRENCY_MISMATCH)


@pytest.mark.parametrize("amount", sorted(RECEIVED))
@pytest.mark.parametrize("reason", _WAITS_FOR_THE_PAYMENT, ids=lambda r: r.value)
def test_an_exact_payment_settles_an_order_in_review_over_a_wrong_amount_or_currency(
    reason: ReviewReason, amount: str,
) -> None:
    judged = judge_payment(order_state=OS.NEEDS_REVIEW, expected=EXPECTED,
                           received=RECEIVED[amount], review_reason=reason.value)
    assert judged == _PAID_EXACTLY_AT_LAST[amount]
    if judged.order_trigger is not None:
        assert next_order_state(OS.NEEDS_REVIEW, judged.order_trigger) is OS.PAID


@pytest.mark.parametrize("reason", _WAITS_FOR_THE_PAYMENT, ids=lambda r: r.value)
def test_a_foreign_payment_never_settles_an_order_in_review_over_a_wrong_amount_or_currency(
    reason: ReviewReason,
) -> None:
    judged = judge_payment(order_state=OS.NEEDS_REVIEW, expected=EXPECTED, received=EXPECTED,
                           review_reason=reason.value, currency="USD")
    assert judged == _foreign(V.ON_CLOSED_ORDER, None)


@pytest.mark.parametrize("reason", [r for r in ReviewReason
                                    if r is not ReviewReason.VERIFICATION_WINDOW_EXHAUSTED
                                    and r not in _WAITS_FOR_THE_PAYMENT])
def test_any_other_review_keeps_the_order_closed_to_payments(reason: ReviewReason) -> None:
    """An expired order's late payment (``payment_after_expiry``) among them: a person
    decides whether the expired order is still to be paid at all."""
    judged = judge_payment(order_state=OS.NEEDS_REVIEW, expected=EXPECTED, received=EXPECTED,
                           review_reason=reason.value)
    assert judged == _CLOSED


def test_the_payment_a_person_honoured_unproven_is_not_a_second_payment_once_proven() -> None:
    proven = judge_payment(order_state=OS.PAID, expected=EXPECTED, received=EXPECTED,
                           decided_unproven=True)
    assert proven == PaymentDecision(verdict=V.SETTLE, order_trigger=None)


@pytest.mark.parametrize(("state", "amount", "decision"), [
    pytest.param(state, amount, decision, id=f"{state.value}-{amount}")
    for state, row in JUDGE_SPEC.items() if state not in (OS.PAID, OS.REFUNDED)
    for amount, decision in row.items()
])
def test_a_decision_on_the_sources_word_changes_nothing_for_an_order_not_decided(
    state: OrderState, amount: str, decision: PaymentDecision,
) -> None:
    """``decided_unproven`` is about an order a person made paid or refunded; an open, expired,
    cancelled or in-review order is judged exactly as without it."""
    judged = judge_payment(order_state=state, expected=EXPECTED, received=RECEIVED[amount],
                           decided_unproven=True)
    assert judged == decision


@pytest.mark.parametrize("state", [OS.CANCELLED, OS.REFUNDED])
def test_a_closed_order_once_in_review_for_the_window_stays_closed_to_payments(
    state: OrderState,
) -> None:
    """The window's reason reopens an order only while it is still in review: once a person
    refunded it (or it was cancelled), a payment is a case, never a settlement."""
    judged = judge_payment(order_state=state, expected=EXPECTED, received=EXPECTED,
                           review_reason=R.VERIFICATION_WINDOW_EXHAUSTED.value)
    assert judged == _CLOSED


_TO_MATCH = {"exact": PaymentDecision(verdict=V.ON_CLOSED_ORDER, order_trigger=None,
                                      review_reason=R.PAYMENT_ON_CLOSED_ORDER,
                                      recommended_action=ACT.MATCH_MANUALLY),
             "under": PaymentDecision(verdict=V.DISCREPANCY, order_trigger=None,
                                      review_reason=R.AMOUNT_MISMATCH,
                                      recommended_action=ACT.MATCH_MANUALLY)}


@pytest.mark.parametrize(("state", "amount"), [(OS.PAID, "under"), (OS.REFUNDED, "exact"),
                                               (OS.REFUNDED, "under")])
def test_a_payment_after_a_decision_on_the_sources_word_is_matched_never_refunded_again(
    state: OrderState, amount: str,
) -> None:
    """Review finding: a person refunded an order the source could not confirm; the provider
    then reported that very payment and a second refund was recommended."""
    judged = judge_payment(order_state=state, expected=EXPECTED, received=RECEIVED[amount],
                           decided_unproven=True)
    assert judged == _TO_MATCH[amount]
    assert judged.recommended_action is not ACT.REFUND


# A payment a provider reports in another currency is no number of rupiah: it never settles and
# is never compared with the expected amount, even when the number matches; it takes the path an
# amount mismatch would take, with its own reason, and a person checks at the provider.
def _foreign(verdict: PaymentVerdict, trigger: OrderTrigger | None) -> PaymentDecision:
    return PaymentDecision(verdict=verdict, order_trigger=trigger,
                           review_reason=R.CURRENCY_MISMATCH,
                           recommended_action=ACT.CHECK_AT_SOURCE)


FOREIGN_SPEC: dict[OrderState, PaymentDecision] = {
    OS.CAPTURED: _foreign(V.DISCREPANCY, OT.PAYMENT_DISCREPANCY),
    OS.AWAITING_PAYMENT: _foreign(V.DISCREPANCY, OT.PAYMENT_DISCREPANCY),
    OS.VERIFYING: _foreign(V.DISCREPANCY, OT.PAYMENT_DISCREPANCY),
    OS.PAID: _foreign(V.SECOND_PAYMENT, None),
    OS.EXPIRED: _foreign(V.AFTER_EXPIRY, OT.PAYMENT_AFTER_EXPIRY),
    OS.CANCELLED: _foreign(V.ON_CLOSED_ORDER, None),
    OS.NEEDS_REVIEW: _foreign(V.ON_CLOSED_ORDER, None),
    OS.REFUNDED: _foreign(V.ON_CLOSED_ORDER, None),
}


@pytest.mark.parametrize("currency", ["USD", "SGD", "", "360"])
@pytest.mark.parametrize("state", list(OrderState), ids=lambda s: s.value)
def test_a_payment_in_another_currency_never_settles_as_rupiah(
    state: OrderState, currency: str,
) -> None:
    judged = judge_payment(order_state=state, expected=EXPECTED, received=EXPECTED,
                           currency=currency)
    assert judged == FOREIGN_SPEC[state]
    if judged.order_trigger is not None:
        assert next_order_state(state, judged.order_trigger) is OS.NEEDS_REVIEW


@pytest.mark.parametrize(("state", "reason", "unproven", "decision"), [
    (OS.NEEDS_REVIEW, R.VERIFICATION_WINDOW_EXHAUSTED.value, False,
     _foreign(V.DISCREPANCY, OT.PAYMENT_DISCREPANCY)),
    (OS.PAID, R.VERIFICATION_WINDOW_EXHAUSTED.value, True, _foreign(V.DISCREPANCY, None)),
    (OS.REFUNDED, R.VERIFICATION_WINDOW_EXHAUSTED.value, True, _foreign(V.DISCREPANCY, None)),
])
def test_a_foreign_payment_answering_an_open_question_still_goes_to_a_person(
    state: OrderState, reason: str, unproven: bool, decision: PaymentDecision,
) -> None:
    judged = judge_payment(order_state=state, expected=EXPECTED, received=EXPECTED,
                           review_reason=reason, decided_unproven=unproven, currency="USD")
    assert judged == decision


def test_rupiah_in_any_spelling_a_provider_uses_is_rupiah() -> None:
    assert [reported_currency(v) for v in (None, "IDR", "idr", " IDR ")] == ["IDR"] * 4
    assert [reported_currency(v) for v in ("USD", 360, "")] == ["USD", "360", ""]


# ---------------------------------------------------------------------------------------------
# events the merchant hears on entering a state
# ---------------------------------------------------------------------------------------------

# The outcomes a merchant must hear about (§1: `order.paid`, `order.expired`,
# `order.needs_review`, ...); `refunded` settles a review, so it is an outcome too.
MERCHANT_EVENTS: dict[OrderState, str] = {
    # §1: the checkout frontend gets payment instructions; the merchant hears they were issued.
    OS.AWAITING_PAYMENT: "order.awaiting_payment",
    OS.PAID: "order.paid",
    OS.EXPIRED: "order.expired",
    OS.CANCELLED: "order.cancelled",
    OS.NEEDS_REVIEW: "order.needs_review",
    OS.REFUNDED: "order.refunded",
}


def _reachable_from_captured() -> set[OrderState]:
    """States the order machine (the code, not the table above) can reach from ``captured``."""
    seen, frontier = {OS.CAPTURED}, [OS.CAPTURED]
    while frontier:
        state = frontier.pop()
        for trigger in OrderTrigger:
            try:
                target = next_order_state(state, trigger)
            except TransitionRefused:
                continue
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def test_every_order_state_is_reachable_from_captured() -> None:
    assert _reachable_from_captured() == set(OrderState)


@pytest.mark.parametrize(
    ("state", "event"),
    [pytest.param(state, event, id=state.value) for state, event in MERCHANT_EVENTS.items()],
)
def test_merchant_hears_when_an_order_enters(state: OrderState, event: str) -> None:
    assert state in _reachable_from_captured()
    assert ORDER_EVENT_ON_ENTRY.get(state) == event


@pytest.mark.parametrize("state",
                         [pytest.param(state, id=state.value) for state in MERCHANT_EVENTS])
def test_the_event_on_entering_a_state_is_one_the_merchant_webhooks_deliver(
    state: OrderState,
) -> None:
    """An event type no webhook handler takes is recorded done by the relay and never sent."""
    assert ORDER_EVENT_ON_ENTRY[state] in events.MERCHANT_VISIBLE


def test_every_event_named_for_entering_a_state_is_one_the_merchant_webhooks_deliver() -> None:
    """Not only the states above: a name in the table that no webhook handler takes would be
    written, recorded done by the relay and never sent (``verifying`` once named
    ``order.verifying``; entering it is told as ``order.payment_pending`` by expiry, which
    alone knows the next check and writes it once per order)."""
    assert set(ORDER_EVENT_ON_ENTRY.values()) <= events.MERCHANT_VISIBLE
    assert OS.VERIFYING not in ORDER_EVENT_ON_ENTRY


# ---------------------------------------------------------------------------------------------
# the vocabulary of review cases: stored, served by the ops API, named in alert rules
# ---------------------------------------------------------------------------------------------


def test_review_reasons_are_the_codes_people_and_alerts_read() -> None:
    # ops/alerts/lunas.rules.yml selects reason="possible_reversal"; README lists the rest.
    assert {r.value for r in ReviewReason} == {
        "amount_mismatch", "payment_after_expiry", "second_payment", "payment_on_closed_order",
        "ambiguous_match", "possible_duplicate", "possible_reversal",
        "verification_window_exhausted", "currency_mismatch", "chargeback",
        "refunded_at_provider",
    }


def test_recommended_actions_are_the_codes_people_read() -> None:
    assert {a.value for a in RecommendedAction} == {
        "refund", "honour", "match_manually", "check_with_bank", "check_at_source",
        "dispute_or_accept",
    }


# ---------------------------------------------------------------------------------------------
# nothing left to pay on: what the order API, the status page and order.payment_failed share
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("order_state", "attempts", "nothing_to_pay"), [
    ("awaiting_payment", ["failed"], True),  # its instrument declined
    ("awaiting_payment", ["failed", "expired"], True),
    ("awaiting_payment", [], True),
    ("awaiting_payment", ["failed", "unknown"], False),  # the unknown create may be live
    ("awaiting_payment", ["failed", "creating"], False),  # so may one being created
    ("awaiting_payment", ["failed", "superseded"], False),  # a QR nobody could cancel
    ("awaiting_payment", ["active"], False),
    ("captured", [], False),  # issuance is deferred, not failed
    ("verifying", ["expired"], False),
    ("expired", ["expired"], False),
    ("paid", ["paid"], False),
])
def test_nothing_is_left_to_pay_only_when_no_attempt_of_an_awaiting_order_is_live(
        order_state: str, attempts: list[str], nothing_to_pay: bool) -> None:
    live = sum(AttemptState(a) in LIVE_ATTEMPT_STATES for a in attempts)
    assert nothing_left_to_pay(order_state, live) is nothing_to_pay


# A payment whose proof says it already went back (a chargeback or a refund at the provider, a
# case of its own): it moves the order as any payment, but nobody is asked to refund or honour
# money the merchant no longer has. A second payment needs no case beside the reversal's.
@pytest.mark.parametrize(("state", "amount", "decision"), _JUDGE_CASES)
def test_a_payment_already_reversed_never_asks_for_a_refund_or_to_be_honoured(
    state: OrderState, amount: str, decision: PaymentDecision
) -> None:
    judged = judge_payment(order_state=state, expected=EXPECTED, received=RECEIVED[amount],
                           reversed_since=True)
    assert (judged.verdict, judged.order_trigger) == (decision.verdict, decision.order_trigger)
    if decision.verdict is V.SECOND_PAYMENT:
        assert (judged.review_reason, judged.recommended_action) == (None, None)
    elif decision.review_reason is None:
        assert judged == decision
    else:
        assert (judged.review_reason, judged.recommended_action) == (
            decision.review_reason, ACT.CHECK_AT_SOURCE)


def test_a_second_payment_reversed_only_in_part_keeps_its_case_checked_at_the_source() -> None:
    """Part of it went back (a partial refund): the rest is still with the merchant, so the
    second payment keeps its case; a person checks at the source what is left to refund."""
    judged = judge_payment(order_state=OrderState.PAID, expected=EXPECTED, received=EXPECTED,
                           reversed_since=True, reversed_in_part=True)
    assert (judged.verdict, judged.order_trigger, judged.review_reason,
            judged.recommended_action) == (V.SECOND_PAYMENT, None, ReviewReason.SECOND_PAYMENT,
                                           ACT.CHECK_AT_SOURCE)


# What a person may answer an open review case with, by reason and by the order it is on.
# (reason, order state, the order waits in review for this reason) -> allowed answers.
HON, REF, EXP = "honour", "refund", "expire"
CASE_ACTIONS_SPEC: list[tuple[str, str, bool, tuple[str, ...]]] = [
    ("verification_window_exhausted", "needs_review", True, (HON, REF, EXP)),
    ("amount_mismatch", "needs_review", True, (HON, REF)),
    ("payment_after_expiry", "needs_review", True, (HON, REF)),
    ("currency_mismatch", "needs_review", True, (HON, REF)),
    # beside a paid order: maybe the payment a person paid it for without proof, or one more
    ("currency_mismatch", "paid", False, (HON, REF)),
    ("amount_mismatch", "paid", False, (HON, REF)),
    # beside an order that can no longer be paid, money can only go back
    ("amount_mismatch", "refunded", False, (REF,)),
    ("currency_mismatch", "cancelled", False, (REF,)),
    ("currency_mismatch", "needs_review", False, (REF,)),
    ("second_payment", "paid", False, (REF,)),
    ("payment_on_closed_order", "cancelled", False, (REF,)),
    ("payment_on_closed_order", "refunded", False, (REF,)),
    ("payment_on_closed_order", "needs_review", False, (REF,)),
    ("refunded_at_provider", "paid", False, (REF,)),
    # does money already counted stay (honour) or go back (refund)?
    ("chargeback", "paid", False, (HON, REF)),
    ("possible_reversal", "paid", False, (HON, REF)),
    ("possible_reversal", "needs_review", False, (HON, REF)),
    ("possible_duplicate", "paid", False, (HON, REF)),
]


@pytest.mark.parametrize(("reason", "order_state", "decides", "allowed"), CASE_ACTIONS_SPEC)
def test_a_case_is_answered_only_in_ways_that_mean_something_for_it(
    reason: str, order_state: str, decides: bool, allowed: tuple[str, ...]
) -> None:
    assert case_actions(reason, order_state=order_state, decides_order=decides) == allowed


def test_a_wrong_amount_beside_the_exact_payment_that_paid_its_order_can_only_go_back() -> None:
    """The order waited in review for this amount mismatch and an exact payment paid it: the
    case's money is the customer's to get back (as a second payment's is). Honour recorded
    beside the paid order would keep both payments: a person who meant to pay the order by
    it, on a list read before the exact one arrived, would have done so without a word.
    Beside an order paid on a person's word (its review was the window's) it may still be the
    payment they paid it for, so either answer stands (``CASE_ACTIONS_SPEC``)."""
    assert case_actions("amount_mismatch", order_state="paid", decides_order=False,
                        review_reason="amount_mismatch") == (REF,)
    assert case_actions("amount_mismatch", order_state="paid", decides_order=False,
                        review_reason="verification_window_exhausted") == (HON, REF)
    # two payments in another currency may together be what was owed: refund it, or keep it
    assert case_actions("currency_mismatch", order_state="paid", decides_order=False,
                        review_reason="currency_mismatch") == (HON, REF)


@pytest.mark.parametrize(("reason", "opened_with", "beside_paid"), [
    # an overpayment could pay the order; beside the exact payment that did, it goes back
    ("amount_mismatch", "honour", "refund"),
    ("amount_mismatch", "refund", "refund"),
    # already reversed in part at the source: what is left to refund is asked there
    ("amount_mismatch", "check_at_source", "check_at_source"),
    # how much arrived is asked at the provider first, paid order or not
    ("currency_mismatch", "check_at_source", "check_at_source"),
])
def test_a_case_left_beside_an_order_another_payment_paid_recommends_giving_it_back(
    reason: str, opened_with: str, beside_paid: str,
) -> None:
    assert recommended_beside_paid_order(reason, opened_with) == beside_paid


def test_every_reason_has_answers_written_down() -> None:
    assert {r.value for r in ReviewReason} - {"ambiguous_match"} == {
        reason for reason, *_ in CASE_ACTIONS_SPEC}


def test_a_case_decides_its_order_only_while_the_order_waits_in_review_for_its_reason() -> None:
    assert case_decides_order("currency_mismatch", order_state="needs_review",
                              review_reason="currency_mismatch")
    assert not case_decides_order("possible_reversal", order_state="needs_review",
                                  review_reason="amount_mismatch")
    assert not case_decides_order("currency_mismatch", order_state="paid",
                                  review_reason="currency_mismatch")
