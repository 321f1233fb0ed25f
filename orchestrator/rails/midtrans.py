"""Midtrans Core API adapter: a ``ChargeRequest`` in, an ``Instrument`` or ``ProviderStatus`` out.

Wire facts are RAILS.md §1: ``POST /v2/charge``, ``GET /v2/{order_id}/status``,
``POST /v2/{order_id}/cancel``, Basic auth with the server key as user name and an empty password.
``transaction_details.order_id`` is ``ChargeRequest.reference`` (the attempt id): Midtrans has no
idempotency header, the order id is the key, and reusing it is refused with 406.

Midtrans may report an error with HTTP 200 and ``status_code`` ≥ 400 in the body (RAILS.md §1.1),
so every answer is classified by its *effective code*: the body's ``status_code`` when it is an
error, else the HTTP status when that is an error, else the body's (success) code.

Error mapping (STYLE rules 4 and 5; ``rails.errors`` says what each class means):

=====================================  ===================  ===================  ==================
what happened                          create               status               cancel
=====================================  ===================  ===================  ==================
ConnectError / ConnectTimeout /        TransientBeforeSend  TransientBeforeSend  TransientBeforeSend
PoolTimeout (request never left)
UnsupportedProtocol / InvalidURL       Misconfigured        Misconfigured        Misconfigured
ReadTimeout, ReadError, WriteError,    OutcomeUnknown       Unavailable          Unavailable
RemoteProtocolError, other transport
errors (the request may have arrived)
2xx whose body is not JSON             OutcomeUnknown       Unavailable          Unavailable
401 / 403                              Misconfigured        Misconfigured        Misconfigured
404                                    Misconfigured (no    NOT_FOUND status     Refused code 404
                                       charge endpoint:
                                       wrong base URL)
406 (order_id already used)            OutcomeUnknown       Refused              Refused
402, 400, 405, 407, 408, 410-414,      Refused(code)        Refused(code)        Refused(code)
other 4xx                                                   (407 with a
                                                            transaction_status
                                                            is a normal expired
                                                            status answer)
429                                    Throttled            Throttled            Throttled
                                       (retry_after from Retry-After, if any)
≥ 500 incl. 503 maintenance and 900,   OutcomeUnknown       Unavailable          Unavailable
in the HTTP status or in the body
created (201) but deny/failure status  Refused code=status  —                    —
created (201) but instrument unusable  Unavailable          —                    —
(QR fails qris.parse, amount differs,
VA number or deeplink missing)
2xx status answer that is not JSON    —                    Unavailable          —
status body malformed / unknown        —                    Unreadable (neutral  —
transaction_status (e.g. ``frozen``)                        for the breaker)
/ non-string gross_amount / sen
=====================================  ===================  ===================  ==================

Decisions worth knowing:

* **406 on create → OutcomeUnknown.** A charge with this order id already exists at Midtrans.
  Lunas never reuses an attempt id for a different charge, so that charge is almost certainly
  ours from an earlier send whose answer we lost; we cannot rebuild its instructions from the
  refusal. The attempt goes to deferred verification, which resolves it with a status read.
* **A created charge whose instrument is unusable → Unavailable.** The customer must never see a
  QR that fails CRC or whose amount differs from the charge. Midtrans did create a pending
  charge, but nobody holds its instructions, so it cannot be paid and lapses at its expiry; the
  route is not serving usable instruments now (a breaker failure) and the router may move on.
  ``Refused`` would wrongly be neutral for the breaker, and ``OutcomeUnknown`` would park a
  checkout on a charge the customer can never pay.
* **Cancel is treated like a read** for lost answers (Unavailable, not OutcomeUnknown): repeating
  it is harmless (a second cancel is refused with 412) and a status read tells the truth.
* Status mapping is RAILS.md §1.6; ``transaction_status`` is lower-cased first (a DANA sample is
  ``"PENDING"``). ``refund`` and ``partial_refund`` are ``refunded``, ``chargeback`` and
  ``partial_chargeback`` are ``charged_back``: money that moved, then went back
  (``services.reversals``), with the payment's amount and, in ``reversed_amount``, how much of
  it went back so far (``refund_amount``, when the body has it). RAILS.md §1.6 kept
  ``partial_refund`` as paid; read as paid, the refund reached nobody.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from orchestrator.domain.clock import WIB, Clock, SystemClock
from orchestrator.domain.money import MAX_RUPIAH, reported_currency
from orchestrator.rails import qris
from orchestrator.rails.base import (
    CallObserver,
    ChargeRequest,
    Instrument,
    NeutralStatus,
    ProviderStatus,
    Rail,
    Route,
    ignore_call,
)
from orchestrator.rails.errors import (
    Misconfigured,
    OutcomeUnknown,
    RailError,
    Refused,
    Throttled,
    TransientBeforeSend,
    Unavailable,
    Unreadable,
)

PROVIDER = "midtrans"
CHANNELS: dict[Rail, tuple[str, ...]] = {
    Rail.VA: ("bca", "bni", "bri", "permata", "mandiri"),
    Rail.QRIS: ("qris",),
    Rail.EWALLET: ("gopay", "shopeepay"),
}
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class MidtransWireError(ValueError):
    """A Midtrans body that cannot be read as what it claims to be."""


# ---------------------------------------------------------------------------------------------
# Pure wire functions: status mapping, money, notifications.


def neutral_status(transaction_status: str, fraud_status: str | None = None) -> NeutralStatus:
    """RAILS.md §1.6. ``capture`` is paid only once fraud screening accepted it."""
    status = transaction_status.strip().lower()
    if status == "capture":
        accepted = (fraud_status or "accept").strip().lower() == "accept"
        return NeutralStatus.PAID if accepted else NeutralStatus.PENDING
    try:
        return _NEUTRAL[status]
    except KeyError:
        raise MidtransWireError(f"unknown transaction_status {transaction_status!r}") from None


_NEUTRAL: dict[str, NeutralStatus] = {
    "pending": NeutralStatus.PENDING,
    "authorize": NeutralStatus.PENDING,
    "settlement": NeutralStatus.PAID,
    "expire": NeutralStatus.EXPIRED,
    "cancel": NeutralStatus.FAILED,
    "deny": NeutralStatus.FAILED,
    "failure": NeutralStatus.FAILED,
    "refund": NeutralStatus.REFUNDED,
    "partial_refund": NeutralStatus.REFUNDED,
    # After settlement only (RAILS.md §1.6's lifecycle): the amount is the payment's, and the
    # raw status says whether all of it came back.
    "chargeback": NeutralStatus.CHARGED_BACK,
    "partial_chargeback": NeutralStatus.CHARGED_BACK,
}


def rupiah(text: object) -> int:
    """``"44000.00"`` → 44000. Sen that are not zero are refused: Lunas money is whole rupiah."""
    if not isinstance(text, str):
        raise MidtransWireError(f"gross_amount {text!r} is not a string")
    whole, dot, sen = text.strip().partition(".")
    if (not whole.isascii() or not whole.isdigit()
            or (dot and (not sen.isascii() or not sen.isdigit() or int(sen) != 0))):
        raise MidtransWireError(f"gross_amount {text!r:.40} is not whole rupiah")
    if len(whole.lstrip("0")) > len(str(MAX_RUPIAH)):
        raise MidtransWireError(f"gross_amount {text!r:.40} is beyond {MAX_RUPIAH:,} rupiah")
    return int(whole)


def wib_time(text: object) -> datetime | None:
    """``"YYYY-MM-DD HH:MM:SS"`` in GMT+7 → an aware datetime; None when absent or malformed
    (``0001-01-01 00:00:00`` too: it has no UTC instant, so it could not be stored), because a
    timestamp is never worth failing a status answer over."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=WIB)
        moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment


