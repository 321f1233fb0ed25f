"""Gateway webhooks in: verified deliveries settle exactly once; duplicates and out-of-order
deliveries change nothing; forged ones (a wrong signature, or a signed Midtrans body whose unsigned
status was rewritten) are stored, never trusted, and only bring the attempt's status read forward,
at most one read a minute per attempt however many arrive.

Runs the real service (a real socket whose URL the adapters hand to the simulators) with both
simulators, on the session's PostgreSQL and Redis; the worker's relay runs in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from chaos.sim.runner import Simulators
from orchestrator.bootstrap import Container, build
from orchestrator.domain.verification import VerificationSchedule
from orchestrator.notify.delivery import MerchantWebhookHandler, merchant_webhook_handlers
from orchestrator.outbox.relay import Relay
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import NeutralStatus, ProviderStatus
from orchestrator.rails.midtrans import signature_key
from orchestrator.services.dead_letters import redeliver
from orchestrator.services.reversals import apply_reversal
from orchestrator.services.settlement import Payment, apply_payment, open_review_case
from orchestrator.settings import Settings
from orchestrator.store.tables import (
    evidence,
    merchants,
    orders,
    outbox,
    payment_attempts,
    provider_deliveries,
    review_cases,
)
from orchestrator.tls import default_trust
from tests.integration.test_failover import Stack, gateway_settings, sims  # noqa: F401
from tests.support import free_port, new_merchant, new_ops_token, serve


@pytest.fixture
async def stack(container: Container, sims: Simulators) -> AsyncIterator[Stack]:  # noqa: F811
    """Like test_failover's stack, but the adapters' callback URLs point at this server."""
    async with serving_stack(container, sims, lambda s: s) as served:
        yield served


@contextlib.asynccontextmanager
async def serving_stack(container: Container, sims: Simulators,  # noqa: F811
                        change: Callable[[Settings], Settings]) -> AsyncIterator[Stack]:
    """The service on a port of its own, its settings the session's for both simulators with
    status reads retried 0.3 s after a failure, then ``change``d; Xendit's callbacks go to it."""
    port = free_port()
    base = gateway_settings(container.settings, sims)
    c = build(change(replace(
        base, http=replace(base.http, host="127.0.0.1", port=port, public_url=""),
        verification=replace(base.verification, schedule=VerificationSchedule(
            retry_after_failure=timedelta(seconds=0.3))))))
    await c.start()
    shop = await new_merchant(c)
    try:
        async with serve(c, port) as url, httpx.AsyncClient(verify=default_trust(),
                                                            base_url=url, timeout=30) as cl:
            await sim_post(sims.xendit.control_url, "/config", {
                "callback_url": f"{url}/v1/webhooks/xendit",
                "callback_token": c.settings.providers.xendit_callback_token})
            yield Stack(c, sims, url, cl, shop)
    finally:
        await c.close()


async def sim_post(control_url: str, path: str, body: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(verify=default_trust()) as c:
        r = await c.post(f"{control_url}{path}", json=body)
        assert r.status_code < 300, r.text
        return r.json()


def worker_relay(container: Container) -> Relay:
    """The worker's relay, with every handler the worker registers; a failed try is retried
    after 0.2 s, and the sixth is dead-lettered."""
    handler = MerchantWebhookHandler(container.db.engine, container.http, timedelta(seconds=2))
    return Relay(container.db.engine,
                 {**merchant_webhook_handlers(handler), **container.gateway_jobs.handlers(),
                  **container.provider_webhooks.handlers(),
                  **container.settled_reads.handlers()},
                 replace(container.settings.outbox, backoff=(timedelta(seconds=0.2),) * 5),
                 f"test-{uuid.uuid4().hex[:6]}", container.clock)


async def run_relay(container: Container, until: Callable[[], Awaitable[object]], want: object,
                    timeout: float = 10.0) -> None:
    """The worker's relay until ``until() == want``."""
    relay = worker_relay(container)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        await relay.run_once()
        if await until() == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"did not reach {want!r}: {await until()!r}")


async def relay_for(container: Container, seconds: float) -> None:
    """The worker's relay for ``seconds``, long enough for a failing job to use up its tries."""
    relay = worker_relay(container)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await relay.run_once()
        await asyncio.sleep(0.05)


async def run_verifier(container: Container, until: Callable[[], Awaitable[object]],
                       want: object, timeout: float = 10.0) -> None:
    """The worker's verifier and relay together (status reads are the verifier's), until
    ``until() == want``."""
    stop = asyncio.Event()
    task = asyncio.create_task(container.verifier.run(stop))
    try:
        await run_relay(container, until, want, timeout=timeout)
    finally:
        stop.set()
        await task


async def make_due(stack: Stack, attempt_id: str) -> None:
    """The attempt's scheduled status read comes due now, as if its gap had passed."""
    async with stack.container.db.transaction() as conn:
        await conn.execute(payment_attempts.update().where(
            payment_attempts.c.id == attempt_id).values(next_check_at=stack.container.clock.now()))


async def attempt_row(stack: Stack, attempt_id: str) -> Any:
    async with stack.container.db.read() as conn:
        return (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.id == attempt_id))).one()


def checks(stack: Stack, attempt_id: str) -> Callable[[], Awaitable[object]]:
    async def read() -> object:
        return (await attempt_row(stack, attempt_id)).checks
    return read


async def review(stack: Stack, order_id: str) -> list[tuple[str, str, int]]:
    async with stack.container.db.read() as conn:
        return [(c.reason, c.recommended_action, c.amount) for c in await conn.execute(
            sa.select(review_cases).where(review_cases.c.order_id == order_id))]


async def scalar(stack: Stack, query: Any) -> Any:
    async with stack.container.db.read() as conn:
        return (await conn.execute(query)).scalar()


async def order_and_attempt(stack: Stack, rail: str, channel: str | None,
                            served: str) -> tuple[str, Any]:
    r = await stack.capture(rail, channel)
    assert r.status_code == 201, r.text
    assert r.json()["routing"]["served_by"] == served
    async with stack.container.db.read() as conn:
        attempt = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == r.json()["id"]))).one()
    return r.json()["id"], attempt


def order_state(stack: Stack, order_id: str) -> Callable[[], Awaitable[object]]:
    return lambda: scalar(stack, sa.select(orders.c.state).where(orders.c.id == order_id))


def deliveries(stack: Stack, attempt_id: str) -> Callable[[], Awaitable[object]]:
    return lambda: scalar(stack, sa.select(sa.func.count()).select_from(provider_deliveries)
                          .where(provider_deliveries.c.attempt_id == attempt_id))


async def evidence_count(stack: Stack, order_id: str) -> int:
    return int(await scalar(stack, sa.select(sa.func.count()).select_from(evidence)
                            .where(evidence.c.order_id == order_id)))


async def wait_for(probe: Callable[[], Awaitable[object]], want: object,
                   timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await probe() != want:
        assert loop.time() < deadline, f"did not reach {want!r}: {await probe()!r}"
        await asyncio.sleep(0.02)


async def outcomes(stack: Stack, attempt_id: str) -> list[tuple[bool, str | None]]:
    async with stack.container.db.read() as conn:
        rows = (await conn.execute(sa.select(provider_deliveries.c.verified,
                                             provider_deliveries.c.outcome)
                                   .where(provider_deliveries.c.attempt_id == attempt_id)
                                   .order_by(provider_deliveries.c.received_at))).all()
    return [(r.verified, r.outcome) for r in rows]


async def settled_quietly(stack: Stack, attempt_id: str) -> None:
    """Run the relay until every delivery naming ``attempt_id`` has been handled."""
    await run_relay(stack.container, lambda: scalar(
        stack, sa.select(sa.func.count()).select_from(provider_deliveries)
        .where(provider_deliveries.c.attempt_id == attempt_id,
               provider_deliveries.c.outcome.is_(None))), 0)


def midtrans_body(attempt: Any, *, status: str, code: str, txid: str,
                  key: str) -> dict[str, Any]:
    gross = f"{attempt.transfer_amount}.00"
    return {"transaction_time": "2025-03-10 09:00:05", "transaction_status": status,
            "transaction_id": txid, "status_message": "midtrans payment notification",
            "status_code": code, "signature_key": signature_key(attempt.id, code, gross, key),
            "payment_type": "qris", "order_id": attempt.id, "merchant_id": "G000111222",
            "gross_amount": gross, "currency": "IDR"}


async def paid_quietly(stack: Stack, attempt: Any, *, answer: dict[str, Any] | None = None
                       ) -> None:
    """The customer pays ``attempt`` at Midtrans, which notifies nobody: a test posts the
    notification itself, and the status read that confirms a Midtrans payment says settlement
    (with ``answer``'s fields, if any)."""
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    if answer:
        await sim_post(stack.sims.midtrans.control_url, "/answer", {
            "order_id": attempt.id, "fields": {"transaction_status": "settlement", **answer}})


async def test_xendit_va_paid_callback_settles_once_and_a_replay_changes_nothing(
    stack: Stack,
) -> None:
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount})
    await wait_for(deliveries(stack, attempt.id), 1)
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    assert await evidence_count(stack, order_id) == 1
    # The provider delivers the same callback again: stored, acknowledged, nothing changes.
    async with httpx.AsyncClient(verify=default_trust()) as c:
        sent = (await c.get(f"{stack.sims.xendit.control_url}/callbacks")).json()
    body = next(s["body"] for s in sent if s["body"].get("external_id") == attempt.id)
    token = stack.container.settings.providers.xendit_callback_token
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(body),
                                headers={"x-callback-token": token})
    assert r.status_code == 200 and r.json()["duplicate"] is True, r.text
    await settled_quietly(stack, attempt.id)
    assert await evidence_count(stack, order_id) == 1
    assert (await order_state(stack, order_id)()) == "paid"
    found = await outcomes(stack, attempt.id)
    assert [v for v, _ in found] == [True, True]
    assert found[0][1] is not None and found[0][1].startswith("payment applied")
    assert found[1][1] is not None and found[1][1].startswith("duplicate of xendit:va:")


