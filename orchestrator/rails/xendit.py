"""Xendit adapter over the legacy per-channel APIs (RAILS.md §2): fixed VA, QRIS v1, e-wallets.

Wire format in, Lunas shapes out (STYLE rule 8): no retry, breaker or business decision here.
Every create carries ``X-IDEMPOTENCY-KEY = request.reference`` and a body that is a pure function
of the request. On a VA or QR create the key is documented (RAILS.md §2.1), so repeating one
returns the original resource instead of making a second. On ``POST /ewallets/charges`` it is
not (the SDK sends none there): Lunas never relies on it (``idempotent_create``), since a second
charge is a second payment prompt on the customer's phone, which they may approve too.

Error mapping (first matching row wins; "create" / "status, cancel"):

    what happened                                          create            status, cancel
    ─────────────────────────────────────────────────────  ────────────────  ────────────────
    httpx ConnectError / ConnectTimeout / PoolTimeout      TransientBeforeSend (never sent)
    httpx UnsupportedProtocol (bad base_url)               Misconfigured
    any other transport error after sending (read/write    OutcomeUnknown    Unavailable
      timeout, connection reset, protocol error)
    429 or RATE_LIMIT_EXCEEDED                             Throttled, retry_after from
                                                           Rate-Limit-Reset (else Retry-After)
    401; INVALID_API_KEY, INVALID_MERCHANT_CREDENTIALS,    Misconfigured
      REQUEST_FORBIDDEN_ERROR, CALLBACK_URL_NOT_FOUND,
      any other 403
    403 CHANNEL_NOT_ACTIVATED                              Refused
    DUPLICATE_CALLBACK_VIRTUAL_ACCOUNT_ERROR,              OutcomeUnknown    Refused
      DUPLICATE_ERROR (idempotency key reused, other body)
    404                                                    Misconfigured     status: NOT_FOUND;
                                                                             cancel: Refused
    5xx (incl. 503 CHANNEL_UNAVAILABLE), or a non-4xx      OutcomeUnknown    Unavailable
      non-2xx answer
    other 4xx (API_VALIDATION_ERROR, amount limits, ...)   Refused(code)
    2xx whose body is not JSON                             OutcomeUnknown    Unavailable
    2xx whose body cannot be read, or that does not match  OutcomeUnknown    status: Unreadable
      the request (amount, reference, invalid QRIS CRC)                      (neutral for the
                                                                             breaker); cancel:
                                                                             Unavailable

Decisions behind the table:

- CHANNEL_NOT_ACTIVATED is ``Refused``, not ``Misconfigured``: the request reached Xendit, which
  answered that this account's contract does not include the channel. That is the "channel not
  enabled" case ``rails.errors`` names as a business refusal; it says nothing about Xendit's
  health, so it must not open the route's breaker (the router may remember refusals per code).
- 5xx on create is ``OutcomeUnknown``: Xendit does not promise that a 5xx (or 503
  CHANNEL_UNAVAILABLE) left nothing behind, and an OVO charge pushes a payment prompt to the
  customer's phone the moment it exists. ``Unavailable`` would let the router forget a possibly
  live charge; ``OutcomeUnknown`` sends it to verification. For a VA the key makes resolution
  cheap: repeating the create with the same reference returns the original or makes the one and
  only resource (STYLE rule 4: a write carrying an idempotency key the provider honours). An
  e-wallet charge is never repeated: it is read for a payment by its reference and watched.
- A duplicate (external_id already used, or the key reused with another body) means something may
  already exist under this reference: ``OutcomeUnknown``, resolved by a status read.
- A create whose answer does not match the request (amount, reference, a QRIS string whose CRC
  fails) is ``OutcomeUnknown``: a resource exists but must never reach a customer. So is a VA
  whose answer does not say ``is_closed`` and ``is_single_use`` as asked (a bank where Xendit
  cannot close a VA, an account setting): it would take any number of payments of any amount,
  each one a person's case. Unknown, not ``Refused``: the router fails over all the same, and
  the error names the VA (``OutcomeUnknown.provider_ref``), so verification cancels it and
  watches it as any live orphan (a payment on it is still found, rule 4); a refusal would
  forget a live VA. A flag missing from the answer is not granted.

Status (RAILS.md §2.5). Paid is decided from Xendit's Transactions API (``GET /transactions``,
``reference_id`` = our reference, type PAYMENT, status SUCCESS): the legacy VA and QR objects only
turn ``INACTIVE``, which an expired one does too, and the VA payment lookup needs a ``payment_id``
only the callback carries.

- VA (by ``provider_ref``): PENDING/ACTIVE before ``expiration_date`` → pending; otherwise a
  payment → paid, none → expired. 404 → not_found. Every payment listed is reported on its own
  (``ProviderStatus.payments``), never summed: a VA Xendit let be paid twice is two payments.
- QR (by ``external_id`` = reference, so no ``provider_ref`` needed): ACTIVE → pending; otherwise
  a payment → paid, none → expired. QR v1 has no expiry field: Lunas keeps the deadline
  (``status(expires_at=...)``, the attempt's).
- INACTIVE with no payment listed is expired only once the instrument's expiry has passed. A
  single-use VA and a dynamic QR turn INACTIVE the moment they are paid, and the Transactions
  API can list the payment seconds to minutes later: read in between and taken for expired,
  the attempt closed unpaid, its order expired with the callback lost, and nothing read it
  again (the payment never applied). So INACTIVE that Lunas did not bring about, before the
  expiry, is Unreadable (read again with growing gaps; past the deadline the order waits in
  ``verifying`` and goes to a person when the verification window runs out, never silently
  expired). A VA: before its ``expiration_date``; Lunas's own cancel moves that to now, so a VA
  Lunas closed reads expired. A QR (no cancel, no expiry at Xendit): it turned INACTIVE (its
  ``updated``; the read's time when unreadable) before the deadline, or the deadline is not
  known. A VA has no documented ``updated``, so one paid shortly before its expiry and read
  after it with the payment still unlisted reads expired, as before.
- A VA or QR status RAILS.md does not name is Unreadable (read again), never expired.
- E-wallet (by ``provider_ref``): PENDING → pending, SUCCEEDED → paid (``capture_amount``),
  FAILED / VOIDED → failed, REFUNDED → refunded. 404 → not_found. A SUCCEEDED charge with a
  ``refunded_amount`` is refunded too, with that running total (``charge_status``); a
  REFUNDED one without a readable total is Unreadable; a VOIDED one Lunas saw paid
  (``payment_known``) gave it all back (``voided_payment``). A refunded charge's payment time is
  looked up in the Transactions API (its ``updated`` is the refund's), unless Lunas has the
  payment already (``payment_known``: a paid attempt read again for a lost reversal). VA and
  QR objects carry no refund field in the legacy APIs (RAILS.md §2.2-2.3): their reads never
  report one.
- VA or e-wallet without ``provider_ref`` (the create's answer was lost): legacy Xendit cannot
  look those up by reference (a charge is read by its id only, RAILS.md §2.4), so a payment in
  the Transactions API → paid. With none, raw status ``NO_PAYMENT_FOR_REFERENCE``: a VA is
  not_found, and repeating its create with the same reference replays it (idempotency key)
  rather than making another; an e-wallet charge is pending, since one may be waiting on the
  customer's phone and no key makes its create safe to repeat. Read as not_found it would be
  closed as never made while the customer can still approve it (rule 3).

Cancel: VA → PATCH ``expiration_date`` to now (Xendit turns it INACTIVE); e-wallet → void, only
while the charge is PENDING (Xendit's void reverses a SUCCEEDED charge, which a cancel must never
do: that is ``Refused``; a FAILED or VOIDED charge is already cancelled); QR v1 → ``Refused``,
there is no cancel endpoint and the code stays payable, so Lunas keeps watching it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.domain.money import MAX_RUPIAH, reported_currency
from orchestrator.rails import qris
from orchestrator.rails.base import (
    CallObserver,
    ChargeRequest,
    Instrument,
    MoreRequestsNeeded,
    NeutralStatus,
    ProviderPayment,
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

_Params = Mapping[str, str | list[str]]
"""Query parameters; a list is sent as the key repeated, as Xendit takes arrays."""

PROVIDER = "xendit"
CHANNELS: dict[Rail, tuple[str, ...]] = {
    Rail.VA: ("bca", "bni", "bri", "mandiri", "permata"),
    Rail.QRIS: ("qris",),
    Rail.EWALLET: ("ovo", "dana", "linkaja", "shopeepay"),
}
MISCONFIGURED_CODES = frozenset({"INVALID_API_KEY", "INVALID_MERCHANT_CREDENTIALS",
                                 "REQUEST_FORBIDDEN_ERROR", "CALLBACK_URL_NOT_FOUND"})
DUPLICATE_CODES = frozenset({"DUPLICATE_CALLBACK_VIRTUAL_ACCOUNT_ERROR", "DUPLICATE_ERROR"})
CHARGE_STATUSES = {"PENDING": NeutralStatus.PENDING, "SUCCEEDED": NeutralStatus.PAID,
                   "FAILED": NeutralStatus.FAILED, "VOIDED": NeutralStatus.FAILED,
                   "REFUNDED": NeutralStatus.REFUNDED}
VA_STATUSES = frozenset({"PENDING", "ACTIVE", "INACTIVE"})
QR_STATUSES = frozenset({"ACTIVE", "INACTIVE"})
"""The statuses RAILS.md §2.2-2.3 names; any other is unreadable, never taken for expired."""
CATEGORIES = {Rail.VA: "VIRTUAL_ACCOUNT", Rail.QRIS: "QR_CODE", Rail.EWALLET: "EWALLET"}
IDEMPOTENT_RAILS = frozenset({Rail.VA, Rail.QRIS})
"""Rails whose create endpoint RAILS.md §2.1 documents the idempotency key on."""


class CallbackError(ValueError):
    """A callback body that is not one of the Xendit shapes Lunas understands."""


class NothingMoved(CallbackError):
    """A genuine callback that reports no money moving (``refund.failed``): nothing to apply,
    and nothing wrong with it either."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def xendit_time(moment: datetime) -> str:
    """UTC with milliseconds and ``Z``; a naive datetime is taken to be UTC already."""
    utc = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(value: Any) -> datetime:
    """An ISO 8601 time (naive means UTC); ``ValueError`` when unreadable, or when it has no UTC
    instant Python can hold (``0001-01-01T00:00:00+14:00``): it could not be stored, and would
    fail every write that carries it."""
    moment = datetime.fromisoformat(str(value))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {str(value)!r:.40} is out of range") from None
    return moment


