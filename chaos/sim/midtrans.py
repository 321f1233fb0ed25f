"""Midtrans Core API simulator: charge/status/cancel/expire (RAILS.md §1), faults, notifications.

Data plane (``data_app``, the provider's API):

* ``POST /v2/charge`` for ``bank_transfer`` (bca, bni, bri, permata), ``permata``, ``echannel``
  (Mandiri bill), ``qris`` (a real dynamic QRIS string from ``rails.qris.build_dynamic``),
  ``gopay`` and ``shopeepay``. Basic auth with the server key (401 otherwise); a reused order id
  is refused with 406 unless its charge was cancelled (RAILS.md §1.7).
* ``GET /v2/{id}/status`` (order id or transaction id), ``POST /v2/{id}/cancel`` and ``/expire``.
* Money in answers is a string with ``.00``; times are ``YYYY-MM-DD HH:MM:SS`` in GMT+7.
* Every request asks the ``FaultBook`` first, before authentication, so every call is counted
  (channel: bca, bni, bri, permata, mandiri, qris, gopay, shopeepay, or ``unknown`` for a
  request naming none; operation: create, status, cancel, expire). A fault that fires before
  the work (errors, hang, slow) creates nothing; ``timeout_after_success`` does the work first.

Control plane (``control_app``): ``POST/GET/DELETE /faults``, ``GET/DELETE /calls``,
``GET /calls/log``, ``POST /pay``, ``POST /expire``, ``POST /answer`` (odd fields in answers),
``GET /transactions/{order_id}``, ``POST /config``, ``GET/DELETE /notifications``.
A ``down`` fault stops the data server (connection refused); clearing it starts it again.

Notifications go to the configured URL, or the ``X-Override-Notification`` URLs given at charge
time (``X-Append-Notification`` adds to the configured one; override wins), signed as RAILS.md
§1.5 says, and are retried per §1.5 with the real intervals multiplied by ``retry_scale``.

Simulator assumptions where RAILS.md is silent (tagged [?] there): HTTP 200 carries successful
answers; natural errors use the same HTTP status as their body ``status_code`` unless
``errors_in_body`` is configured; expired charges answer status ``407``, denied ``202``;
default expiry is 24 h for VAs, 15 min for QRIS and GoPay, 5 min for ShopeePay; a 429 carries
``Retry-After: 1`` (or the ``rate_limit`` fault's ``retry_after_s``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import re
import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from litestar import Litestar, Request, Response, delete, get, post
from litestar.exceptions import SerializationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery

from chaos.sim.control import call_routes
from chaos.sim.faults import Fault, FaultBook, FaultKind
from chaos.sim.server import SwitchableServer
from orchestrator.rails import qris
from orchestrator.tls import default_trust

WIB = timezone(timedelta(hours=7))
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
BILLER_CODE = "70012"
VA_BANKS = ("bca", "bni", "bri", "permata")
_VA_LENGTH = {"bca": 11, "bni": 16, "bri": 18, "permata": 16}
_CHANNEL_OF_TYPE = {"permata": "permata", "echannel": "mandiri", "qris": "qris",
                    "gopay": "gopay", "shopeepay": "shopeepay"}
_DEFAULT_EXPIRY = {"qris": timedelta(minutes=15), "gopay": timedelta(minutes=15),
                   "shopeepay": timedelta(minutes=5)}  # VAs and Mandiri bill: 24 h
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_ORDER_ID = re.compile(r"[A-Za-z0-9\-_.~]{1,50}")
_STATUS_CODE = {"pending": "201", "settlement": "200", "capture": "200", "cancel": "200",
                "expire": "407", "deny": "202", "refund": "200", "partial_refund": "200"}
_MESSAGES = {
    400: "One or more parameters in the payload is invalid.",
    401: "Access denied due to unauthorized transaction, please check client or server key",
    402: "Payment channel is not activated.",
    404: "Transaction doesn't exist.",
    406: "The request could not be processed due to order_id has been paid and utilized",
    407: "Transaction has expired",
    412: "Merchant cannot modify the status of the transaction",
    429: "Too many requests, please try again later",
    500: "Sorry, we encountered internal server error. We will fix this soon.",
    501: "The feature is not available",
    502: "Bank Connection Problem",
    503: "Bank/partner is experiencing connection issue",
    504: "Fraud detection is unavailable",
    505: "Requested payment reference is not available",
}
# RAILS.md §1.5: ≈2 m, 10 m, 30 m, 90 m, 210 m between notification attempts (real seconds).
RETRY_INTERVALS_S = (120.0, 600.0, 1800.0, 5400.0, 12600.0)


def retries_allowed(http_status: int | None) -> int:
    """How many retries Midtrans grants after a receiver answers ``http_status`` (None: no
    answer at all, a timeout or refused connection, which counts as "other")."""
    if http_status == 500:
        return 1
    if http_status == 503:
        return 4
    if http_status in (400, 404):
        return 2
    if http_status in (301, 302, 303):
        return 0
    return 5


def money(amount: int) -> str:
    return f"{amount}.00"


def wib(moment: datetime) -> str:
    return moment.astimezone(WIB).strftime(TIME_FORMAT)


def sign(order_id: str, status_code: str, gross_amount: str, server_key: str) -> str:
    return hashlib.sha512(f"{order_id}{status_code}{gross_amount}{server_key}".encode()).hexdigest()


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class SimError(Exception):
    """A Midtrans-shaped refusal: ``code`` is both the body's status_code and the HTTP status."""

    def __init__(self, code: int, message: str | None = None,
                 validation: list[str] | None = None) -> None:
        super().__init__(message or _MESSAGES.get(code, "Error"))
        self.code, self.message, self.validation = code, str(self), validation or []