async def test_midtrans_qris_notification_settles_once_and_regressions_change_nothing(
    stack: Stack,
) -> None:
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    paid = await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    await wait_for(deliveries(stack, attempt.id), 1)
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    assert await evidence_count(stack, order_id) == 1
    key = stack.container.settings.providers.midtrans_server_key
    # A duplicate of the settlement, then out-of-order pending and expire, all correctly signed.
    settlement = {**paid, "status_message": "midtrans payment notification"}
    for body in (settlement,
                 midtrans_body(attempt, status="pending", code="201",
                               txid=paid["transaction_id"], key=key),
                 midtrans_body(attempt, status="expire", code="407",
                               txid=paid["transaction_id"], key=key)):
        r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(body))
        assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert await evidence_count(stack, order_id) == 1
    assert (await order_state(stack, order_id)()) == "paid"
    assert await scalar(stack, sa.select(payment_attempts.c.state).where(
        payment_attempts.c.id == attempt.id)) == "paid"
    # The simulator also notified ``pending`` when the charge was created.
    found = [o or "" for _, o in await outcomes(stack, attempt.id)]
    assert found[0] == "no change: provider says pending"
    assert [o for o in found if o.startswith("payment applied")] == [
        "payment applied: settle, order paid"]
    assert sum(o.startswith("duplicate of midtrans:") for o in found) >= 1
    assert found[-1] == "no change: provider says expired, attempt already paid"


async def test_a_declined_charge_leaves_the_order_open_and_tells_the_merchant_once(
    stack: Stack,
) -> None:
    """The order's only instrument fails at the provider before the deadline (a denied QRIS
    payment): nothing is left to pay on. The order stays open, says payment_failed instead of
    pointing at dead instructions, and the merchant hears order.payment_failed once; choosing a
    method again gives the customer a live instrument."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    key = stack.container.settings.providers.midtrans_server_key
    for _ in range(2):  # the provider sends it twice: one notice
        r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(midtrans_body(
            attempt, status="deny", code="202", txid="tx-deny-1", key=key)))
        assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert await scalar(stack, sa.select(payment_attempts.c.state).where(
        payment_attempts.c.id == attempt.id)) == "failed"
    shop = stack.shop.headers
    seen = (await stack.client.get(f"/v1/orders/{order_id}", headers=shop)).json()
    assert seen["status"] == "awaiting_payment"
    assert seen["verification"]["state"] == "payment_failed"
    async with stack.container.db.read() as conn:
        told = (await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.aggregate_id == order_id,
            outbox.c.event_type == "order.payment_failed"))).scalars().all()
    assert len(told) == 1
    assert (told[0]["attempt_id"], told[0]["failure_reason"]) == (attempt.id,
                                                                   "failed at provider")
    again = await stack.client.post(f"/v1/orders/{order_id}/payment", headers=shop,
                                    json={"rail": "qris"})
    assert again.status_code == 201, again.text
    assert again.json()["verification"]["state"] == "scheduled"


async def test_forged_midtrans_notification_is_stored_and_only_triggers_a_status_read(
    stack: Stack,
) -> None:
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    forged = midtrans_body(attempt, status="settlement", code="200", txid=str(uuid.uuid4()),
                           key="not-the-server-key")
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(forged))
    assert r.status_code == 401, r.text
    await settled_quietly(stack, attempt.id)
    [outcome] = [o or "" for v, o in await outcomes(stack, attempt.id) if not v]
    assert outcome.startswith("unverified: never trusted; status read brought forward to ")
    await run_verifier(stack.container, checks(stack, attempt.id), 1)
    assert (await attempt_row(stack, attempt.id)).last_check == "pending: pending"
    assert await evidence_count(stack, order_id) == 0
    assert (await order_state(stack, order_id)()) == "awaiting_payment"
    r = await stack.client.post("/v1/webhooks/midtrans", content=b"{not json")
    assert r.status_code == 400, r.text


async def test_a_body_is_read_as_it_is_stored_so_what_is_acknowledged_can_be_applied(
    stack: Stack,
) -> None:
    """The worker reads the stored text. A notification behind a UTF-8 byte-order mark is JSON to
    ``json.loads(bytes)`` but not as text: it is refused at the door as malformed (400, stored,
    nothing queued), not acknowledged with 200 and then failed by the worker until it is
    dead-lettered, with the provider long since told to stop retrying."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await paid_quietly(stack, attempt)
    key = stack.container.settings.providers.midtrans_server_key
    body = json.dumps(midtrans_body(attempt, status="settlement", code="200",
                                    txid=str(uuid.uuid4()), key=key)).encode()
    r = await stack.client.post("/v1/webhooks/midtrans", content=b"\xef\xbb\xbf" + body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_notification"
    delivery_id = r.json()["detail"].rsplit("stored as ", 1)[1].rstrip(")")
    async with stack.container.db.read() as conn:
        stored = (await conn.execute(sa.select(provider_deliveries).where(
            provider_deliveries.c.id == delivery_id))).one()
        queued = (await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.payload["delivery_id"].as_string() == delivery_id))).scalar()
    assert stored.raw_body.startswith("\ufeff")
    assert (stored.verified, stored.event_key, stored.outcome) == (
        False, None, "malformed: not a JSON object")
    assert queued == 0
    # The same notification as the provider sends it is applied.
    r = await stack.client.post("/v1/webhooks/midtrans", content=body)
    assert r.status_code == 200, r.text
    await run_relay(stack.container, order_state(stack, order_id), "paid")


async def test_a_provider_time_no_database_can_hold_never_blocks_a_delivery(
    stack: Stack,
) -> None:
    """A verified delivery stamped at a time with no UTC instant (year 1 east of Greenwich) is
    handled once like any odd field, not failed on every try until dead-lettered: Midtrans's
    settlement time is only metadata (the payment applies, observed at the transaction time);
    a Xendit callback with such a time is unreadable, as with any malformed time."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    odd = {"settlement_time": "0001-01-01 00:00:00", "transaction_time": "2025-03-10 09:00:05"}
    # Midtrans says the same in its status answer, which confirms a Midtrans payment.
    await paid_quietly(stack, attempt, answer=odd)
    key = stack.container.settings.providers.midtrans_server_key
    body = {**midtrans_body(attempt, status="settlement", code="200", txid=str(uuid.uuid4()),
                            key=key), **odd}
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(body))
    assert r.status_code == 200, r.text
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    async with stack.container.db.read() as conn:
        observed = (await conn.execute(sa.select(evidence.c.observed_at).where(
            evidence.c.order_id == order_id))).scalar_one()
    assert observed.isoformat() == "2025-03-10T02:00:05+00:00"  # transaction_time, WIB

    _, va = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    payment = await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": va.id, "amount": va.transfer_amount})
    token = stack.container.settings.providers.xendit_callback_token
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(
        {**payment, "transaction_timestamp": "0001-01-01T00:00:00+14:00"}),
        headers={"x-callback-token": token})
    assert r.status_code == 200, r.text
    await settled_quietly(stack, va.id)
    [(verified, outcome)] = await outcomes(stack, va.id)
    assert verified and outcome is not None and outcome.startswith(
        "unreadable: malformed Xendit callback: time '0001-01-01T00:00:00+14:00' is out of range")


async def test_a_verified_callback_lunas_cannot_read_still_finds_a_late_payment(
    stack: Stack,
) -> None:
    """Xendit's legacy callback shapes are known only from third parties (RAILS.md §7): a
    genuine VA payment whose callback Lunas cannot read (here its time in epoch milliseconds)
    on an attempt Lunas closed is still Xendit's word that this attempt moved. The verifier
    reads a closed attempt no more, so recorded "unreadable" and left there, the late payment
    reached nobody (rule 4); the status read the callback asks for finds it."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await close_attempt(stack, order_id, attempt.id)
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    payment = await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount,
        "force": True})
    token = stack.container.settings.providers.xendit_callback_token
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(
        {**payment, "transaction_timestamp": 1741572339000}),
        headers={"x-callback-token": token})
    assert r.status_code == 200, r.text
    await run_relay(stack.container, order_state(stack, order_id), "needs_review")
    assert await review(stack, order_id) == [
        ("payment_after_expiry", "honour", attempt.transfer_amount)]
    [(verified, outcome)] = await outcomes(stack, attempt.id)
    assert verified and outcome == "status read: payment applied: after_expiry, order needs_review"


