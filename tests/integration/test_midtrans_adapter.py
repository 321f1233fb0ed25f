"""The Midtrans adapter against the Midtrans simulator over real sockets: every channel from
charge to payment, each rail error class, and HTTP notifications (signature, retries)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from chaos.sim.midtrans import MidtransSim
from chaos.sim.server import SwitchableServer
from orchestrator.rails import qris
from orchestrator.rails.base import ChargeRequest, NeutralStatus, Rail, Route
from orchestrator.rails.breaker import Outcome, outcome_of
from orchestrator.rails.errors import (
    Misconfigured,
    OutcomeUnknown,
    Refused,
    Throttled,
    TransientBeforeSend,
    Unavailable,
    Unreadable,
)
from orchestrator.rails.midtrans import (
    MidtransProvider,
    MidtransWireError,
    notification_status,
    signature_key,
    verify_notification,
    verify_notification_signature,
)
from orchestrator.tls import default_trust
from tests.support import free_port, raw_http_server

SERVER_KEY = "SB-Mid-server-lunas-test-key"
VA = ("bca", "bni", "bri", "permata", "mandiri")
CHANNELS = (*VA, "qris", "gopay", "shopeepay")
RAIL_OF = {**dict.fromkeys(VA, Rail.VA), "qris": Rail.QRIS, "gopay": Rail.EWALLET,
           "shopeepay": Rail.EWALLET}
FAULT_TIMEOUT = 0.3


class Receiver:
    """A merchant notification endpoint: records every delivery, answers ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.deliveries: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.deliveries.append((scope["path"], headers, json.loads(b"".join(chunks))))
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def settled(self, order_id: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        return [d for d in self.deliveries
                if d[2]["order_id"] == order_id and d[2]["transaction_status"] == "settlement"]


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[MidtransSim]:
    simulator = MidtransSim(server_key=SERVER_KEY, data_port=free_port(),
                            control_port=free_port(), hang_s=5.0, seed=7)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    app = Receiver()
    server = SwitchableServer(app, port=free_port())
    await server.start()
    yield app, server.url
    await server.close()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=default_trust()) as client:
        yield client


@pytest.fixture(scope="module")
async def control(sim: MidtransSim) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=default_trust(),
                                 base_url=sim.control_url, timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
async def clean_sim(control: httpx.AsyncClient,
                    receiver: tuple[Receiver, str]) -> AsyncIterator[None]:
    yield
    receiver[0].status = 200
    assert (await control.delete("/faults")).status_code == 204
    await control.delete("/calls")
    await control.post("/config", json={"notification_url": None, "disabled_channels": [],
                                        "errors_in_body": False, "corrupt_qr": False})


@pytest.fixture
def provider(sim: MidtransSim, http: httpx.AsyncClient) -> MidtransProvider:
    return MidtransProvider(base_url=sim.data_url, server_key=SERVER_KEY, client=http,
                            timeout=FAULT_TIMEOUT)


def charge(channel: str = "bca", amount: int = 150_000,
           reference: str | None = None) -> ChargeRequest:
    return ChargeRequest(
        reference=reference or f"att-{uuid.uuid4().hex[:16]}",
        route=Route(rail=RAIL_OF[channel], provider="midtrans", channel=channel),
        amount=amount, expires_at=datetime.now(UTC) + timedelta(hours=2),
        customer_name="Andi Wijaya", customer_email="andi@example.co.id",
        customer_phone="+6281234567890", description="Pesanan 42",
        callback_url="https://toko.example.co.id/selesai",
    )


async def add_fault(control: httpx.AsyncClient, **fault: Any) -> None:
    response = await control.post("/faults", json=fault)
    assert response.status_code == 201, response.text