def error_body(code: int, message: str | None = None,
               validation: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status_code": str(code),
                            "status_message": message or _MESSAGES.get(code, "Error"),
                            "id": str(uuid.uuid4())}
    if validation:
        body["validation_messages"] = validation
    return body


@dataclass(kw_only=True)
class SimTransaction:
    """One charge as the simulator remembers it."""

    order_id: str
    transaction_id: str
    channel: str
    payment_type: str
    gross_amount: int
    transaction_time: datetime
    expiry_time: datetime
    transaction_status: str = "pending"
    fraud_status: str = "accept"
    settlement_time: datetime | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # rail fields, in every answer
    actions: list[dict[str, str]] = field(default_factory=list)  # charge answer only
    qr_string: str | None = None
    override_urls: tuple[str, ...] = ()
    append_urls: tuple[str, ...] = ()
    answer_as: dict[str, Any] = field(default_factory=dict)  # odd fields (control /answer)

    @property
    def status_code(self) -> str:
        return _STATUS_CODE.get(self.transaction_status, "200")

    def expire_if_due(self, now: datetime) -> bool:
        if self.transaction_status == "pending" and now >= self.expiry_time:
            self.transaction_status = "expire"
            return True
        return False

    def wire(self, *, merchant_id: str, server_key: str, message: str) -> dict[str, Any]:
        """The status/notification shape (RAILS.md §1.4, §1.5), signature included."""
        gross = money(self.gross_amount)
        body: dict[str, Any] = {
            "status_code": self.status_code, "status_message": message,
            "transaction_id": self.transaction_id, "order_id": self.order_id,
            "merchant_id": merchant_id, "gross_amount": gross, "currency": "IDR",
            "payment_type": self.payment_type, "transaction_time": wib(self.transaction_time),
            "transaction_status": self.transaction_status, "fraud_status": self.fraud_status,
            "expiry_time": wib(self.expiry_time),
            "signature_key": sign(self.order_id, self.status_code, gross, server_key),
            **self.fields,
        }
        if self.settlement_time is not None:
            body["settlement_time"] = wib(self.settlement_time)
        return {**body, **self.answer_as}