async def test_a_verified_callback_amount_with_a_fraction_never_settles_as_whole_rupiah(
    stack: Stack,
) -> None:
    """Lunas money is whole rupiah, compared exactly: a callback amount with a fraction is not
    an amount Lunas can read, however small the fraction. Parsed as a float, a fraction below
    its precision was rounded away and the order paid by an amount nobody sent."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    payment = await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount})
    raw = json.dumps({**payment, "amount": "AMOUNT"}).replace(
        '"AMOUNT"', f"{attempt.transfer_amount}.0000000000001")
    r = await stack.client.post("/v1/webhooks/xendit", content=raw,
                                headers={"x-callback-token": stack.container.settings
                                         .providers.xendit_callback_token})
    assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    [(verified, outcome)] = await outcomes(stack, attempt.id)
    assert verified and outcome is not None and outcome.startswith(
        "unreadable: malformed Xendit callback: amount "), outcome
    assert await evidence_count(stack, order_id) == 0
    # What Xendit's status answer says (the whole amount) settles it instead.
    await run_verifier(stack.container, order_state(stack, order_id), "paid")


async def test_a_signed_pending_notification_relabelled_settlement_is_not_trusted(
    stack: Stack,
) -> None:
    """Midtrans signs order_id, status_code and gross_amount, not transaction_status: a genuine
    pending notification (status code 201) rewritten to say settlement keeps a valid signature.
    A payment is trusted only under its signed status code 200; this one is refused like a
    forgery, and the status read it queues finds the order unpaid."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    key = stack.container.settings.providers.midtrans_server_key
    pending = midtrans_body(attempt, status="pending", code="201", txid=str(uuid.uuid4()),
                            key=key)
    relabelled = {**pending, "transaction_status": "settlement",
                  "settlement_time": "2025-03-10 09:05:00"}
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(relabelled))
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "bad_signature"
    await settled_quietly(stack, attempt.id)
    await run_verifier(stack.container, checks(stack, attempt.id), 1)
    assert (await attempt_row(stack, attempt.id)).last_check == "pending: pending"
    assert await evidence_count(stack, order_id) == 0
    assert (await order_state(stack, order_id)()) == "awaiting_payment"


async def test_forged_xendit_callback_never_settles_but_its_status_read_finds_the_truth(
    stack: Stack,
) -> None:
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    # The genuine callback is lost (nowhere to go); the customer has paid.
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    payment = await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount})
    forged = {**payment, "amount": 1, "payment_id": str(uuid.uuid4())}
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(forged),
                                headers={"x-callback-token": "wrong-token"})
    assert r.status_code == 401, r.text
    async with stack.container.db.read() as conn:
        row = (await conn.execute(sa.select(provider_deliveries).where(
            provider_deliveries.c.attempt_id == attempt.id))).one()
    assert row.verified is False and row.event_key is None
    assert "x-callback-token" not in row.headers
    await run_verifier(stack.container, order_state(stack, order_id), "paid")
    async with stack.container.db.read() as conn:
        applied = (await conn.execute(sa.select(evidence).where(
            evidence.c.order_id == order_id))).all()
    # Settled by what the provider's status API said (the expected amount), not the forged 1.
    assert [(e.kind, e.amount) for e in applied] == [("provider_status", attempt.transfer_amount)]
    found = await outcomes(stack, attempt.id)
    assert found[0][1] is not None and found[0][1].startswith(
        "unverified: never trusted; status read brought forward to ")
    assert (await attempt_row(stack, attempt.id)).last_check == "paid: settle"


async def test_a_flood_of_forged_deliveries_costs_one_status_read_a_minute_per_attempt(
    stack: Stack,
) -> None:
    """Attempt ids are not secret and every status read draws from the provider's shared pace
    (Xendit allows 600 a minute): forged deliveries, however many, only bring the attempt's one
    scheduled read forward, and after a read no sooner than a minute after it."""
    _, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")

    async def forge(n: int) -> None:
        for _ in range(n):
            forged = midtrans_body(attempt, status="settlement", code="200",
                                   txid=str(uuid.uuid4()), key="not-the-server-key")
            r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(forged))
            assert r.status_code == 401
        await settled_quietly(stack, attempt.id)

    await forge(20)
    await run_verifier(stack.container, checks(stack, attempt.id), 1)
    await forge(20)
    await asyncio.sleep(1)  # the verifier would have read again by now if it were asked to
    await run_verifier(stack.container, checks(stack, attempt.id), 1)
    # One read of this attempt. (Counted on the attempt, not at the simulator: the simulators
    # and the database are shared with the other tests here, and reads other tests left due
    # reach the same simulator.)
    read = await attempt_row(stack, attempt.id)
    assert read.checks == 1
    assert read.next_check_at == read.last_checked_at + timedelta(minutes=1)
    found = [o or "" for v, o in await outcomes(stack, attempt.id) if not v]
    assert len(found) == 40
    assert sum(o.startswith("unverified: never trusted; status read brought forward") for o in
               found) == 2
    assert all(o.startswith("unverified: never trusted; status read ") for o in found)


async def test_a_forged_body_is_stored_bounded(stack: Stack) -> None:
    """Every delivery is stored, forged ones too, for as long as deliveries are kept: a forged
    body is kept as its first 16 KiB with its length and hash, never a megabyte a request."""
    _, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    forged = {**midtrans_body(attempt, status="settlement", code="200", txid=str(uuid.uuid4()),
                              key="not-the-server-key"), "padding": "x" * 900_000}
    raw = json.dumps(forged).encode()
    r = await stack.client.post("/v1/webhooks/midtrans", content=raw)
    assert r.status_code == 401, r.text
    async with stack.container.db.read() as conn:
        stored = (await conn.execute(sa.select(provider_deliveries.c.raw_body).where(
            provider_deliveries.c.attempt_id == attempt.id,
            provider_deliveries.c.verified.is_(False)))).scalar_one()
    assert stored.startswith(raw[:16_384].decode())
    assert stored.endswith(f"[stored truncated: {len(raw)} bytes received, sha256 "
                           f"{hashlib.sha256(raw).hexdigest()}]")
    assert len(stored) < 16_500


async def paid_in_dollars_at_xendit(stack: Stack, attempt: Any) -> dict[str, Any]:
    """The customer pays the attempt's VA the expected number, reported in dollars; Xendit's
    callback is not sent (returned, for a test to post)."""
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    return await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount,
        "currency": "USD"})


async def test_a_verified_payment_in_another_currency_goes_to_a_person_never_settles_as_rupiah(
    stack: Stack,
) -> None:
    """Lunas charges rupiah only. A callback that reports the payment in dollars, even of the
    expected number, is money that moved (rule 4) but no number of rupiah: the order goes to
    review with a machine-readable reason, as an amount mismatch does, and the evidence and the
    events say the currency so nobody takes the amount for rupiah."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    payment = await paid_in_dollars_at_xendit(stack, attempt)
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(payment),
                                headers={"x-callback-token": stack.container.settings
                                         .providers.xendit_callback_token})
    assert r.status_code == 200, r.text
    await run_relay(stack.container, order_state(stack, order_id), "needs_review")
    assert await scalar(stack, sa.select(orders.c.review_reason).where(
        orders.c.id == order_id)) == "currency_mismatch"
    assert await review(stack, order_id) == [
        ("currency_mismatch", "check_at_source", attempt.transfer_amount)]
    [(outcome,)] = [(o,) for _, o in await outcomes(stack, attempt.id)]
    assert outcome == "payment applied: discrepancy, order needs_review"
    async with stack.container.db.read() as conn:
        [found] = (await conn.execute(sa.select(evidence).where(
            evidence.c.order_id == order_id))).all()
        told = dict((await conn.execute(sa.select(outbox.c.event_type, outbox.c.payload).where(
            outbox.c.aggregate_id == order_id,
            outbox.c.event_type.in_(["order.needs_review", "review_case.opened"])))).all())
    assert found.details["currency"] == "USD"
    needs_review = told["order.needs_review"]
    assert (needs_review["currency"], needs_review["paid_currency"]) == ("IDR", "USD")
    assert told["review_case.opened"]["currency"] == "USD"


async def test_a_status_read_in_another_currency_goes_to_a_person_too(stack: Stack) -> None:
    """The callback is lost; the scheduled status read finds the payment, in dollars."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await paid_in_dollars_at_xendit(stack, attempt)
    await make_due(stack, attempt.id)
    await run_verifier(stack.container, order_state(stack, order_id), "needs_review")
    assert await review(stack, order_id) == [
        ("currency_mismatch", "check_at_source", attempt.transfer_amount)]