PLAIN_AMOUNT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
"""An amount Xendit sends as a string: plain digits, no spaces, digit separators or exponent."""


def parse_body(text: str | bytes) -> Any:
    """A Xendit JSON body, its numbers with a fraction or an exponent read as ``Decimal``: read
    as a float, a fraction below its precision (``150000.0000000000001``) is rounded away
    before ``rupiah`` can refuse it."""
    return json.loads(text, parse_float=Decimal)


def rupiah(value: Any) -> int:
    """Xendit amounts are JSON numbers (sometimes strings); Lunas money is whole rupiah, read
    exactly: any fraction is refused, however small, as is a string that is not plain digits."""
    if isinstance(value, bool):
        raise ValueError("an amount cannot be a boolean")
    if isinstance(value, str) and PLAIN_AMOUNT.fullmatch(value):
        number = Decimal(value)
    elif isinstance(value, int | Decimal) or (isinstance(value, float) and math.isfinite(value)):
        number = Decimal(value)  # a float's exact binary value, so a fraction stays one
    else:
        number = Decimal("NaN")
    if not number.is_finite() or number != number.to_integral_value():
        raise ValueError(f"amount {value!r:.40} is not whole rupiah")
    if abs(number) > MAX_RUPIAH:
        raise ValueError(f"amount {value!r:.40} is beyond {MAX_RUPIAH:,} rupiah")
    return int(number)