def signature_key(order_id: str, status_code: str, gross_amount: str, server_key: str) -> str:
    """RAILS.md §1.5: hex(SHA512(order_id + status_code + gross_amount + ServerKey))."""
    text = order_id + status_code + gross_amount + server_key
    return hashlib.sha512(text.encode("utf-8")).hexdigest()


def verify_notification_signature(body: Mapping[str, Any], server_key: str) -> bool:
    """Whether ``body`` was signed with ``server_key``, compared in constant time.

    The exact strings of the body are used (``gross_amount`` keeps its ``.00``); a body whose
    fields are missing or not strings is simply unverified.
    """
    parts = [body.get(k) for k in ("order_id", "status_code", "gross_amount", "signature_key")]
    if not all(isinstance(p, str) for p in parts):
        return False
    order_id, status_code, gross_amount, given = (str(p) for p in parts)
    expected = signature_key(order_id, status_code, gross_amount, server_key)
    return hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8"))


PAID_STATUS_CODE = "200"
"""The ``status_code`` of a notification that reports a payment (RAILS.md §1.5: success is
``status_code "200"`` with ``transaction_status`` settlement or capture)."""

PENDING_STATUS_CODE = "201"
"""The ``status_code`` of a charge still waiting for its money (RAILS.md §1.3: ``pending``; a
card capture Midtrans challenges too). Never the code of a closed charge."""


