"""Names of the events Lunas writes to its outbox. One place, so handlers and tests agree."""

from __future__ import annotations

from typing import Final

ORDER_CAPTURED: Final = "order.captured"
ORDER_AWAITING_PAYMENT: Final = "order.awaiting_payment"
ORDER_PAID: Final = "order.paid"
ORDER_EXPIRED: Final = "order.expired"
ORDER_CANCELLED: Final = "order.cancelled"
ORDER_NEEDS_REVIEW: Final = "order.needs_review"
ORDER_PAYMENT_PENDING: Final = "order.payment_pending"  # past its deadline, a source is down
ORDER_PAYMENT_FAILED: Final = "order.payment_failed"  # its last instrument closed unpaid, early
REVIEW_CASE_OPENED: Final = "review_case.opened"
REVIEW_CASE_RESOLVED: Final = "review_case.resolved"
# An open case's recommendation changed: an overpayment the order waited in review for, left
# beside the exact payment that paid it, is money to give back (settlement.py).
REVIEW_CASE_UPDATED: Final = "review_case.updated"
ORDER_REFUNDED: Final = "order.refunded"
ATTEMPT_UNKNOWN: Final = "attempt.unknown"  # internal: resolve by a status read
ATTEMPT_CANCEL_REQUESTED: Final = "attempt.cancel_requested"  # internal: cancel at provider
PROVIDER_DELIVERY: Final = "provider.delivery"  # internal: apply one stored gateway webhook
ATTEMPT_VERIFY: Final = "attempt.verify"  # internal: read the provider's status, apply if paid
ATTEMPT_SETTLED_READ: Final = "attempt.settled_read"  # internal: read a paid attempt again
MUTATIONS_JUDGE_AGAIN: Final = "mutations.judge_again"  # internal: possible reversals, again

# Events a merchant's webhook endpoint receives.
MERCHANT_VISIBLE: Final = frozenset(
    {ORDER_AWAITING_PAYMENT, ORDER_PAYMENT_PENDING, ORDER_PAYMENT_FAILED, ORDER_PAID,
     ORDER_EXPIRED, ORDER_CANCELLED, ORDER_NEEDS_REVIEW, ORDER_REFUNDED, REVIEW_CASE_OPENED,
     REVIEW_CASE_UPDATED, REVIEW_CASE_RESOLVED}
)