def mobile_number(phone: str) -> str:
    """OVO wants E.164 (+62…); Indonesian customers usually type 08… or 62…."""
    digits = "".join(ch for ch in phone if ch.isdigit() or ch == "+")
    if digits.startswith("+"):
        return digits
    if digits.startswith("62"):
        return "+" + digits
    if digits.startswith("0"):
        return "+62" + digits[1:]
    return digits  # not recognisably Indonesian: let Xendit judge it


class XenditProvider:
    """``PaymentProvider`` for Xendit. The caller owns ``client`` (and closes it)."""

    name = PROVIDER

    def idempotent_create(self, rail: Rail) -> bool:
        """RAILS.md §2.1 documents X-IDEMPOTENCY-KEY on VA and QR creates, not on
        ``/ewallets/charges``: an e-wallet create repeated is a second charge."""
        return rail in IDEMPOTENT_RAILS

    def status_requests(self, provider_ref: str | None, route: Route) -> int:
        """A QR or a VA is read, then (when no longer active) its payment is looked up in the
        Transactions API; a charge is one read (one that shows a refund asks for a second, to
        look its payment's time up there: ``MoreRequestsNeeded``, rare enough not to double
        every e-wallet read's cost); with no provider ref only the lookup is made."""
        if route.rail is Rail.QRIS or (route.rail is Rail.VA and provider_ref is not None):
            return 2
        return 1

    def __init__(self, *, base_url: str, secret_key: str, client: httpx.AsyncClient,
                 timeout: float, callback_url: str, return_url: str,
                 clock: Callable[[], datetime] = _utcnow,
                 observe: CallObserver | None = None) -> None:
        self._observe = observe or ignore_call
        self._base = base_url.rstrip("/")
        token = base64.b64encode(f"{secret_key}:".encode()).decode()
        self._auth = f"Basic {token}"
        self._client, self._timeout = client, timeout
        self._callback_url, self._return_url = callback_url, return_url
        self._clock = clock

    def channels(self, rail: Rail) -> tuple[str, ...]:
        return CHANNELS.get(rail, ())

    # -- create ----------------------------------------------------------------------------

    async def create(self, request: ChargeRequest) -> Instrument:
        route = request.route
        if route.channel not in self.channels(route.rail):
            raise Misconfigured(f"xendit does not serve {route.key}", provider=PROVIDER,
                                operation="create")
        if route.rail is Rail.VA:
            return await self._create_va(request)
        if route.rail is Rail.QRIS:
            return await self._create_qr(request)
        return await self._create_charge(request)

    async def _create_va(self, request: ChargeRequest) -> Instrument:
        body: dict[str, Any] = {
            "external_id": request.reference, "bank_code": request.route.channel.upper(),
            "name": request.customer_name, "is_closed": True,
            "expected_amount": request.amount, "is_single_use": True,
            "expiration_date": xendit_time(request.expires_at),
        }
        if request.description:
            body["description"] = request.description
        data = await self._create("/callback_virtual_accounts", body, request.reference)
        with self._reading("create"):
            _expect(data, external_id=request.reference, expected_amount=request.amount)
            number = str(data["account_number"])
            if not number.isdigit():
                raise ValueError(f"account_number {number!r} is not a VA number")
            instrument = Instrument(
                route=request.route, provider_ref=str(data["id"]),
                status=NeutralStatus.PENDING, va_number=number, bank=request.route.channel,
                expires_at=parse_time(data["expiration_date"]),
                extra={"merchant_code": str(data.get("merchant_code", ""))},
            )
        # A VA Xendit did not close or make single-use takes any number of payments of any
        # amount: never instructions (module docstring). Named, so verification cancels it.
        if data.get("is_closed") is not True or data.get("is_single_use") is not True:
            raise OutcomeUnknown(
                f"asked for a closed single-use VA, got is_closed={data.get('is_closed')!r:.10} "
                f"is_single_use={data.get('is_single_use')!r:.10}", provider=PROVIDER,
                operation="create", provider_ref=instrument.provider_ref)
        return instrument

    async def _create_qr(self, request: ChargeRequest) -> Instrument:
        body = {"external_id": request.reference, "type": "DYNAMIC",
                "callback_url": request.callback_url or self._callback_url,
                "amount": request.amount}
        data = await self._create("/qr_codes", body, request.reference)
        with self._reading("create"):
            _expect(data, external_id=request.reference, amount=request.amount)
            qr_string = str(data["qr_string"])
            payload = qris.parse(qr_string)  # a bad CRC must never reach a customer
            if not payload.dynamic or payload.amount != request.amount:
                raise ValueError(f"QRIS payload is for {payload.amount}, not {request.amount}")
            return Instrument(route=request.route, provider_ref=str(data["id"]),
                              status=NeutralStatus.PENDING, qr_string=qr_string,
                              expires_at=request.expires_at)

    async def _create_charge(self, request: ChargeRequest) -> Instrument:
        channel_code = f"ID_{request.route.channel.upper()}"
        properties = ({"mobile_number": mobile_number(request.customer_phone)}
                      if channel_code == "ID_OVO"
                      else {"success_redirect_url": self._return_url})
        body = {"reference_id": request.reference, "currency": "IDR", "amount": request.amount,
                "checkout_method": "ONE_TIME_PAYMENT", "channel_code": channel_code,
                "channel_properties": properties}
        data = await self._create("/ewallets/charges", body, request.reference)
        with self._reading("create"):
            _expect(data, reference_id=request.reference, charge_amount=request.amount)
            return _charge_instrument(request, data)

    async def _create(self, path: str, body: dict[str, Any], reference: str) -> dict[str, Any]:
        return await self._send("create", "POST", path, json=body, idempotency_key=reference)

    # -- status ----------------------------------------------------------------------------

    async def status(self, reference: str, provider_ref: str | None, route: Route, *,
                     requests_allowed: int | None = None,
                     payment_known: bool = False,
                     expires_at: datetime | None = None) -> ProviderStatus:
        if route.rail is Rail.QRIS:
            return await self._qr_status(reference, expires_at)
        if provider_ref is None:
            return await self._status_by_reference(reference, route.rail)
        if route.rail is Rail.VA:
            return await self._va_status(provider_ref)
        data = await self._lookup(f"/ewallets/charges/{quote(provider_ref, '')}")
        if data is None:
            return ProviderStatus(status=NeutralStatus.NOT_FOUND, provider_ref=provider_ref)
        with self._reading("status"):
            read = charge_status(data)
            if payment_known and read.raw_status == "VOIDED":
                return voided_payment(data)
        if read.status is NeutralStatus.REFUNDED and not payment_known:
            if requests_allowed is not None and requests_allowed < 2:
                raise MoreRequestsNeeded(2)
            return replace(read, paid_at=await self._payment_time(reference, provider_ref))
        return read

    async def _va_status(self, provider_ref: str) -> ProviderStatus:
        path = f"/callback_virtual_accounts/{quote(provider_ref, '')}"
        data = await self._lookup(path)
        if data is None:
            return ProviderStatus(status=NeutralStatus.NOT_FOUND, provider_ref=provider_ref)
        with self._reading("status"):
            raw, external_id = str(data["status"]), str(data["external_id"])
            expires_at = parse_time(data["expiration_date"])
            _known(raw, VA_STATUSES, "virtual account")
        before_expiry = expires_at > self._clock()
        if raw in ("PENDING", "ACTIVE") and before_expiry:
            return ProviderStatus(status=NeutralStatus.PENDING, provider_ref=provider_ref,
                                  raw_status=raw)
        # INACTIVE before its expiry: paid (the payment not listed yet), not closed by Lunas,
        # whose cancel moves the expiry to now (module docstring).
        early = (f"virtual account is INACTIVE before its expiration_date "
                 f"{xendit_time(expires_at)}" if raw == "INACTIVE" and before_expiry else None)
        return await self._paid_or(NeutralStatus.EXPIRED, external_id, Rail.VA, provider_ref, raw,
                                   unlisted=early)

    async def _qr_status(self, reference: str, deadline: datetime | None) -> ProviderStatus:
        data = await self._lookup(f"/qr_codes/{quote(reference, '')}")
        if data is None:
            return ProviderStatus(status=NeutralStatus.NOT_FOUND, provider_ref=None)
        with self._reading("status"):
            raw, qr_id = str(data["status"]), str(data["id"])
            _known(raw, QR_STATUSES, "QR code")
        if raw == "ACTIVE":
            return ProviderStatus(status=NeutralStatus.PENDING, provider_ref=qr_id,
                                  raw_status=raw)
        return await self._paid_or(NeutralStatus.EXPIRED, reference, Rail.QRIS, qr_id, raw,
                                   unlisted=self._qr_inactive_early(data, deadline))

    def _qr_inactive_early(self, data: Mapping[str, Any], deadline: datetime | None
                           ) -> str | None:
        """Why an INACTIVE QR is no evidence of expiry, if it is not: Lunas cannot close a QR
        v1 and Xendit keeps no expiry for one, so INACTIVE before Lunas's deadline is its
        payment, however late the read. When it turned INACTIVE is its ``updated`` (RAILS.md
        §2.3), the read's time if that is missing or unreadable; with no deadline known,
        nothing says it expired."""
        if deadline is None:
            return "QR code is INACTIVE and its deadline is not known"
        since: datetime | None = None
        with contextlib.suppress(ValueError):
            since = parse_time(data["updated"]) if data.get("updated") else None
        if (since or self._clock()) < deadline:
            when = f"turned INACTIVE at {xendit_time(since)}" if since else "is INACTIVE"
            return f"QR code {when}, before its deadline {xendit_time(deadline)}"
        return None

    async def _status_by_reference(self, reference: str, rail: Rail) -> ProviderStatus:
        """Unpaid, a VA is not found (its create may be replayed); a charge may be pending."""
        unpaid = NeutralStatus.PENDING if rail is Rail.EWALLET else NeutralStatus.NOT_FOUND
        return await self._paid_or(unpaid, reference, rail, None, "NO_PAYMENT_FOR_REFERENCE")

    async def _paid_or(self, otherwise: NeutralStatus, reference: str, rail: Rail,
                       provider_ref: str | None, raw: str, *,
                       unlisted: str | None = None) -> ProviderStatus:
        """Paid if the Transactions API holds a successful payment for this reference.
        ``unlisted``: why no payment listed is not ``otherwise`` but an answer to read again
        (an instrument INACTIVE before its expiry: its payment not listed yet)."""
        params = {"reference_id": reference, "types": "PAYMENT", "statuses": "SUCCESS",
                  "channel_categories": CATEGORIES[rail], "limit": "50"}
        data = await self._send("status", "GET", "/transactions", params=params)
        with self._reading("status"):
            payments = [t for t in data["data"]
                        if provider_ref is None or t.get("product_id") == provider_ref]
            if not payments and unlisted is not None:
                raise Unreadable(f"{unlisted}, and the Transactions API lists no payment yet",
                                 provider=PROVIDER, operation="status")
            if not payments:
                return ProviderStatus(status=otherwise, provider_ref=provider_ref,
                                      raw_status=raw)
            # Each payment on its own, oldest first: summed, two exact payments on a VA read
            # as one of twice the amount (a wrong amount nobody sent), and the second's refund
            # case never opened.
            listed = sorted((ProviderPayment(amount=rupiah(t["amount"]),
                                             paid_at=parse_time(t["created"]),
                                             currency=reported_currency(t.get("currency")))
                             for t in payments), key=lambda p: p.paid_at)
            first = listed[0]
            return ProviderStatus(
                status=NeutralStatus.PAID, provider_ref=str(payments[0]["product_id"]),
                paid_amount=first.amount, paid_at=first.paid_at, raw_status="SUCCESS",
                currency=first.currency, payments=tuple(listed),
            )

    async def _payment_time(self, reference: str, provider_ref: str) -> datetime:
        """When the customer paid a charge that shows a refund, by the Transactions API (the
        charge's ``updated`` is the refund's time by now). A charge that shows a capture the
        Transactions API does not list is an answer Lunas cannot read yet: dated at the
        refund or at the read, the payment would be recorded at a time it did not happen.
        Money-in transactions may move on from ``SUCCESS`` (XDOC list-transactions:
        ``VOIDED``, ``REVERSED``), so those are asked for too: the payment's time is the
        same."""
        params: _Params = {
            "reference_id": reference, "types": "PAYMENT",
            "statuses": ["SUCCESS", "VOIDED", "REVERSED"],
            "channel_categories": CATEGORIES[Rail.EWALLET], "limit": "50"}
        data = await self._send("status", "GET", "/transactions", params=params)
        with self._reading("status"):
            times = [parse_time(t["created"]) for t in data["data"]
                     if t.get("product_id") == provider_ref]
            if not times:
                raise ValueError(f"no payment of refunded charge {provider_ref} in /transactions")
            return min(times)

    # -- cancel ----------------------------------------------------------------------------

    async def cancel(self, reference: str, provider_ref: str | None, route: Route) -> None:
        if route.rail is Rail.QRIS:
            raise Refused("QR codes v1 have no cancel; the code stays payable until paid",
                          provider=PROVIDER, operation="cancel", code="NOT_CANCELLABLE")
        if provider_ref is None:
            raise Refused(f"cannot cancel {reference} without the provider's id",
                          provider=PROVIDER, operation="cancel", code="PROVIDER_REF_REQUIRED")
        if route.rail is Rail.VA:
            path = f"/callback_virtual_accounts/{quote(provider_ref, '')}"
            body = {"expiration_date": xendit_time(self._clock())}
            await self._send("cancel", "PATCH", path, json=body)
            return
        await self._void_pending(provider_ref)

    async def _void_pending(self, provider_ref: str) -> None:
        path = f"/ewallets/charges/{quote(provider_ref, '')}"
        data = await self._send("cancel", "GET", path)
        with self._reading("cancel"):
            raw = str(data["status"])
        if raw in ("FAILED", "VOIDED"):
            return  # already unpayable: cancelling twice is not an error
        if raw != "PENDING":
            raise Refused(f"charge is {raw}; voiding it would reverse a payment",
                          provider=PROVIDER, operation="cancel", code=f"CHARGE_{raw}")
        await self._send("cancel", "POST", f"{path}/void")

    # -- transport and error translation ---------------------------------------------------

    async def _send(self, operation: str, method: str, path: str, *,
                    json: dict[str, Any] | None = None, params: _Params | None = None,
                    idempotency_key: str | None = None) -> dict[str, Any]:
        """One HTTP call: the JSON object answered, or a ``RailError``."""
        response = await self._request(operation, method, path, json=json, params=params,
                                       idempotency_key=idempotency_key)
        return self._answer(operation, response)

    async def _lookup(self, path: str) -> dict[str, Any] | None:
        """A status read where 404 is an answer (never created), not an error."""
        response = await self._request("status", "GET", path)
        return None if response.status_code == 404 else self._answer("status", response)

    async def _request(self, operation: str, method: str, path: str, *,
                       json: dict[str, Any] | None = None, params: _Params | None = None,
                       idempotency_key: str | None = None) -> httpx.Response:
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if idempotency_key is not None:
            headers["X-IDEMPOTENCY-KEY"] = idempotency_key
        started = time.perf_counter()
        try:
            # httpx's timeout bounds each phase, not the call: an answer trickling in would never
            # end. Twice the timeout bounds the exchange and leaves each phase its own first.
            async with asyncio.timeout(2 * self._timeout):
                response = await self._client.request(method, self._base + path, json=json,
                                                      params=params, headers=headers,
                                                      timeout=self._timeout)
        except (httpx.RequestError, TimeoutError) as exc:
            self._observe(PROVIDER, operation, "no_answer", time.perf_counter() - started)
            raise _transport_error(operation, exc) from exc
        self._observe(PROVIDER, operation, "answered", time.perf_counter() - started)
        return response

    def _answer(self, operation: str, response: httpx.Response) -> dict[str, Any]:
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise _http_error(operation, response) from exc
        try:
            body = parse_body(response.content)
        except ValueError as exc:  # a proxy's error page more likely than Xendit: not an answer
            cls = OutcomeUnknown if operation == "create" else Unavailable
            raise cls(f"the answer is not JSON: {exc}", provider=PROVIDER,
                      operation=operation) from exc
        with self._reading(operation):
            if not isinstance(body, dict):
                raise ValueError("the answer is not a JSON object")
            return body

    @contextlib.contextmanager
    def _reading(self, operation: str) -> Iterator[None]:
        """A 2xx answer we cannot read: the call happened, its result is unusable. A field of
        an unexpected type fails as any of these (``.get`` on a list is an AttributeError)."""
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            cls: type[RailError] = {"create": OutcomeUnknown,
                                    "status": Unreadable}.get(operation, Unavailable)
            raise cls(f"unreadable answer: {exc}", provider=PROVIDER,
                      operation=operation) from exc


