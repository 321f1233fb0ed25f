"""The Xendit adapter against the Xendit simulator over real sockets: every channel's life cycle,
idempotent creates, each class of the rail error tree, and callbacks with their retries."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, Response, post

from chaos.sim.server import SwitchableServer
from chaos.sim.xendit import CALLBACK_RETRY_OFFSETS_S, XenditSim
from orchestrator.rails import qris
from orchestrator.rails.base import (
    ChargeRequest,
    Instrument,
    MoreRequestsNeeded,
    NeutralStatus,
    Rail,
    Route,
)
from orchestrator.rails.errors import (
    Misconfigured,
    OutcomeUnknown,
    Refused,
    Throttled,
    TransientBeforeSend,
    Unavailable,
    Unreadable,
)
from orchestrator.rails.xendit import (
    XenditProvider,
    callback_reference,
    callback_status,
    refunded_payment_refs,
    verify_callback_token,
    xendit_time,
)
from orchestrator.tls import default_trust
from tests.support import free_port

KEY = "xnd_development_lunas_tests"
TOKEN = "callback-token-for-tests"
TIMEOUT_S = 0.5
RETRY_SCALE = 1e-5  # Xendit's 24 hours of callback retries in under a second
RAILS = {"bca": Rail.VA, "bni": Rail.VA, "bri": Rail.VA, "mandiri": Rail.VA,
         "permata": Rail.VA, "qris": Rail.QRIS, "ovo": Rail.EWALLET, "dana": Rail.EWALLET,
         "linkaja": Rail.EWALLET, "shopeepay": Rail.EWALLET}
PAY_KIND = {Rail.VA: "va", Rail.QRIS: "qr", Rail.EWALLET: "ewallet"}


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Receiver:
    """A merchant-side endpoint that records callbacks and answers with ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[Received] = []
        self.server = SwitchableServer(Litestar([self._handler()], openapi_config=None),
                                       port=free_port())

    def _handler(self) -> Any:
        @post("/callbacks", status_code=200)
        async def receive(request: Request[Any, Any, Any]) -> Response[Any]:
            self.received.append(Received(dict(request.headers), await request.json(),
                                          time.monotonic()))
            return Response({"received": True}, status_code=self.status)
        return receive

    @property
    def url(self) -> str:
        return f"{self.server.url}/callbacks"

    def about(self, reference: str) -> list[Received]:
        return [r for r in self.received if callback_reference(r.body) == reference]


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return result


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start()
    yield r
    await r.server.close()


@pytest.fixture(scope="module")
async def sim(receiver: Receiver) -> AsyncIterator[XenditSim]:
    s = XenditSim(secret_key=KEY, callback_token=TOKEN, callback_url=receiver.url,
                  retry_scale=RETRY_SCALE, data_port=free_port(), control_port=free_port())
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=default_trust()) as client:
        yield client


def make_provider(sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver,
                  key: str = KEY) -> XenditProvider:
    return XenditProvider(base_url=sim.data_url, secret_key=key, client=http, timeout=TIMEOUT_S,
                          callback_url=receiver.url, return_url="https://toko.example/selesai")


@pytest.fixture
def provider(sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver) -> XenditProvider:
    return make_provider(sim, http, receiver)


@pytest.fixture(autouse=True)
async def clean_sim(sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver
                    ) -> AsyncIterator[None]:
    yield
    receiver.status = 200
    await control(http, sim, "DELETE", "/faults")
    await control(http, sim, "POST", "/config", {"rate_limit_per_minute": None,
                                                 "ewallet_idempotency": False,
                                                 "transactions_lag_s": 0})


async def control(http: httpx.AsyncClient, sim: XenditSim, method: str, path: str,
                  body: dict[str, Any] | None = None) -> Any:
    response = await http.request(method, sim.control_url + path, json=body)
    assert response.is_success, response.text
    return response.json()


def charge(channel: str, amount: int = 150_000) -> ChargeRequest:
    return ChargeRequest(
        reference=f"att_{uuid.uuid4().hex[:20]}",
        route=Route(rail=RAILS[channel], provider="xendit", channel=channel), amount=amount,
        expires_at=datetime.now(UTC) + timedelta(hours=2), customer_name="Andi Wijaya",
        customer_email="andi@example.co.id", customer_phone="0812-3456-7890",
        description="Pesanan 1001",
    )


async def pay(http: httpx.AsyncClient, sim: XenditSim, request: ChargeRequest,
              provider_ref: str | None, amount: int | None = None,
              currency: str = "IDR") -> httpx.Response:
    by_reference = "reference_id" if request.route.rail is Rail.EWALLET else "external_id"
    ident = ({by_reference: request.reference} if provider_ref is None
             else {"id": provider_ref})
    body = {"kind": PAY_KIND[request.route.rail], "amount": amount or request.amount,
            "currency": currency, **ident}
    return await http.post(f"{sim.control_url}/pay", json=body)


