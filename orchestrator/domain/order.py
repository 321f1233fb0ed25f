"""Order and payment-attempt state machines (ARCHITECTURE.md §3) as tables of allowed transitions.

An order moves only along the edges in ``ORDER_TRANSITIONS``; an attempt only along
``ATTEMPT_TRANSITIONS``. Everything else is refused with ``TransitionRefused`` so a caller can never
settle twice, expire a paid order, or resurrect a cancelled one. The functions here do no I/O and
read no clock: the caller passes ``now`` in.

Deviations from the diagram in ARCHITECTURE.md, on purpose: ``expired → needs_review`` on a payment
that arrives after expiry (issue 2 requires it; rule 4 says such money is never dropped); a
terminal ``refunded`` state for a review that a person resolves by refunding; and ``captured`` takes
payments and the unverifiable deadline like ``awaiting_payment`` (it can hold an attempt whose
create outcome was unknown, rule 3 and 4).

An order sent to review because its verification window ran out (``verification_window_
exhausted``) is still waiting on the one question the window could not answer: was it paid?
So a payment proven later, when the source is back, is judged as on an open order: the exact
amount settles it (``needs_review → paid``), another amount is an amount mismatch (it stays in
review, for that reason). Before, such a payment opened a refund case that could not move the
order, which stayed in review for good. A person who finds no payment at the source expires
it (``needs_review → expired``, ``review_expired``).

An order in review over a payment of the wrong amount (``amount_mismatch``) or one reported in
another currency (``currency_mismatch``) is still waiting for its payment too: a customer who
paid 63,000 of 64,007 and then the exact 64,007 has paid the order, by the second. So the exact
amount in rupiah settles it (``needs_review → paid``); the first payment's case stays open
beside the paid order, money to give back (``recommended_beside_paid_order``). Before, the
exact payment was a refund-only case on a closed order, and the order could only be paid short
or refunded whole. Another wrong amount still waits for a person. A late payment on an expired
order (``payment_after_expiry``) does not reopen it: whether it is still to be paid at all is
the person's question.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from orchestrator.domain import events
from orchestrator.domain.errors import TransitionRefused
from orchestrator.domain.money import RUPIAH


class OrderState(enum.StrEnum):
    CAPTURED = "captured"
    AWAITING_PAYMENT = "awaiting_payment"
    VERIFYING = "verifying"
    PAID = "paid"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    NEEDS_REVIEW = "needs_review"
    REFUNDED = "refunded"


class OrderTrigger(enum.StrEnum):
    INSTRUCTIONS_ISSUED = "instructions_issued"
    CANCEL = "cancel"
    PAYMENT_CONFIRMED = "payment_confirmed"
    PAYMENT_DISCREPANCY = "payment_discrepancy"
    DEADLINE_PASSED = "deadline_passed"
    DEADLINE_PASSED_UNVERIFIABLE = "deadline_passed_unverifiable"
    VERIFICATION_WINDOW_EXHAUSTED = "verification_window_exhausted"
    PAYMENT_AFTER_EXPIRY = "payment_after_expiry"
    REVIEW_HONOURED = "review_honoured"
    REVIEW_REFUNDED = "review_refunded"
    REVIEW_EXPIRED = "review_expired"  # a person found no payment at the source


_O = OrderState
_T = OrderTrigger

ORDER_TRANSITIONS: dict[tuple[OrderState, OrderTrigger], OrderState] = {
    (_O.CAPTURED, _T.INSTRUCTIONS_ISSUED): _O.AWAITING_PAYMENT,
    (_O.CAPTURED, _T.CANCEL): _O.CANCELLED,
    (_O.CAPTURED, _T.DEADLINE_PASSED): _O.EXPIRED,
    (_O.CAPTURED, _T.DEADLINE_PASSED_UNVERIFIABLE): _O.VERIFYING,
    # A captured order may hold an attempt whose create outcome was unknown and which turned out
    # live; money paid on it settles the order like any open order (rule 4).
    (_O.CAPTURED, _T.PAYMENT_CONFIRMED): _O.PAID,
    (_O.CAPTURED, _T.PAYMENT_DISCREPANCY): _O.NEEDS_REVIEW,
    (_O.AWAITING_PAYMENT, _T.CANCEL): _O.CANCELLED,
    (_O.AWAITING_PAYMENT, _T.PAYMENT_CONFIRMED): _O.PAID,
    (_O.AWAITING_PAYMENT, _T.PAYMENT_DISCREPANCY): _O.NEEDS_REVIEW,
    (_O.AWAITING_PAYMENT, _T.DEADLINE_PASSED): _O.EXPIRED,
    (_O.AWAITING_PAYMENT, _T.DEADLINE_PASSED_UNVERIFIABLE): _O.VERIFYING,
    (_O.VERIFYING, _T.PAYMENT_CONFIRMED): _O.PAID,
    (_O.VERIFYING, _T.PAYMENT_DISCREPANCY): _O.NEEDS_REVIEW,
    (_O.VERIFYING, _T.DEADLINE_PASSED): _O.EXPIRED,
    (_O.VERIFYING, _T.VERIFICATION_WINDOW_EXHAUSTED): _O.NEEDS_REVIEW,
    (_O.EXPIRED, _T.PAYMENT_AFTER_EXPIRY): _O.NEEDS_REVIEW,
    (_O.NEEDS_REVIEW, _T.REVIEW_HONOURED): _O.PAID,
    (_O.NEEDS_REVIEW, _T.REVIEW_REFUNDED): _O.REFUNDED,
    (_O.NEEDS_REVIEW, _T.REVIEW_EXPIRED): _O.EXPIRED,
    # Only an order whose review still waits for its payment (judge_payment checks the reason).
    (_O.NEEDS_REVIEW, _T.PAYMENT_CONFIRMED): _O.PAID,
    (_O.NEEDS_REVIEW, _T.PAYMENT_DISCREPANCY): _O.NEEDS_REVIEW,
}

TERMINAL_ORDER_STATES = frozenset({_O.PAID, _O.EXPIRED, _O.CANCELLED, _O.REFUNDED})
OPEN_ORDER_STATES = frozenset({_O.CAPTURED, _O.AWAITING_PAYMENT, _O.VERIFYING})

# Events the merchant hears about, keyed by the state an order enters. Not ``verifying``: entering
# it is told as ``order.payment_pending`` by expiry (services/expiry.py), which alone knows when
# the next check is and writes it once per order under its own event id.
ORDER_EVENT_ON_ENTRY: dict[OrderState, str] = {
    _O.AWAITING_PAYMENT: events.ORDER_AWAITING_PAYMENT,
    _O.PAID: events.ORDER_PAID,
    _O.EXPIRED: events.ORDER_EXPIRED,
    _O.CANCELLED: events.ORDER_CANCELLED,
    _O.NEEDS_REVIEW: events.ORDER_NEEDS_REVIEW,
    _O.REFUNDED: events.ORDER_REFUNDED,
}


def next_order_state(state: OrderState, trigger: OrderTrigger) -> OrderState:
    """The state ``trigger`` moves an order in ``state`` to, or ``TransitionRefused``."""
    try:
        return ORDER_TRANSITIONS[(state, trigger)]
    except KeyError:
        raise TransitionRefused("order", state.value, trigger.value) from None


class AttemptState(enum.StrEnum):
    CREATING = "creating"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    PAID = "paid"
    EXPIRED = "expired"
    FAILED = "failed"
    UNKNOWN = "unknown"


class AttemptTrigger(enum.StrEnum):
    ISSUED = "issued"
    REFUSED = "refused"
    OUTCOME_UNKNOWN = "outcome_unknown"
    VERIFIED_LIVE = "verified_live"
    VERIFIED_ABSENT = "verified_absent"
    SUPERSEDED = "superseded"
    PAID = "paid"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


_A = AttemptState
_AT = AttemptTrigger

ATTEMPT_TRANSITIONS: dict[tuple[AttemptState, AttemptTrigger], AttemptState] = {
    (_A.CREATING, _AT.ISSUED): _A.ACTIVE,
    (_A.CREATING, _AT.REFUSED): _A.FAILED,
    (_A.CREATING, _AT.OUTCOME_UNKNOWN): _A.UNKNOWN,
    (_A.UNKNOWN, _AT.VERIFIED_LIVE): _A.ACTIVE,
    (_A.UNKNOWN, _AT.VERIFIED_ABSENT): _A.FAILED,
    (_A.UNKNOWN, _AT.SUPERSEDED): _A.SUPERSEDED,
    (_A.UNKNOWN, _AT.PAID): _A.PAID,
    (_A.UNKNOWN, _AT.EXPIRED): _A.EXPIRED,
    (_A.ACTIVE, _AT.PAID): _A.PAID,
    (_A.ACTIVE, _AT.EXPIRED): _A.EXPIRED,
    (_A.ACTIVE, _AT.SUPERSEDED): _A.SUPERSEDED,
    (_A.ACTIVE, _AT.CANCELLED): _A.FAILED,
    (_A.SUPERSEDED, _AT.PAID): _A.PAID,
    (_A.SUPERSEDED, _AT.EXPIRED): _A.EXPIRED,
    (_A.SUPERSEDED, _AT.CANCELLED): _A.FAILED,
    # Money that lands on an instrument after it expired or was cancelled is still money on it
    # (rule 4): the attempt records it; the order decides what that means.
    (_A.EXPIRED, _AT.PAID): _A.PAID,
    (_A.FAILED, _AT.PAID): _A.PAID,
}

LIVE_ATTEMPT_STATES = frozenset({_A.CREATING, _A.ACTIVE, _A.SUPERSEDED, _A.UNKNOWN})


def nothing_left_to_pay(order_state: str, live_attempts: int) -> bool:
    """An order awaiting payment with no live attempt (``LIVE_ATTEMPT_STATES``): its instruments
    closed unpaid before the deadline, and none is being created or verified that could yet turn
    out payable (a superseded QR the provider would not cancel still takes money; an unknown
    create may be live). The one definition the order API (``verification.state =
    payment_failed``), the status page lookup and ``order.payment_failed`` share
    (services/payment_failed.py)."""
    return order_state == OrderState.AWAITING_PAYMENT.value and live_attempts == 0


def next_attempt_state(state: AttemptState, trigger: AttemptTrigger) -> AttemptState:
    """The state ``trigger`` moves an attempt in ``state`` to, or ``TransitionRefused``."""
    try:
        return ATTEMPT_TRANSITIONS[(state, trigger)]
    except KeyError:
        raise TransitionRefused("attempt", state.value, trigger.value) from None


class PaymentVerdict(enum.StrEnum):
    """What one confirmed payment on an attempt means for its order."""

    SETTLE = "settle"  # the order becomes paid
    DISCREPANCY = "discrepancy"  # amount differs: a person decides
    AFTER_EXPIRY = "after_expiry"  # order already expired: a person decides (refund / honour)
    SECOND_PAYMENT = "second_payment"  # order already paid: it stays paid, a refund case opens
    ON_CLOSED_ORDER = "on_closed_order"  # cancelled / refunded / in review: a case opens


class ReviewReason(enum.StrEnum):
    AMOUNT_MISMATCH = "amount_mismatch"
    PAYMENT_AFTER_EXPIRY = "payment_after_expiry"
    SECOND_PAYMENT = "second_payment"
    PAYMENT_ON_CLOSED_ORDER = "payment_on_closed_order"
    AMBIGUOUS_MATCH = "ambiguous_match"
    POSSIBLE_DUPLICATE = "possible_duplicate"  # one credit seen by two sources (push + file)
    POSSIBLE_REVERSAL = "possible_reversal"  # a debit of a paid credit's amount soon after it
    VERIFICATION_WINDOW_EXHAUSTED = "verification_window_exhausted"
    CURRENCY_MISMATCH = "currency_mismatch"  # a provider reports the payment in non-rupiah
    CHARGEBACK = "chargeback"  # the payer's bank pulled a payment back (paid order stays paid)
    REFUNDED_AT_PROVIDER = "refunded_at_provider"  # refunded outside Lunas (provider dashboard)


class RecommendedAction(enum.StrEnum):
    REFUND = "refund"
    HONOUR = "honour"
    MATCH_MANUALLY = "match_manually"
    CHECK_WITH_BANK = "check_with_bank"
    CHECK_AT_SOURCE = "check_at_source"  # was it paid, and what? ask the provider or the bank
    DISPUTE_OR_ACCEPT = "dispute_or_accept"  # contest the chargeback with evidence, or take it


# Reviews an exact payment in rupiah ends: the order waits for its payment, and a payment of
# exactly what it asks is that payment. The first payment (of another amount, or of no number of
# rupiah) was never it, so its case stays, beside the paid order.
_SETTLED_BY_AN_EXACT_PAYMENT = frozenset({ReviewReason.AMOUNT_MISMATCH.value,
                                          ReviewReason.CURRENCY_MISMATCH.value})

EXPIRE = "expire"
"""The third answer to a case asking whether an order was paid at all: the source shows none."""

_EITHER = (RecommendedAction.HONOUR.value, RecommendedAction.REFUND.value)
_REFUND_ONLY = (RecommendedAction.REFUND.value,)
# Reasons whose question is whether money already counted stays with the merchant: honour (it
# stands: no reversal, the chargeback contested, the credit is the payment counted) or refund
# (it went, or goes, back). ambiguous_match is opened by nothing today; kept answerable.
_STAYS_OR_GOES = frozenset({ReviewReason.POSSIBLE_REVERSAL, ReviewReason.CHARGEBACK,
                            ReviewReason.POSSIBLE_DUPLICATE, ReviewReason.AMBIGUOUS_MATCH})
# Money that can only go back: the order was paid once by another payment (second_payment), is
# closed (payment_on_closed_order: cancelled, refunded, or in review over another payment), or
# the money went back at the provider already (refunded_at_provider: refund records that).
_GOES_BACK = frozenset({ReviewReason.SECOND_PAYMENT, ReviewReason.PAYMENT_ON_CLOSED_ORDER,
                        ReviewReason.REFUNDED_AT_PROVIDER})


def case_decides_order(reason: str, *, order_state: str, review_reason: str | None) -> bool:
    """Whether resolving an open case of ``reason`` decides its order: the order waits in review
    for that reason. Two cases may: two payments of one order reported in another currency,
    the second opened beside the first with the same reason. Either may pay the order, so each
    decides it (``case_actions``), and refunding one leaves it to the other."""
    return order_state == OrderState.NEEDS_REVIEW.value and review_reason == reason


def case_actions(reason: str, *, order_state: str | None, decides_order: bool,
                 review_reason: str | None = None) -> tuple[str, ...]:
    """The answers that mean something for an open case (``decides_order``: see
    ``case_decides_order``; ``review_reason``: the order's). Honour: the money stays with the
    merchant as this order's (a deciding case makes the order paid); refund: it goes, or went,
    back (a deciding case makes the order refunded); expire: the source shows no payment. A
    payment beside a paid order may be the one a person paid it for without proof
    (``judge_payment``, ``decided_unproven``), or with another in a foreign currency make up
    what was owed, so it may be honoured; beside an order that cannot be paid it can only go
    back, and so can a wrong amount the order waited in review for until an exact payment paid
    it (honour there would keep both payments)."""
    if reason in _STAYS_OR_GOES:
        return _EITHER
    if reason in _GOES_BACK:
        return _REFUND_ONLY
    if decides_order:
        if reason == ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value:
            return (*_EITHER, EXPIRE)
        return _EITHER
    if order_state is None:
        return _EITHER
    if order_state == OrderState.PAID.value:
        paid_exactly = (reason == review_reason == ReviewReason.AMOUNT_MISMATCH.value)
        return _REFUND_ONLY if paid_exactly else _EITHER
    return _REFUND_ONLY


def recommended_beside_paid_order(reason: str, recommended: str) -> str:
    """What a case an order waited in review for recommends once another, exact payment paid
    the order (``_SETTLED_BY_AN_EXACT_PAYMENT``). An overpayment was honour while it could pay
    the order; beside the payment that did, it is money to give back. What a person must
    check at the source first (part of it already went back; a foreign payment's worth) is
    still checked there."""
    if reason == ReviewReason.AMOUNT_MISMATCH.value and recommended == RecommendedAction.HONOUR:
        return RecommendedAction.REFUND.value
    return recommended


@dataclass(frozen=True, kw_only=True)
class PaymentDecision:
    verdict: PaymentVerdict
    order_trigger: OrderTrigger | None
    review_reason: ReviewReason | None = None
    recommended_action: RecommendedAction | None = None


def judge_payment(*, order_state: OrderState, expected: int, received: int,
                  review_reason: str | None = None, decided_unproven: bool = False,
                  currency: str = RUPIAH, reversed_since: bool = False,
                  reversed_in_part: bool = False) -> PaymentDecision:
    """Decide what a payment of ``received`` rupiah on one of an order's attempts means.

    ``reversed_since``: the source that proves this payment says in the same breath that it went
    back (a chargeback or a refund at the provider; its own case asks a person about that). Its
    money is no longer with the merchant, so nothing about it is refunded or honoured: a second
    payment needs no case of its own, and any other case asks a person to check at the source.
    ``reversed_in_part``: only some of it went back (a partial refund or chargeback, by the
    provider's running total): the rest is still with the merchant, so a second payment keeps
    its case, asking a person to check at the source what is left to refund (a refund of the
    whole payment would pay back the part already returned twice).
    """
    decision = _judge_payment(order_state=order_state, expected=expected, received=received,
                              review_reason=review_reason, decided_unproven=decided_unproven,
                              currency=currency)
    if not reversed_since or decision.review_reason is None:
        return decision
    if decision.verdict is PaymentVerdict.SECOND_PAYMENT and not reversed_in_part:
        return PaymentDecision(verdict=decision.verdict, order_trigger=decision.order_trigger)
    return PaymentDecision(verdict=decision.verdict, order_trigger=decision.order_trigger,
                           review_reason=decision.review_reason,
                           recommended_action=RecommendedAction.CHECK_AT_SOURCE)


def _judge_payment(*, order_state: OrderState, expected: int, received: int,
                   review_reason: str | None, decided_unproven: bool,
                   currency: str) -> PaymentDecision:
    """``judge_payment`` of a payment still with the merchant.

    Amounts are compared exactly (STYLE rule 6): a different amount is a discrepancy, never an
    overwrite. A paid order stays paid whatever else arrives (rule 4). An order in review only
    because its payment could not be verified in time (``review_reason``) takes a payment like
    an open order: the payment is the answer the review waits for. One in review over a
    payment of the wrong amount or currency is paid by one of the exact amount, and by nothing
    else (module docstring). ``decided_unproven``: a
    person decided such an order (paid or refunded) on the source's word and no payment evidence
    has reached it since: the first payment is the one they decided about, not a second one. Of
    the exact amount on a paid order it is that payment, proven; anything else (a refunded order,
    another amount) goes to a person to match, never with a refund recommended: money may
    already have gone back once. A payment in another ``currency`` than rupiah is judged apart
    (``_foreign_payment``).
    """
    if currency != RUPIAH:
        return _foreign_payment(order_state, review_reason=review_reason,
                                decided_unproven=decided_unproven)
    if decided_unproven and order_state in (OrderState.PAID, OrderState.REFUNDED):
        if order_state is OrderState.PAID and received == expected:
            return PaymentDecision(verdict=PaymentVerdict.SETTLE, order_trigger=None)
        return PaymentDecision(
            verdict=PaymentVerdict.ON_CLOSED_ORDER if received == expected
            else PaymentVerdict.DISCREPANCY,
            order_trigger=None,
            review_reason=ReviewReason.PAYMENT_ON_CLOSED_ORDER if received == expected
            else ReviewReason.AMOUNT_MISMATCH,
            recommended_action=RecommendedAction.MATCH_MANUALLY,
        )
    if order_state is OrderState.PAID:
        return PaymentDecision(
            verdict=PaymentVerdict.SECOND_PAYMENT,
            order_trigger=None,
            review_reason=ReviewReason.SECOND_PAYMENT,
            recommended_action=RecommendedAction.REFUND,
        )
    if order_state is OrderState.EXPIRED:
        return PaymentDecision(
            verdict=PaymentVerdict.AFTER_EXPIRY,
            order_trigger=OrderTrigger.PAYMENT_AFTER_EXPIRY,
            review_reason=ReviewReason.PAYMENT_AFTER_EXPIRY,
            recommended_action=RecommendedAction.HONOUR if received == expected else (
                RecommendedAction.REFUND
            ),
        )
    if order_state in OPEN_ORDER_STATES or (
            order_state is OrderState.NEEDS_REVIEW
            and review_reason == ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value):
        if received == expected:
            return PaymentDecision(
                verdict=PaymentVerdict.SETTLE, order_trigger=OrderTrigger.PAYMENT_CONFIRMED
            )
        return PaymentDecision(
            verdict=PaymentVerdict.DISCREPANCY,
            order_trigger=OrderTrigger.PAYMENT_DISCREPANCY,
            review_reason=ReviewReason.AMOUNT_MISMATCH,
            recommended_action=(
                RecommendedAction.REFUND if received < expected else RecommendedAction.HONOUR
            ),
        )
    if (order_state is OrderState.NEEDS_REVIEW and received == expected
            and review_reason in _SETTLED_BY_AN_EXACT_PAYMENT):
        return PaymentDecision(
            verdict=PaymentVerdict.SETTLE, order_trigger=OrderTrigger.PAYMENT_CONFIRMED
        )
    return PaymentDecision(
        verdict=PaymentVerdict.ON_CLOSED_ORDER,
        order_trigger=None,
        review_reason=ReviewReason.PAYMENT_ON_CLOSED_ORDER,
        recommended_action=RecommendedAction.REFUND,
    )


def _foreign_payment(order_state: OrderState, *, review_reason: str | None,
                     decided_unproven: bool) -> PaymentDecision:
    """A payment reported in another currency than rupiah: money moved (rule 4), but no number
    of rupiah, so it is never compared with the expected amount and never settles an order. It
    takes the path an amount mismatch takes in each order state (an open order goes to review,
    an expired one too, a paid one stays paid), always with its own reason, and a person asks
    the provider what actually arrived before honouring or refunding it."""
    reviewable = order_state in OPEN_ORDER_STATES or (
        order_state is OrderState.NEEDS_REVIEW
        and review_reason == ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value)
    if decided_unproven and order_state in (OrderState.PAID, OrderState.REFUNDED):
        verdict, trigger = PaymentVerdict.DISCREPANCY, None
    elif order_state is OrderState.PAID:
        verdict, trigger = PaymentVerdict.SECOND_PAYMENT, None
    elif order_state is OrderState.EXPIRED:
        verdict, trigger = PaymentVerdict.AFTER_EXPIRY, OrderTrigger.PAYMENT_AFTER_EXPIRY
    elif reviewable:
        verdict, trigger = PaymentVerdict.DISCREPANCY, OrderTrigger.PAYMENT_DISCREPANCY
    else:
        verdict, trigger = PaymentVerdict.ON_CLOSED_ORDER, None
    return PaymentDecision(verdict=verdict, order_trigger=trigger,
                           review_reason=ReviewReason.CURRENCY_MISMATCH,
                           recommended_action=RecommendedAction.CHECK_AT_SOURCE)