def _expect(data: Mapping[str, Any], **fields: object) -> None:
    """The answer must be about what we asked for; ``expected_amount`` may be omitted."""
    for name, wanted in fields.items():
        value = data.get(name)
        if value is None and name == "expected_amount":
            continue
        if (rupiah(value) if isinstance(wanted, int) else value) != wanted:
            raise ValueError(f"{name} is {value!r}, expected {wanted!r}")


def _known(raw: str, statuses: frozenset[str], what: str) -> None:
    """A status outside ``statuses`` says nothing Lunas can act on: read as expired (the
    fallback for "not payable now"), a still payable instrument was closed and its order
    reported failed."""
    if raw not in statuses:
        raise ValueError(f"unknown {what} status {raw!r:.40}")


def _charge_instrument(request: ChargeRequest, data: Mapping[str, Any]) -> Instrument:
    """OVO pushes a prompt to the customer's app (no URL); others redirect or deep-link."""
    actions = data.get("actions") or {}
    extra = {"channel_code": str(data["channel_code"]),
             "redirect_required": "true" if data.get("is_redirect_required") else "false"}
    if actions.get("qr_checkout_string"):
        extra["qr_checkout_string"] = str(actions["qr_checkout_string"])
    web = actions.get("mobile_web_checkout_url") or actions.get("desktop_web_checkout_url")
    deeplink = actions.get("mobile_deeplink_checkout_url")
    return Instrument(route=request.route, provider_ref=str(data["id"]),
                      status=CHARGE_STATUSES[str(data["status"])],
                      checkout_url=str(web) if web else None,
                      deeplink_url=str(deeplink) if deeplink else None,
                      expires_at=request.expires_at, extra=extra)


