"""How an order looks to its merchant: one rendering shared by capture, reads and webhooks.

Renderers take any object with the order or attempt columns as attributes (a result row, or the
values capture has just written) so capture need not read back what it wrote.

Times are UTC ISO 8601 with ``Z`` (``iso``); a ``display`` block beside them shows each in the
customer's zone, WIB (``wib``), and money as rupiah (``format_idr``). The batch statement import
writes its ``order.paid`` payloads in PostgreSQL: ``iso_sql``, ``wib_sql`` and ``idr_sql`` are
the same three renderings in SQL, byte for byte (tests/integration/test_reconciliation_batch.py
compares the two paths), so a change to one side must be made to the other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.domain.clock import WIB
from orchestrator.domain.money import format_idr


def iso(at: datetime | None) -> str | None:
    """``2026-11-24T11:34:23.528284Z``; no fraction when the microseconds are zero."""
    return at.isoformat().replace("+00:00", "Z") if at is not None else None


def wib(at: datetime) -> str:
    """``24 Nov 2026 18:34 WIB``, with English month abbreviations."""
    return at.astimezone(WIB).strftime("%d %b %Y %H:%M WIB")


def iso_sql(ts: str) -> str:
    """``iso`` of the timestamptz SQL expression ``ts`` (NULL stays NULL) in any session time
    zone. One ``to_char`` with the fraction, dropped when it is all zeros: a quarter cheaper
    per row than testing for a whole second first."""
    return (f"replace(to_char(({ts}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
            "'.000000Z', 'Z')")


def wib_sql(ts: str) -> str:
    """``wib`` of the timestamptz SQL expression ``ts``: WIB is UTC+7 all year, and ``Mon`` is
    never localised (``TMMon`` would be)."""
    return (f"to_char((({ts}) AT TIME ZONE 'UTC') + interval '7 hours', "
            "'DD Mon YYYY HH24:MI\" WIB\"')")


def idr_sql(amount: str) -> str:
    """``format_idr`` of the bigint SQL expression ``amount``: a ``,`` in a ``to_char`` pattern is
    a literal comma, never the locale's separator."""
    return f"replace(to_char({amount}, 'FM\"Rp\"9,999,999,999,999,999,999'), ',', '.')"


_GATEWAY_FIELDS = ("va_number", "bank", "biller_code", "qr_string", "checkout_url",
                   "deeplink_url")


def render_payment(attempt: Any) -> dict[str, Any] | None:
    if attempt is None:
        return None
    common = {
        "attempt_id": attempt.id,
        "rail": attempt.rail,
        "status": attempt.state,
        "route": {"rail": attempt.rail, "provider": getattr(attempt, "provider", "bank"),
                  "channel": getattr(attempt, "channel", None) or "bank"},
    }
    if attempt.rail == "manual_transfer":
        return {**common, "action": "bank_transfer", **_manual(attempt)}
    instructions = getattr(attempt, "instructions", None) or {}
    return {
        **common,
        "action": _action(attempt.rail, instructions),
        **{k: instructions.get(k) for k in _GATEWAY_FIELDS if instructions.get(k) is not None},
        "amount": attempt.transfer_amount,
        "expires_at": iso(attempt.expires_at),
        "display": {"amount": format_idr(attempt.transfer_amount),
                    "expires_at": wib(attempt.expires_at)},
    }


def _action(rail: str, instructions: dict[str, Any]) -> str:
    """What the customer does, so a checkout page can show the right screen."""
    if instructions.get("va_number"):
        return "transfer_to_va"
    if instructions.get("qr_string"):
        return "scan_qr"
    if instructions.get("checkout_url") or instructions.get("deeplink_url"):
        return "open_link"
    return "approve_in_app" if rail == "ewallet" else "wait"


def _manual(attempt: Any) -> dict[str, Any]:
    return {
        "bank": attempt.payout_bank,
        "account_number": attempt.payout_account_number,
        "account_name": attempt.payout_account_name,
        "transfer_amount": attempt.transfer_amount,
        "unique_code": attempt.unique_code,
        "expires_at": iso(attempt.expires_at),
        "display": {
            "transfer_amount": format_idr(attempt.transfer_amount),
            "expires_at": wib(attempt.expires_at),
        },
    }


_OPEN = ("captured", "awaiting_payment", "verifying")
_CLOSED_UNPAID = ("failed", "expired")


