"""What makes a checkout request an order: the rules a request must meet, with no I/O.

The HTTP layer decodes types; this module judges meaning (amount bounds, deadline, contact
details, metadata size) and raises ``InvalidOrder`` naming the field a developer must fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestrator.domain.errors import InvalidOrder
from orchestrator.domain.money import AmountLimits

SUPPORTED_RAILS = ("va", "qris", "ewallet", "manual_transfer")
# Each used with fullmatch: with match, a final "$" also matches before a trailing "\n", which
# made "INV-1\n" an order beside "INV-1" (the uniqueness that stops a second payment, undone).
_CHANNEL = re.compile(r"[a-z_]{2,32}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}")
_PHONE = re.compile(r"\+?[0-9]{8,15}")
_MERCHANT_ORDER_ID = re.compile(r"[\x21-\x7e]{1,100}")


@dataclass(frozen=True, kw_only=True)
class Customer:
    name: str
    email: str
    phone: str


@dataclass(frozen=True, kw_only=True)
class OrderRequest:
    merchant_order_id: str
    amount: int
    customer: Customer
    rail: str | None = None
    channel: str | None = None
    expires_in: int | None = None
    metadata: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True, kw_only=True)
class CheckoutRules:
    amount_limits: AmountLimits
    default_expires_in: timedelta
    min_expires_in: timedelta
    max_expires_in: timedelta
    max_metadata_bytes: int


def request_fingerprint(request: OrderRequest) -> str:
    """A digest of the request's meaning: the same order sent twice with other whitespace or key
    order has the same fingerprint; any change of value gives another."""
    canonical = json.dumps(
        {
            "merchant_order_id": request.merchant_order_id,
            "amount": request.amount,
            "customer": [request.customer.name, request.customer.email, request.customer.phone],
            "rail": request.rail,
            "channel": request.channel,
            "expires_in": request.expires_in,
            "metadata": request.metadata,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate(request: OrderRequest, rules: CheckoutRules, *, now: datetime) -> datetime:
    """Check ``request`` against ``rules``; returns the payment deadline."""
    if not _MERCHANT_ORDER_ID.fullmatch(request.merchant_order_id):
        raise InvalidOrder(
            "merchant_order_id must be 1-100 printable ASCII characters without spaces",
            field="merchant_order_id",
        )
    rules.amount_limits.check(request.amount)
    _check_customer(request.customer)
    if request.rail is not None and request.rail not in SUPPORTED_RAILS:
        raise InvalidOrder(
            f"rail '{request.rail}' is not offered; choose one of: {', '.join(SUPPORTED_RAILS)}",
            field="rail",
        )
    if request.channel is not None and not _CHANNEL.fullmatch(request.channel):
        raise InvalidOrder("channel is a lower-case name such as 'bca' or 'gopay'",
                           field="channel")
    if request.metadata is not None:
        # UTF-8 bytes of compact JSON: "é" costs the 2 bytes it is kept in, not the 6 of an
        # ASCII escape. (The HTTP layer refuses lone surrogates; surrogatepass only keeps a
        # direct caller from a UnicodeEncodeError here.)
        size = len(json.dumps(request.metadata, separators=(",", ":"), ensure_ascii=False)
                   .encode("utf-8", "surrogatepass"))
        if size > rules.max_metadata_bytes:
            raise InvalidOrder(
                f"metadata is {size} bytes; at most {rules.max_metadata_bytes} are kept",
                field="metadata",
            )
    return now + _expires_in(request.expires_in, rules)


def _expires_in(seconds: int | None, rules: CheckoutRules) -> timedelta:
    if seconds is None:
        return rules.default_expires_in
    lo, hi = rules.min_expires_in, rules.max_expires_in
    if not lo.total_seconds() <= seconds <= hi.total_seconds():
        raise InvalidOrder(
            f"expires_in must be between {int(lo.total_seconds())} and "
            f"{int(hi.total_seconds())} seconds, got {seconds}",
            field="expires_in",
        )
    return timedelta(seconds=seconds)


def _check_customer(customer: Customer) -> None:
    # Lengths as sent, not as stripped: what is stored is what was sent.
    if not customer.name.strip() or len(customer.name) > 200:
        raise InvalidOrder("customer.name must be 1-200 characters", field="customer.name")
    if not _EMAIL.fullmatch(customer.email) or len(customer.email) > 320:
        raise InvalidOrder("customer.email is not an email address", field="customer.email")
    phone = customer.phone.replace(" ", "").replace("-", "")
    if not _PHONE.fullmatch(phone) or len(customer.phone) > 32:
        raise InvalidOrder(
            "customer.phone must be 8-15 digits, optionally starting with +",
            field="customer.phone",
        )