async def resources(http: httpx.AsyncClient, sim: XenditSim, reference: str) -> int:
    found = await control(http, sim, "GET", f"/resources?reference={reference}")
    return sum(len(items) for items in found.values())


def assert_usable(request: ChargeRequest, instrument: Instrument) -> None:
    """What a customer needs to pay, in Lunas's shape, for each kind of channel."""
    assert instrument.route == request.route and instrument.provider_ref
    assert instrument.status is NeutralStatus.PENDING
    channel = request.route.channel
    if request.route.rail is Rail.VA:
        assert instrument.va_number and instrument.va_number.isdigit()
        assert instrument.bank == channel
    elif request.route.rail is Rail.QRIS:
        assert instrument.qr_string is not None
        payload = qris.parse(instrument.qr_string)
        assert payload.dynamic and payload.amount == request.amount
    elif channel == "ovo":  # a push to the customer's OVO app: nothing to open
        assert instrument.checkout_url is None and instrument.deeplink_url is None
        assert instrument.extra["redirect_required"] == "false"
    elif channel == "shopeepay":
        assert instrument.deeplink_url and instrument.extra["qr_checkout_string"]
    else:
        assert instrument.checkout_url and instrument.checkout_url.startswith("https://")


@pytest.mark.parametrize("channel", list(RAILS))
async def test_create_pay_and_read_every_channel(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver,
    channel: str,
) -> None:
    request = charge(channel)
    instrument = await provider.create(request)
    assert_usable(request, instrument)
    route, ref = request.route, instrument.provider_ref

    pending = await provider.status(request.reference, ref, route)
    assert pending.status is NeutralStatus.PENDING and pending.provider_ref == ref

    assert (await pay(http, sim, request, ref)).status_code == 200
    paid = await provider.status(request.reference, ref, route)
    assert (paid.status, paid.paid_amount, paid.provider_ref, paid.currency) == (
        NeutralStatus.PAID, request.amount, ref, "IDR")
    assert paid.paid_at is not None

    [callback] = await eventually(lambda: receiver.about(request.reference))
    assert verify_callback_token(TOKEN, callback.headers.get("x-callback-token"))
    reported = callback_status(callback.body)
    assert (reported.status, reported.paid_amount, reported.provider_ref, reported.currency) == (
        NeutralStatus.PAID, request.amount, ref, "IDR")


@pytest.mark.parametrize("channel", ["bca", "qris", "ovo"])
async def test_a_payment_in_another_currency_is_reported_in_it(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver,
    channel: str,
) -> None:
    """The status read and the callback say what the payment is counted in, so settlement never
    takes a number of dollars for rupiah. A QR v1 callback names no currency: QRIS is rupiah."""
    request = charge(channel)
    instrument = await provider.create(request)
    route, ref = request.route, instrument.provider_ref
    assert (await pay(http, sim, request, ref, currency="USD")).status_code == 200
    paid = await provider.status(request.reference, ref, route)
    assert (paid.status, paid.paid_amount, paid.currency) == (
        NeutralStatus.PAID, request.amount, "USD")
    [callback] = await eventually(lambda: receiver.about(request.reference))
    reported = callback_status(callback.body)
    assert (reported.status, reported.currency) == (
        NeutralStatus.PAID, "IDR" if route.rail is Rail.QRIS else "USD")


@pytest.mark.parametrize("channel", list(RAILS))
async def test_cancel_every_channel(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, channel: str,
) -> None:
    request = charge(channel)
    instrument = await provider.create(request)
    route, ref = request.route, instrument.provider_ref

    if route.rail is Rail.QRIS:
        with pytest.raises(Refused) as refused:
            await provider.cancel(request.reference, ref, route)
        assert refused.value.code == "NOT_CANCELLABLE"
        assert (await provider.status(request.reference, ref, route)).status is (
            NeutralStatus.PENDING)
        return

    await provider.cancel(request.reference, ref, route)
    after = await provider.status(request.reference, ref, route)
    assert after.status is (NeutralStatus.EXPIRED if route.rail is Rail.VA
                            else NeutralStatus.FAILED)
    assert (await pay(http, sim, request, ref)).status_code == 400  # nothing left to pay
    await provider.cancel(request.reference, ref, route)  # cancelling twice is harmless


@pytest.mark.parametrize("channel", ["bca", "qris"])
async def test_the_same_create_twice_makes_one_resource(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, channel: str,
) -> None:
    request = charge(channel)
    first = await provider.create(request)
    second = await provider.create(request)
    assert second.provider_ref == first.provider_ref
    assert await resources(http, sim, request.reference) == 1