async def close_attempt(stack: Stack, order_id: str, attempt_id: str, *,
                        ago: timedelta = timedelta(0)) -> None:
    """Lunas expired the order and its attempt ``ago`` (the provider's charge stays payable)."""
    closed = stack.container.clock.now() - ago
    async with stack.container.db.transaction() as conn:
        await conn.execute(payment_attempts.update().where(
            payment_attempts.c.id == attempt_id).values(
                state="expired", closed_at=closed, updated_at=closed, next_check_at=None))
        await conn.execute(orders.update().where(orders.c.id == order_id).values(
            state="expired"))


async def test_an_unverifiable_payment_on_an_attempt_lunas_closed_is_read_once_and_found(
    stack: Stack,
) -> None:
    """The server key was rotated at Midtrans but not yet in Lunas: every notification fails
    verification, and the verifier reads an expired attempt no more. While the attempt is
    within the code quarantine of its closing, such a delivery asks for one paced status read
    (however many arrive), and the late payment reaches a person (rule 4: nothing lost)."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await close_attempt(stack, order_id, attempt.id)
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    try:
        paid = await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
        rotated = midtrans_body(attempt, status="settlement", code="200",
                                txid=paid["transaction_id"], key="the-new-server-key")
        before = await stack.calls("midtrans", "status")
        for _ in range(5):  # the provider retries; a forger repeats
            r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(rotated))
            assert r.status_code == 401, r.text
        await run_relay(stack.container, order_state(stack, order_id), "needs_review")
        await settled_quietly(stack, attempt.id)
    finally:
        await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": False})
    assert await stack.calls("midtrans", "status") - before == 1
    assert await review(stack, order_id) == [
        ("payment_after_expiry", "honour", attempt.transfer_amount)]
    found = [o or "" for v, o in await outcomes(stack, attempt.id) if not v]
    read = "status read: payment applied: after_expiry, order needs_review"
    assert found.count(read) == 1, found
    assert all(o.startswith(("unverified: never trusted; status read already queued for ",
                             "unverified: never trusted; attempt paid meanwhile"))
               for o in found if o != read), found


async def test_an_unverifiable_delivery_for_an_attempt_closed_long_ago_reads_nothing(
    stack: Stack,
) -> None:
    """Past the code quarantine of its closing, a delivery nobody can verify is not worth a
    read of a closed attempt: it proves nothing, and the provider's own retries have ended."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await close_attempt(stack, order_id, attempt.id,
                        ago=stack.container.settings.unique_codes.quarantine
                        + timedelta(minutes=1))
    before = await stack.calls("midtrans", "status")
    forged = midtrans_body(attempt, status="settlement", code="200", txid=str(uuid.uuid4()),
                           key="not-the-server-key")
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(forged))
    assert r.status_code == 401, r.text
    await settled_quietly(stack, attempt.id)
    [outcome] = [o or "" for v, o in await outcomes(stack, attempt.id) if not v]
    assert outcome.startswith("unverified: never trusted; attempt expired since ")
    assert outcome.endswith(", past its watch, not read")
    assert await stack.calls("midtrans", "status") == before


async def superseded_midtrans_attempt(stack: Stack) -> tuple[str, Any]:
    """A Midtrans QRIS order whose customer switched to a VA: the QR attempt is superseded."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    r = await stack.client.post(f"/v1/orders/{order_id}/payment", headers=stack.shop.headers,
                                json={"rail": "va", "channel": "bni"})
    assert r.status_code == 201, r.text
    assert (await attempt_row(stack, attempt.id)).state == "superseded"
    return order_id, attempt


async def test_a_signed_cancel_relabelled_settlement_never_settles(stack: Stack) -> None:
    """Lunas cancels a superseded Midtrans instrument, and Midtrans notifies ``cancel`` under
    status code 200, signed over order_id, status_code and gross_amount only. That genuine body
    relabelled ``settlement`` verifies; for an attempt Lunas may have cancelled, the status read
    answers instead, and it says cancel."""
    order_id, attempt = await superseded_midtrans_attempt(stack)
    async def state() -> object:
        return (await attempt_row(stack, attempt.id)).state
    await run_relay(stack.container, state, "failed")  # cancelled at Midtrans, which said so
    async with stack.container.db.read() as conn:
        cancel = json.loads((await conn.execute(sa.select(provider_deliveries.c.raw_body).where(
            provider_deliveries.c.attempt_id == attempt.id, provider_deliveries.c.verified,
            provider_deliveries.c.outcome == "attempt superseded -> failed"))).scalar_one())
    assert (cancel["transaction_status"], cancel["status_code"]) == ("cancel", "200")
    relabelled = {**cancel, "transaction_status": "settlement",
                  "settlement_time": "2025-03-10 09:05:00"}
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(relabelled))
    assert r.status_code == 200, r.text  # it verifies: the signature cannot tell
    async def last() -> object:
        return [o for v, o in await outcomes(stack, attempt.id) if v][-1]
    await run_relay(stack.container, last, "status read: provider says cancel; no change")
    assert await evidence_count(stack, order_id) == 0
    assert (await order_state(stack, order_id)()) == "awaiting_payment"


async def test_a_genuine_payment_on_a_superseded_midtrans_attempt_settles_once_confirmed(
    stack: Stack,
) -> None:
    """The customer pays the old QR before Lunas's cancel reaches Midtrans: the signed
    settlement is confirmed by a status read, which settles the order (rule 4) exactly as the
    notification would have. A live active attempt's settlement is applied at once, as ever."""
    order_id, attempt = await superseded_midtrans_attempt(stack)
    await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    await wait_for(lambda: scalar(stack, sa.select(sa.func.count()).select_from(
        provider_deliveries).where(provider_deliveries.c.attempt_id == attempt.id,
                                   provider_deliveries.c.event_key.like("%:settlement:%"))), 1)
    await run_verifier(stack.container, order_state(stack, order_id), "paid")
    async with stack.container.db.read() as conn:
        applied = (await conn.execute(sa.select(evidence).where(
            evidence.c.order_id == order_id))).all()
    assert [(e.kind, e.attempt_id, e.amount) for e in applied] == [
        ("provider_status", attempt.id, attempt.transfer_amount)]
    [settlement] = [o for _, o in await outcomes(stack, attempt.id)
                    if o is not None and o.startswith("signed payment")]
    assert settlement.startswith("signed payment on a superseded attempt: not applied, a status "
                                 "read confirms it; status read brought forward to "), settlement