@dataclass(kw_only=True)
class SimConfig:
    """Behaviour the control plane can change at run time (``POST /config``)."""

    notification_url: str | None = None
    disabled_channels: frozenset[str] = frozenset()  # charges answered 402
    errors_in_body: bool = False  # natural errors as HTTP 200 + body status_code
    corrupt_qr: bool = False  # QRIS answers carry a QR whose CRC does not verify
    drop_notifications: bool = False  # the notification system is down: nothing is ever sent

    def update(self, body: Mapping[str, Any]) -> None:
        unknown = set(body) - {"notification_url", "disabled_channels", "errors_in_body",
                               "corrupt_qr", "drop_notifications"}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        if "notification_url" in body:
            self.notification_url = body["notification_url"] or None
        if "disabled_channels" in body:
            self.disabled_channels = frozenset(body["disabled_channels"] or ())
        self.errors_in_body = bool(body.get("errors_in_body", self.errors_in_body))
        self.corrupt_qr = bool(body.get("corrupt_qr", self.corrupt_qr))
        self.drop_notifications = bool(body.get("drop_notifications", self.drop_notifications))


# ---------------------------------------------------------------------------------------------
# Charge requests → transactions.


def channel_of(body: Mapping[str, Any]) -> str:
    payment_type = body.get("payment_type")
    if payment_type == "bank_transfer":
        bank = _obj(body.get("bank_transfer")).get("bank")
        return bank if isinstance(bank, str) and bank in VA_BANKS else "unknown"
    return _CHANNEL_OF_TYPE.get(payment_type, "unknown") if isinstance(payment_type, str) \
        else "unknown"


def _order(body: Mapping[str, Any]) -> tuple[str, int]:
    details = _obj(body.get("transaction_details"))
    order_id, amount = details.get("order_id"), details.get("gross_amount")
    problems = []
    if not isinstance(order_id, str) or not _ORDER_ID.fullmatch(order_id):
        problems.append("transaction_details.order_id is required (1-50 of A-Z a-z 0-9 - _ . ~)")
    if isinstance(amount, float) and amount.is_integer():
        amount = int(amount)
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
        problems.append("transaction_details.gross_amount must be a positive whole number")
    if problems:
        raise SimError(400, validation=problems)
    assert isinstance(order_id, str) and isinstance(amount, int)
    return order_id, amount


def _expiry(body: Mapping[str, Any], now: datetime, channel: str) -> datetime:
    custom = body.get("custom_expiry")
    if custom is None:
        return now + _DEFAULT_EXPIRY.get(channel, timedelta(hours=24))
    custom = _obj(custom)
    duration, unit = custom.get("expiry_duration"), custom.get("unit", "minute")
    if not isinstance(duration, int) or unit not in _UNIT_SECONDS:
        raise SimError(400, validation=["custom_expiry needs expiry_duration and a valid unit"])
    start = now
    if custom.get("order_time") is not None:
        try:
            start = datetime.strptime(str(custom["order_time"]), TIME_FORMAT + " %z")
        except ValueError:
            raise SimError(400, validation=["custom_expiry.order_time is malformed"]) from None
    seconds = duration * _UNIT_SECONDS[unit]
    if not 20 <= seconds <= 180 * 86400:
        raise SimError(400, validation=["custom_expiry must be between 20 s and 180 days"])
    return start + timedelta(seconds=seconds)


@dataclass(frozen=True, kw_only=True)
class _Channel:
    """What a channel adds to a charge: fields in every answer, plus charge-only ones."""

    fields: dict[str, Any]
    actions: list[dict[str, str]] = field(default_factory=list)
    qr_string: str | None = None
    message: str = "Success, transaction is created"


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _qr_string(order_id: str, amount: int, merchant_id: str, corrupt: bool) -> str:
    qr = qris.build_dynamic(
        merchant_pan="936009140000012345", merchant_id=merchant_id, nmid="ID1020021181745",
        merchant_name="LUNAS SIM MERCHANT", merchant_city="JAKARTA SELATAN",
        postal_code="12190", amount=amount, reference=order_id, acquirer_guid="COM.GO-JEK.WWW",
    )
    if corrupt:  # a wrong CRC: what a truncated or tampered payload looks like to a reader
        qr = qr[:-4] + ("0000" if qr[-4:] != "0000" else "FFFF")
    return qr