async def pay(control: httpx.AsyncClient, order_id: str) -> None:
    response = await control.post("/pay", json={"order_id": order_id})
    assert response.status_code == 200, response.text


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- every channel ------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_every_channel_creates_an_instrument_then_reports_the_payment(
    channel: str, provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge(channel, amount=175_000)
    instrument = await provider.create(request)

    assert instrument.status is NeutralStatus.PENDING
    assert instrument.route == request.route and instrument.provider_ref
    assert instrument.expires_at is not None
    assert abs((instrument.expires_at - request.expires_at).total_seconds()) <= 1
    if channel in VA:
        assert instrument.bank == channel
        assert instrument.va_number and instrument.va_number.isdigit()
        assert instrument.biller_code == ("70012" if channel == "mandiri" else None)
    elif channel == "qris":
        assert instrument.qr_string is not None
        payload = qris.parse(instrument.qr_string)
        assert payload.dynamic and payload.amount == 175_000 and payload.currency == "360"
    else:
        assert instrument.deeplink_url and instrument.deeplink_url.startswith(
            "gojek://" if channel == "gopay" else "https://")

    pending = await provider.status(request.reference, instrument.provider_ref, request.route)
    assert pending.status is NeutralStatus.PENDING and pending.paid_amount is None

    await pay(control, request.reference)
    paid = await provider.status(request.reference, instrument.provider_ref, request.route)
    assert paid.status is NeutralStatus.PAID and paid.raw_status == "settlement"
    assert paid.paid_amount == 175_000 and paid.paid_at is not None
    assert paid.provider_ref == instrument.provider_ref


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_cancelled_pending_charge_reads_failed(
    channel: str, provider: MidtransProvider,
) -> None:
    request = charge(channel)
    instrument = await provider.create(request)
    await provider.cancel(request.reference, instrument.provider_ref, request.route)
    status = await provider.status(request.reference, instrument.provider_ref, request.route)
    assert status.status is NeutralStatus.FAILED and status.raw_status == "cancel"


async def test_a_paid_charge_cannot_be_cancelled(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge("bni")
    await provider.create(request)
    await pay(control, request.reference)
    with pytest.raises(Refused) as refused:
        await provider.cancel(request.reference, None, request.route)
    assert refused.value.code == "412"


async def test_an_expired_charge_reads_expired(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge("bri")
    await provider.create(request)
    assert (await control.post("/expire", json={"order_id": request.reference})).status_code == 200
    status = await provider.status(request.reference, None, request.route)  # body status 407
    assert status.status is NeutralStatus.EXPIRED and status.paid_amount is None


async def test_an_unknown_reference_reads_not_found(provider: MidtransProvider) -> None:
    status = await provider.status("never-charged", None, charge().route)
    assert status.status is NeutralStatus.NOT_FOUND and status.provider_ref is None


async def test_a_reference_can_be_charged_again_only_after_cancel(
    provider: MidtransProvider,
) -> None:
    first = charge("gopay")
    created = await provider.create(first)
    await provider.cancel(first.reference, created.provider_ref, first.route)
    again = await provider.create(first)
    assert again.provider_ref != created.provider_ref


# --- each error class ---------------------------------------------------------------------------


async def test_provider_down_is_transient_before_send(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge("bca")
    await add_fault(control, kind="down")
    with pytest.raises(TransientBeforeSend):
        await provider.create(request)
    with pytest.raises(TransientBeforeSend):
        await provider.status(request.reference, None, request.route)

    assert (await control.delete("/faults")).status_code == 204
    assert (await provider.create(request)).status is NeutralStatus.PENDING


async def test_a_timed_down_fault_lapses_and_the_provider_answers_again(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    await add_fault(control, kind="down", duration_s=0.2)
    with pytest.raises(TransientBeforeSend):
        await provider.create(charge("bri"))
    await asyncio.sleep(0.4)
    assert (await provider.create(charge("bri"))).status is NeutralStatus.PENDING


async def test_a_slow_provider_within_the_timeout_just_answers_late(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    await add_fault(control, kind="slow", latency_ms=100, operation="create")
    started = time.monotonic()
    assert (await provider.create(charge("bni"))).status is NeutralStatus.PENDING
    assert time.monotonic() - started >= 0.1


async def test_a_create_slower_than_the_timeout_is_unknown_and_may_still_be_made(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge("permata")
    await add_fault(control, kind="slow", latency_ms=500, operation="create")
    with pytest.raises(OutcomeUnknown):
        await provider.create(request)
    # The provider carried on after Lunas gave up: exactly why a timeout is not a failure.
    await asyncio.sleep(0.4)
    assert (await control.get(f"/transactions/{request.reference}")).status_code == 200


async def test_a_hung_create_is_outcome_unknown(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge("qris")
    await add_fault(control, kind="hang", operation="create")
    with pytest.raises(OutcomeUnknown):
        await provider.create(request)
    await control.delete("/faults")
    # This hang happened before the work: the status read resolves the unknown as "never made".
    status = await provider.status(request.reference, None, request.route)
    assert status.status is NeutralStatus.NOT_FOUND


@pytest.mark.parametrize("channel", ["bca", "mandiri", "qris", "shopeepay"])
async def test_a_create_answered_never_is_outcome_unknown_and_the_charge_exists(
    channel: str, provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge(channel, amount=99_000)
    await add_fault(control, kind="timeout_after_success", channel=channel, operation="create")
    with pytest.raises(OutcomeUnknown):
        await provider.create(request)

    stored = await control.get(f"/transactions/{request.reference}")
    assert stored.status_code == 200 and stored.json()["gross_amount"] == "99000.00"
    status = await provider.status(request.reference, None, request.route)
    assert status.status is NeutralStatus.PENDING


async def test_a_hung_status_read_is_unavailable(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge("bni")
    await provider.create(request)
    await add_fault(control, kind="hang", operation="status")
    with pytest.raises(Unavailable):
        await provider.status(request.reference, None, request.route)


@pytest.mark.parametrize("fields", [
    # chargeback was the example once; Lunas reads it now (charged_back). RAILS.md §1.6 lists
    # every status Midtrans documents, so an unknown one is made up.
    pytest.param({"transaction_status": "on_hold"}, id="unknown-status"),
    pytest.param({"transaction_status": "settlement", "gross_amount": 125000},
                 id="numeric-gross-amount"),
])
async def test_a_status_answer_lunas_cannot_read_is_unreadable_not_unavailable(
    fields: dict[str, Any], provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    """Midtrans answered; our reading failed: neutral for the breaker (rails/errors.py).
    RAILS.md §1.1 says response amounts are strings, so a number is not guessed at."""
    request = charge("bni")
    await provider.create(request)
    r = await control.post("/answer", json={"order_id": request.reference, "fields": fields})
    assert r.status_code == 200
    with pytest.raises(Unreadable):
        await provider.status(request.reference, None, request.route)
    assert outcome_of(Unreadable("x", provider="midtrans", operation="status")) \
        is Outcome.NEUTRAL


SERVER_ERRORS = [
    pytest.param({"kind": "error_burst", "status": 500, "count": 1}, id="http-500"),
    pytest.param({"kind": "error_burst", "status": 502, "count": 1}, id="http-502"),
    pytest.param({"kind": "error_rate", "status": 504, "probability": 1.0}, id="http-504"),
    pytest.param({"kind": "body_error"}, id="http-200-body-500"),
    pytest.param({"kind": "body_error", "status": 503}, id="http-200-body-503"),
    pytest.param({"kind": "maintenance"}, id="maintenance-503"),
]


@pytest.mark.parametrize("fault", SERVER_ERRORS)
async def test_a_server_error_on_create_is_outcome_unknown(
    fault: dict[str, Any], provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    await add_fault(control, operation="create", **fault)
    with pytest.raises(OutcomeUnknown):
        await provider.create(charge("permata"))


@pytest.mark.parametrize("fault", SERVER_ERRORS)
async def test_a_server_error_on_status_is_unavailable(
    fault: dict[str, Any], provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    request = charge("gopay")
    await provider.create(request)
    await add_fault(control, operation="status", **fault)
    with pytest.raises(Unavailable):
        await provider.status(request.reference, None, request.route)


async def test_rate_limit_is_throttled_with_retry_after(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    await add_fault(control, kind="rate_limit", operation="create")
    with pytest.raises(Throttled) as throttled:
        await provider.create(charge("bca"))
    assert throttled.value.retry_after == 1.0
    calls = (await control.get("/calls")).json()
    assert {"channel": "bca", "operation": "create", "outcome": "rate_limit", "count": 1} in calls


@pytest.mark.parametrize("errors_in_body", [False, True], ids=["http-401", "body-401"])
async def test_a_wrong_server_key_is_misconfigured(
    errors_in_body: bool, sim: MidtransSim, http: httpx.AsyncClient,
    control: httpx.AsyncClient,
) -> None:
    await control.post("/config", json={"errors_in_body": errors_in_body})
    wrong = MidtransProvider(base_url=sim.data_url, server_key="SB-Mid-server-wrong",
                             client=http, timeout=FAULT_TIMEOUT)
    request = charge("bri")
    with pytest.raises(Misconfigured):
        await wrong.create(request)
    with pytest.raises(Misconfigured):
        await wrong.status(request.reference, None, request.route)


@pytest.mark.parametrize("errors_in_body", [False, True], ids=["http-402", "body-402"])
async def test_a_channel_not_enabled_is_refused(
    errors_in_body: bool, provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    await control.post("/config", json={"disabled_channels": ["shopeepay"],
                                        "errors_in_body": errors_in_body})
    with pytest.raises(Refused) as refused:
        await provider.create(charge("shopeepay"))
    assert refused.value.code == "402"
    assert (await provider.create(charge("gopay"))).status is NeutralStatus.PENDING


async def test_a_duplicate_order_id_is_outcome_unknown_resolved_by_a_status_read(
    provider: MidtransProvider,
) -> None:
    request = charge("mandiri")
    first = await provider.create(request)
    with pytest.raises(OutcomeUnknown, match="406"):
        await provider.create(request)
    status = await provider.status(request.reference, None, request.route)
    assert status.status is NeutralStatus.PENDING and status.provider_ref == first.provider_ref


async def test_a_qr_that_fails_validation_never_reaches_the_customer(
    provider: MidtransProvider, control: httpx.AsyncClient,
) -> None:
    await control.post("/config", json={"corrupt_qr": True})
    with pytest.raises(Unavailable, match="CRC"):
        await provider.create(charge("qris"))


# --- notifications ------------------------------------------------------------------------------


async def test_a_payment_delivers_a_signed_notification(
    provider: MidtransProvider, control: httpx.AsyncClient, receiver: tuple[Receiver, str],
) -> None:
    app, url = receiver
    await control.post("/config", json={"notification_url": f"{url}/midtrans"})
    request = charge("bca", amount=44_000)
    await provider.create(request)
    await pay(control, request.reference)
    await eventually(lambda: bool(app.settled(request.reference)))

    path, headers, body = app.settled(request.reference)[0]
    assert path == "/midtrans" and headers["user-agent"] == "Veritrans"
    assert body["gross_amount"] == "44000.00" and body["status_code"] == "200"
    assert verify_notification_signature(body, SERVER_KEY)
    assert not verify_notification_signature(body, "SB-Mid-server-other")
    assert not verify_notification_signature({**body, "gross_amount": "45000.00"}, SERVER_KEY)
    status = notification_status(body)
    assert status.status is NeutralStatus.PAID and status.paid_amount == 44_000


async def test_the_override_notification_url_wins_over_the_configured_one(
    sim: MidtransSim, http: httpx.AsyncClient, control: httpx.AsyncClient,
    receiver: tuple[Receiver, str],
) -> None:
    app, url = receiver
    await control.post("/config", json={"notification_url": f"{url}/dashboard"})
    provider = MidtransProvider(base_url=sim.data_url, server_key=SERVER_KEY, client=http,
                                notification_url=f"{url}/lunas")
    request = charge("qris")
    await provider.create(request)
    await pay(control, request.reference)
    await eventually(lambda: bool(app.settled(request.reference)))
    await asyncio.sleep(0.05)
    assert {path for path, _, _ in app.settled(request.reference)} == {"/lunas"}


@pytest.mark.parametrize(("receiver_status", "attempts"),
                         [(200, 1), (500, 2), (503, 5), (404, 3), (400, 3), (418, 6), (302, 1)])
async def test_a_failing_receiver_gets_the_midtrans_retries(
    receiver_status: int, attempts: int, provider: MidtransProvider,
    control: httpx.AsyncClient, receiver: tuple[Receiver, str],
) -> None:
    app, url = receiver
    app.status = receiver_status
    await control.post("/config", json={"notification_url": url})
    request = charge("bni")
    await provider.create(request)
    await pay(control, request.reference)

    async def settlement_attempts() -> list[dict[str, Any]]:
        log = (await control.get("/notifications",
                                 params={"order_id": request.reference})).json()
        return [a for a in log if a["transaction_status"] == "settlement"]

    deadline = time.monotonic() + 3
    while len(await settlement_attempts()) < attempts:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # longer than the next scaled interval: no further attempt comes
    log = await settlement_attempts()
    assert [a["attempt"] for a in log] == list(range(1, attempts + 1))
    assert {a["http_status"] for a in log} == {receiver_status}
    assert len(app.settled(request.reference)) == attempts


# --- pure wire functions ------------------------------------------------------------------------


def test_signature_matches_the_rails_md_vector() -> None:
    body = {"order_id": "1111", "status_code": "200", "gross_amount": "100000.00",
            "signature_key": "edc076b21793ebe3e17926350f5b8ae67d902fe657b3d0aa31b932d5c127e2375d"
                             "308a2bc94f3265ac2d80a1f181a79b997ac178a236fcff35af263fc4d4c231"}
    assert verify_notification_signature(body, "askvnoibnosifnboseofinbofinfgbiufglnbfg")
    assert not verify_notification_signature({**body, "status_code": 200}, "x")


@pytest.mark.parametrize(("transaction_status", "status_code", "trusted"), [
    ("settlement", "200", True),
    ("capture", "200", True),
    ("pending", "201", True),
    ("expire", "407", True),
    ("settlement", "201", False),  # a signed pending body relabelled
    ("settlement", "407", False),  # a signed expire body relabelled
    ("capture", "201", False),
    ("expire", "201", False),  # a signed pending body relabelled: it would close a live charge
    ("cancel", "201", False),
    ("deny", "201", False),
    ("cancel", "200", True),
    ("deny", "202", True),
    ("capture_with_a_typo", "201", True),  # unreadable: the worker says so, nothing is applied
])
def test_a_notification_reports_a_payment_only_under_its_signed_status_code_200(
    transaction_status: str, status_code: str, trusted: bool,
) -> None:
    body = {"order_id": "att_1", "status_code": status_code, "gross_amount": "44000.00",
            "transaction_status": transaction_status,
            "signature_key": signature_key("att_1", status_code, "44000.00", SERVER_KEY)}
    assert verify_notification_signature(body, SERVER_KEY)
    assert verify_notification(body, SERVER_KEY) is trusted
    assert not verify_notification({**body, "signature_key": "0" * 128}, SERVER_KEY)


@pytest.mark.parametrize(("transaction_status", "fraud", "neutral"), [
    ("pending", None, NeutralStatus.PENDING),
    ("PENDING", None, NeutralStatus.PENDING),
    ("settlement", "accept", NeutralStatus.PAID),
    ("capture", "accept", NeutralStatus.PAID),
    ("capture", "challenge", NeutralStatus.PENDING),
    ("expire", None, NeutralStatus.EXPIRED),
    ("cancel", None, NeutralStatus.FAILED),
    ("deny", "deny", NeutralStatus.FAILED),
    ("failure", None, NeutralStatus.FAILED),
    ("refund", None, NeutralStatus.REFUNDED),
    ("partial_refund", None, NeutralStatus.REFUNDED),
])
def test_notification_status_follows_rails_md_mapping(
    transaction_status: str, fraud: str | None, neutral: NeutralStatus,
) -> None:
    body = {"transaction_status": transaction_status, "gross_amount": "44000.00",
            "transaction_id": "t-1", "settlement_time": "2025-03-10 09:00:05"}
    if fraud:
        body["fraud_status"] = fraud
    status = notification_status(body)
    assert status.status is neutral
    paid = neutral in (NeutralStatus.PAID, NeutralStatus.REFUNDED)
    assert status.paid_amount == (44_000 if paid else None)


@pytest.mark.parametrize(("transaction_status", "refund_amount", "reversed_amount"), [
    ("partial_refund", "10000.00", 10_000),
    ("partial_chargeback", "20000.00", 20_000),
    ("refund", None, None),  # a reversal, amount not said: the case asks for the payment's
    ("chargeback", "12.50", None),  # unreadable: never worth failing the answer over
    ("settlement", "10000.00", None),  # nothing went back
])
def test_how_much_went_back_is_read_from_refund_amount(
    transaction_status: str, refund_amount: str | None, reversed_amount: int | None,
) -> None:
    body = {"transaction_status": transaction_status, "gross_amount": "44000.00",
            "transaction_id": "t-1"}
    if refund_amount is not None:
        body["refund_amount"] = refund_amount
    status = notification_status(body)
    assert (status.paid_amount, status.reversed_amount) == (44_000, reversed_amount)


@pytest.mark.parametrize("gross", ["44000.50", "44.000,00", "-1.00", ""])
def test_an_amount_that_is_not_whole_rupiah_is_refused(gross: str) -> None:
    with pytest.raises(MidtransWireError):
        notification_status({"transaction_status": "settlement", "gross_amount": gross})


@pytest.mark.parametrize(("currency", "reported"), [
    ("IDR", "IDR"), ("idr", "IDR"), (None, "IDR"), ("USD", "USD"), ("", "")])
def test_a_notification_says_what_currency_its_amount_is_in(
    currency: str | None, reported: str,
) -> None:
    """The status answer has the notification's shape, so both go through here. ``currency`` is
    not signed: whatever it says, only rupiah is ever taken for rupiah."""
    body = {"transaction_status": "settlement", "gross_amount": "44000.00",
            "transaction_id": "t-1", "settlement_time": "2025-03-10 09:00:05"}
    if currency is not None:
        body["currency"] = currency
    assert notification_status(body).currency == reported


@contextlib.asynccontextmanager
async def trickling_server(status_line: bytes = b"HTTP/1.1 200 OK") -> AsyncIterator[str]:
    """A provider that answers at once, then sends its body one byte every 0.1 s: each read
    comes well within any timeout, the answer never within one."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(status_line + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 600\r\n\r\n")
            for _ in range(600):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.1)
        writer.close()

    async with raw_http_server(answer) as url:
        yield url


async def test_an_answer_trickling_in_is_cut_off_at_twice_the_timeout(
    http: httpx.AsyncClient,
) -> None:
    """Regression (review): httpx's timeout bounds each read, not the call; a status answer
    trickling in a byte at a time held a read with a 0.8 s timeout for 19.6 s (and would hold it
    past the verifier's claim, for another worker to read again)."""
    async with trickling_server() as url:
        provider = MidtransProvider(base_url=url, server_key=SERVER_KEY, client=http,
                                    timeout=FAULT_TIMEOUT)
        request = charge("bni")
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await provider.status(request.reference, None, request.route)
        with pytest.raises(OutcomeUnknown):  # a create's answer lost mid-way: verify it
            await provider.create(request)
    assert time.monotonic() - started < 2 * (2 * FAULT_TIMEOUT) + 0.5