async def paid_midtrans_order(stack: Stack) -> tuple[str, Any, dict[str, Any]]:
    """A QRIS order paid through Midtrans, its settlement applied: (order id, attempt, the
    settlement notification)."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    paid = await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    return order_id, attempt, paid


async def chargeback_notification(stack: Stack, *, answered: str = "chargeback",
                                  ) -> tuple[str, Any, dict[str, Any]]:
    """A paid Midtrans QRIS order whose status read now answers ``answered``, and Midtrans's
    signed ``chargeback`` notification for it, not yet posted: (order id, attempt, body)."""
    order_id, attempt, paid = await paid_midtrans_order(stack)
    await sim_post(stack.sims.midtrans.control_url, "/answer", {
        "order_id": attempt.id, "fields": {"transaction_status": answered}})
    key = stack.container.settings.providers.midtrans_server_key
    return order_id, attempt, midtrans_body(attempt, status="chargeback", code="200",
                                            txid=paid["transaction_id"], key=key)


async def test_a_chargeback_on_a_paid_order_opens_a_case_and_the_order_stays_paid(
    stack: Stack,
) -> None:
    """The customer's bank pulls a settled QRIS payment back. Midtrans notifies
    ``chargeback`` (signed, like any notification; the signature leaves the status out, so a
    status read confirms it). The order stays paid (no edge leaves ``paid``); a case with reason
    ``chargeback`` opens, once however often it is notified, is listed by the API, and the
    merchant hears it. Before: the delivery was "unreadable" and nobody heard of it."""
    order_id, attempt, chargeback = await chargeback_notification(stack)
    for body in (chargeback, chargeback, {**chargeback, "transaction_status": "CHARGEBACK"}):
        r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(body))
        assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert (await order_state(stack, order_id)()) == "paid"
    assert await review(stack, order_id) == [
        ("chargeback", "dispute_or_accept", attempt.transfer_amount)]
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    [case] = (await stack.client.get("/v1/reviews", headers=ops,
                                     params={"order_id": order_id})).json()["data"]
    assert (case["reason"], case["recommended_action"], case["state"]) == (
        "chargeback", "dispute_or_accept", "open")
    async with stack.container.db.read() as conn:
        told = (await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.aggregate_id == order_id,
            outbox.c.event_type == "review_case.opened"))).scalars().all()
    assert [(t["reason"], t["case_id"], t["amount"]) for t in told] == [
        ("chargeback", case["id"], attempt.transfer_amount)]
    found = [o or "" for v, o in await outcomes(stack, attempt.id) if v]
    assert sum(o.startswith("status read: provider says chargeback; review case") for o in found
               ) == 1, found


async def test_a_chargeback_the_provider_does_not_confirm_opens_nothing(stack: Stack) -> None:
    """A signed settlement body relabelled ``chargeback`` verifies (the status is not signed);
    the status read says settlement, so no case opens and the merchant hears nothing."""
    order_id, attempt, paid = await paid_midtrans_order(stack)
    relabelled = {**paid, "transaction_status": "chargeback"}
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(relabelled))
    assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert (await order_state(stack, order_id)()) == "paid"
    assert await review(stack, order_id) == []
    assert [o for v, o in await outcomes(stack, attempt.id) if v][-1] == (
        "status read: provider says settlement; no reversal")


async def test_a_foreign_payment_answering_a_window_case_is_noted_and_shown_in_its_currency(
    stack: Stack,
) -> None:
    """An order in review because its verification window ran out; the payment it waited for
    turns up reported in dollars. Lunas closes the window case (the question is answered) and
    opens a currency_mismatch case. Before: the closing note said "125000 rupiah confirmed", and
    the new case showed 125000 with no currency, both read as rupiah."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    async with stack.container.db.transaction() as conn:
        await conn.execute(orders.update().where(orders.c.id == order_id).values(
            state="needs_review", review_reason="verification_window_exhausted"))
        order = (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).one()
        window_case = await open_review_case(
            conn, order, "verification_window_exhausted", "check_at_source", order.amount, None,
            now=stack.container.clock.now())
    payment = await paid_in_dollars_at_xendit(stack, attempt)
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(payment),
                                headers={"x-callback-token": stack.container.settings
                                         .providers.xendit_callback_token})
    assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    cases = {c["id"]: c for c in (await stack.client.get(
        "/v1/reviews", headers=ops, params={"order_id": order_id, "status": ""})
    ).json()["data"]}
    closed = cases.pop(window_case)
    assert (closed["state"], closed["resolution"]) == ("resolved", "payment_found")
    assert closed["currency"] == "IDR"  # the order's amount, which the case asked about
    assert closed["note"].startswith(f"{attempt.transfer_amount} USD (not rupiah) confirmed by "
                                     "provider_webhook evidence"), closed["note"]
    [(reason, amount, currency)] = [(c["reason"], c["amount"], c["currency"])
                                    for c in cases.values()]
    assert (reason, amount, currency) == ("currency_mismatch", attempt.transfer_amount, "USD")


async def test_a_chargeback_found_by_a_status_read_proves_the_payment_and_opens_a_case(
    stack: Stack,
) -> None:
    """Every notification was lost; the first status read of the QR says ``chargeback``: it was
    paid, then pulled back. Both are facts: the payment settles the order (exactly once, as any
    read of it), and a chargeback case opens. Before: the answer was unreadable and read again
    for ever with growing gaps."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await sim_post(stack.sims.midtrans.control_url, "/answer", {
        "order_id": attempt.id, "fields": {"transaction_status": "chargeback",
                                           "settlement_time": "2025-03-10 09:05:00"}})
    await make_due(stack, attempt.id)
    await run_verifier(stack.container, order_state(stack, order_id), "paid")
    assert await review(stack, order_id) == [
        ("chargeback", "dispute_or_accept", attempt.transfer_amount)]
    async with stack.container.db.read() as conn:
        verdicts = sorted((e.verdict, e.kind) for e in await conn.execute(
            sa.select(evidence).where(evidence.c.order_id == order_id)))
    assert verdicts == [("chargeback", "provider_status"), ("settle", "provider_status")]
    assert (await attempt_row(stack, attempt.id)).state == "paid"


async def paid_by_va_and_by_an_unseen_qr(stack: Stack) -> tuple[str, Any]:
    """The customer paid the order's VA (applied), and also the old QR, whose notification was
    lost: (order id, the QR attempt, never seen paid)."""
    order_id, qr = await superseded_midtrans_attempt(stack)
    async with stack.container.db.read() as conn:
        va = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == order_id,
            payment_attempts.c.state == "active"))).one()
    now = stack.container.clock.now()
    async with stack.container.db.transaction() as conn:
        await apply_payment(conn, Payment(
            attempt_id=va.id, amount=va.transfer_amount, evidence_key=f"test:{va.id}",
            kind="provider_webhook", observed_at=now, details={}), now=now,
            quarantine=timedelta(hours=1))
    return order_id, qr


async def reversal_read(stack: Stack, attempt: Any, status: ProviderStatus) -> str | None:
    """A status read of ``attempt`` said ``status`` (a reversal): applied as the verifier does."""
    async with stack.container.db.transaction() as conn:
        return await apply_reversal(conn, attempt, status, kind="provider_status", details={},
                                    now=stack.container.clock.now(),
                                    quarantine=timedelta(hours=1))


async def test_a_chargeback_of_a_payment_never_seen_on_an_order_paid_otherwise_asks_no_refund(
    stack: Stack,
) -> None:
    """A status read of the unseen QR says ``chargeback``: both payments are facts, but the
    second one's money is already back with the customer. One case opens, the chargeback; the
    order stays paid. Before: a ``second_payment`` case opened too, recommending a refund of
    money already returned (the customer would be paid twice)."""
    order_id, qr = await paid_by_va_and_by_an_unseen_qr(stack)
    assert await reversal_read(stack, qr, ProviderStatus(
        status=NeutralStatus.CHARGED_BACK, provider_ref=None, paid_amount=qr.transfer_amount,
        raw_status="chargeback")) is not None
    assert (await order_state(stack, order_id)()) == "paid"
    assert await review(stack, order_id) == [
        ("chargeback", "dispute_or_accept", qr.transfer_amount)]
    async with stack.container.db.read() as conn:
        proven = (await conn.execute(sa.select(evidence.c.verdict).where(
            evidence.c.attempt_id == qr.id).order_by(evidence.c.id))).scalars().all()
    assert sorted(proven) == ["chargeback", "second_payment"]  # the payment is still recorded
    assert (await attempt_row(stack, qr.id)).state == "paid"


async def test_a_second_payment_refunded_in_part_keeps_a_case_for_the_rest(
    stack: Stack,
) -> None:
    """The merchant refunded 20000 of the unseen QR payment at the provider; the read says
    refunded in part. Two cases: the refund (20000, check at source) and the second payment,
    whose rest is still with the merchant (check at source what is left to refund). Before
    (seams review): only the refund's case opened, and the rest of a double payment reached
    nobody."""
    order_id, qr = await paid_by_va_and_by_an_unseen_qr(stack)
    assert await reversal_read(stack, qr, ProviderStatus(
        status=NeutralStatus.REFUNDED, provider_ref=None, paid_amount=qr.transfer_amount,
        reversed_amount=20_000, raw_status="partial_refund")) is not None
    assert (await order_state(stack, order_id)()) == "paid"
    assert sorted(await review(stack, order_id)) == [
        ("refunded_at_provider", "check_at_source", 20_000),
        ("second_payment", "check_at_source", qr.transfer_amount)]


async def test_an_active_attempt_cancelled_at_midtrans_fails_over_and_never_settles(
    stack: Stack,
) -> None:
    """Someone cancels the customer's live QR in the Midtrans dashboard, outside Lunas. Midtrans
    notifies ``cancel`` under status code 200, signed over order_id, status code and amount
    only; that body relabelled ``settlement`` verifies, and here it arrives first, while the
    attempt is still active. It must not settle: the provider's status answers (cancel). The
    attempt closes as failed, the order stays open and says payment_failed, and the merchant is
    told once. Before: the relabelled body settled the order at once."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    key = stack.container.settings.providers.midtrans_server_key
    async with httpx.AsyncClient(verify=default_trust(), auth=(key, "")) as dashboard:
        r = await dashboard.post(f"{stack.sims.midtrans.data_url}/v2/{attempt.id}/cancel")
        assert r.status_code == 200 and r.json()["transaction_status"] == "cancel", r.text
    cancel = midtrans_body(attempt, status="cancel", code="200", txid=r.json()["transaction_id"],
                           key=key)
    relabelled = {**cancel, "transaction_status": "settlement",
                  "settlement_time": "2025-03-10 09:05:00"}
    for body in (relabelled, cancel):
        r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(body))
        assert r.status_code == 200, r.text  # both verify: the signature cannot tell
    await settled_quietly(stack, attempt.id)
    assert await evidence_count(stack, order_id) == 0
    assert (await attempt_row(stack, attempt.id)).state == "failed"
    seen = (await stack.client.get(f"/v1/orders/{order_id}", headers=stack.shop.headers)).json()
    assert (seen["status"], seen["verification"]["state"]) == ("awaiting_payment",
                                                               "payment_failed")
    async with stack.container.db.read() as conn:
        told = (await conn.execute(sa.select(outbox.c.event_type).where(
            outbox.c.aggregate_id == order_id, outbox.c.event_type.in_(
                ["order.payment_failed", "order.paid"])))).scalars().all()
    assert told == ["order.payment_failed"]