def _channel(channel: str, *, order_id: str, txid: str, amount: int, base_url: str,
             merchant_id: str, rng: random.Random, corrupt_qr: bool) -> _Channel:
    if channel in ("bca", "bni", "bri"):
        number = _digits(rng, _VA_LENGTH[channel])
        return _Channel(fields={"va_numbers": [{"bank": channel, "va_number": number}]},
                        message="Success, Bank Transfer transaction is created")
    if channel == "permata":
        return _Channel(fields={"permata_va_number": _digits(rng, _VA_LENGTH["permata"])},
                        message="Success, PERMATA VA transaction is successful")
    if channel == "mandiri":
        return _Channel(fields={"bill_key": _digits(rng, 12), "biller_code": BILLER_CODE},
                        message="OK, Mandiri Bill transaction is successful")
    qr_action = {"name": "generate-qr-code", "method": "GET",
                 "url": f"{base_url}/v2/qris/{txid}/qr-code"}
    if channel == "qris":
        return _Channel(fields={"acquirer": "gopay"}, actions=[qr_action],
                        qr_string=_qr_string(order_id, amount, merchant_id, corrupt_qr),
                        message="Success, QRIS transaction is created")
    if channel == "gopay":
        deeplink = f"gojek://gopay/merchanttransfer?tref={txid}&amount={amount}&activity=GP:RR"
        return _Channel(fields={}, message="GoPay transaction is created", actions=[
            qr_action,
            {"name": "deeplink-redirect", "method": "GET", "url": deeplink},
            {"name": "get-status", "method": "GET", "url": f"{base_url}/v2/{txid}/status"},
            {"name": "cancel", "method": "POST", "url": f"{base_url}/v2/{txid}/cancel"},
        ])
    deeplink = f"https://wsa.uat.wallet.airpay.co.id/universal-link/wallet/pay?token={txid}"
    return _Channel(fields={}, message="ShopeePay transaction is created",
                    actions=[{"name": "deeplink-redirect", "method": "GET", "url": deeplink}])


def _urls(header: str | None) -> tuple[str, ...]:
    """Comma-separated notification URLs from a header; Midtrans honours at most three."""
    return tuple(u.strip() for u in (header or "").split(",") if u.strip())[:3]


# ---------------------------------------------------------------------------------------------
# Notifications.


@dataclass(frozen=True, kw_only=True)
class DeliveryAttempt:
    order_id: str
    url: str
    attempt: int  # 1 is the first send
    transaction_status: str
    http_status: int | None
    error: str | None
    sent_at: float  # time.time()

    def as_json(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "url": self.url, "attempt": self.attempt,
                "transaction_status": self.transaction_status,
                "http_status": self.http_status, "error": self.error, "sent_at": self.sent_at}


