"""The provider contract: normalised requests and results, and the protocol adapters implement.

Adapters are thin (STYLE rule 8): wire format in, these shapes out, errors from ``rails.errors``.
No retry, breaker or business decision lives in an adapter; the router and handlers own those.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from orchestrator.domain.money import RUPIAH


class Rail(enum.StrEnum):
    VA = "va"
    QRIS = "qris"
    EWALLET = "ewallet"
    MANUAL_TRANSFER = "manual_transfer"


# Channels within a rail, as Lunas names them (lower case, provider-neutral).
VA_CHANNELS = ("bca", "bni", "bri", "permata", "mandiri")
QRIS_CHANNELS = ("qris",)
EWALLET_CHANNELS = ("gopay", "shopeepay", "ovo", "dana", "linkaja")


class NeutralStatus(enum.StrEnum):
    """RAILS.md's neutral state set, the only status vocabulary above the adapters."""

    PENDING = "pending"
    PAID = "paid"
    EXPIRED = "expired"
    FAILED = "failed"
    REFUNDED = "refunded"
    CHARGED_BACK = "charged_back"
    """Paid, then pulled back by the payer's bank (Midtrans ``chargeback`` /
    ``partial_chargeback``): not RAILS.md's set, which has no word for money reversed against
    the merchant's will; a refund is the merchant's own doing, a chargeback is not."""
    NOT_FOUND = "not_found"  # the provider has no such transaction (never created)


@dataclass(frozen=True, kw_only=True)
class Route:
    """One way to take a payment: a rail, served by a provider, on a channel."""

    rail: Rail
    provider: str
    channel: str

    @property
    def key(self) -> str:
        return f"{self.rail.value}:{self.provider}:{self.channel}"

    @classmethod
    def parse(cls, key: str) -> Route:
        rail, provider, channel = key.split(":", 2)
        return cls(rail=Rail(rail), provider=provider, channel=channel)


@dataclass(frozen=True, kw_only=True)
class ChargeRequest:
    """What Lunas asks a provider to create. ``reference`` is the attempt id: the provider's
    order id / external id / reference id / idempotency key. Only where the provider dedupes on
    it (``PaymentProvider.idempotent_create``) can a repeated create not make two charges."""

    reference: str
    route: Route
    amount: int
    expires_at: datetime
    customer_name: str
    customer_email: str
    customer_phone: str
    description: str = ""
    callback_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class Instrument:
    """Payment instructions a customer can act on, in Lunas's shape (never the provider's)."""

    route: Route
    provider_ref: str
    status: NeutralStatus
    va_number: str | None = None
    bank: str | None = None
    biller_code: str | None = None
    qr_string: str | None = None
    checkout_url: str | None = None
    deeplink_url: str | None = None
    expires_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ProviderPayment:
    """One payment a status read lists on an instrument (``ProviderStatus.payments``)."""

    amount: int
    paid_at: datetime
    currency: str = RUPIAH


@dataclass(frozen=True, kw_only=True)
class ProviderStatus:
    """What a provider says about one charge right now."""

    status: NeutralStatus
    provider_ref: str | None
    paid_amount: int | None = None
    paid_at: datetime | None = None
    raw_status: str = ""
    reversed_amount: int | None = None
    """For a refund or chargeback: how much of the payment has gone back so far, when the
    provider says (Midtrans ``refund_amount``, the total over the transaction's refunds and
    chargebacks); None when it does not."""
    currency: str = RUPIAH
    """What ``paid_amount`` is counted in, as the provider reported it
    (``domain.money.reported_currency``): Lunas charges rupiah only, and settlement never takes
    another currency for rupiah."""
    payments: tuple[ProviderPayment, ...] = ()
    """Every payment a read found on the instrument, oldest first, when it can take more than
    one (a Xendit VA Xendit did not keep single-use): ``paid_amount`` / ``paid_at`` /
    ``currency`` are the first's. Empty: one payment at most, the one those fields describe.
    Each is evidence of its own (``settlement.apply_read_payments``), never one sum."""


CallObserver = Callable[[str, str, str, float], None]
"""``observe(provider, operation, outcome, seconds)`` after each HTTP call to a provider;
outcome is ``answered`` (any HTTP status) or ``no_answer`` (a transport error)."""


def ignore_call(provider: str, operation: str, outcome: str, seconds: float) -> None:
    """The observer when nobody measures."""


class MoreRequestsNeeded(Exception):
    """A status read found it needs more HTTP requests than its caller's pace allowed it, and
    stopped before sending the first beyond them. Not a failure of the provider: the caller
    takes ``requests`` slots of the pace and reads again with that allowance. It lets
    ``status_requests`` budget what a read usually costs rather than its rare worst case (a
    Xendit charge read that shows a refund must look up its payment's time)."""

    def __init__(self, requests: int) -> None:
        super().__init__(f"this read needs {requests} requests")
        self.requests = requests


class PaymentProvider(Protocol):
    """A gateway adapter. Implementations raise only ``rails.errors.RailError`` subclasses
    (and ``MoreRequestsNeeded`` from ``status``)."""

    name: str

    def idempotent_create(self, rail: Rail) -> bool:
        """True when the provider documents an idempotency key on creates of ``rail``, so
        repeating a create with the same reference returns the original instead of making a
        second charge (Xendit VA and QR); False when only a status read may resolve an unknown
        outcome (Midtrans; Xendit e-wallet charges, where a second charge is a second payment
        prompt on the customer's phone)."""
        ...

    def channels(self, rail: Rail) -> tuple[str, ...]:
        """The channels of ``rail`` this provider serves (empty: not this rail)."""
        ...

    async def create(self, request: ChargeRequest) -> Instrument: ...

    async def status(self, reference: str, provider_ref: str | None, route: Route, *,
                     requests_allowed: int | None = None,
                     payment_known: bool = False,
                     expires_at: datetime | None = None) -> ProviderStatus:
        """The provider's word on one attempt. An answer that needs more than
        ``requests_allowed`` HTTP requests (None: no limit) raises ``MoreRequestsNeeded``
        before sending any beyond it. ``payment_known``: Lunas has recorded the attempt's
        payment, so an answer need not say when it was made (``paid_at`` may be None), where
        finding that out costs a request more. ``expires_at``: the attempt's deadline, for an
        instrument whose provider keeps none (a Xendit QR v1), so an unpayable one can be told
        expired from paid-but-not-listed-yet; None when the caller does not know it."""
        ...

    def status_requests(self, provider_ref: str | None, route: Route) -> int:
        """The HTTP requests one ``status`` call makes but for rare answers that ask for more
        (``MoreRequestsNeeded``), so the pacer can budget for it."""
        ...

    async def cancel(self, reference: str, provider_ref: str | None, route: Route) -> None:
        """Cancel a pending charge where the provider allows it; ``Refused`` where it does not."""
        ...