def closed_reads(stack: Stack, attempt_id: str, status: str) -> Callable[[], Awaitable[object]]:
    """How many status-read jobs of ``attempt_id`` (``attempt.verify``) are in ``status``."""
    return lambda: scalar(stack, sa.select(sa.func.count()).select_from(outbox).where(
        outbox.c.event_type == "attempt.verify", outbox.c.aggregate_id == attempt_id,
        outbox.c.status == status))


async def late_payment_nobody_can_verify(stack: Stack) -> tuple[str, Any]:
    """A Midtrans QR Lunas expired, paid late; its notification fails verification (a rotated
    server key), so it asks for a status read of the closed attempt."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await close_attempt(stack, order_id, attempt.id)
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    paid = await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    rotated = midtrans_body(attempt, status="settlement", code="200",
                            txid=paid["transaction_id"], key="the-new-server-key")
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(rotated))
    assert r.status_code == 401, r.text
    return order_id, attempt


async def test_a_throttled_read_of_a_closed_attempt_waits_for_the_provider_never_dead_letters(
    stack: Stack,
) -> None:
    """Regression (review): the status read of a closed attempt that a delivery asked for
    raised on a 429, the relay retried it within seconds into the provider's pause, and its
    tries ran out: dead-lettered, and the late payment was never found. A 429 says the provider
    is up: the read is asked again after its Retry-After, as often as it takes."""
    order_id, attempt = await late_payment_nobody_can_verify(stack)
    await stack.fault("midtrans", kind="rate_limit", operation="status", retry_after_s=1)
    await relay_for(stack.container, 3)  # more than the relay's six tries 0.2 s apart
    assert await closed_reads(stack, attempt.id, "dead")() == 0
    assert await closed_reads(stack, attempt.id, "pending")() == 1  # asked again, once
    assert (await attempt_row(stack, attempt.id)).last_check.startswith(
        "status read queued: throttled (429)")
    async with httpx.AsyncClient(verify=default_trust()) as c:
        await c.delete(f"{stack.sims.midtrans.control_url}/faults")
    await run_relay(stack.container, order_state(stack, order_id), "needs_review")
    assert await review(stack, order_id) == [
        ("payment_after_expiry", "honour", attempt.transfer_amount)]
    await settled_quietly(stack, attempt.id)
    [outcome] = [o for v, o in await outcomes(stack, attempt.id) if not v]
    assert outcome == "status read: payment applied: after_expiry, order needs_review"


async def test_an_unreadable_answer_for_a_closed_attempt_is_read_again_with_growing_gaps(
    stack: Stack,
) -> None:
    """Regression (review): an answer Lunas cannot read (a status it does not know) for a
    closed attempt's read raised, and the relay's tries ran out: dead-lettered. It is read
    again with gaps doubling from ``retry_after_failure`` (0.3 s here) up to
    ``UNREADABLE_MAX_GAP``, as the verifier reads a live attempt, until the answer can be
    read."""
    order_id, attempt = await late_payment_nobody_can_verify(stack)
    answer = {"order_id": attempt.id, "fields": {"transaction_status": "on_hold"}}
    await sim_post(stack.sims.midtrans.control_url, "/answer", answer)
    await relay_for(stack.container, 3)
    assert await closed_reads(stack, attempt.id, "dead")() == 0
    assert await closed_reads(stack, attempt.id, "pending")() == 1
    row = await attempt_row(stack, attempt.id)
    # Read at 0, 0.3, 0.9 and 2.1 s in three seconds (every 0.3 s would be ten reads).
    assert re.match(r"status read queued: unreadable answer \(([34]) in a row\)",
                    row.last_check), row.last_check
    assert "on_hold" in row.last_check
    await sim_post(stack.sims.midtrans.control_url, "/answer", {**answer, "fields": {}})
    await run_relay(stack.container, order_state(stack, order_id), "needs_review")
    assert await review(stack, order_id) == [
        ("payment_after_expiry", "honour", attempt.transfer_amount)]


def payment_failed_told(stack: Stack, order_id: str) -> Callable[[], Awaitable[object]]:
    """The ``order.payment_failed`` events written for ``order_id``, by the attempt named."""
    async def told() -> object:
        async with stack.container.db.read() as conn:
            return [p["attempt_id"] for p in (await conn.execute(sa.select(outbox.c.payload).where(
                outbox.c.aggregate_id == order_id,
                outbox.c.event_type == "order.payment_failed"))).scalars()]
    return told


async def declined_while_a_switch_is_unknown(stack: Stack) -> tuple[str, Any, Any]:
    """A Midtrans QRIS order whose customer switched to GoPay (no fallback): the charge was
    made but its answer lost, so the attempt is unknown; then the QR they held is declined.
    Midtrans's notifications are lost. Returns the order id, the QR and the GoPay attempts."""
    order_id, qr = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    async with stack.container.db.transaction() as conn:  # GoPay or nothing
        await conn.execute(merchants.update().where(
            merchants.c.id == stack.shop.merchant_id).values(allow_fallback=False))
    await stack.fault("midtrans", kind="timeout_after_success", operation="create",
                      channel="gopay")
    # Midtrans's notifications are lost: only a read can confirm the cancel to come.
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    r = await stack.client.post(f"/v1/orders/{order_id}/payment", headers=stack.shop.headers,
                                json={"rail": "ewallet", "channel": "gopay"})
    assert r.status_code == 503, r.text  # the QR's instructions stay valid
    async with httpx.AsyncClient(verify=default_trust()) as c:
        await c.delete(f"{stack.sims.midtrans.control_url}/faults")
    async with stack.container.db.read() as conn:
        [orphan] = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == order_id,
            payment_attempts.c.channel == "gopay"))).all()
    assert orphan.state == "unknown"
    key = stack.container.settings.providers.midtrans_server_key
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(midtrans_body(
        qr, status="deny", code="202", txid=f"tx-deny-{uuid.uuid4()}", key=key)))
    assert r.status_code == 200, r.text
    return order_id, qr, orphan


async def test_a_live_orphan_nothing_else_serves_is_confirmed_cancelled_and_the_merchant_told(
    stack: Stack,
) -> None:
    """Regression (review): the customer switched to GoPay and the charge's answer was lost
    (made at Midtrans, unknown here); then the QR they held was declined. The unknown charge
    might be live, so nobody is told yet. Resolved, it is live: its instructions never reached
    the customer, so it is cancelled at Midtrans and kept watched as superseded, which still
    counts as payable until a read confirms the cancel. That read waited for the rail's
    schedule (minutes for e-wallets, hours for a VA), and until then the merchant was not told
    that nothing was left to pay on. The read now comes at once, and its close tells."""
    order_id, qr, orphan = await declined_while_a_switch_is_unknown(stack)
    await settled_quietly(stack, qr.id)
    assert await payment_failed_told(stack, order_id)() == []  # the orphan may be live
    await run_verifier(stack.container, payment_failed_told(stack, order_id), [orphan.id])
    assert (await attempt_row(stack, qr.id)).state == "failed"
    assert (await attempt_row(stack, orphan.id)).state == "failed"
    async with httpx.AsyncClient(verify=default_trust()) as c:
        charge = (await c.get(f"{stack.sims.midtrans.control_url}/transactions/{orphan.id}"))
    assert charge.json()["transaction_status"] == "cancel"


async def what_each_says(stack: Stack, order_id: str) -> tuple[str | None, str]:
    """The order API's ``verification.state`` and the status page lookup's state."""
    api = (await stack.client.get(f"/v1/orders/{order_id}", headers=stack.shop.headers)).json()
    page = await stack.client.post("/status/orders", data={"code": order_id,
                                                           "contact": "andi@example.co.id"})
    assert page.status_code == 200, page.text
    found = re.search(r'data-state="([a-z_]+)"', page.text)
    assert found is not None, page.text
    return (api["verification"] or {}).get("state"), found.group(1)