class NotificationSender:
    """Delivers notifications in background tasks, retrying as Midtrans does (scaled)."""

    def __init__(self, *, retry_scale: float, timeout_s: float, rng: random.Random) -> None:
        self.retry_scale, self.timeout_s, self.rng = retry_scale, timeout_s, rng
        self.attempts: list[DeliveryAttempt] = []
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=default_trust(),
                                             timeout=self.timeout_s, follow_redirects=False)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def send(self, url: str, body: dict[str, Any]) -> None:
        task = asyncio.create_task(self._deliver(url, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def interval(self, retry_index: int) -> float:
        jitter = self.rng.uniform(0.9, 1.1)
        return RETRY_INTERVALS_S[retry_index] * self.retry_scale * jitter

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        for attempt in range(len(RETRY_INTERVALS_S) + 1):
            http_status, error = await self._post(url, body)
            self.attempts.append(DeliveryAttempt(
                order_id=body["order_id"], url=url, attempt=attempt + 1,
                transaction_status=body["transaction_status"], http_status=http_status,
                error=error, sent_at=time.time()))
            if http_status is not None and 200 <= http_status < 300:
                return
            if attempt >= retries_allowed(http_status):
                return
            await asyncio.sleep(self.interval(attempt))

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[int | None, str | None]:
        """One delivery, following 307/308 (at most five hops) as Midtrans does."""
        assert self._client is not None, "NotificationSender.open() first"
        headers = {"User-Agent": "Veritrans", "Accept": "application/json"}
        for _ in range(6):
            try:
                response = await self._client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                return None, type(exc).__name__
            if response.status_code not in (307, 308) or "location" not in response.headers:
                return response.status_code, None
            url = str(response.url.join(response.headers["location"]))
        return response.status_code, "too many redirects"


# ---------------------------------------------------------------------------------------------
# The simulator.


@dataclass(frozen=True)
class _Admission:
    """The fault verdict for one data-plane request."""

    response: Response[Any] | None = None  # answer this instead of doing the work
    hang_after: bool = False  # do the work, then never answer


class MidtransSim:
    """A Midtrans Core API on ``data_url`` and its control API on ``control_url``."""

    def __init__(self, *, server_key: str = "SB-Mid-server-lunas-sim", data_port: int = 0,
                 control_port: int = 0, host: str = "127.0.0.1",
                 merchant_id: str = "G000111222", retry_scale: float = 1 / 60_000,
                 notification_timeout_s: float = 15.0, hang_s: float = 60.0,
                 notify_on_create: bool = True, faults: FaultBook | None = None,
                 seed: int | None = None) -> None:
        self.server_key, self.merchant_id = server_key, merchant_id
        self.faults = faults or FaultBook()
        self.config = SimConfig()
        self.hang_s, self.notify_on_create = hang_s, notify_on_create
        self.dropped_notifications = 0
        self.rng = random.Random(seed)
        self.transactions: dict[str, SimTransaction] = {}
        self._by_txid: dict[str, SimTransaction] = {}
        self.notifier = NotificationSender(retry_scale=retry_scale,
                                           timeout_s=notification_timeout_s, rng=self.rng)
        self.data_app = Litestar(route_handlers=self._data_routes(), openapi_config=None)
        self.control_app = Litestar(route_handlers=self._control_routes(), openapi_config=None)
        self.data_server = SwitchableServer(self.data_app, host, data_port)
        self.control_server = SwitchableServer(self.control_app, host, control_port)
        self._closing = asyncio.Event()
        self._down_lock = asyncio.Lock()
        self._timers: set[asyncio.Task[None]] = set()

    @property
    def data_url(self) -> str:
        return self.data_server.url

    @property
    def control_url(self) -> str:
        return self.control_server.url

    async def start(self) -> None:
        self._closing.clear()
        self.notifier.open()
        await self.control_server.start()
        if not self.faults.is_down():
            await self.data_server.start()

    async def stop(self) -> None:
        self._closing.set()  # releases hanging requests so the servers can shut down
        for timer in list(self._timers):
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        await self.notifier.close()
        await asyncio.gather(self.data_server.close(), self.control_server.close())

    # -- shared pieces -------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(WIB)

    def authorized(self, request: Request[Any, Any, Any]) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            user = base64.b64decode(token, validate=True).decode().partition(":")[0]
        except ValueError:
            return False
        return scheme.lower() == "basic" and hmac.compare_digest(user.encode(),
                                                                 self.server_key.encode())

    def error(self, code: int, message: str | None = None,
              validation: list[str] | None = None) -> Response[Any]:
        """A natural (not injected) Midtrans error, in the configured style."""
        http = 200 if self.config.errors_in_body else code
        return Response(error_body(code, message, validation), status_code=http)

    def lookup(self, ref: str) -> SimTransaction | None:
        return self.transactions.get(ref) or self._by_txid.get(ref)

    def status_body(self, txn: SimTransaction, message: str | None = None) -> dict[str, Any]:
        return txn.wire(merchant_id=self.merchant_id, server_key=self.server_key,
                        message=message or "Success, transaction is found")

    def notify(self, txn: SimTransaction) -> None:
        if self.config.drop_notifications:
            self.dropped_notifications += 1
            return
        body = txn.wire(merchant_id=self.merchant_id, server_key=self.server_key,
                        message="midtrans payment notification")
        configured = (self.config.notification_url,) if self.config.notification_url else ()
        urls = txn.override_urls or (configured + txn.append_urls)
        for url in urls:
            self.notifier.send(url, body)

    def expire_if_due(self, txn: SimTransaction) -> None:
        if txn.expire_if_due(self.now()):
            self.notify(txn)

    # -- faults --------------------------------------------------------------------------------

    async def admit(self, request: Request[Any, Any, Any], channel: str,
                    operation: str) -> _Admission:
        decision = self.faults.decide(channel, operation)
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        fault = decision.fault
        if fault is None:
            return _Admission()
        if fault.kind is FaultKind.TIMEOUT_AFTER_SUCCESS:
            return _Admission(hang_after=True)
        if fault.kind is FaultKind.HANG:
            await self.hang(request)
            return _Admission(response=Response(error_body(504), status_code=504))
        return _Admission(response=self.injected(fault))

    def injected(self, fault: Fault) -> Response[Any]:
        if fault.kind is FaultKind.BODY_ERROR:
            return Response(error_body(fault.status), status_code=200)
        if fault.kind is FaultKind.RATE_LIMIT:
            wait = fault.retry_after_s if fault.retry_after_s is not None else 1
            return Response(error_body(429), status_code=429,
                            headers={"Retry-After": f"{wait:g}"})
        if fault.kind is FaultKind.MAINTENANCE:
            return Response(error_body(503), status_code=503)
        return Response(error_body(fault.status), status_code=fault.status)

    async def hang(self, request: Request[Any, Any, Any]) -> None:
        """Hold the request without answering until the client gives up, the simulator stops,
        or ``hang_s`` passes: a provider that accepted the connection and went silent."""

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        waiters = [asyncio.ensure_future(disconnected()),
                   asyncio.ensure_future(self._closing.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.hang_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def set_down(self) -> None:
        """Make the data server's state follow the fault book's ``down`` faults."""
        async with self._down_lock:
            if self.faults.is_down() and self.data_server.listening:
                await self.data_server.stop()
            elif not self.faults.is_down() and not self.data_server.listening \
                    and not self._closing.is_set():
                await self.data_server.start()

    def recheck_down_at(self, until: float) -> None:
        async def later() -> None:
            await asyncio.sleep(max(0.0, until - time.monotonic()) + 0.01)
            await self.set_down()

        task = asyncio.create_task(later())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    # -- data plane ----------------------------------------------------------------------------

    async def charge(self, request: Request[Any, Any, Any]) -> Response[Any]:
        try:
            body = _obj(await request.json())
        except SerializationException:  # undecodable: no channel, and a 400 once admitted
            body = {}
        admission = await self.admit(request, channel_of(body), "create")
        if admission.response is not None:
            return admission.response
        if not self.authorized(request):
            return self.error(401)
        try:
            txn, created = self.create_transaction(request, body)
        except SimError as exc:
            return self.error(exc.code, exc.message, exc.validation)
        if self.notify_on_create:
            self.notify(txn)
        if admission.hang_after:
            await self.hang(request)
        return Response(created, status_code=200)

    def create_transaction(self, request: Request[Any, Any, Any],
                           body: Mapping[str, Any]) -> tuple[SimTransaction, dict[str, Any]]:
        channel = channel_of(body)
        if channel == "unknown":
            raise SimError(400, validation=["payment_type is not supported"])
        order_id, amount = _order(body)
        if channel in self.config.disabled_channels:
            raise SimError(402)
        existing = self.transactions.get(order_id)
        if existing is not None and existing.transaction_status != "cancel":
            raise SimError(406)
        now = self.now()
        txid = str(uuid.uuid4())
        parts = _channel(channel, order_id=order_id, txid=txid, amount=amount,
                         base_url=self.data_url, merchant_id=self.merchant_id, rng=self.rng,
                         corrupt_qr=self.config.corrupt_qr)
        txn = SimTransaction(
            order_id=order_id, transaction_id=txid, channel=channel,
            payment_type=str(body["payment_type"]), gross_amount=amount, transaction_time=now,
            expiry_time=_expiry(body, now, channel), fields=parts.fields, actions=parts.actions,
            qr_string=parts.qr_string,
            override_urls=_urls(request.headers.get("x-override-notification")),
            append_urls=_urls(request.headers.get("x-append-notification")),
        )
        self.transactions[order_id] = self._by_txid[txid] = txn
        return txn, self.charge_answer(txn, parts.message)

    def charge_answer(self, txn: SimTransaction, message: str) -> dict[str, Any]:
        answer = self.status_body(txn, message)
        del answer["signature_key"]  # only status answers and notifications are signed
        if txn.actions:
            answer["actions"] = txn.actions
        if txn.qr_string is not None:
            answer["qr_string"] = txn.qr_string
        return answer

    async def status(self, request: Request[Any, Any, Any], ref: str) -> Response[Any]:
        txn = self.lookup(ref)
        admission = await self.admit(request, txn.channel if txn else "unknown", "status")
        if admission.response is not None:
            return admission.response
        if not self.authorized(request):
            return self.error(401)
        if txn is None:
            return self.error(404)
        self.expire_if_due(txn)
        body = self.status_body(txn)
        if admission.hang_after:
            await self.hang(request)
        return Response(body, status_code=200)

    async def finish(self, request: Request[Any, Any, Any], ref: str,
                     operation: str) -> Response[Any]:
        """``/cancel`` and ``/expire``: only a pending charge can be moved (else 412)."""
        txn = self.lookup(ref)
        admission = await self.admit(request, txn.channel if txn else "unknown", operation)
        if admission.response is not None:
            return admission.response
        if not self.authorized(request):
            return self.error(401)
        if txn is None:
            return self.error(404)
        self.expire_if_due(txn)
        if txn.transaction_status != "pending":
            return self.error(412 if txn.transaction_status != "expire" else 407)
        txn.transaction_status = "cancel" if operation == "cancel" else "expire"
        self.notify(txn)
        message = ("Success, transaction is canceled" if operation == "cancel"
                   else "Success, transaction has expired")
        body = self.status_body(txn, message)
        if admission.hang_after:
            await self.hang(request)
        return Response(body, status_code=200)

    def _data_routes(self) -> list[HTTPRouteHandler]:
        sim = self

        @post("/v2/charge")
        async def charge(request: Request[Any, Any, Any]) -> Response[Any]:
            return await sim.charge(request)

        @get("/v2/{ref:str}/status")
        async def status(request: Request[Any, Any, Any], ref: FromPath[str]) -> Response[Any]:
            return await sim.status(request, ref)

        @post("/v2/{ref:str}/cancel")
        async def cancel(request: Request[Any, Any, Any], ref: FromPath[str]) -> Response[Any]:
            return await sim.finish(request, ref, "cancel")

        @post("/v2/{ref:str}/expire")
        async def expire(request: Request[Any, Any, Any], ref: FromPath[str]) -> Response[Any]:
            return await sim.finish(request, ref, "expire")

        return [charge, status, cancel, expire]

    # -- control plane -------------------------------------------------------------------------

    def pay(self, order_id: str, amount: int | None) -> Response[Any]:
        """The customer pays. ``amount`` other than the charge's is an anomaly injection: the
        provider then reports that amount as ``gross_amount`` (Midtrans VAs are closed-amount,
        so a real one would not; Lunas must treat it as a discrepancy, not a payment)."""
        txn = self.transactions.get(order_id)
        if txn is None:
            return Response({"error": "no such order_id"}, status_code=404)
        self.expire_if_due(txn)
        if txn.transaction_status != "pending":
            return Response({"error": f"charge is {txn.transaction_status}"}, status_code=409)
        now = self.now()
        txn.transaction_status, txn.settlement_time = "settlement", now
        txn.gross_amount = amount if amount is not None else txn.gross_amount
        if txn.channel in ("bca", "bni", "bri", "permata", "mandiri"):
            txn.fields["payment_amounts"] = [{"paid_at": wib(now),
                                              "amount": money(txn.gross_amount)}]
        elif txn.channel == "qris":
            txn.fields.update(issuer="gopay", transaction_type="on-us")
        self.notify(txn)
        return Response(self.status_body(txn), status_code=200)

    def expire_now(self, order_id: str) -> Response[Any]:
        txn = self.transactions.get(order_id)
        if txn is None:
            return Response({"error": "no such order_id"}, status_code=404)
        if txn.transaction_status != "pending":
            return Response({"error": f"charge is {txn.transaction_status}"}, status_code=409)
        txn.transaction_status = "expire"
        self.notify(txn)
        return Response(self.status_body(txn), status_code=200)

    async def add_fault(self, body: dict[str, Any]) -> Response[Any]:
        try:
            fault = Fault.from_json(body)
        except (ValueError, TypeError, KeyError) as exc:
            return Response({"error": str(exc)}, status_code=400)
        self.faults.add(fault)
        if fault.kind is FaultKind.DOWN:
            await self.set_down()
            if fault.until is not None:
                self.recheck_down_at(fault.until)
        return Response({"added": fault.kind.value}, status_code=201)

    def _control_routes(self) -> list[HTTPRouteHandler]:
        sim = self

        async def json_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
            try:
                return _obj(await request.json())
            except SerializationException:  # treated as empty, then refused as incomplete
                return {}

        @post("/faults")
        async def add_fault(request: Request[Any, Any, Any]) -> Response[Any]:
            return await sim.add_fault(await json_body(request))

        @get("/faults")
        async def list_faults() -> list[dict[str, Any]]:
            return [{"kind": f.kind.value, "channel": f.channel, "operation": f.operation,
                     "status": f.status, "count": f.count} for f in sim.faults.faults]

        @delete("/faults")
        async def clear_faults(channel: FromQuery[str | None] = None) -> None:
            sim.faults.clear(channel)
            await sim.set_down()

        @post("/pay")
        async def pay(request: Request[Any, Any, Any]) -> Response[Any]:
            body = await json_body(request)
            amount = body.get("amount")
            if not isinstance(body.get("order_id"), str) or not (
                    amount is None or (type(amount) is int and amount > 0)):
                return Response({"error": "send {order_id, amount?}"}, status_code=400)
            return sim.pay(body["order_id"], amount)

        @post("/expire")
        async def expire(request: Request[Any, Any, Any]) -> Response[Any]:
            return sim.expire_now(str((await json_body(request)).get("order_id", "")))

        @post("/answer")
        async def answer(request: Request[Any, Any, Any]) -> Response[Any]:
            """An odd answer: ``fields`` replace what status reads and notifications say of
            ``order_id`` (e.g. ``{"transaction_status": "chargeback"}`` or a numeric
            ``gross_amount``), until ``{}`` is sent again."""
            body = await json_body(request)
            txn = sim.transactions.get(str(body.get("order_id", "")))
            fields = body.get("fields")
            if txn is None or not isinstance(fields, dict):
                return Response({"error": "send {order_id, fields}"}, status_code=400)
            txn.answer_as = dict(fields)
            return Response(sim.status_body(txn), status_code=200)

        @get("/transactions/{order_id:str}")
        async def transaction(order_id: FromPath[str]) -> Response[Any]:
            txn = sim.transactions.get(order_id)
            if txn is None:
                return Response({"error": "no such order_id"}, status_code=404)
            return Response(sim.status_body(txn), status_code=200)

        @post("/config")
        async def config(request: Request[Any, Any, Any]) -> Response[Any]:
            try:
                sim.config.update(await json_body(request))
            except (ValueError, TypeError) as exc:
                return Response({"error": str(exc)}, status_code=400)
            return Response({"ok": True}, status_code=200)

        @get("/notifications")
        async def notifications(order_id: FromQuery[str | None] = None) -> list[dict[str, Any]]:
            return [a.as_json() for a in sim.notifier.attempts
                    if order_id is None or a.order_id == order_id]

        @delete("/notifications")
        async def clear_notifications() -> None:
            sim.notifier.attempts.clear()

        return [add_fault, list_faults, clear_faults, *call_routes(sim.faults), pay, expire,
                answer, transaction, config, notifications, clear_notifications]