def _transport_error(operation: str, exc: httpx.RequestError | TimeoutError) -> RailError:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return TransientBeforeSend(detail, provider=PROVIDER, operation=operation)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Misconfigured(detail, provider=PROVIDER, operation=operation)
    if operation == "create":
        return OutcomeUnknown(detail, provider=PROVIDER, operation=operation)
    return Unavailable(detail, provider=PROVIDER, operation=operation)


def _http_error(operation: str, response: httpx.Response) -> RailError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    code, status = str(body.get("error_code", "")), response.status_code
    detail = f"HTTP {status} {code}: {body.get('message', response.reason_phrase)}"
    if status == 429 or code == "RATE_LIMIT_EXCEEDED":
        return Throttled(detail, provider=PROVIDER, operation=operation,
                         retry_after=_retry_after(response.headers))
    cls = _error_class(operation, status, code)
    if cls is Refused:
        return Refused(detail, provider=PROVIDER, operation=operation,
                       code=code or f"HTTP_{status}")
    return cls(detail, provider=PROVIDER, operation=operation)


def _error_class(operation: str, status: int, code: str) -> type[RailError]:
    """The module docstring's table, below the 429 row."""
    server_side = status >= 500 or status < 400
    if status == 401 or code in MISCONFIGURED_CODES or (
            status == 403 and code != "CHANNEL_NOT_ACTIVATED"):
        return Misconfigured
    if operation == "create":
        if code in DUPLICATE_CODES or server_side:
            return OutcomeUnknown
        if status == 404:
            return Misconfigured
    return Unavailable if server_side else Refused