async def test_the_same_e_wallet_create_twice_makes_two_charges(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    """RAILS.md §2.1: the key is documented on VA and QR creates, not on ``/ewallets/charges``:
    a repeat is a second push to the customer, so Lunas never repeats one (gateway_jobs)."""
    request = charge("ovo")
    first = await provider.create(request)
    second = await provider.create(request)
    assert second.provider_ref != first.provider_ref
    assert await resources(http, sim, request.reference) == 2
    await control(http, sim, "POST", "/config", {"ewallet_idempotency": True})
    other = charge("ovo")  # a Xendit that did honour the key there: the simulator's profile
    assert (await provider.create(other)).provider_ref == (
        await provider.create(other)).provider_ref
    assert await resources(http, sim, other.reference) == 1


async def test_same_reference_with_another_body_is_outcome_unknown(
    provider: XenditProvider,
) -> None:
    request = charge("bni")
    await provider.create(request)
    with pytest.raises(OutcomeUnknown, match="DUPLICATE_ERROR"):
        await provider.create(charge_with(request, amount=request.amount + 1))


def charge_with(request: ChargeRequest, **changes: Any) -> ChargeRequest:
    fields = {name: getattr(request, name) for name in request.__dataclass_fields__}
    return ChargeRequest(**{**fields, **changes})


async def test_provider_down_is_transient_before_send(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    request = charge("bri")
    await control(http, sim, "POST", "/faults", {"kind": "down"})
    with pytest.raises(TransientBeforeSend):
        await provider.create(request)
    with pytest.raises(TransientBeforeSend):
        await provider.status(request.reference, "whatever", request.route)
    await control(http, sim, "DELETE", "/faults")
    assert (await provider.create(request)).va_number


async def test_hang_on_create_is_outcome_unknown_and_nothing_was_made(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    request = charge("qris")
    await control(http, sim, "POST", "/faults",
                  {"kind": "hang", "channel": "qris", "operation": "create"})
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as unknown:
        await provider.create(request)
    assert time.monotonic() - started >= TIMEOUT_S * 0.9
    assert isinstance(unknown.value.__cause__, httpx.ReadTimeout)
    found = await provider.status(request.reference, None, request.route)
    assert found.status is NeutralStatus.NOT_FOUND


async def test_timeout_after_success_on_qr_create_is_resolved_by_a_status_read(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    request = charge("qris")
    await control(http, sim, "POST", "/faults",
                  {"kind": "timeout_after_success", "channel": "qris", "operation": "create"})
    with pytest.raises(OutcomeUnknown):
        await provider.create(request)
    assert await resources(http, sim, request.reference) == 1
    found = await provider.status(request.reference, None, request.route)
    assert found.status is NeutralStatus.PENDING and found.provider_ref


async def test_timeout_after_success_on_va_create_is_resolved_by_replaying_the_create(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    request = charge("mandiri")
    await control(http, sim, "POST", "/faults", {"kind": "timeout_after_success",
                                                 "channel": "mandiri", "operation": "create"})
    with pytest.raises(OutcomeUnknown):
        await provider.create(request)
    await control(http, sim, "DELETE", "/faults")
    # Legacy Xendit cannot find a VA by our reference; with no payment it says not found...
    unknown = await provider.status(request.reference, None, request.route)
    assert (unknown.status, unknown.raw_status) == (NeutralStatus.NOT_FOUND,
                                                    "NO_PAYMENT_FOR_REFERENCE")
    # ...and the idempotency key turns a repeated create into a replay of the lost answer.
    instrument = await provider.create(request)
    assert await resources(http, sim, request.reference) == 1
    status = await provider.status(request.reference, instrument.provider_ref, request.route)
    assert status.status is NeutralStatus.PENDING


async def test_a_lost_ovo_create_that_the_customer_paid_reads_as_paid_by_reference(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    request = charge("ovo")
    await control(http, sim, "POST", "/faults", {"kind": "timeout_after_success",
                                                 "channel": "ovo", "operation": "create"})
    with pytest.raises(OutcomeUnknown):
        await provider.create(request)
    assert (await pay(http, sim, request, None)).status_code == 200  # the OVO push was answered
    found = await provider.status(request.reference, None, request.route)
    assert (found.status, found.paid_amount) == (NeutralStatus.PAID, request.amount)
    assert found.provider_ref and found.provider_ref.startswith("ewc_")


async def test_a_lost_ovo_create_unpaid_reads_as_pending_by_reference_never_not_found(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    """Not found would close it as never made, and only repeating its create (a second push:
    no idempotency key is documented there) could tell; the push may still be approved."""
    request = charge("ovo")
    await control(http, sim, "POST", "/faults", {"kind": "timeout_after_success",
                                                 "channel": "ovo", "operation": "create"})
    with pytest.raises(OutcomeUnknown):
        await provider.create(request)
    found = await provider.status(request.reference, None, request.route)
    assert (found.status, found.provider_ref, found.raw_status) == (
        NeutralStatus.PENDING, None, "NO_PAYMENT_FOR_REFERENCE")
    assert not provider.idempotent_create(Rail.EWALLET)
    assert provider.idempotent_create(Rail.VA) and provider.idempotent_create(Rail.QRIS)


async def test_server_error_is_unknown_on_create_and_unavailable_on_reads(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    request = charge("permata")
    await control(http, sim, "POST", "/faults", {"kind": "error_burst", "channel": "permata",
                                                 "operation": "create", "count": 1})
    with pytest.raises(OutcomeUnknown, match="500 SERVER_ERROR"):
        await provider.create(request)
    instrument = await provider.create(request)  # the burst is spent
    for operation in ("status", "cancel"):
        await control(http, sim, "POST", "/faults", {
            "kind": "error_burst", "channel": "permata", "operation": operation, "count": 1,
            "status": 502})
    with pytest.raises(Unavailable, match="502"):
        await provider.status(request.reference, instrument.provider_ref, request.route)
    with pytest.raises(Unavailable, match="502"):
        await provider.cancel(request.reference, instrument.provider_ref, request.route)


async def test_maintenance_503_is_unknown_on_create_and_unavailable_on_status(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    request = charge("dana")
    instrument = await provider.create(request)
    await control(http, sim, "POST", "/faults", {"kind": "maintenance", "channel": "dana"})
    with pytest.raises(OutcomeUnknown, match="CHANNEL_UNAVAILABLE"):
        await provider.create(charge("dana"))
    with pytest.raises(Unavailable, match="CHANNEL_UNAVAILABLE"):
        await provider.status(request.reference, instrument.provider_ref, request.route)


async def test_rate_limit_is_throttled_with_retry_after(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    await control(http, sim, "POST", "/config", {"rate_limit_per_minute": 2})
    await provider.create(charge("qris"))
    await provider.create(charge("qris"))
    with pytest.raises(Throttled) as throttled:
        await provider.create(charge("qris"))
    assert throttled.value.retry_after is not None and 0 < throttled.value.retry_after <= 60
    await provider.create(charge("bca"))  # the limit is per endpoint


async def test_rate_limit_fault_is_throttled_until_it_lapses(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    await control(http, sim, "POST", "/faults",
                  {"kind": "rate_limit", "channel": "linkaja", "duration_s": 5})
    with pytest.raises(Throttled) as throttled:
        await provider.create(charge("linkaja"))
    assert throttled.value.retry_after is not None and 0 < throttled.value.retry_after <= 5


async def test_a_wrong_secret_key_is_misconfigured(
    sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver,
) -> None:
    wrong = make_provider(sim, http, receiver, key="xnd_development_not_ours")
    request = charge("bca")
    with pytest.raises(Misconfigured, match="INVALID_API_KEY"):
        await wrong.create(request)
    with pytest.raises(Misconfigured):
        await wrong.status(request.reference, "5f0000000000000000000000", request.route)


@pytest.mark.parametrize(("amount", "error", "code"), [
    (10_100, Refused, "CHANNEL_NOT_ACTIVATED"),
    (10_101, OutcomeUnknown, "CHANNEL_UNAVAILABLE"),
    (10_102, OutcomeUnknown, "SERVER_ERROR"),
])
async def test_ewallet_magic_amounts(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, amount: int,
    error: type[Exception], code: str,
) -> None:
    request = charge("shopeepay", amount=amount)
    with pytest.raises(error, match=code) as raised:
        await provider.create(request)
    if isinstance(raised.value, Refused):
        assert raised.value.code == code
    assert await resources(http, sim, request.reference) == 0


async def test_magic_amount_20103_fails_later_with_a_failed_callback(
    provider: XenditProvider, receiver: Receiver,
) -> None:
    request = charge("ovo", amount=20_103)
    instrument = await provider.create(request)
    [callback] = await eventually(lambda: receiver.about(request.reference))
    assert callback.body["data"]["failure_code"] == "ACCOUNT_ACCESS_BLOCKED"
    assert callback_status(callback.body).status is NeutralStatus.FAILED
    read = await provider.status(request.reference, instrument.provider_ref, request.route)
    assert (read.status, read.raw_status) == (NeutralStatus.FAILED, "FAILED")


def test_a_refunded_charge_reports_the_payment_it_took_back() -> None:
    """A REFUNDED e-wallet charge was paid first (RAILS.md §2.4-2.5): its capture is the
    payment, which Lunas records before the refund's review case. Before: no amount, so a
    refund read on a charge Lunas never saw paid would have been taken for a 0 rupiah payment."""
    reported = callback_status({"event": "ewallet.capture", "business_id": "b1", "data": {
        "id": "ewc_1", "reference_id": "att_1", "status": "REFUNDED", "currency": "IDR",
        "charge_amount": 125_000, "capture_amount": 125_000, "refunded_amount": 125_000,
        "updated": "2025-03-10T02:05:40.120Z"}})
    assert (reported.status, reported.paid_amount, reported.raw_status) == (
        NeutralStatus.REFUNDED, 125_000, "REFUNDED")


async def test_partial_refunds_read_as_refunds_with_the_running_total(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    """A paid DANA charge is refunded in part, then in full, at Xendit. Each read reports
    ``refunded`` with the payment (its capture) and how much went back so far (the charge's
    ``refunded_amount``, RAILS.md §2.4): 40000, then all 150000. Before: ``refunded_amount``
    was never read, so a partly refunded charge (still ``SUCCEEDED``) read as plain paid and
    nobody heard of the refund."""
    request = charge("dana")
    instrument = await provider.create(request)
    assert (await pay(http, sim, request, instrument.provider_ref)).status_code == 200
    read = await provider.status(request.reference, instrument.provider_ref, request.route)
    assert (read.status, read.reversed_amount) == (NeutralStatus.PAID, None)
    seen = []
    for amount in (40_000, 110_000):
        r = await http.post(f"{sim.control_url}/refund",
                            json={"id": instrument.provider_ref, "amount": amount})
        assert r.status_code == 200, r.text
        read = await provider.status(request.reference, instrument.provider_ref, request.route)
        seen.append((read.status, read.raw_status, read.paid_amount, read.reversed_amount))
    assert seen == [
        (NeutralStatus.REFUNDED, "PARTIALLY_REFUNDED", 150_000, 40_000),
        (NeutralStatus.REFUNDED, "REFUNDED", 150_000, 150_000)]
    more = await http.post(f"{sim.control_url}/refund",
                           json={"id": instrument.provider_ref, "amount": 1})
    assert more.status_code == 400, more.text  # nothing left to refund


@pytest.mark.parametrize(("charge_fields", "want"), [
    ({"status": "SUCCEEDED", "refunded_amount": None},
     (NeutralStatus.PAID, "SUCCEEDED", None)),
    ({"status": "SUCCEEDED", "refunded_amount": 0}, (NeutralStatus.PAID, "SUCCEEDED", None)),
    ({"status": "SUCCEEDED", "refunded_amount": 25_000},
     (NeutralStatus.REFUNDED, "PARTIALLY_REFUNDED", 25_000)),
    ({"status": "SUCCEEDED", "refunded_amount": 125_000},
     (NeutralStatus.REFUNDED, "REFUNDED", 125_000)),
    ({"status": "REFUNDED", "refunded_amount": 125_000},
     (NeutralStatus.REFUNDED, "REFUNDED", 125_000)),
], ids=["none", "zero", "partial", "all-still-succeeded", "refunded"])
def test_an_e_wallet_charge_says_how_much_of_it_went_back(
    charge_fields: dict[str, Any], want: tuple[NeutralStatus, str, int | None],
) -> None:
    """An ``ewallet.capture`` callback carries the same charge object a read does."""
    reported = callback_status({"event": "ewallet.capture", "business_id": "b1", "data": {
        "id": "ewc_1", "reference_id": "att_1", "currency": "IDR", "charge_amount": 125_000,
        "capture_amount": 125_000, "updated": "2025-03-10T02:05:40.120Z", **charge_fields}})
    assert (reported.status, reported.raw_status, reported.reversed_amount) == want
    assert reported.paid_amount == 125_000


@pytest.mark.parametrize("refunded_amount", [None, "a lot", 0, -5, "absent"])
def test_a_refunded_charge_that_does_not_say_how_much_went_back_is_unreadable(
    refunded_amount: object,
) -> None:
    """Nothing Xendit documents says ``REFUNDED`` means the whole capture (RAILS.md §2.4):
    without a readable ``refunded_amount`` the answer is unreadable, read again later, never a
    full refund. Before: it was taken for one, and a case opened for the whole payment."""
    data: dict[str, Any] = {
        "id": "ewc_1", "reference_id": "att_1", "status": "REFUNDED", "currency": "IDR",
        "charge_amount": 125_000, "capture_amount": 125_000,
        "updated": "2025-03-10T02:05:40.120Z", "refunded_amount": refunded_amount}
    if refunded_amount == "absent":
        del data["refunded_amount"]
    with pytest.raises(ValueError, match="malformed"):
        callback_status({"event": "ewallet.capture", "business_id": "b1", "data": data})


async def test_a_refunded_charge_read_without_its_total_is_unreadable_and_neutral(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    """The simulator's charge says REFUNDED with ``refunded_amount`` null: the read raises
    ``Unreadable`` (neutral for the breaker, retried with the unreadable back-off)."""
    request = charge("dana")
    instrument = await provider.create(request)
    assert (await pay(http, sim, request, instrument.provider_ref)).status_code == 200
    await control(http, sim, "POST", "/refund", {"id": instrument.provider_ref,
                                                 "amount": request.amount,
                                                 "show_refunded_amount": False})
    with pytest.raises(Unreadable, match="how much went back is unknown"):
        await provider.status(request.reference, instrument.provider_ref, request.route)


async def test_a_refunded_charge_is_dated_when_it_was_paid_not_when_it_was_refunded(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    """The charge object has no payment time; its ``updated`` is the last status change,
    which a refund days later becomes. A read of a refunded charge dates the payment by its
    Transactions API entry (RAILS.md §2.5), in a second request. A charge read is budgeted
    one request, so a read allowed one asks for two before sending the second
    (``MoreRequestsNeeded``). Before: it was dated at the refund."""
    request = charge("dana")
    instrument = await provider.create(request)
    assert (await pay(http, sim, request, instrument.provider_ref)).status_code == 200
    [payment] = [t for t in sim.store.transactions if t["product_id"] == instrument.provider_ref]
    paid_at = datetime.fromisoformat(payment["created"])
    later = paid_at + timedelta(days=3)
    seen = []
    for amount in (40_000, 110_000):  # part of it, then the rest: SUCCEEDED, then REFUNDED
        await control(http, sim, "POST", "/refund", {
            "id": instrument.provider_ref, "amount": amount, "at": later.isoformat()})
        read = await provider.status(request.reference, instrument.provider_ref, request.route)
        seen.append((read.raw_status, read.paid_at))
    assert seen == [("PARTIALLY_REFUNDED", paid_at), ("REFUNDED", paid_at)]
    assert provider.status_requests(instrument.provider_ref, request.route) == 1
    with pytest.raises(MoreRequestsNeeded) as more:
        await provider.status(request.reference, instrument.provider_ref, request.route,
                              requests_allowed=1)
    assert more.value.requests == 2
    read = await provider.status(request.reference, instrument.provider_ref, request.route,
                                 requests_allowed=2)
    assert (read.raw_status, read.paid_at) == ("REFUNDED", paid_at)
    # Lunas has the payment already (a paid attempt read again): no lookup, one request.
    read = await provider.status(request.reference, instrument.provider_ref, request.route,
                                 requests_allowed=1, payment_known=True)
    assert (read.raw_status, read.reversed_amount, read.paid_at) == ("REFUNDED", 150_000, None)
    # Xendit moves a money-in transaction on from SUCCESS once it is reversed: still found.
    payment["status"] = "REVERSED"
    read = await provider.status(request.reference, instrument.provider_ref, request.route)
    assert (read.raw_status, read.paid_at) == ("REFUNDED", paid_at)


def test_a_succeeded_charge_whose_refunded_amount_cannot_be_read_is_not_taken_for_paid() -> None:
    """Taken for no refund, a refund would pass as a plain payment: the answer is unreadable."""
    with pytest.raises(ValueError, match="malformed"):
        callback_status({"event": "ewallet.capture", "data": {
            "id": "ewc_1", "status": "SUCCEEDED", "capture_amount": 125_000,
            "refunded_amount": -5}})


def test_a_refund_callback_names_the_payment_by_xendits_ids_and_a_failed_one_moves_nothing(
) -> None:
    """Xendit's Refund API callback (XDOC refund-webhook-notification): ``data`` is the refund;
    its ``reference_id`` is the refund's own, so the payment is named by Xendit's ids. The
    page's example nests a second envelope in ``data``; both shapes read alike."""
    refund = {"id": "rfd-1", "payment_id": "ewc_1", "payment_request_id": None,
              "reference_id": "refund-7", "amount": 10_000, "status": "SUCCEEDED",
              "currency": "IDR", "payment_method_type": "EWALLET"}
    for body in ({"event": "refund.succeeded", "data": refund},
                 {"event": "refund.succeeded", "data": {"event": "refund.succeeded",
                                                        "data": refund}}):
        reported = callback_status(body)
        assert (reported.status, reported.provider_ref, reported.raw_status) == (
            NeutralStatus.REFUNDED, "ewc_1", "refund.succeeded")
        assert reported.paid_amount is None and reported.reversed_amount is None
        assert refunded_payment_refs(body) == ("ewc_1",)
    with pytest.raises(ValueError, match="no money moved"):
        callback_status({"event": "refund.failed", "data": {**refund, "status": "FAILED"}})


async def test_a_business_validation_error_is_refused(provider: XenditProvider) -> None:
    request = charge_with(charge("ovo"), customer_phone="")
    with pytest.raises(Refused) as refused:
        await provider.create(request)
    assert refused.value.code == "API_VALIDATION_ERROR"


async def test_va_paid_callback_carries_the_token_and_the_flat_payment(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver,
) -> None:
    request = charge("bni", amount=275_000)
    instrument = await provider.create(request)
    await pay(http, sim, request, instrument.provider_ref)
    [callback] = await eventually(lambda: receiver.about(request.reference))
    assert callback.headers["x-callback-token"] == TOKEN
    assert not verify_callback_token(TOKEN, "forged")
    body = callback.body
    assert "status" not in body  # arrival itself means paid
    assert (body["external_id"], body["callback_virtual_account_id"], body["amount"],
            body["bank_code"], body["account_number"]) == (
        request.reference, instrument.provider_ref, 275_000, "BNI", instrument.va_number)
    assert body["payment_id"] and body["transaction_timestamp"]


async def test_a_failing_receiver_gets_the_six_scaled_retries(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver,
) -> None:
    receiver.status = 500
    request = charge("bri")
    instrument = await provider.create(request)
    await pay(http, sim, request, instrument.provider_ref)
    def attempts() -> list[dict[str, Any]]:
        return [c for c in sim.callbacks if c["body"].get("external_id") == request.reference]
    await eventually(lambda: len(attempts()) == 7 and attempts()[-1]["status"] is not None)
    assert len(receiver.about(request.reference)) == 7
    log = [c for c in await control(http, sim, "GET", "/callbacks")
           if c["body"].get("external_id") == request.reference]
    assert [(c["attempt"], c["status"]) for c in log] == [(n, 500) for n in range(7)]
    for retry, planned in zip(log[1:], CALLBACK_RETRY_OFFSETS_S, strict=True):
        assert retry["elapsed_s"] >= planned * RETRY_SCALE  # offsets from the first attempt


async def test_an_answer_trickling_in_is_cut_off_at_twice_the_timeout(
    http: httpx.AsyncClient, receiver: Receiver,
) -> None:
    """Regression (review): httpx's timeout bounds each read, not the call, so an answer
    trickling in a byte at a time held a status read (or a create) as long as it lasted."""
    from tests.integration.test_midtrans_adapter import trickling_server

    async with trickling_server() as url:
        provider = XenditProvider(base_url=url, secret_key=KEY, client=http, timeout=TIMEOUT_S,
                                  callback_url=receiver.url,
                                  return_url="https://toko.example/selesai")
        request = charge("qris")
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await provider.status(request.reference, None, request.route)
        with pytest.raises(OutcomeUnknown):
            await provider.create(request)
    assert time.monotonic() - started < 2 * (2 * TIMEOUT_S) + 0.5


@pytest.mark.parametrize(("channel", "raw"), [
    ("bca", "SUSPENDED"), ("bca", "active"), ("qris", "PENDING"), ("qris", "EXPIRED_SOON")])
async def test_a_status_rails_md_does_not_name_is_unreadable_never_expired(
    provider: XenditProvider, sim: XenditSim, channel: str, raw: str,
) -> None:
    """RAILS.md §2.5 names VA PENDING / ACTIVE / INACTIVE and QR ACTIVE / INACTIVE. Any other
    status, before the deadline and with no payment listed yet, is an answer Lunas cannot read:
    taken for expired, the verifier closed a still payable instrument and told the merchant
    its order's payment failed (``order.payment_failed``) while the customer could pay it."""
    request = charge(channel)
    instrument = await provider.create(request)
    if request.route.rail is Rail.VA:
        sim.store.vas[str(instrument.provider_ref)]["status"] = raw
    else:
        sim.store.qrs[request.reference]["status"] = raw
    with pytest.raises(Unreadable):
        await provider.status(request.reference, instrument.provider_ref, request.route)


async def test_a_va_paid_twice_reads_as_two_payments_never_one_sum(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    """Each payment the Transactions API lists for the VA is reported on its own, in the order
    they were made: summed, two exact payments read as one payment of twice the amount, a
    wrong amount nobody sent, and the second payment's refund case never opened."""
    request = charge("bni")
    instrument = await provider.create(request)
    ref = instrument.provider_ref
    assert (await pay(http, sim, request, ref)).status_code == 200
    second = await http.post(f"{sim.control_url}/pay", json={
        "kind": "va", "id": ref, "amount": request.amount, "force": True})
    assert second.status_code == 200, second.text
    paid = await provider.status(request.reference, ref, request.route)
    assert (paid.status, paid.paid_amount, paid.provider_ref) == (
        NeutralStatus.PAID, request.amount, ref)
    assert [(p.amount, p.currency) for p in paid.payments] == [(request.amount, "IDR")] * 2
    assert paid.payments[0].paid_at == paid.paid_at <= paid.payments[1].paid_at


async def test_a_va_xendit_did_not_make_single_use_and_closed_never_reaches_a_customer(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient,
) -> None:
    """Lunas asks for a closed single-use VA: one payment of the exact amount, then inactive.
    An answer saying otherwise (a bank where Xendit cannot close a VA) is a VA that takes any
    number of payments of any amount: it does not match the request, so it is an unknown
    outcome (the router fails over, verification watches what exists), never instructions."""
    await control(http, sim, "POST", "/config", {"va_reusable": True})
    try:
        request = charge("permata")
        with pytest.raises(OutcomeUnknown, match="is_closed"):
            await provider.create(request)
    finally:
        await control(http, sim, "POST", "/config", {"va_reusable": False})


LAGGING = {"transactions_lag_s": 3600}
"""The Transactions API an hour behind the payments (Xendit's can trail one by minutes)."""


def shifted(sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver,
            by: timedelta) -> XenditProvider:
    """The adapter with Lunas's clock ``by`` ahead of the simulator's."""
    return XenditProvider(base_url=sim.data_url, secret_key=KEY, client=http, timeout=TIMEOUT_S,
                          callback_url=receiver.url, return_url="https://toko.example/selesai",
                          clock=lambda: datetime.now(UTC) + by)


@pytest.mark.parametrize("channel", ["bca", "permata"])
async def test_a_paid_va_the_transactions_api_does_not_list_yet_is_never_expired(
    provider: XenditProvider, sim: XenditSim, http: httpx.AsyncClient, channel: str,
) -> None:
    """A single-use VA turns INACTIVE the moment it is paid, and Xendit's Transactions API may
    list the payment only later. Read in between, before its ``expiration_date``, it was taken
    for expired: the attempt closed, the order expired with its callback lost, and nothing ever
    read it again (the payment lost). INACTIVE before the expiry, which Lunas did not bring
    about (its cancel moves the expiry to now), is no evidence of expiry: unreadable, read
    again, until the list catches up and says paid."""
    request = charge(channel)
    instrument = await provider.create(request)
    ref, route = instrument.provider_ref, request.route
    await control(http, sim, "POST", "/config", LAGGING)
    try:
        assert (await pay(http, sim, request, ref)).status_code == 200
        with pytest.raises(Unreadable, match="INACTIVE"):
            await provider.status(request.reference, ref, route)
        await control(http, sim, "POST", "/config", {"transactions_lag_s": 0})  # caught up
        paid = await provider.status(request.reference, ref, route)
        assert (paid.status, paid.paid_amount, paid.provider_ref) == (
            NeutralStatus.PAID, request.amount, ref)
    finally:
        await control(http, sim, "POST", "/config", {"transactions_lag_s": 0})


async def test_a_qr_that_turned_inactive_before_its_deadline_is_unreadable_after_it_too(
    sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver, provider: XenditProvider,
) -> None:
    """A QR v1 has no cancel and no expiry of its own: INACTIVE before Lunas's deadline (its
    ``updated``) is its payment, however late the read that finds the Transactions API still
    silent. Read after the deadline it stays unreadable, so the order waits in ``verifying``
    and goes to a person when the window runs out (``services/expiry.py``), never expired. A QR
    that turned INACTIVE after the deadline with no payment listed is expired, as before."""
    request = charge("qris")
    instrument = await provider.create(request)
    ref, route = instrument.provider_ref, request.route
    late = shifted(sim, http, receiver, timedelta(hours=3))  # past the 2-hour deadline
    await control(http, sim, "POST", "/config", LAGGING)
    try:
        assert (await pay(http, sim, request, ref)).status_code == 200
        with pytest.raises(Unreadable, match="INACTIVE"):
            await provider.status(request.reference, ref, route, expires_at=request.expires_at)
        with pytest.raises(Unreadable, match="INACTIVE"):
            await late.status(request.reference, ref, route, expires_at=request.expires_at)
        with pytest.raises(Unreadable, match="INACTIVE"):  # a deadline nobody said: no guess
            await late.status(request.reference, ref, route)
    finally:
        await control(http, sim, "POST", "/config", {"transactions_lag_s": 0})

    unpaid = charge("qris")
    made = await provider.create(unpaid)
    qr = sim.store.qrs[unpaid.reference]
    qr.update(status="INACTIVE", updated=xendit_time(unpaid.expires_at + timedelta(minutes=1)))
    expired = await late.status(unpaid.reference, made.provider_ref, unpaid.route,
                                expires_at=unpaid.expires_at)
    assert (expired.status, expired.raw_status) == (NeutralStatus.EXPIRED, "INACTIVE")


async def test_a_va_lunas_closed_or_past_its_expiry_still_reads_expired(
    sim: XenditSim, http: httpx.AsyncClient, receiver: Receiver, provider: XenditProvider,
) -> None:
    """Lunas closes a VA by moving its ``expiration_date`` to now: that INACTIVE is expected,
    and with no payment listed the VA is expired, the list lagging or not. So is a VA INACTIVE
    once its ``expiration_date`` has passed."""
    await control(http, sim, "POST", "/config", LAGGING)
    try:
        cancelled = charge("bni")
        made = await provider.create(cancelled)
        await provider.cancel(cancelled.reference, made.provider_ref, cancelled.route)
        assert sim.store.vas[str(made.provider_ref)]["status"] == "INACTIVE"
        read = await provider.status(cancelled.reference, made.provider_ref, cancelled.route,
                                     expires_at=cancelled.expires_at)
        assert (read.status, read.raw_status) == (NeutralStatus.EXPIRED, "INACTIVE")

        lapsed = charge("mandiri")
        made = await provider.create(lapsed)
        sim.store.vas[str(made.provider_ref)]["status"] = "INACTIVE"
        late = shifted(sim, http, receiver, timedelta(hours=3))  # past its expiration_date
        read = await late.status(lapsed.reference, made.provider_ref, lapsed.route,
                                 expires_at=lapsed.expires_at)
        assert (read.status, read.raw_status) == (NeutralStatus.EXPIRED, "INACTIVE")
    finally:
        await control(http, sim, "POST", "/config", {"transactions_lag_s": 0})