async def test_the_order_api_and_the_status_page_agree_while_a_create_is_unverified(
    stack: Stack,
) -> None:
    """Regression (review): with the order's instrument declined and its other attempt
    unknown (a create whose answer was lost, which may yet be live), the order API said
    ``payment_failed`` while the status page said awaiting payment. Both now decide it as
    ``order.payment_failed`` does (domain.order.nothing_left_to_pay): not failed while an
    attempt may yet turn out live; failed once it is read and found closed."""
    order_id, qr, orphan = await declined_while_a_switch_is_unknown(stack)
    async with stack.container.db.transaction() as conn:  # its job waits behind others
        await conn.execute(outbox.update().where(
            outbox.c.event_type == "attempt.unknown", outbox.c.aggregate_id == orphan.id)
            .values(available_at=stack.container.clock.now() + timedelta(hours=1)))
    await settled_quietly(stack, qr.id)
    assert (await attempt_row(stack, qr.id)).state == "failed"
    assert (await attempt_row(stack, orphan.id)).state == "unknown"
    assert await what_each_says(stack, order_id) == (None, "awaiting_payment")
    assert await payment_failed_told(stack, order_id)() == []

    await make_due(stack, orphan.id)  # the verifier resolves it: live, cancelled, closed
    await run_verifier(stack.container, payment_failed_told(stack, order_id), [orphan.id])
    assert await what_each_says(stack, order_id) == ("payment_failed", "payment_failed")


async def settle_directly(stack: Stack, attempt: Any, *, evidence_key: str, kind: str) -> None:
    """Settle ``attempt`` as a delivery or a read would (``apply_payment``), in a transaction of
    its own: for a test that must time it against something else (behind a held lock)."""
    now = stack.container.clock.now()
    async with stack.container.db.transaction() as conn:
        await apply_payment(conn, Payment(
            attempt_id=attempt.id, amount=attempt.transfer_amount, evidence_key=evidence_key,
            kind=kind, observed_at=now, details={}), now=now,
            quarantine=stack.container.settings.unique_codes.quarantine)


async def lock_waiters(stack: Stack) -> int:
    """Sessions of this database waiting for a row lock right now."""
    return int(await scalar(stack, sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'")))


async def test_a_close_and_a_payment_on_two_attempts_of_one_order_never_deadlock(
    stack: Stack,
) -> None:
    """Regression (final review, 05dd6bc): closing an attempt updated it and only then locked
    its order, the reverse of settlement (order, then the paid attempt, then the others it
    retires). The customer's old QR is paid while their GoPay charge is declined: the payment
    holds the order and waits for the GoPay row, the close holds that row and waits for the
    order, and PostgreSQL aborts one of them. Both now lock the order first: the later one
    waits its turn, and neither is retried."""
    order_id, qr = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    r = await stack.client.post(f"/v1/orders/{order_id}/payment", headers=stack.shop.headers,
                                json={"rail": "ewallet", "channel": "gopay"})
    assert r.status_code == 201, r.text
    gopay = await attempt_row(stack, r.json()["payment"]["attempt_id"])
    await relay_for(stack.container, 0.5)  # the QR's cancel, and the merchant's news
    assert ((await attempt_row(stack, qr.id)).state, gopay.state) == ("superseded", "active")

    key = stack.container.settings.providers.midtrans_server_key
    async with stack.container.db.transaction() as hold:  # both queue behind this lock
        await hold.execute(sa.select(orders.c.id).where(orders.c.id == order_id)
                           .with_for_update())
        paying = asyncio.create_task(settle_directly(
            stack, qr, evidence_key=f"midtrans:status:{qr.id}:paid", kind="provider_status"))
        await wait_for(lambda: lock_waiters(stack), 1)
        r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(midtrans_body(
            gopay, status="deny", code="202", txid=f"tx-deny-{uuid.uuid4()}", key=key)))
        assert r.status_code == 200, r.text
        closing = asyncio.create_task(settled_quietly(stack, gopay.id))
        await wait_for(lambda: lock_waiters(stack), 2)
    await paying  # first in the queue: settles the order, retires the GoPay charge
    await closing
    async with stack.container.db.read() as conn:
        tries = (await conn.execute(sa.select(outbox.c.attempts, outbox.c.last_error).where(
            outbox.c.event_type == "provider.delivery",
            outbox.c.aggregate_id == gopay.id))).all()
    assert [(t.attempts, t.last_error) for t in tries] == [(1, None)]  # no deadlock victim
    assert await order_state(stack, order_id)() == "paid"
    assert (await attempt_row(stack, qr.id)).state == "paid"
    [(_, outcome)] = await outcomes(stack, gopay.id)
    # The payment retired the GoPay charge (superseded) while the close waited; the decline
    # is then applied to the attempt as it is now, in the same try.
    assert outcome == "attempt superseded -> failed"


def jobs(stack: Stack, event_type: str, aggregate_id: str,
         status: str) -> Callable[[], Awaitable[object]]:
    """How many ``event_type`` jobs of ``aggregate_id`` are in ``status``."""
    return lambda: scalar(stack, sa.select(sa.func.count()).select_from(outbox).where(
        outbox.c.event_type == event_type, outbox.c.aggregate_id == aggregate_id,
        outbox.c.status == status))


STATUS_DOWN = {"kind": "error_rate", "operation": "status", "probability": 1.0, "status": 503}
THROTTLED = {"kind": "rate_limit", "operation": "status", "retry_after_s": 1}


@pytest.mark.parametrize("fault", [STATUS_DOWN, THROTTLED], ids=["status-down", "throttled"])
async def test_a_chargeback_whose_confirming_read_cannot_run_waits_for_it_never_dead_letters(
    stack: Stack, fault: dict[str, Any],
) -> None:
    """Regression (review): the status read that confirms a chargeback notification failed
    (Midtrans's status API down, its breaker open, or a 429), the relay retried the delivery
    into the outage and dead-lettered it after its tries: the chargeback never reached a
    person. The delivery waits for a read that can run, as often as it takes, and the case
    opens once Midtrans answers."""
    order_id, attempt, chargeback = await chargeback_notification(stack)
    await stack.fault("midtrans", **fault)
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(chargeback))
    assert r.status_code == 200, r.text
    await relay_for(stack.container, 3)  # more than the relay's six tries 0.2 s apart
    assert await jobs(stack, "provider.delivery", attempt.id, "dead")() == 0
    assert await jobs(stack, "provider.delivery", attempt.id, "pending")() == 1
    assert await review(stack, order_id) == []
    async with httpx.AsyncClient(verify=default_trust()) as c:
        await c.delete(f"{stack.sims.midtrans.control_url}/faults")
    await settled_quietly(stack, attempt.id)
    assert await review(stack, order_id) == [
        ("chargeback", "dispute_or_accept", attempt.transfer_amount)]
    assert (await order_state(stack, order_id)()) == "paid"


async def test_a_chargeback_whose_answer_stays_unreadable_is_dead_lettered_for_a_person(
    stack: Stack,
) -> None:
    """Regression (review): a chargeback notification whose confirming status answer Lunas
    cannot read (a status the adapter does not know) was queued again every 30 minutes for
    ever: only warnings in a log, and the chargeback reached nobody. While the notification is
    recent it is read again, as an outage is waited out; a day after it came, with several
    unreadable answers in a row, the delivery is dead-lettered (alerted on with every dead
    letter) saying what to check. Redelivered once Lunas can read the answer, it opens the
    case."""
    order_id, attempt, chargeback = await chargeback_notification(stack, answered="on_hold")
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(chargeback))
    assert r.status_code == 200, r.text
    await relay_for(stack.container, 1)  # recent: read again, however often it is unreadable
    assert await jobs(stack, "provider.delivery", attempt.id, "dead")() == 0
    assert await jobs(stack, "provider.delivery", attempt.id, "pending")() == 1
    async with stack.container.db.transaction() as conn:
        await conn.execute(provider_deliveries.update().where(
            provider_deliveries.c.attempt_id == attempt.id,
            provider_deliveries.c.outcome.is_(None)).values(
                received_at=stack.container.clock.now() - timedelta(days=1)))
    await run_relay(stack.container, jobs(stack, "provider.delivery", attempt.id, "dead"), 1,
                    timeout=15)
    assert await jobs(stack, "provider.delivery", attempt.id, "pending")() == 0
    assert await review(stack, order_id) == []
    async with stack.container.db.read() as conn:
        dead = (await conn.execute(sa.select(outbox.c.event_id, outbox.c.last_error).where(
            outbox.c.event_type == "provider.delivery", outbox.c.aggregate_id == attempt.id,
            outbox.c.status == "dead"))).one()
    assert "unreadable" in dead.last_error and "on_hold" in dead.last_error, dead.last_error
    assert "redeliver" in dead.last_error, dead.last_error

    await sim_post(stack.sims.midtrans.control_url, "/answer", {
        "order_id": attempt.id, "fields": {"transaction_status": "chargeback"}})
    await redeliver(stack.container.db, event_ids=[dead.event_id], merchant_id=None,
                    actor="ops:sari", reason="adapter fixed", now=stack.container.clock.now())
    await settled_quietly(stack, attempt.id)
    assert await review(stack, order_id) == [
        ("chargeback", "dispute_or_accept", attempt.transfer_amount)]
    assert (await order_state(stack, order_id)()) == "paid"