def verify_notification(body: Mapping[str, Any], server_key: str) -> bool:
    """Whether ``body`` may be trusted for what it says: signed with ``server_key`` and, when it
    reports a payment, under status code 200.

    The signature covers ``order_id + status_code + gross_amount`` but not ``transaction_status``,
    so a signed ``pending`` (201) or ``expire`` (407) notification with its status rewritten to
    ``settlement`` still carries a valid signature; its signed status code gives it away. A status
    Lunas cannot read is left to the worker, which records it unreadable. A ``cancel`` is signed
    under 200 too, so a relabelled one passes here: the worker confirms a payment for an attempt
    Lunas may have cancelled with a status read (``services.provider_webhooks``).

    The same holds the other way: the ``pending`` notification Midtrans sends for every new
    charge (201) relabelled ``expire``, ``cancel`` or ``deny`` would close a live instrument in
    Lunas, and tell the merchant its payment failed, while the charge still takes money. A
    close is therefore never trusted under the pending code 201.
    """
    if not verify_notification_signature(body, server_key):
        return False
    raw, fraud = body.get("transaction_status"), body.get("fraud_status")
    if not isinstance(raw, str):
        return True
    try:
        status = neutral_status(raw, fraud if isinstance(fraud, str) else None)
    except MidtransWireError:
        return True
    if status in (NeutralStatus.EXPIRED, NeutralStatus.FAILED):
        return body.get("status_code") != PENDING_STATUS_CODE
    return status is not NeutralStatus.PAID or body.get("status_code") == PAID_STATUS_CODE


def notification_status(body: Mapping[str, Any]) -> ProviderStatus:
    """An HTTP notification (or a status answer, same shape) as a ``ProviderStatus``.

    Raises ``MidtransWireError`` (a ``ValueError``) when the body cannot be read; verify the
    signature first, this function trusts what it is given.
    """
    raw = body.get("transaction_status")
    if not isinstance(raw, str):
        raise MidtransWireError("transaction_status missing")
    fraud = body.get("fraud_status")
    status = neutral_status(raw, fraud if isinstance(fraud, str) else None)
    paid = status in (NeutralStatus.PAID, NeutralStatus.REFUNDED, NeutralStatus.CHARGED_BACK)
    ref = body.get("transaction_id")
    return ProviderStatus(
        status=status,
        provider_ref=ref if isinstance(ref, str) else None,
        paid_amount=rupiah(body.get("gross_amount")) if paid else None,
        paid_at=(wib_time(body.get("settlement_time")) or wib_time(body.get("transaction_time"))
                 if paid else None),
        raw_status=raw.strip().lower(),
        reversed_amount=(refund_amount(body) if status in (NeutralStatus.REFUNDED,
                                                           NeutralStatus.CHARGED_BACK) else None),
        currency=reported_currency(body.get("currency")),
    )


def refund_amount(body: Mapping[str, Any]) -> int | None:
    """``refund_amount`` (``"25000.00"``): how much of the transaction went back so far; None
    when absent or unreadable (Lunas then knows a reversal happened, not how much: the case
    asks a person for the payment's amount), since a reversal is never worth losing over it."""
    amount = body.get("refund_amount")
    if not isinstance(amount, str) or not amount.strip():
        return None
    try:
        return rupiah(amount)
    except MidtransWireError:
        return None


def notification_time(body: Mapping[str, Any]) -> datetime | None:
    """When the event a notification reports happened, by Midtrans's clock (WIB, to the second).

    A notification carries no event stamp of its own, so the status says which field is the
    event: ``settlement_time`` for a settlement, ``expiry_time`` for an expiry,
    ``transaction_time`` for a new (pending) or captured charge. None for other statuses, whose
    moment the body does not say (``transaction_time`` is still the charge's creation).
    """
    status = body.get("transaction_status")
    field = {"settlement": "settlement_time", "expire": "expiry_time",
             "pending": "transaction_time", "capture": "transaction_time"}.get(
        status.strip().lower() if isinstance(status, str) else "")
    return wib_time(body.get(field)) if field else None