def _retry_after(headers: httpx.Headers) -> float | None:
    for name in ("Rate-Limit-Reset", "Retry-After"):
        with contextlib.suppress(TypeError, ValueError):
            return max(float(headers[name]), 0.0)
    return None


# -- callbacks (pure: the webhook handler verifies, then maps) --------------------------------

def verify_callback_token(expected: str, header: str | None) -> bool:
    """Constant-time check of ``x-callback-token``; an unset expected token trusts nothing."""
    if not expected or header is None:
        return False
    return hmac.compare_digest(expected.encode(), header.encode())


def charge_status(charge: Mapping[str, Any]) -> ProviderStatus:
    """An e-wallet charge object (status read or callback ``data``) in Lunas's terms.

    ``refunded_amount`` (RAILS.md §2.4; ``null`` until a refund) is how much of the capture has
    gone back so far. A charge that still says ``SUCCEEDED`` with some refunded is a refund all
    the same: read as paid, the refund reached nobody. It is reported ``refunded`` with
    ``reversed_amount`` = the running total, so ``services.reversals`` opens a case per refund
    (a second partial refund differs from a repeat only in that total). Its raw status is
    Lunas's word, not Xendit's: ``PARTIALLY_REFUNDED`` while less than the capture went back,
    ``REFUNDED`` once all of it did, so a read before and a read after Xendit turns the charge
    ``REFUNDED`` record one full refund, not two.

    A ``REFUNDED`` charge whose ``refunded_amount`` is missing or unreadable is an unreadable
    answer (``ValueError``), not a full refund: neither RAILS.md §2.4 nor the SDK's charge model
    says ``REFUNDED`` means the whole capture, and a partial refund is Xendit's too. Taken for
    all of it, a case opened for the whole payment, and a later read with the total opened a
    second. The read is tried again with the unreadable back-off, and a refund notification
    whose reads never say how much is dead-lettered for a person (``provider_webhooks``).

    ``paid_at`` is the charge's ``updated`` only while nothing went back: the charge object has
    no payment time, and ``updated`` is its last status change, the capture until a refund
    becomes it. A charge showing a refund reports no ``paid_at`` here; ``XenditProvider.status``
    reads the payment's own time from the Transactions API."""
    raw = str(charge["status"])
    status = CHARGE_STATUSES.get(raw)
    if status is None:
        raise ValueError(f"unknown e-wallet charge status {raw!r}")
    # A refunded charge was paid first: its capture is the payment the refund took back.
    paid = status in (NeutralStatus.PAID, NeutralStatus.REFUNDED)
    captured = rupiah(charge["capture_amount"]) if paid else None
    refunded = _refunded_amount(charge) if paid else None
    if status is NeutralStatus.REFUNDED and refunded is None:
        raise ValueError(f"charge is REFUNDED with refunded_amount "
                         f"{charge.get('refunded_amount')!r:.40}: how much went back is unknown")
    if status is NeutralStatus.PAID and refunded is not None:
        status = NeutralStatus.REFUNDED
        raw = "REFUNDED" if captured is not None and refunded >= captured else "PARTIALLY_REFUNDED"
    captured_at = (parse_time(charge["updated"])
                   if status is NeutralStatus.PAID and charge.get("updated") else None)
    return ProviderStatus(
        status=status, provider_ref=str(charge["id"]), paid_amount=captured,
        paid_at=captured_at, raw_status=raw,
        reversed_amount=refunded if status is NeutralStatus.REFUNDED else None,
        currency=reported_currency(charge.get("currency")),
    )


def voided_payment(charge: Mapping[str, Any]) -> ProviderStatus:
    """A ``VOIDED`` charge whose payment Lunas has recorded: the void gave it all back.

    Xendit voids only a charge that succeeded, for its full value, on the day of the payment
    (docs.xendit.co, e-wallet "Void and Refund"); Lunas voids only PENDING ones, as its
    simulator allows (``_void_pending`` refuses the rest), so on a charge
    Lunas saw paid a void is a reversal made at the provider, like a refund of the whole
    ``capture_amount``. Read as the ``failed`` it is for a charge never paid, it moved nothing
    and nobody heard that the money went back. Lunas's raw status: ``VOIDED``."""
    # Voided whole: a capture_amount zeroed or dropped by the void says nothing else.
    captured = rupiah(charge.get("capture_amount") or charge["charge_amount"])
    if captured <= 0:
        raise ValueError(f"voided charge has no amount ({captured})")
    return ProviderStatus(
        status=NeutralStatus.REFUNDED, provider_ref=str(charge["id"]), paid_amount=captured,
        raw_status="VOIDED", reversed_amount=captured,
        currency=reported_currency(charge.get("currency")))


def _refunded_amount(charge: Mapping[str, Any]) -> int | None:
    """``refunded_amount``, None when absent, ``null`` or 0 (nothing went back yet); raises
    ``ValueError`` when unreadable, whatever the status: taken for none on a ``SUCCEEDED``
    charge, a refund would pass as a plain payment; on a ``REFUNDED`` one, for the whole
    capture, a figure nobody read."""
    value = charge.get("refunded_amount")
    if value is None:
        return None
    amount = rupiah(value)
    if amount < 0:
        raise ValueError(f"refunded_amount {value!r} is negative")
    return amount or None


CHARGE_EVENTS = ("ewallet.capture", "ewallet.void")
"""E-wallet callbacks whose ``data`` is the charge: its capture, and its void (a VOIDED charge:
for one never paid, failed; for one Lunas saw paid, all of it back, which
``provider_webhooks`` confirms with a read)."""


def callback_status(body: Mapping[str, Any]) -> ProviderStatus:
    """The status a VA paid, QR payment, e-wallet capture or refund callback reports.

    Raises ``CallbackError`` for any other shape (``refund.failed`` included: no money moved).
    The VA callback has no status field: its arrival means paid (RAILS.md §2.2). A
    ``refund.succeeded`` is ``refunded`` with no amounts: it only asks for the status read that
    says what went back (its refund object is about the refund, not the payment)."""
    if body.get("event") == "refund.failed":
        raise NothingMoved("refund.failed: no money moved, nothing to apply")
    try:
        if body.get("event") in CHARGE_EVENTS:
            return charge_status(body["data"])
        if body.get("event") == "refund.succeeded":
            refund = refund_object(body)
            return ProviderStatus(status=NeutralStatus.REFUNDED,
                                  provider_ref=next(iter(refunded_payment_refs(body)), None),
                                  raw_status=f"refund.{str(refund.get('status', '')).lower()}",
                                  currency=reported_currency(refund.get("currency")))
        if body.get("event") == "qr.payment":
            return _qr_callback_status(body)
        if "callback_virtual_account_id" in body and "payment_id" in body:
            return ProviderStatus(
                status=NeutralStatus.PAID, provider_ref=str(body["callback_virtual_account_id"]),
                paid_amount=rupiah(body["amount"]),
                paid_at=parse_time(body["transaction_timestamp"]), raw_status="PAID",
                currency=reported_currency(body.get("currency")))
    except (KeyError, TypeError, ValueError) as exc:
        raise CallbackError(f"malformed Xendit callback: {exc}") from exc
    raise CallbackError("not a Xendit VA, QR, e-wallet or refund callback")


def refund_object(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The refund a ``refund.succeeded`` / ``refund.failed`` callback reports (XDOC
    ``apidocs/refund-webhook-notification.md``: ``data`` is the refund object; the page's own
    example wraps a whole second envelope in ``data``, which is read too)."""
    data = body["data"]
    if isinstance(data, Mapping) and "event" in data and isinstance(data.get("data"), Mapping):
        data = data["data"]
    if not isinstance(data, Mapping):
        raise CallbackError("refund callback without a refund object")
    return data


def refunded_payment_refs(body: Mapping[str, Any]) -> tuple[str, ...]:
    """Xendit's ids of the payment a refund callback took money from (``payment_request_id``,
    ``payment_id``), to match against attempts' ``provider_ref``. The refund's own
    ``reference_id`` is the refund's (given when it was made), never our attempt's, so a refund
    callback names no attempt by reference. Which of these ids a refund of a legacy e-wallet
    charge carries is not documented; either is looked for."""
    try:
        refund = refund_object(body)
    except (KeyError, TypeError):
        return ()
    return tuple(str(refund[k])[:128] for k in ("payment_request_id", "payment_id")
                 if isinstance(refund.get(k), str) and refund[k])


def _qr_callback_status(body: Mapping[str, Any]) -> ProviderStatus:
    """v1 is flat with ``qr_code``; api-version 2022-07-31 wraps the payment in ``data``."""
    payment = body.get("data", body)
    raw = str(payment["status"])
    if raw not in ("COMPLETED", "SUCCEEDED"):
        raise ValueError(f"unknown QR payment status {raw!r}")
    qr_id = payment["qr_code"]["id"] if "qr_code" in payment else payment["qr_id"]
    return ProviderStatus(status=NeutralStatus.PAID, provider_ref=str(qr_id),
                          paid_amount=rupiah(payment["amount"]),
                          paid_at=parse_time(payment["created"]), raw_status=raw,
                          currency=reported_currency(payment.get("currency")))


def callback_rail(body: Mapping[str, Any]) -> Rail | None:
    """The rail a callback's shape belongs to (an e-wallet charge, a QR payment, a VA
    payment); None for a refund or a shape Lunas does not know."""
    if body.get("event") in CHARGE_EVENTS:
        return Rail.EWALLET
    if body.get("event") == "qr.payment":
        return Rail.QRIS
    if "callback_virtual_account_id" in body and "payment_id" in body:
        return Rail.VA
    return None


def callback_reference(body: Mapping[str, Any]) -> str:
    """Our reference (external_id / reference_id) in a callback, for attempts whose create
    answer was lost and so have no ``provider_ref`` to match on."""
    try:
        if body.get("event") in CHARGE_EVENTS:
            return str(body["data"]["reference_id"])
        if body.get("event") == "qr.payment":
            if "data" in body:
                return str(body["data"]["reference_id"])
            return str(body["qr_code"]["external_id"])
        return str(body["external_id"])
    except (KeyError, TypeError) as exc:
        raise CallbackError(f"callback carries no reference: {exc}") from exc


def callback_time(body: Mapping[str, Any]) -> datetime | None:
    """When the event a callback reports happened, by Xendit's clock (UTC): the VA payment's
    ``transaction_timestamp``, the QR payment's ``created``, the e-wallet charge's ``updated``
    (its last status change). None when the callback says no time or an unreadable one."""
    data = body.get("data")
    if body.get("event") in CHARGE_EVENTS and isinstance(data, Mapping):
        stamp = data.get("updated") or body.get("created")
    elif body.get("event") == "qr.payment":
        stamp = (data if isinstance(data, Mapping) else body).get("created")
    else:
        stamp = body.get("transaction_timestamp") or body.get("created")
    if not stamp:
        return None
    try:
        return parse_time(stamp)
    except ValueError:
        return None