async def test_a_payment_on_a_live_attempt_whose_confirming_read_fails_settles_through_the_verifier(
    stack: Stack,
) -> None:
    """A signed Midtrans settlement for an active QR arrives while Midtrans's status API is
    down: it is not applied on its unsigned status alone, and not lost either. The verifier's
    read is brought forward, and settles the order once Midtrans answers."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await paid_quietly(stack, attempt)
    await stack.fault("midtrans", **STATUS_DOWN)
    key = stack.container.settings.providers.midtrans_server_key
    settlement = midtrans_body(attempt, status="settlement", code="200", txid="tx-live-1",
                               key=key)
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(settlement))
    assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert await jobs(stack, "provider.delivery", attempt.id, "dead")() == 0
    outcome = [o for v, o in await outcomes(stack, attempt.id) if v][-1]
    assert outcome is not None and "status read brought forward" in outcome, outcome
    assert (await order_state(stack, order_id)()) == "awaiting_payment"
    async with httpx.AsyncClient(verify=default_trust()) as c:
        await c.delete(f"{stack.sims.midtrans.control_url}/faults")
    await run_verifier(stack.container, order_state(stack, order_id), "paid", timeout=20)
    assert await evidence_count(stack, order_id) == 1


async def expired_with_cancel_queued(stack: Stack, rail: str, channel: str | None,
                                     served: str) -> tuple[str, Any]:
    """An order Lunas expired at its deadline, the instrument's cancel queued as expiry does."""
    order_id, attempt = await order_and_attempt(stack, rail, channel, served)
    await close_attempt(stack, order_id, attempt.id)
    async with stack.container.db.transaction() as conn:
        await add_events(conn, [PendingEvent(
            event_type="attempt.cancel_requested", aggregate_id=attempt.id, merchant_id=None,
            payload={"attempt_id": attempt.id})], now=stack.container.clock.now())
    return order_id, attempt


async def test_a_cancel_the_provider_cannot_take_now_is_tried_again_and_the_instrument_watched(
    stack: Stack,
) -> None:
    """Regression (review): the cancel of an expired QR failed with Midtrans unavailable (not
    a refusal); the relay retried it into the outage and dead-lettered it. The instrument was
    then neither cancelled nor read again, and a payment on it, its notification lost, was
    never seen. A cancel that cannot be made now is tried again later (never dead-lettered),
    the instrument is watched meanwhile, and a payment on it is found."""
    order_id, attempt = await expired_with_cancel_queued(stack, "qris", None,
                                                         "qris:midtrans:qris")
    await stack.fault("midtrans", kind="error_rate", operation="cancel", probability=1.0,
                      status=503)
    await relay_for(stack.container, 3)
    assert await jobs(stack, "attempt.cancel_requested", attempt.id, "dead")() == 0
    assert await jobs(stack, "attempt.cancel_requested", attempt.id, "pending")() == 1
    assert await closed_reads(stack, attempt.id, "pending")() == 1  # watched meanwhile
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    async with httpx.AsyncClient(verify=default_trust()) as c:
        await c.delete(f"{stack.sims.midtrans.control_url}/faults")
    # The cancel is tried again and refused (the charge is settled): read at once.
    await run_relay(stack.container, order_state(stack, order_id), "needs_review", timeout=20)
    assert await review(stack, order_id) == [
        ("payment_after_expiry", "honour", attempt.transfer_amount)]


async def test_a_closed_attempt_unreadable_past_its_quarantine_is_dead_lettered_with_a_reason(
    stack: Stack,
) -> None:
    """Regression (review): the status answer for a closed attempt that Lunas cannot read was
    read again every 30 minutes for ever, with only a warning log. Once the code quarantine
    of the attempt's closing is over (a late payment is unlikely) and several answers in a row
    were unreadable, the read is dead-lettered at once, counted and alerted on with the other
    dead letters, with a reason on the job and on the attempt an SRE can act on (fix the
    adapter, then redeliver)."""
    order_id, attempt = await late_payment_nobody_can_verify(stack)
    answer = {"order_id": attempt.id, "fields": {"transaction_status": "on_hold"}}
    await sim_post(stack.sims.midtrans.control_url, "/answer", answer)
    await relay_for(stack.container, 1)  # unreadable while within the quarantine: read again
    assert await closed_reads(stack, attempt.id, "pending")() == 1
    await close_attempt(stack, order_id, attempt.id,
                        ago=stack.container.settings.unique_codes.quarantine)
    await run_relay(stack.container, closed_reads(stack, attempt.id, "dead"), 1, timeout=15)
    assert await closed_reads(stack, attempt.id, "pending")() == 0
    async with stack.container.db.read() as conn:
        error = (await conn.execute(sa.select(outbox.c.last_error).where(
            outbox.c.event_type == "attempt.verify", outbox.c.aggregate_id == attempt.id,
            outbox.c.status == "dead"))).scalar_one()
    assert "unreadable" in error and "on_hold" in error and "past its code quarantine" in error
    row = await attempt_row(stack, attempt.id)
    assert row.last_check.startswith("status read given up: unreadable"), row.last_check
    await relay_for(stack.container, 1)
    assert await closed_reads(stack, attempt.id, "pending")() == 0  # no read after it


async def test_a_partial_refund_found_by_a_status_read_settles_and_opens_a_case_for_the_refund(
    stack: Stack,
) -> None:
    """Every notification was lost; the first status read of the QR says ``partial_refund``
    with ``refund_amount``: it was paid, then part of it went back at Midtrans. The payment
    settles the order, and a ``refunded_at_provider`` case opens for the refunded amount.
    Before: ``partial_refund`` read as paid, and nobody heard of the refund."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await sim_post(stack.sims.midtrans.control_url, "/answer", {
        "order_id": attempt.id, "fields": {"transaction_status": "partial_refund",
                                           "settlement_time": "2025-03-10 09:05:00",
                                           "refund_amount": "25000.00"}})
    await make_due(stack, attempt.id)
    await run_verifier(stack.container, order_state(stack, order_id), "paid")
    await wait_for(lambda: review(stack, order_id), [
        ("refunded_at_provider", "check_at_source", 25_000)])
    assert (await attempt_row(stack, attempt.id)).state == "paid"


async def test_two_partial_chargebacks_of_one_payment_are_two_cases_for_what_each_took_back(
    stack: Stack,
) -> None:
    """The payer's bank pulls back part of a settled QRIS payment, then more of it. Midtrans
    notifies ``partial_chargeback`` twice, alike but for the ``refund_amount`` so far. They are
    two facts: two cases, for 20000 and then the 30000 more taken back. Before: the second
    was stored as a duplicate of the first (same transaction, status and status code) and
    never read."""
    order_id, attempt, paid = await paid_midtrans_order(stack)
    key = stack.container.settings.providers.midtrans_server_key
    body = midtrans_body(attempt, status="partial_chargeback", code="200",
                         txid=paid["transaction_id"], key=key)
    for so_far in ("20000.00", "50000.00"):
        await sim_post(stack.sims.midtrans.control_url, "/answer", {
            "order_id": attempt.id, "fields": {"transaction_status": "partial_chargeback",
                                               "refund_amount": so_far}})
        r = await stack.client.post("/v1/webhooks/midtrans",
                                    content=json.dumps({**body, "refund_amount": so_far}))
        assert r.status_code == 200, r.text
        await settled_quietly(stack, attempt.id)
    assert (await order_state(stack, order_id)()) == "paid"
    assert sorted(await review(stack, order_id)) == [
        ("chargeback", "dispute_or_accept", 20_000), ("chargeback", "dispute_or_accept", 30_000)]


@pytest.mark.parametrize("relabelled_as", ["expire", "cancel", "deny"])
async def test_a_signed_pending_notification_relabelled_closed_never_closes_a_live_attempt(
    stack: Stack, relabelled_as: str,
) -> None:
    """Review (rev-midtrans): the signature leaves ``transaction_status`` out, so the genuine
    ``pending`` notification Midtrans sends when the charge is made (status code 201) rewritten
    to ``expire``, ``cancel`` or ``deny`` keeps a valid signature. 201 is the code of a charge
    still waiting for its money; a close under it is a lie its signed status code gives away,
    as a payment under it is. Before: it closed the customer's live QR in Lunas and told the
    merchant the payment failed, while the QR at Midtrans still took money."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    key = stack.container.settings.providers.midtrans_server_key
    pending = midtrans_body(attempt, status="pending", code="201", txid=str(uuid.uuid4()),
                            key=key)
    relabelled = {**pending, "transaction_status": relabelled_as}
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(relabelled))
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "bad_signature"
    await settled_quietly(stack, attempt.id)
    assert (await attempt_row(stack, attempt.id)).state == "active"
    async with stack.container.db.read() as conn:
        told = (await conn.execute(sa.select(outbox.c.event_type).where(
            outbox.c.aggregate_id == order_id,
            outbox.c.event_type == "order.payment_failed"))).scalars().all()
    assert told == []
    assert (await order_state(stack, order_id)()) == "awaiting_payment"
