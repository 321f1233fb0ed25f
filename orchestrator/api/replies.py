"""Wire shapes of the order replies, for the OpenAPI document.

Handlers answer with the dicts ``services/order_view`` renders (one rendering for capture, reads
and webhooks); these Structs only describe them. tests/integration/test_api_contract.py decodes
real replies into them strictly, unknown fields refused, so a field added to the rendering and
not here fails a test instead of going undocumented.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Shape(msgspec.Struct, forbid_unknown_fields=True):
    pass


class CustomerOut(_Shape):
    name: str
    email: str
    phone: str


class OrderDisplay(_Shape):
    """As the customer reads them: rupiah (``Rp150.000``) and WIB times."""

    amount: str
    expires_at: str
    paid_at: str | None


class Route(_Shape):
    rail: str
    provider: str
    """``bank`` for manual transfer."""
    channel: str


class PaymentDisplay(_Shape):
    expires_at: str | None
    amount: str | None = None
    """Gateway rails."""
    transfer_amount: str | None = None
    """Manual transfer: the exact amount to send, unique code included."""


class PaymentOut(_Shape):
    """The instrument the customer pays: a bank account and exact amount (manual transfer), a
    VA number, a QRIS string, or an e-wallet link. ``action`` says which screen to show:
    bank_transfer, transfer_to_va, scan_qr, open_link, approve_in_app, wait."""

    attempt_id: str
    rail: str
    status: str
    route: Route
    action: str
    expires_at: str | None
    display: PaymentDisplay
    amount: int | None = None
    va_number: str | None = None
    bank: str | None = None
    biller_code: str | None = None
    qr_string: str | None = None
    checkout_url: str | None = None
    deeplink_url: str | None = None
    account_number: str | None = None
    account_name: str | None = None
    transfer_amount: int | None = None
    unique_code: int | None = None


class VerificationDisplay(_Shape):
    next_check_at: str | None


class VerificationOut(_Shape):
    """How Lunas is learning whether the customer paid, while the order is open: scheduled,
    checking, waiting_for_provider, watching_bank_mutations, payment_failed, unconfirmed_charge
    (captured on an e-wallet charge whose create's answer was lost: it may still be approved,
    and no second one is made)."""

    state: str
    waiting_on: str | None
    next_check_at: str | None
    display: VerificationDisplay


class Hop(_Shape):
    route: str
    outcome: str
    reason: str | None


class RoutingOut(_Shape):
    """Which route served (null: none yet) and why each one before it did not."""

    served_by: str | None
    fallback: bool
    tried: list[Hop]


class OrderOut(_Shape):
    """An order as its merchant sees it. Times UTC (ISO 8601, ``Z``); ``display`` in WIB."""

    id: str
    merchant_order_id: str
    status: str
    """captured, awaiting_payment, verifying, paid, expired, cancelled, needs_review, refunded"""
    amount: int
    """Integer rupiah."""
    currency: str
    customer: CustomerOut
    metadata: dict[str, Any] | None
    created_at: str
    expires_at: str
    paid_at: str | None
    review_reason: str | None
    payment: PaymentOut | None
    verification: VerificationOut | None
    display: OrderDisplay
    routing: RoutingOut | None = None
    """On a capture or a change of method that asked the router."""


class OrderList(_Shape):
    data: list[OrderOut]