# ---------------------------------------------------------------------------------------------
# Charge bodies, per channel (RAILS.md §1.2).


def _rail_object(request: ChargeRequest) -> dict[str, Any]:
    channel = request.route.channel
    if channel in ("bca", "bni", "bri", "permata"):
        # Permata as bank_transfer + bank, as in the charge reference: one shape for every VA.
        return {"payment_type": "bank_transfer", "bank_transfer": {"bank": channel}}
    if channel == "mandiri":
        info = (request.description or "Online purchase")[:30]
        return {"payment_type": "echannel",
                "echannel": {"bill_info1": "Payment:", "bill_info2": info}}
    if channel == "qris":
        return {"payment_type": "qris", "qris": {"acquirer": "gopay"}}
    if channel == "gopay":
        gopay: dict[str, Any] = {"enable_callback": request.callback_url is not None}
        if request.callback_url:
            gopay["callback_url"] = request.callback_url
        return {"payment_type": "gopay", "gopay": gopay}
    if channel == "shopeepay":
        shopeepay = {"callback_url": request.callback_url} if request.callback_url else {}
        return {"payment_type": "shopeepay", "shopeepay": shopeepay}
    raise Misconfigured(f"channel {channel!r} is not a Midtrans channel",
                        provider=PROVIDER, operation="create")


def charge_body(request: ChargeRequest, *, now: datetime) -> dict[str, Any]:
    """The ``/v2/charge`` body. The expiry is anchored at ``now`` (our clock) so Midtrans's
    expiry never outlives the attempt's; ``order_time`` has whole seconds, so the duration is
    counted from that truncated instant and rounded down, for the same reason."""
    order_time = now.astimezone(WIB).replace(microsecond=0)
    duration = math.floor((request.expires_at - order_time).total_seconds())
    return {
        **_rail_object(request),
        "transaction_details": {"order_id": request.reference, "gross_amount": request.amount},
        "customer_details": {"first_name": request.customer_name,
                             "email": request.customer_email, "phone": request.customer_phone},
        "custom_expiry": {"order_time": order_time.strftime(_TIME_FORMAT) + " +0700",
                          "expiry_duration": duration, "unit": "second"},
    }


# ---------------------------------------------------------------------------------------------
# Instruments, per channel (RAILS.md §1.3).