def render_verification(order: Any, attempt: Any, *, nothing_to_pay: bool
                        ) -> dict[str, Any] | None:
    """What Lunas is doing to learn whether the customer paid, honestly, while the order is open.

    ``state``: ``scheduled`` (the provider is asked at ``next_check_at``, a webhook may come first),
    ``checking`` (past the deadline, being verified before anything expires),
    ``waiting_for_provider`` (the provider cannot be asked now; asked again when it recovers,
    expected around ``next_check_at``), ``watching_bank_mutations`` (manual transfer: bank
    statement lines are matched as they arrive), ``payment_failed`` (awaiting payment, but its
    instruments closed unpaid before the deadline, e.g. a declined e-wallet charge, and none is
    being created or verified: nothing is left to pay on until the customer chooses a method
    again; ``nothing_to_pay``, from ``domain.order.nothing_left_to_pay``, as the status page and
    ``order.payment_failed`` decide it), ``unconfirmed_charge`` (captured, and what it shows is an
    e-wallet charge whose create's answer was lost, read as pending by our reference with no id
    to void it by: it may still be approved on the customer's phone, so nothing else is charged
    on its rail (``issuance.unconfirmed_charges``); it is read until paid or the deadline;
    ``waiting_on`` names its route). An order whose shown instrument closed while another may
    yet turn out live (an unknown create) has no verification to show: null."""
    if nothing_to_pay:
        return {"state": "payment_failed", "waiting_on": None, "next_check_at": None,
                "display": {"next_check_at": None}}
    if order.state not in _OPEN or attempt is None or attempt.state in _CLOSED_UNPAID:
        return None
    if attempt.rail == "manual_transfer":
        state, nxt = "watching_bank_mutations", None
        waiting: str | None = "bank_feed"
    else:
        waiting = getattr(attempt, "deferred_on", None)
        nxt = getattr(attempt, "next_check_at", None)
        state = ("waiting_for_provider" if waiting
                 else "checking" if order.state == "verifying" else "scheduled")
        if (order.state == "captured" and attempt.rail == "ewallet"
                and attempt.state == "superseded" and attempt.provider_ref is None):
            state = "unconfirmed_charge"
            waiting = waiting or f"{attempt.rail}:{attempt.provider}:{attempt.channel}"
    return {
        "state": state,
        "waiting_on": waiting,
        "next_check_at": iso(nxt),
        "display": {"next_check_at": wib(nxt) if nxt is not None else None},
    }


def render_order(order: Any, attempt: Any, *, nothing_to_pay: bool) -> dict[str, Any]:
    """``attempt``: the instrument shown (``orders.current_attempt``); ``nothing_to_pay``: see
    ``render_verification`` (``orders.view_order`` renders a stored order with both)."""
    return {
        "id": order.id,
        "merchant_order_id": order.merchant_order_id,
        "status": order.state,
        "amount": order.amount,
        "currency": order.currency,
        "customer": {
            "name": order.customer_name,
            "email": order.customer_email,
            "phone": order.customer_phone,
        },
        "metadata": order.metadata,
        "created_at": iso(order.created_at),
        "expires_at": iso(order.expires_at),
        "paid_at": iso(order.paid_at),
        "review_reason": order.review_reason,
        "payment": render_payment(attempt),
        "verification": render_verification(order, attempt, nothing_to_pay=nothing_to_pay),
        "display": render_display(order),
    }


def render_display(order: Any) -> dict[str, Any]:
    """The order's amount and times as its customer reads them: rupiah, and WIB (``paid_at``
    null until paid). The order API and the merchant's webhooks show the same block."""
    paid_at = order.paid_at
    return {"amount": format_idr(order.amount), "expires_at": wib(order.expires_at),
            "paid_at": wib(paid_at) if paid_at is not None else None}


def pending_verification(reason: str, waiting_on: list[str], next_check_at: datetime | None
                         ) -> dict[str, Any]:
    """``order.payment_pending``'s ``verification``: why the payment is not known yet, what it
    waits on, and when it is next checked, in UTC with its WIB ``display`` beside it as every
    time a merchant's webhook carries (it had none: the one time shown in UTC alone)."""
    return {"reason": reason, "waiting_on": waiting_on, "next_check_at": iso(next_check_at),
            "display": {"next_check_at": wib(next_check_at) if next_check_at else None}}


def event_payload(order: Any, **extra: Any) -> dict[str, Any]:
    """What a merchant's webhook says about an order: enough to act on without a read-back.

    With the order's deadline and, once paid, when (``expires_at``, ``paid_at``: null until
    then) as the order API gives them, and the same ``display``. ``order`` carries the state
    the event announces: an event for a payment carries its ``paid_at``. The batch import builds
    ``order.paid`` in SQL (``reconciliation._INSERT_ORDER_EVENTS``) with the same keys and
    formats."""
    return {
        "order_id": order.id,
        "merchant_order_id": order.merchant_order_id,
        "status": order.state,
        "amount": order.amount,
        "currency": order.currency,
        "expires_at": iso(order.expires_at),
        "paid_at": iso(order.paid_at),
        "display": render_display(order),
        **extra,
    }
