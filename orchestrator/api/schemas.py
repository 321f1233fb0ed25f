"""Wire shapes of request bodies (msgspec Structs: decoded and type-checked by litestar)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from orchestrator.services import unreadable_feed_items
from orchestrator.services.reviews import MAX_NOTE


class CustomerIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    email: str
    phone: str


class OrderIn(msgspec.Struct, forbid_unknown_fields=True):
    merchant_order_id: str
    amount: int
    """Integer rupiah; a float or a string is refused, never rounded."""
    customer: CustomerIn
    rail: str | None = None
    """va | qris | ewallet | manual_transfer (the default)."""
    channel: str | None = None
    """Bank or wallet within the rail: bca, bni, bri, mandiri, permata; gopay, ovo, ..."""
    expires_in: int | None = None
    """Seconds from now until the payment deadline."""
    metadata: dict[str, Any] | None = None
    currency: str | None = None
    """Optional, and only ``IDR``: the replies carry it, so a checkout may send it back."""


MAX_REASON = 500
"""The length ``route_controls.reason`` and ``maintenance_windows.reason`` keep."""
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON)]
"""Why a person changed something: kept in the audit log (and on the route or window)."""


class ManualMatchIn(msgspec.Struct, forbid_unknown_fields=True):
    mutation_id: str
    order_id: str
    reason: Annotated[str, msgspec.Meta(max_length=2000)]


class HandledIn(msgspec.Struct, forbid_unknown_fields=True):
    note: Annotated[str, msgspec.Meta(max_length=unreadable_feed_items.MAX_NOTE)]
    """What was done about the money the item may stand for; kept in the audit log."""


class RouteChangeIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class MaintenanceIn(msgspec.Struct, forbid_unknown_fields=True):
    route: str
    """A route key ("va:xendit:bca") or a pattern with "*" ("va:xendit:*")."""
    starts_at: str
    """ISO-8601 with a zone ("2026-11-24T01:00:00+07:00"). Text, not ``datetime``: litestar
    decodes leniently, and would take an epoch number for a ``datetime``, zone unsaid."""
    ends_at: str
    reason: Reason


class SwitchMethodIn(msgspec.Struct, forbid_unknown_fields=True):
    rail: str
    channel: str | None = None


class BreakerActionIn(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    """force_open | force_closed | release"""
    reason: Reason


class ResolveCaseIn(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    """One of the case's ``allowed_actions``: honour | refund | expire (expire: only for a
    verification_window_exhausted case the order waits in review for)"""
    note: Annotated[str, msgspec.Meta(max_length=MAX_NOTE)]


class IncidentIn(msgspec.Struct, forbid_unknown_fields=True):
    """An incident opened by a person on the status page (Atlassian's words for status and
    impact); ``body`` is the first update, in Bahasa Indonesia, ``body_en`` its English."""

    name: Annotated[str, msgspec.Meta(min_length=3, max_length=300)]
    components: list[str]
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=5000)]
    status: str = "investigating"
    impact: str = "minor"
    name_en: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    body_en: Annotated[str, msgspec.Meta(max_length=5000)] | None = None


class IncidentUpdateIn(msgspec.Struct, forbid_unknown_fields=True):
    status: str
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=5000)]
    body_en: Annotated[str, msgspec.Meta(max_length=5000)] | None = None


class RedeliverIn(msgspec.Struct, forbid_unknown_fields=True):
    """Dead-lettered events to send again: the ones named, or every one of a merchant."""

    reason: Reason
    event_ids: list[Annotated[str, msgspec.Meta(max_length=40)]] = []
    merchant_id: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class DiscardIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason
