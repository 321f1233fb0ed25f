"""A Xendit-style simulator (legacy per-channel APIs, RAILS.md §2) with fault injection.

Data plane (what the adapter talks to), all behind Basic auth with the configured secret key:

    POST  /callback_virtual_accounts                      fixed VA create (X-IDEMPOTENCY-KEY)
    GET   /callback_virtual_accounts/{id}                 fixed VA read
    PATCH /callback_virtual_accounts/{id}                 update; expiration_date <= now → INACTIVE
    GET   /callback_virtual_account_payments/payment_id={payment_id}
    POST  /qr_codes                                       QR v1 create, DYNAMIC only (idempotent)
    GET   /qr_codes/{external_id}                         QR v1 read
    POST  /ewallets/charges                               e-wallet charge create (no key honoured)
    GET   /ewallets/charges/{id}                          charge read
    POST  /ewallets/charges/{id}/void                     void a PENDING or SUCCEEDED charge
    GET   /transactions?reference_id=&product_id=&types=&statuses=&channel_categories=

How "was it paid?" is answered: legacy Xendit has no payment lookup by VA or by QR (the VA payment
endpoint needs the ``payment_id`` that only the callback carries). A paid single-use VA and a paid
dynamic QR both turn ``INACTIVE``, which an expired one also does. The simulator therefore serves
Xendit's documented Transactions API (``GET /transactions``, XDOC ``apidocs/list-transactions.md``):
every customer payment is recorded there as a ``PAYMENT`` / ``SUCCESS`` transaction whose
``reference_id`` is the VA ``external_id``, the QR ``external_id`` or the charge ``reference_id``
and whose ``product_id`` is the VA / QR / charge id.

Simulator decisions where RAILS.md is silent or uncertain:

- Idempotency: a repeated X-IDEMPOTENCY-KEY (per endpoint) with an equal JSON body replays the
  original response and creates nothing; with a different body it is ``409 DUPLICATE_ERROR``
  (the code Xendit's newer APIs use for a reused idempotency key). Only where RAILS.md §2.1
  documents the header: VA and QR creates. ``POST /ewallets/charges`` ignores it, as nothing
  documents it there (the SDK sends none), and a repeated create makes a second charge with the
  same ``reference_id``: a second push to the customer's OVO, a second DANA link. A test of a
  Xendit that did dedupe there sets ``ewallet_idempotency: true`` through ``POST /config``.
- A second VA with an ``external_id`` already in use (without a replayable key) is
  ``400 DUPLICATE_CALLBACK_VIRTUAL_ACCOUNT_ERROR``; a second QR with a used ``external_id`` is
  ``409 DUPLICATE_ERROR``.
- A VA answers ``PENDING`` on create and is ``ACTIVE`` when read; a closed VA accepts only its
  ``expected_amount``; a single-use VA and a dynamic QR go ``INACTIVE`` once paid. With the
  ``va_reusable`` config a VA is created open and multi-use whatever was asked (as where a bank
  or an account setting does not allow closed VAs), and its answer says so.
- E-wallet test-mode magic amounts: 10100 → 403 CHANNEL_NOT_ACTIVATED, 10101 → 503
  CHANNEL_UNAVAILABLE, 10102 → 500 SERVER_ERROR (none creates a charge); 20103 → the charge is
  created PENDING, then fails with ``ACCOUNT_ACCESS_BLOCKED`` and a FAILED callback.
- Void: Xendit documents void for SUCCEEDED charges (a reversal); the simulator also voids a
  PENDING one, which is how Lunas cancels. Other states are ``400 API_VALIDATION_ERROR``.
- Rate limit: a fixed 60-second window per endpoint (Xendit's is sliding), off unless
  ``rate_limit_per_minute`` is set; responses then carry Rate-Limit-Limit/Remaining/Reset.
- The Transactions API may lag the payment: with ``transactions_lag_s`` set (``POST /config``;
  default 0) a payment is listed only that many seconds after it was made, while its VA or QR
  is ``INACTIVE`` (and its callback sent) at once, as Xendit's list can trail a payment by
  seconds to minutes. The lag is applied when the list is read, so setting it back to 0 lists
  every payment held back (the list catching up). The transactions' shape is unchanged.
- ``drop_callbacks: true`` (``POST /config``): Xendit's callback system is down, nothing is
  sent (counted in ``dropped_callbacks``), whatever URL a callback would go to (a QR's own
  ``callback_url`` included).

Faults (``FaultBook``) are applied to every data-plane request under the channel names bca, bni,
bri, mandiri, permata, qris, ovo, dana, linkaja, shopeepay and the operations create / status /
cancel, before authentication (an outage does not care who calls). SLOW adds delay; HANG never
answers; ERROR_BURST / ERROR_RATE / BODY_ERROR answer ``status`` with SERVER_ERROR (Xendit has no
200-with-error style); RATE_LIMIT answers 429; MAINTENANCE answers 503 CHANNEL_UNAVAILABLE;
TIMEOUT_AFTER_SUCCESS does the work and then never answers. DOWN stops the data server. A hung
request is released (answered 503) only when the data server stops, long after clients gave up.

Control plane (no auth): ``POST/GET/DELETE /faults``, ``GET/DELETE /calls``, ``POST /pay``,
``POST /refund`` (part or all of a paid e-wallet charge, ``XenditSim.refund``),
``GET/POST /config``, ``GET/DELETE /callbacks``, ``GET /resources?reference=``.

Callbacks are POSTed with ``x-callback-token`` from background tasks, never from the request that
caused them; a non-2xx answer is retried at +15 m, 1 h, 3 h, 6 h, 12 h and 24 h after the first
attempt (XDOC ``apidocs/webhook-behavior.md``), each offset multiplied by ``retry_scale``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hmac
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar, Request, Response, delete, get, patch, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from chaos.sim.control import fault_routes
from chaos.sim.faults import Fault, FaultBook, FaultKind
from chaos.sim.server import SwitchableServer
from orchestrator.rails.qris import build_dynamic
from orchestrator.tls import default_trust

BANK_MERCHANT_CODES = {"BCA": "10766", "BNI": "8808", "BRI": "26215", "MANDIRI": "88908",
                       "PERMATA": "8214"}
EWALLET_CODES = ("ID_OVO", "ID_DANA", "ID_LINKAJA", "ID_SHOPEEPAY")
REDIRECT_WALLETS = ("ID_DANA", "ID_LINKAJA", "ID_SHOPEEPAY")
MAGIC_REFUSALS = {
    10100: (403, "CHANNEL_NOT_ACTIVATED", "the channel is not activated for this account"),
    10101: (503, "CHANNEL_UNAVAILABLE", "the e-wallet provider is experiencing issues"),
    10102: (500, "SERVER_ERROR", "an unexpected error occurred"),
}
MAGIC_LATE_FAILURE = 20103
CALLBACK_RETRY_OFFSETS_S = (15 * 60, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
"""Retry times relative to the first attempt (not to the previous retry)."""

OWNER_ID = "5f1e2d3c4b5a697887766554"
QR_MERCHANT = {"merchant_pan": "936000140000012345", "merchant_id": "XENDITSIM0001",
               "nmid": "ID1020000123456", "merchant_name": "LUNAS SIM MERCHANT",
               "merchant_city": "JAKARTA", "postal_code": "10110"}
CHECKOUT_BASE = "https://checkout.sim.xendit.invalid"
OVO_MOBILE = re.compile(r"^\+62\d{8,13}$")
VA_AMOUNT_RANGE = (1, 50_000_000_000)
QR_AMOUNT_RANGE = (1_500, 10_000_000)  # QRIS caps one transaction at Rp10 juta
EWALLET_AMOUNT_RANGE = (100, 20_000_000)


class ApiError(Exception):
    """A Xendit-shaped error answer: HTTP ``status`` with ``{error_code, message}``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def response(self) -> Response[Any]:
        return Response({"error_code": self.code, "message": self.message},
                        status_code=self.status, headers=self.headers)


def iso(moment: datetime) -> str:
    """Xendit's timestamp style: UTC, milliseconds, ``Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any, field_name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ApiError(400, "API_VALIDATION_ERROR", f"{field_name} must be ISO 8601") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _amount(value: Any, low_high: tuple[int, int], *, low_code: str = "API_VALIDATION_ERROR",
            high_code: str = "API_VALIDATION_ERROR") -> int:
    """Whole rupiah only: money is an int, and an integral float is accepted as one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ApiError(400, "API_VALIDATION_ERROR", "amount must be a whole number of rupiah")
    amount, (low, high) = int(value), low_high
    if amount < low:
        raise ApiError(400, low_code, f"amount must be at least {low}")
    if amount > high:
        raise ApiError(400, high_code, f"amount must be at most {high}")
    return amount


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "API_VALIDATION_ERROR", f"{name} is required")
    return value


class RateLimiter:
    """A fixed one-minute window per endpoint; ``None`` means unlimited."""

    def __init__(self, per_minute: int | None) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, tuple[float, int]] = {}

    def reset(self, per_minute: int | None) -> None:
        self.per_minute, self._windows = per_minute, {}

    def admit(self, endpoint: str) -> dict[str, str]:
        """Count one request; the headers to send, or ``ApiError`` 429 when over the limit."""
        if self.per_minute is None:
            return {}
        now = time.monotonic()
        start, used = self._windows.get(endpoint, (now, 0))
        if now - start >= 60:
            start, used = now, 0
        reset_in = 60 - (now - start)
        if used >= self.per_minute:
            raise ApiError(429, "RATE_LIMIT_EXCEEDED", "too many requests",
                           rate_limit_headers(self.per_minute, 0, reset_in))
        self._windows[endpoint] = (start, used + 1)
        return rate_limit_headers(self.per_minute, self.per_minute - used - 1, reset_in)


def rate_limit_headers(limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    return {"Rate-Limit-Limit": str(limit), "Rate-Limit-Remaining": str(remaining),
            "Rate-Limit-Reset": f"{max(reset_s, 0.0):.2f}"}


@dataclass
class Replay:
    body: dict[str, Any]
    response: dict[str, Any]


@dataclass
class Store:
    """Everything the simulated account holds. Only the event loop touches it."""

    vas: dict[str, dict[str, Any]] = field(default_factory=dict)
    va_payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    qrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by external_id
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    transactions: list[dict[str, Any]] = field(default_factory=list)
    recorded: dict[str, float] = field(default_factory=dict)
    """When each transaction was made (``time.monotonic()``, by transaction id), for the lag."""
    replays: dict[tuple[str, str], Replay] = field(default_factory=dict)

    def va_by_external_id(self, external_id: str) -> dict[str, Any] | None:
        return next((v for v in self.vas.values() if v["external_id"] == external_id), None)

    def qr_by_id(self, qr_id: str) -> dict[str, Any] | None:
        return next((q for q in self.qrs.values() if q["id"] == qr_id), None)

    def charge_by_reference(self, reference_id: str) -> dict[str, Any] | None:
        found = [c for c in self.charges.values() if c["reference_id"] == reference_id]
        return found[-1] if found else None

    def channel_of_reference(self, reference: str) -> str:
        """The fault channel a reference belongs to, for requests that name no channel."""
        va = self.va_by_external_id(reference)
        if va is not None:
            return str(va["bank_code"]).lower()
        if reference in self.qrs:
            return "qris"
        charge = self.charge_by_reference(reference)
        return _wallet_channel(charge["channel_code"]) if charge else "unknown"


def _wallet_channel(channel_code: str) -> str:
    return channel_code.removeprefix("ID_").lower()


class XenditSim:
    """The simulated Xendit account: resources, faults, callbacks, and the two servers."""

    # The defaults are a local test double's own credentials, not secrets of any real account.
    def __init__(self, *, secret_key: str = "xnd_development_lunas_sim",  # noqa: S107
                 callback_token: str = "lunas-sim-callback-token",  # noqa: S107
                 callback_url: str | None = None, retry_scale: float = 1.0,
                 rate_limit_per_minute: int | None = None, host: str = "127.0.0.1",
                 data_port: int = 0, control_port: int = 0, hang_max_s: float = 300.0,
                 late_failure_delay_s: float = 0.05, callback_timeout_s: float = 5.0,
                 ewallet_idempotency: bool = False) -> None:
        self.secret_key, self.callback_token = secret_key, callback_token
        self.ewallet_idempotency = ewallet_idempotency
        self.callback_url, self.retry_scale = callback_url, retry_scale
        self.hang_max_s, self.late_failure_delay_s = hang_max_s, late_failure_delay_s
        self.callback_timeout_s = callback_timeout_s
        self.va_reusable = False
        self.transactions_lag_s = 0.0
        self.drop_callbacks, self.dropped_callbacks = False, 0
        self.faults = FaultBook()
        self.store = Store()
        self.limiter = RateLimiter(rate_limit_per_minute)
        self.callbacks: list[dict[str, Any]] = []
        self._va_numbers = itertools.count(100_001)
        self._tasks: set[asyncio.Task[None]] = set()
        self._release = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self.data_app = Litestar(route_handlers=data_routes(self), openapi_config=None)
        self.control_app = Litestar(route_handlers=control_routes(self), openapi_config=None)
        self._data = SwitchableServer(self.data_app, host, data_port)
        self._control = SwitchableServer(self.control_app, host, control_port)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def data_url(self) -> str:
        return self._data.url

    @property
    def control_url(self) -> str:
        return self._control.url

    @property
    def data_listening(self) -> bool:
        return self._data.listening

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=default_trust(),
                                             timeout=self.callback_timeout_s)
        await self._control.start()
        if not self.faults.is_down():
            await self._data.start()

    async def stop(self) -> None:
        self._release_hangs()
        await asyncio.gather(self._data.close(), self._control.close())
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, kept referenced until done and cancelled on stop."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the gate every data-plane request passes -------------------------------------------

    async def serve(self, request: Request[Any, Any, Any], endpoint: str, channel: str,
                    operation: str, work: Callable[[], tuple[int, dict[str, Any]]]
                    ) -> Response[Any]:
        """Faults first (an outage ignores who calls), then auth, rate limit and the work."""
        decision = self.faults.decide(channel, operation)
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        fault = decision.fault
        if fault is not None and fault.kind is not FaultKind.TIMEOUT_AFTER_SUCCESS:
            return await self._fault_response(fault)
        try:
            self._authenticate(request)
            headers = self.limiter.admit(endpoint)
            status, content = work()
        except ApiError as exc:
            return exc.response()
        if fault is not None:  # TIMEOUT_AFTER_SUCCESS: the work is done, the answer never comes
            return await self._hang()
        return Response(content, status_code=status, headers=headers)

    def _authenticate(self, request: Request[Any, Any, Any]) -> None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user = base64.b64decode(encoded, validate=True).decode().partition(":")[0]
        except ValueError:
            user = ""
        if scheme.lower() != "basic" or not hmac.compare_digest(user.encode(),
                                                                self.secret_key.encode()):
            raise ApiError(401, "INVALID_API_KEY", "API key is not authorized for this service")

    async def _fault_response(self, fault: Fault) -> Response[Any]:
        kind = fault.kind
        if kind is FaultKind.HANG:
            return await self._hang()
        if kind is FaultKind.MAINTENANCE:
            return ApiError(503, "CHANNEL_UNAVAILABLE", "the channel is under maintenance"
                            ).response()
        if kind is FaultKind.RATE_LIMIT:
            reset = (fault.retry_after_s if fault.retry_after_s is not None
                     else fault.until - time.monotonic() if fault.until is not None else 60.0)
            limit = self.limiter.per_minute or 60
            return ApiError(429, "RATE_LIMIT_EXCEEDED", "too many requests",
                            rate_limit_headers(limit, 0, reset)).response()
        status = fault.status if fault.status >= 400 else 500
        return ApiError(status, "SERVER_ERROR", "an unexpected error occurred").response()

    async def _hang(self) -> Response[Any]:
        release = self._release
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), timeout=self.hang_max_s)
        return ApiError(503, "SERVER_ERROR", "the simulator stopped").response()

    def _release_hangs(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    # -- idempotency -----------------------------------------------------------------------

    def idempotent(self, scope: str, key: str | None, body: dict[str, Any],
                   create: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Replay the original answer for a repeated key and equal body; 409 for another body."""
        if key:
            prior = self.store.replays.get((scope, key))
            if prior is not None:
                if prior.body != body:
                    raise ApiError(409, "DUPLICATE_ERROR",
                                   "idempotency key has been used before with another request")
                return copy.deepcopy(prior.response)
        created = create()
        if key:
            self.store.replays[(scope, key)] = Replay(copy.deepcopy(body), copy.deepcopy(created))
        return created

    # -- fixed virtual accounts ------------------------------------------------------------

    def create_va(self, body: dict[str, Any]) -> dict[str, Any]:
        external_id = _text(body, "external_id")
        bank_code = str(body.get("bank_code", ""))
        if bank_code not in BANK_MERCHANT_CODES:
            raise ApiError(400, "BANK_NOT_SUPPORTED_ERROR", f"bank {bank_code!r} not supported")
        name = _text(body, "name")
        if self.store.va_by_external_id(external_id) is not None:
            raise ApiError(400, "DUPLICATE_CALLBACK_VIRTUAL_ACCOUNT_ERROR",
                           f"a virtual account with external_id {external_id} already exists")
        va = self._new_va(body, external_id, bank_code, name)
        self.store.vas[va["id"]] = {**va, "status": "ACTIVE"}
        return va

    def _new_va(self, body: dict[str, Any], external_id: str, bank_code: str,
                name: str) -> dict[str, Any]:
        now = _now()
        # ``va_reusable``: Xendit answers with an open, multi-use VA whatever was asked.
        is_closed = bool(body.get("is_closed", False)) and not self.va_reusable
        expected = body.get("expected_amount")
        if is_closed and expected is None:
            raise ApiError(400, "EXPECTED_AMOUNT_REQUIRED_ERROR", "closed VA needs expected_amount")
        expires = (_parse_time(body["expiration_date"], "expiration_date")
                   if body.get("expiration_date") else now + timedelta(days=365 * 31))
        if expires <= now:
            raise ApiError(400, "EXPIRATION_DATE_INVALID_ERROR", "expiration_date is in the past")
        merchant_code = BANK_MERCHANT_CODES[bank_code]
        va: dict[str, Any] = {
            "id": secrets.token_hex(12), "owner_id": OWNER_ID, "external_id": external_id,
            "bank_code": bank_code, "merchant_code": merchant_code, "name": name,
            "account_number": f"{merchant_code}9999{next(self._va_numbers)}",
            "is_closed": is_closed,
            "is_single_use": bool(body.get("is_single_use", False)) and not self.va_reusable,
            "status": "PENDING", "expiration_date": iso(expires), "currency": "IDR",
        }
        if expected is not None:
            va["expected_amount"] = _amount(expected, VA_AMOUNT_RANGE,
                                            low_code="MINIMUM_EXPECTED_AMOUNT_ERROR",
                                            high_code="MAXIMUM_EXPECTED_AMOUNT_ERROR")
        if body.get("description"):
            va["description"] = str(body["description"])
        return va

    def va(self, va_id: str) -> dict[str, Any]:
        va = self.store.vas.get(va_id)
        if va is None:
            raise ApiError(404, "CALLBACK_VIRTUAL_ACCOUNT_NOT_FOUND_ERROR",
                           f"no virtual account with id {va_id}")
        if va["status"] != "INACTIVE" and _parse_time(va["expiration_date"], "") <= _now():
            va["status"] = "INACTIVE"
        return va

    def update_va(self, va_id: str, body: dict[str, Any]) -> dict[str, Any]:
        va = self.va(va_id)
        unknown = set(body) - {"expiration_date", "expected_amount", "description"}
        if unknown:
            raise ApiError(400, "API_VALIDATION_ERROR", f"cannot update {sorted(unknown)}")
        if "expected_amount" in body:
            va["expected_amount"] = _amount(body["expected_amount"], VA_AMOUNT_RANGE)
        if "description" in body:
            va["description"] = str(body["description"])
        if "expiration_date" in body:
            expires = _parse_time(body["expiration_date"], "expiration_date")
            va["expiration_date"] = iso(expires)
            if expires <= _now():
                va["status"] = "INACTIVE"  # how a merchant closes a fixed VA early
        return self.va(va_id)

    def va_payment(self, segment: str) -> dict[str, Any]:
        payment = self.store.va_payments.get(segment.removeprefix("payment_id="))
        if not segment.startswith("payment_id=") or payment is None:
            raise ApiError(404, "CALLBACK_VIRTUAL_ACCOUNT_PAYMENT_NOT_FOUND_ERROR",
                           "no such payment")
        return payment

    # -- QR codes (v1) ---------------------------------------------------------------------

    def create_qr(self, body: dict[str, Any]) -> dict[str, Any]:
        external_id = _text(body, "external_id")
        if body.get("type") != "DYNAMIC":
            raise ApiError(400, "API_VALIDATION_ERROR", "the simulator serves DYNAMIC QR only")
        callback_url = _text(body, "callback_url")
        amount = _amount(body.get("amount"), QR_AMOUNT_RANGE)
        if external_id in self.store.qrs:
            raise ApiError(409, "DUPLICATE_ERROR", f"external_id {external_id} already used")
        stamp = iso(_now())
        qr = {
            "id": f"qr_{uuid.uuid4()}", "external_id": external_id, "amount": amount,
            "qr_string": build_dynamic(**QR_MERCHANT, amount=amount, reference=external_id,
                                       acquirer_guid="CO.XENDIT.WWW"),
            "callback_url": callback_url, "type": "DYNAMIC", "status": "ACTIVE",
            "created": stamp, "updated": stamp,
        }
        self.store.qrs[external_id] = qr
        return dict(qr)

    def qr(self, external_id: str) -> dict[str, Any]:
        qr = self.store.qrs.get(external_id)
        if qr is None:
            raise ApiError(404, "DATA_NOT_FOUND", f"no QR code with external_id {external_id}")
        return qr

    # -- e-wallet charges ------------------------------------------------------------------

    def create_charge(self, body: dict[str, Any]) -> dict[str, Any]:
        reference_id = _text(body, "reference_id")
        if body.get("currency") != "IDR":
            raise ApiError(400, "UNSUPPORTED_CURRENCY", "only IDR is supported")
        amount = _amount(body.get("amount"), EWALLET_AMOUNT_RANGE)
        if body.get("checkout_method") != "ONE_TIME_PAYMENT":
            raise ApiError(400, "API_VALIDATION_ERROR", "checkout_method must be ONE_TIME_PAYMENT")
        channel_code = str(body.get("channel_code", ""))
        props = body.get("channel_properties") or {}
        _check_channel_properties(channel_code, props)
        if amount in MAGIC_REFUSALS:
            raise ApiError(*MAGIC_REFUSALS[amount])
        charge = self._new_charge(reference_id, amount, channel_code, props, body)
        self.store.charges[charge["id"]] = charge
        if amount == MAGIC_LATE_FAILURE:
            self.spawn(self._fail_later(charge["id"]))
        return copy.deepcopy(charge)

    def _new_charge(self, reference_id: str, amount: int, channel_code: str,
                    props: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        charge_id, stamp = f"ewc_{uuid.uuid4()}", iso(_now())
        return {
            "id": charge_id, "business_id": OWNER_ID, "reference_id": reference_id,
            "status": "PENDING", "currency": "IDR", "charge_amount": amount,
            "capture_amount": amount, "refunded_amount": None,
            "checkout_method": "ONE_TIME_PAYMENT", "channel_code": channel_code,
            "channel_properties": props, "actions": _wallet_actions(channel_code, charge_id),
            "is_redirect_required": channel_code in REDIRECT_WALLETS,
            "callback_url": self.callback_url, "created": stamp, "updated": stamp,
            "voided_at": None, "void_status": None, "capture_now": True, "customer_id": None,
            "payment_method_id": None, "failure_code": None, "basket": None,
            "metadata": body.get("metadata"),
        }

    def charge(self, charge_id: str) -> dict[str, Any]:
        charge = self.store.charges.get(charge_id)
        if charge is None:
            raise ApiError(404, "DATA_NOT_FOUND", f"no e-wallet charge with id {charge_id}")
        return charge

    def void_charge(self, charge_id: str) -> dict[str, Any]:
        charge = self.charge(charge_id)
        if charge["status"] not in ("PENDING", "SUCCEEDED"):
            raise ApiError(400, "API_VALIDATION_ERROR",
                           f"a {charge['status']} charge cannot be voided")
        stamp = iso(_now())
        charge.update(status="VOIDED", void_status="SUCCEEDED", voided_at=stamp, updated=stamp)
        return charge

    async def _fail_later(self, charge_id: str) -> None:
        await asyncio.sleep(self.late_failure_delay_s)
        charge = self.store.charges[charge_id]
        if charge["status"] != "PENDING":
            return
        charge.update(status="FAILED", failure_code="ACCOUNT_ACCESS_BLOCKED",
                      updated=iso(_now()))
        self._notify("ewallet.capture", self.callback_url, _wallet_event(charge))

    # -- transactions ----------------------------------------------------------------------

    def transactions(self, filters: dict[str, list[str]], limit: int) -> dict[str, Any]:
        def keep(txn: dict[str, Any]) -> bool:
            return all(not wanted or str(txn[name]) in wanted for name, wanted in (
                ("reference_id", filters["reference_id"]), ("product_id", filters["product_id"]),
                ("type", filters["types"]), ("status", filters["statuses"]),
                ("channel_category", filters["channel_categories"])))
        listed_before = time.monotonic() - self.transactions_lag_s
        found = [t for t in self.store.transactions if keep(t)
                 and self.store.recorded.get(t["id"], 0.0) <= listed_before]
        return {"has_more": len(found) > limit, "data": found[:limit], "links": []}

    def _record_payment(self, *, product_id: str, reference_id: str, category: str,
                        channel_code: str, amount: int, account: str | None,
                        currency: str = "IDR") -> None:
        stamp, txn_id = iso(_now()), f"txn_{uuid.uuid4()}"
        self.store.recorded[txn_id] = time.monotonic()
        self.store.transactions.append({
            "id": txn_id, "product_id": product_id, "type": "PAYMENT",
            "status": "SUCCESS", "channel_category": category, "channel_code": channel_code,
            "reference_id": reference_id, "account_identifier": account, "currency": currency,
            "amount": amount, "net_amount": amount, "net_amount_currency": "IDR",
            "cashflow": "MONEY_IN", "settlement_status": "PENDING", "business_id": OWNER_ID,
            "created": stamp, "updated": stamp,
        })

    # -- customers paying (control plane) --------------------------------------------------

    def pay(self, body: dict[str, Any]) -> dict[str, Any]:
        """A customer pays; the payment is stored, recorded and its callback scheduled.

        ``force: true`` skips the checks a real bank or wallet would make (inactive VA, amount
        not the expected one), for chaos runs that need a late or wrong payment. ``currency``
        (default ``IDR``) is what the VA callback, the e-wallet charge and the Transactions API
        report the payment in, for tests of a payment reported in another currency."""
        kind, force = body.get("kind"), bool(body.get("force", False))
        amount = _amount(body.get("amount"), (1, 10**12))
        currency = str(body.get("currency", "IDR"))
        if kind == "va":
            return self._pay_va(body, amount, force, currency)
        if kind == "qr":
            return self._pay_qr(body, amount, force, currency)
        if kind == "ewallet":
            return self._pay_charge(body, amount, force, currency)
        raise ApiError(400, "API_VALIDATION_ERROR", "kind must be va, qr or ewallet")

    def _pay_va(self, body: dict[str, Any], amount: int, force: bool,
                currency: str) -> dict[str, Any]:
        found = (self.store.vas.get(str(body.get("id"))) or
                 self.store.va_by_external_id(str(body.get("external_id"))))
        if found is None:
            raise ApiError(404, "CALLBACK_VIRTUAL_ACCOUNT_NOT_FOUND_ERROR", "no such VA")
        va = self.va(found["id"])
        if not force and va["status"] == "INACTIVE":
            raise ApiError(400, "INACTIVE_VIRTUAL_ACCOUNT", "the bank rejects an inactive VA")
        if not force and va["is_closed"] and amount != va.get("expected_amount"):
            raise ApiError(400, "AMOUNT_MISMATCH", "a closed VA takes only its expected amount")
        payment = {**_va_payment(va, amount), "currency": currency}
        self.store.va_payments[payment["payment_id"]] = payment
        if va["is_single_use"]:
            va["status"] = "INACTIVE"
        self._record_payment(product_id=va["id"], reference_id=va["external_id"],
                             category="VIRTUAL_ACCOUNT", channel_code=va["bank_code"],
                             amount=amount, account=va["account_number"], currency=currency)
        self._notify("va.paid", self.callback_url, payment)
        return payment

    def _pay_qr(self, body: dict[str, Any], amount: int, force: bool,
                 currency: str) -> dict[str, Any]:
        qr = (self.store.qrs.get(str(body.get("external_id"))) or
              self.store.qr_by_id(str(body.get("id"))))
        if qr is None:
            raise ApiError(404, "DATA_NOT_FOUND", "no such QR code")
        if not force and (qr["status"] != "ACTIVE" or amount != qr["amount"]):
            raise ApiError(400, "INACTIVE_QR_CODE", "the QR is inactive or the amount differs")
        event = _qr_event(qr, amount)
        qr.update(status="INACTIVE", updated=event["created"])
        self._record_payment(product_id=qr["id"], reference_id=qr["external_id"],
                             category="QR_CODE", channel_code="QRIS", amount=amount, account=None,
                             currency=currency)
        self._notify("qr.payment", qr["callback_url"] or self.callback_url, event)
        return event

    def _pay_charge(self, body: dict[str, Any], amount: int, force: bool,
                    currency: str) -> dict[str, Any]:
        charge = (self.store.charges.get(str(body.get("id"))) or
                  self.store.charge_by_reference(str(body.get("reference_id"))))
        if charge is None:
            raise ApiError(404, "DATA_NOT_FOUND", "no such e-wallet charge")
        if not force and (charge["status"] != "PENDING" or amount != charge["charge_amount"]):
            raise ApiError(400, "INVALID_CHARGE_STATE", "the charge is not payable")
        charge.update(status="SUCCEEDED", capture_amount=amount, updated=iso(_now()),
                      currency=currency)
        self._record_payment(product_id=charge["id"], reference_id=charge["reference_id"],
                             category="EWALLET", channel_code=charge["channel_code"],
                             amount=amount, account=None, currency=currency)
        event = _wallet_event(charge)
        self._notify("ewallet.capture", self.callback_url, event)
        return event

    # -- refunds (control plane) -----------------------------------------------------------

    def refund(self, body: dict[str, Any]) -> dict[str, Any]:
        """The merchant refunds part or all of a paid e-wallet charge (in Xendit's dashboard,
        say, outside Lunas): ``{"id" | "reference_id", "amount", "notify"?, "at"?,
        "show_refunded_amount"?}``.

        The charge's ``refunded_amount`` (RAILS.md §2.4) becomes the running total, so status
        reads see it; it turns ``REFUNDED`` once all of the capture went back and stays
        ``SUCCEEDED`` before (Xendit documents neither: the simulator's assumption). With
        ``notify: true`` a ``refund.succeeded`` callback follows, shaped as Xendit's Refund API
        documents it (XDOC ``apidocs/refund-webhook-notification.md``); which id of a legacy
        charge its ``payment_id`` carries is not documented, so the simulator puts the charge's
        ``ewc_`` id there. Legacy VAs and QR codes have no refund in the simulator.

        ``at`` (ISO 8601, default now) is when the refund happened, for a refund made days
        after the payment: the charge's ``updated`` and the refund's stamps carry it.
        ``show_refunded_amount: false`` is a fault: the charge's ``refunded_amount`` reads
        ``null`` however much went back (a charge that says REFUNDED without saying how much)."""
        charge = self._succeeded_charge(body, "refunded", code="INVALID_CHARGE_STATE")
        so_far = int(charge.get("refunded_amount") or 0)
        amount = _amount(body.get("amount"), (1, int(charge["capture_amount"]) - so_far))
        stamp = iso(datetime.fromisoformat(str(body["at"]))) if body.get("at") else iso(_now())
        total = so_far + amount
        charge.update(refunded_amount=total, updated=stamp,
                      status="REFUNDED" if total == charge["capture_amount"] else "SUCCEEDED")
        if body.get("show_refunded_amount") is False:
            charge["refunded_amount"] = None
        refund = {
            "id": f"rfd-{uuid.uuid4()}", "payment_request_id": None,
            "payment_id": charge["id"], "invoice_id": None, "payment_method_type": "EWALLET",
            "reference_id": str(body.get("refund_reference") or f"refund-{uuid.uuid4()}"),
            "channel_code": charge["channel_code"], "currency": charge["currency"],
            "amount": amount, "status": "SUCCEEDED", "reason": "REQUESTED_BY_CUSTOMER",
            "failure_code": None, "refund_fee_amount": None, "metadata": None,
            "created": stamp, "updated": stamp,
        }
        if body.get("notify"):
            self._notify("refund.succeeded", self.callback_url, {
                "event": "refund.succeeded", "business_id": OWNER_ID, "created": stamp,
                "data": refund})
        return {"refund": refund, "charge": copy.deepcopy(charge)}

    def void_paid(self, body: dict[str, Any]) -> dict[str, Any]:
        """The merchant voids a paid e-wallet charge the same day (in Xendit's dashboard, say,
        outside Lunas): ``{"id" | "reference_id", "notify"?}``. All of it goes back (Xendit
        voids only a SUCCEEDED charge, for its full value: e-wallet "Void and Refund"). With
        ``notify: true`` an ``ewallet.void`` callback follows, its ``data`` the charge, as
        ``ewallet.capture``'s is (the event name is what integrations in the wild handle; its
        exact shape is not in RAILS.md)."""
        charge = self._succeeded_charge(body, "voided here", code="API_VALIDATION_ERROR")
        voided = self.void_charge(str(charge["id"]))
        if body.get("notify"):
            self._notify("ewallet.void", self.callback_url, {
                "event": "ewallet.void", "business_id": OWNER_ID, "created": voided["updated"],
                "data": copy.deepcopy(voided)})
        return copy.deepcopy(voided)

    def _succeeded_charge(self, body: dict[str, Any], verb: str, *,
                          code: str) -> dict[str, Any]:
        """The paid charge a dashboard action names (``id`` or ``reference_id``)."""
        charge = (self.store.charges.get(str(body.get("id"))) or
                  self.store.charge_by_reference(str(body.get("reference_id"))))
        if charge is None:
            raise ApiError(404, "DATA_NOT_FOUND", "no such e-wallet charge")
        if charge["status"] != "SUCCEEDED":
            raise ApiError(400, code, f"a {charge['status']} charge cannot be {verb}")
        return charge

    # -- callbacks -------------------------------------------------------------------------

    def _notify(self, event: str, url: str | None, body: dict[str, Any]) -> None:
        if self.drop_callbacks:
            self.dropped_callbacks += 1
            return
        self.spawn(self._deliver(event, url, copy.deepcopy(body)))

    async def _deliver(self, event: str, url: str | None, body: dict[str, Any]) -> None:
        """First attempt now, then retries at the scaled offsets until one answers 2xx."""
        loop = asyncio.get_running_loop()
        first = loop.time()
        for attempt, offset in enumerate((0, *CALLBACK_RETRY_OFFSETS_S)):
            delay = first + offset * self.retry_scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if await self._attempt(event, url, body, attempt, loop.time() - first):
                return

    async def _attempt(self, event: str, url: str | None, body: dict[str, Any],
                       attempt: int, elapsed_s: float) -> bool:
        record: dict[str, Any] = {"event": event, "url": url, "attempt": attempt,
                                  "at": iso(_now()), "elapsed_s": round(elapsed_s, 6),
                                  "status": None, "error": None, "body": body}
        self.callbacks.append(record)
        if not url or self._client is None:
            record["error"] = "no callback URL configured"
            return False
        try:
            answer = await self._client.post(url, json=body,
                                             headers={"x-callback-token": self.callback_token})
        except httpx.HTTPError as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            return False
        record["status"] = answer.status_code
        return answer.is_success

    # -- fault control ---------------------------------------------------------------------

    async def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)
        if fault.kind is FaultKind.DOWN:
            self._release_hangs()
            await self._data.stop()
            if fault.until is not None:
                self.spawn(self._revive_at(fault.until))

    async def clear_faults(self, channel: str | None) -> None:
        self.faults.clear(channel)
        if not self.faults.is_down() and not self._data.listening:
            await self._data.start()

    async def _revive_at(self, until: float) -> None:
        await asyncio.sleep(max(until - time.monotonic(), 0) + 0.01)
        if not self.faults.is_down() and not self._data.listening:
            await self._data.start()

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("callback_url", "callback_token", "secret_key"):
            if name in body:
                setattr(self, name, body[name])
        if "retry_scale" in body:
            self.retry_scale = float(body["retry_scale"])
        if "va_reusable" in body:
            self.va_reusable = bool(body["va_reusable"])
        if "ewallet_idempotency" in body:
            self.ewallet_idempotency = bool(body["ewallet_idempotency"])
        if "drop_callbacks" in body:
            self.drop_callbacks = bool(body["drop_callbacks"])
        if "transactions_lag_s" in body:
            self.transactions_lag_s = max(float(body["transactions_lag_s"] or 0.0), 0.0)
        if "rate_limit_per_minute" in body:
            limit = body["rate_limit_per_minute"]
            self.limiter.reset(None if limit is None else int(limit))
        return self.config()

    def config(self) -> dict[str, Any]:
        return {"callback_url": self.callback_url, "retry_scale": self.retry_scale,
                "rate_limit_per_minute": self.limiter.per_minute,
                "va_reusable": self.va_reusable,
                "ewallet_idempotency": self.ewallet_idempotency,
                "transactions_lag_s": self.transactions_lag_s,
                "drop_callbacks": self.drop_callbacks}

    def resources(self, reference: str | None) -> dict[str, list[dict[str, Any]]]:
        def wanted(obj: dict[str, Any], key: str) -> bool:
            return reference is None or obj[key] == reference
        return {
            "virtual_accounts": [v for v in self.store.vas.values() if wanted(v, "external_id")],
            "qr_codes": [q for q in self.store.qrs.values() if wanted(q, "external_id")],
            "ewallet_charges": [c for c in self.store.charges.values()
                                if wanted(c, "reference_id")],
        }


def _check_channel_properties(channel_code: str, props: Any) -> None:
    if channel_code not in EWALLET_CODES:
        raise ApiError(400, "API_VALIDATION_ERROR", f"channel_code {channel_code!r} not supported")
    if not isinstance(props, dict):
        raise ApiError(400, "API_VALIDATION_ERROR", "channel_properties must be an object")
    if channel_code == "ID_OVO" and not OVO_MOBILE.match(str(props.get("mobile_number", ""))):
        raise ApiError(400, "API_VALIDATION_ERROR",
                       "ID_OVO needs channel_properties.mobile_number as +62…")
    if channel_code in REDIRECT_WALLETS and not props.get("success_redirect_url"):
        raise ApiError(400, "API_VALIDATION_ERROR",
                       f"{channel_code} needs channel_properties.success_redirect_url")


def _wallet_actions(channel_code: str, charge_id: str) -> dict[str, str | None]:
    """OVO pushes to the customer's app (no URL); the others redirect or deep-link."""
    wallet = _wallet_channel(channel_code)
    actions: dict[str, str | None] = {
        "desktop_web_checkout_url": None, "mobile_web_checkout_url": None,
        "mobile_deeplink_checkout_url": None, "qr_checkout_string": None,
    }
    if channel_code in ("ID_DANA", "ID_LINKAJA"):
        actions["desktop_web_checkout_url"] = f"{CHECKOUT_BASE}/{wallet}/web/{charge_id}"
        actions["mobile_web_checkout_url"] = f"{CHECKOUT_BASE}/{wallet}/mobile/{charge_id}"
    elif channel_code == "ID_SHOPEEPAY":
        actions["mobile_deeplink_checkout_url"] = f"{CHECKOUT_BASE}/shopeepay/app/{charge_id}"
        actions["qr_checkout_string"] = f"SHOPEEPAY-SIM-{charge_id}"
    return actions


def _va_payment(va: dict[str, Any], amount: int) -> dict[str, Any]:
    """The flat VA paid callback body (RAILS.md §2.2): arrival itself means paid."""
    stamp = iso(_now())
    return {
        "id": secrets.token_hex(12), "payment_id": str(uuid.uuid4()),
        "callback_virtual_account_id": va["id"], "owner_id": OWNER_ID,
        "external_id": va["external_id"], "account_number": va["account_number"],
        "bank_code": va["bank_code"], "merchant_code": va["merchant_code"], "amount": amount,
        "transaction_timestamp": stamp, "currency": "IDR", "country": "ID",
        "sender_name": "BUDI SANTOSO", "created": stamp, "updated": stamp,
    }


def _qr_event(qr: dict[str, Any], amount: int) -> dict[str, Any]:
    return {
        "event": "qr.payment", "id": f"qrpy_{uuid.uuid4()}", "amount": amount,
        "created": iso(_now()), "status": "COMPLETED",
        "qr_code": {"id": qr["id"], "external_id": qr["external_id"],
                    "qr_string": qr["qr_string"], "type": qr["type"]},
        "payment_details": {"source": "BNI", "receipt_id": secrets.token_hex(6)},
    }


def _wallet_event(charge: dict[str, Any]) -> dict[str, Any]:
    return {"event": "ewallet.capture", "business_id": OWNER_ID, "created": iso(_now()),
            "data": copy.deepcopy(charge)}


# -- HTTP wiring ---------------------------------------------------------------------------

async def _json(request: Request[Any, Any, Any]) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` when it is not one (answered 400 by the work)."""
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _require(body: dict[str, Any] | None) -> dict[str, Any]:
    if body is None:
        raise ApiError(400, "API_VALIDATION_ERROR", "the body must be a JSON object")
    return body


def _filters(request: Request[Any, Any, Any]) -> dict[str, list[str]]:
    """Query filters; Xendit takes repeated keys, the simulator also comma-separated values."""
    names = ("reference_id", "product_id", "types", "statuses", "channel_categories")
    return {name: [part for value in request.query_params.getall(name, [])
                   for part in str(value).split(",") if part] for name in names}


def data_routes(sim: XenditSim) -> list[HTTPRouteHandler]:
    """The Xendit-shaped API. Each handler names its channel and operation for the fault book."""

    @post("/callback_virtual_accounts", status_code=200)
    async def create_va(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await _json(request)
        channel = str((body or {}).get("bank_code", "unknown")).lower()
        key = request.headers.get("x-idempotency-key")
        return await sim.serve(request, "POST /callback_virtual_accounts", channel, "create",
                               lambda: (200, sim.idempotent("va", key, _require(body),
                                                            lambda: sim.create_va(body or {}))))

    @get("/callback_virtual_accounts/{va_id:str}")
    async def read_va(request: Request[Any, Any, Any], va_id: FromPath[str]) -> Response[Any]:
        return await sim.serve(request, "GET /callback_virtual_accounts/{id}",
                               _va_channel(sim, va_id), "status", lambda: (200, sim.va(va_id)))

    @patch("/callback_virtual_accounts/{va_id:str}")
    async def update_va(request: Request[Any, Any, Any], va_id: FromPath[str]) -> Response[Any]:
        body = await _json(request)
        return await sim.serve(request, "PATCH /callback_virtual_accounts/{id}",
                               _va_channel(sim, va_id), "cancel",
                               lambda: (200, sim.update_va(va_id, _require(body))))

    @get("/callback_virtual_account_payments/{segment:str}")
    async def read_va_payment(request: Request[Any, Any, Any],
                              segment: FromPath[str]) -> Response[Any]:
        payment = sim.store.va_payments.get(segment.removeprefix("payment_id="), {})
        channel = str(payment.get("bank_code", "unknown")).lower()
        return await sim.serve(request, "GET /callback_virtual_account_payments", channel,
                               "status", lambda: (200, sim.va_payment(segment)))

    @post("/qr_codes", status_code=200)
    async def create_qr(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await _json(request)
        key = request.headers.get("x-idempotency-key")
        return await sim.serve(request, "POST /qr_codes", "qris", "create",
                               lambda: (201, sim.idempotent("qr", key, _require(body),
                                                            lambda: sim.create_qr(body or {}))))

    @get("/qr_codes/{external_id:str}")
    async def read_qr(request: Request[Any, Any, Any],
                      external_id: FromPath[str]) -> Response[Any]:
        return await sim.serve(request, "GET /qr_codes/{external_id}", "qris", "status",
                               lambda: (200, sim.qr(external_id)))

    @post("/ewallets/charges", status_code=200)
    async def create_charge(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await _json(request)
        code = str((body or {}).get("channel_code", ""))
        channel = _wallet_channel(code) if code in EWALLET_CODES else "unknown"
        key = request.headers.get("x-idempotency-key") if sim.ewallet_idempotency else None
        return await sim.serve(request, "POST /ewallets/charges", channel, "create",
                               lambda: (202, sim.idempotent("ewallet", key, _require(body),
                                                            lambda: sim.create_charge(body or {}))))

    @get("/ewallets/charges/{charge_id:str}")
    async def read_charge(request: Request[Any, Any, Any],
                          charge_id: FromPath[str]) -> Response[Any]:
        return await sim.serve(request, "GET /ewallets/charges/{id}",
                               _charge_channel(sim, charge_id), "status",
                               lambda: (200, sim.charge(charge_id)))

    @post("/ewallets/charges/{charge_id:str}/void", status_code=200)
    async def void_charge(request: Request[Any, Any, Any],
                          charge_id: FromPath[str]) -> Response[Any]:
        return await sim.serve(request, "POST /ewallets/charges/{id}/void",
                               _charge_channel(sim, charge_id), "cancel",
                               lambda: (200, sim.void_charge(charge_id)))

    @get("/transactions")
    async def list_transactions(request: Request[Any, Any, Any]) -> Response[Any]:
        filters = _filters(request)
        channel = next((sim.store.channel_of_reference(r) for r in filters["reference_id"]),
                       "unknown")
        limit = int(request.query_params.get("limit", 10))
        return await sim.serve(request, "GET /transactions", channel, "status",
                               lambda: (200, sim.transactions(filters, limit)))

    return [create_va, read_va, update_va, read_va_payment, create_qr, read_qr, create_charge,
            read_charge, void_charge, list_transactions]


def _va_channel(sim: XenditSim, va_id: str) -> str:
    va = sim.store.vas.get(va_id)
    return str(va["bank_code"]).lower() if va else "unknown"


def _charge_channel(sim: XenditSim, charge_id: str) -> str:
    charge = sim.store.charges.get(charge_id)
    return _wallet_channel(charge["channel_code"]) if charge else "unknown"


async def _control(work: Callable[[], Awaitable[Any]]) -> Response[Any]:
    """Control answers: the result as JSON, or the error it raised as a Xendit-style body."""
    try:
        return Response(await work(), status_code=200)
    except ApiError as exc:
        return exc.response()
    except (KeyError, TypeError, ValueError) as exc:
        return ApiError(400, "API_VALIDATION_ERROR", str(exc)).response()


def control_routes(sim: XenditSim) -> list[HTTPRouteHandler]:
    """Fault injection, customer payments, configuration and the callback log."""


    @post("/pay", status_code=200)
    async def pay(request: Request[Any, Any, Any]) -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.pay(_require(await _json(request)))
        return await _control(work)

    @post("/refund", status_code=200)
    async def refund(request: Request[Any, Any, Any]) -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.refund(_require(await _json(request)))
        return await _control(work)

    @post("/void", status_code=200)
    async def void(request: Request[Any, Any, Any]) -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.void_paid(_require(await _json(request)))
        return await _control(work)

    return [*fault_routes(sim), pay, refund, void,
            *_config_routes(sim)]


def _config_routes(sim: XenditSim) -> list[HTTPRouteHandler]:
    @post("/config", status_code=200)
    async def configure(request: Request[Any, Any, Any]) -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.configure(_require(await _json(request)))
        return await _control(work)

    @get("/config")
    async def config() -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.config()
        return await _control(work)

    @get("/callbacks")
    async def callbacks() -> Response[Any]:
        async def work() -> list[dict[str, Any]]:
            return sim.callbacks
        return await _control(work)

    @delete("/callbacks", status_code=200)
    async def clear_callbacks() -> Response[Any]:
        async def work() -> dict[str, Any]:
            sim.callbacks.clear()
            return {}
        return await _control(work)

    @get("/resources")
    async def resources(request: Request[Any, Any, Any]) -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.resources(request.query_params.get("reference"))
        return await _control(work)

    return [configure, config, callbacks, clear_callbacks, resources]