def _field(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise MidtransWireError(f"{key} missing from the charge answer")
    return value


def _action_url(body: Mapping[str, Any], name: str) -> str | None:
    actions = body.get("actions")
    for action in actions if isinstance(actions, list) else []:
        if isinstance(action, dict) and action.get("name") == name:
            url = action.get("url")
            return url if isinstance(url, str) and url else None
    return None


def _va(body: Mapping[str, Any], bank: str) -> dict[str, Any]:
    if bank == "permata" and isinstance(body.get("permata_va_number"), str):
        return {"va_number": _field(body, "permata_va_number"), "bank": bank}
    numbers = body.get("va_numbers")
    for item in numbers if isinstance(numbers, list) else []:
        if isinstance(item, dict) and item.get("bank") == bank:
            return {"va_number": _field(item, "va_number"), "bank": bank}
    raise MidtransWireError(f"no {bank} VA number in the charge answer")


def _qr(body: Mapping[str, Any], amount: int) -> dict[str, Any]:
    """The QR string, accepted only if it parses, is dynamic and asks for exactly ``amount``."""
    qr_string = _field(body, "qr_string")
    try:
        payload = qris.parse(qr_string)
    except qris.QrisError as exc:
        raise MidtransWireError(f"QR string refused: {exc}") from exc
    if not payload.dynamic or payload.amount != amount:
        raise MidtransWireError(f"QR asks for {payload.amount} (dynamic={payload.dynamic}), "
                                f"the charge is {amount}")
    extra = {"acquirer": body["acquirer"]} if isinstance(body.get("acquirer"), str) else {}
    if url := _action_url(body, "generate-qr-code"):
        extra["qr_code_url"] = url
    return {"qr_string": qr_string, "extra": extra}


def _ewallet(body: Mapping[str, Any]) -> dict[str, Any]:
    deeplink = _action_url(body, "deeplink-redirect")
    if deeplink is None:
        raise MidtransWireError("no deeplink-redirect action in the charge answer")
    qr_url = _action_url(body, "generate-qr-code")
    return {"deeplink_url": deeplink, "extra": {"qr_code_url": qr_url} if qr_url else {}}


def _channel_fields(request: ChargeRequest, body: Mapping[str, Any]) -> dict[str, Any]:
    channel = request.route.channel
    if channel == "mandiri":
        return {"va_number": _field(body, "bill_key"), "bank": "mandiri",
                "biller_code": _field(body, "biller_code")}
    if channel == "qris":
        return _qr(body, request.amount)
    if channel in ("gopay", "shopeepay"):
        return _ewallet(body)
    return _va(body, channel)


def instrument(request: ChargeRequest, body: Mapping[str, Any]) -> Instrument:
    """A created charge's answer as an ``Instrument``; ``MidtransWireError`` if unusable."""
    fields = _channel_fields(request, body)
    extra = {"payment_type": str(body.get("payment_type", "")), **fields.pop("extra", {})}
    base = Instrument(
        route=request.route, provider_ref=_field(body, "transaction_id"),
        status=neutral_status(_field(body, "transaction_status")),
        expires_at=wib_time(body.get("expiry_time")) or request.expires_at, extra=extra,
    )
    return dataclasses.replace(base, **fields)


# ---------------------------------------------------------------------------------------------
# Answers: effective code and the error it means.


def _decode(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def effective_code(response: httpx.Response, body: Mapping[str, Any] | None) -> int:
    """The body's error code, else the HTTP error status, else the body's success code."""
    try:
        body_code = int(str((body or {}).get("status_code", "")))
    except ValueError:
        body_code = None
    if body_code is not None and body_code >= 400:
        return body_code
    if response.status_code >= 400 or body_code is None:
        return response.status_code
    return body_code


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _raise_for(code: int, response: httpx.Response, body: Mapping[str, Any] | None, *,
               operation: str, server_error: type[RailError]) -> None:
    """Raise the rail error for an error ``code``; return for a success code."""
    if code < 400:
        return
    message = str((body or {}).get("status_message", "")) or response.reason_phrase
    detail = f"{code} {message}"
    if code in (401, 403):
        raise Misconfigured(detail, provider=PROVIDER, operation=operation)
    if code == 429:
        raise Throttled(detail, provider=PROVIDER, operation=operation,
                        retry_after=_retry_after(response))
    if code >= 500:
        raise server_error(detail, provider=PROVIDER, operation=operation)
    raise Refused(detail, provider=PROVIDER, operation=operation, code=str(code))


# ---------------------------------------------------------------------------------------------
# The adapter.


class MidtransProvider:
    """Midtrans Core API behind the ``PaymentProvider`` protocol.

    The caller owns ``client`` (built once in ``bootstrap``); ``timeout`` bounds each call.
    ``notification_url`` is sent as ``X-Override-Notification`` so Midtrans notifies Lunas
    whatever the dashboard says. ``status`` and ``cancel`` address the charge by ``reference``
    (Midtrans's order id), so they work even when a lost create left no ``provider_ref``.
    """

    name: str = PROVIDER

    def idempotent_create(self, rail: Rail) -> bool:
        """/v2/charge has no idempotency key (RAILS.md §1.7): resolve by status read."""
        return False

    def status_requests(self, provider_ref: str | None, route: Route) -> int:
        return 1  # GET /v2/{order_id}/status

    def __init__(self, *, base_url: str, server_key: str, client: httpx.AsyncClient,
                 timeout: float = 5.0, notification_url: str | None = None,
                 clock: Clock | None = None, observe: CallObserver | None = None) -> None:
        self._observe = observe or ignore_call
        self._base_url = base_url.rstrip("/")
        self._client = client
        self._timeout = timeout
        self._clock: Clock = clock or SystemClock()
        token = base64.b64encode(f"{server_key}:".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json",
                         "Content-Type": "application/json"}
        self._notification_url = notification_url

    def channels(self, rail: Rail) -> tuple[str, ...]:
        return CHANNELS.get(rail, ())

    async def create(self, request: ChargeRequest) -> Instrument:
        body = charge_body(request, now=self._clock.now())
        headers = dict(self._headers)
        if self._notification_url:
            headers["X-Override-Notification"] = self._notification_url
        response = await self._send("create", "POST", "/v2/charge", headers, body)
        answer = self._created(response)
        try:
            return instrument(request, answer)
        except MidtransWireError as exc:
            raise Unavailable(f"charge created but its instrument is unusable: {exc}",
                              provider=PROVIDER, operation="create") from exc

    async def status(self, reference: str, provider_ref: str | None, route: Route, *,
                     requests_allowed: int | None = None,
                     payment_known: bool = False,
                     expires_at: datetime | None = None) -> ProviderStatus:
        response = await self._send("status", "GET", f"/v2/{reference}/status", self._headers)
        body = _decode(response)
        code = effective_code(response, body)
        if code == 404:
            return ProviderStatus(status=NeutralStatus.NOT_FOUND, provider_ref=None,
                                  raw_status="404")
        if code != 407:  # 407 is how Midtrans answers the status of an expired charge
            _raise_for(code, response, body, operation="status", server_error=Unavailable)
        if body is None:  # a proxy's error page more likely than Midtrans: not an answer
            raise Unavailable("status answer is not JSON", provider=PROVIDER, operation="status")
        try:
            return notification_status(body)
        except MidtransWireError as exc:
            raise Unreadable(str(exc), provider=PROVIDER, operation="status") from exc

    async def cancel(self, reference: str, provider_ref: str | None, route: Route) -> None:
        response = await self._send("cancel", "POST", f"/v2/{reference}/cancel", self._headers)
        body = _decode(response)
        code = effective_code(response, body)
        _raise_for(code, response, body, operation="cancel", server_error=Unavailable)
        if body is None:
            raise Unavailable("cancel answer is not JSON", provider=PROVIDER, operation="cancel")

    def _created(self, response: httpx.Response) -> dict[str, Any]:
        """The body of a charge Midtrans created, or the rail error its answer means."""
        body = _decode(response)
        code = effective_code(response, body)
        if code == 406:
            raise OutcomeUnknown(f"406 order_id already used: a charge exists, resolve by status "
                                 f"read ({(body or {}).get('status_message', '')})",
                                 provider=PROVIDER, operation="create")
        if code == 404:
            raise Misconfigured("404 from the charge endpoint: check the base URL",
                                provider=PROVIDER, operation="create")
        _raise_for(code, response, body, operation="create", server_error=OutcomeUnknown)
        if body is None:
            raise OutcomeUnknown(f"HTTP {response.status_code} answer is not JSON",
                                 provider=PROVIDER, operation="create")
        status = str(body.get("transaction_status", "")).lower()
        if status in ("deny", "failure", "cancel", "expire"):
            raise Refused(f"charge {status}: {body.get('status_message', '')}",
                          provider=PROVIDER, operation="create", code=status)
        return body

    async def _send(self, operation: str, method: str, path: str, headers: dict[str, str],
                    body: dict[str, Any] | None = None) -> httpx.Response:
        """One HTTP call, timed for ``lunas_provider_call_seconds``."""
        started = time.perf_counter()
        outcome = "no_answer"
        try:
            response = await self._exchange(operation, method, path, headers, body)
            outcome = "answered"
            return response
        finally:
            self._observe(PROVIDER, operation, outcome, time.perf_counter() - started)

    async def _exchange(self, operation: str, method: str, path: str, headers: dict[str, str],
                        body: dict[str, Any] | None) -> httpx.Response:
        """Transport errors become rail errors by whether the request left."""
        after_send = OutcomeUnknown if operation == "create" else Unavailable
        try:
            # httpx's timeout bounds each phase (connect, each read...), not the call: an answer
            # trickling in a byte at a time would never end. Twice the timeout bounds the whole
            # exchange and leaves every phase its own timeout first.
            async with asyncio.timeout(2 * self._timeout):
                return await self._client.request(method, self._base_url + path, json=body,
                                                  headers=headers, timeout=self._timeout)
        except TimeoutError as exc:
            raise after_send(f"no complete answer within {2 * self._timeout:g} s",
                             provider=PROVIDER, operation=operation) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientBeforeSend(f"not sent: {exc!r}", provider=PROVIDER,
                                      operation=operation) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise Misconfigured(f"bad base URL: {exc!r}", provider=PROVIDER,
                                operation=operation) from exc
        except httpx.RequestError as exc:
            raise after_send(f"sent, answer lost: {exc!r}", provider=PROVIDER,
                             operation=operation) from exc
