"""Traces: one order, from capture over HTTP through the real worker's relay and the provider
simulator to ``paid``, is one trace whose spans link up across the outbox hand-off; with no
exporter configured nothing is recorded and nothing is stored in the rows.

The real service and the real worker run in-process against the simulators on real sockets, on
PostgreSQL and Redis; spans go to the SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chaos.sim.runner import Simulators, start_simulators
from chaos.sim.statements import bca_statement
from orchestrator.bootstrap import Container, build
from orchestrator.settings import Settings, TelemetrySettings
from orchestrator.store.tables import orders, outbox
from orchestrator.telemetry import tracing
from orchestrator.tls import default_trust
from orchestrator.worker import run_worker
from tests.integration.test_failover import gateway_settings
from tests.support import ShopFixture, free_port, new_merchant, order_body, serve


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Lunas's spans go to memory for this test, exported as each span ends."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use(provider)
    try:
        yield memory
    finally:
        tracing.use(None)
        provider.shutdown()


@dataclass
class Shop:
    container: Container
    sims: Simulators
    client: httpx.AsyncClient
    merchant: ShopFixture

    async def checkout(self, **extra: object) -> dict[str, Any]:
        r = await self.client.post(
            "/v1/orders", json=order_body(f"TR-{uuid.uuid4().hex[:10]}", 98_000, **extra),
            headers={**self.merchant.headers, "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def pay_at_midtrans(self, attempt_id: str) -> None:
        await _control(f"{self.sims.midtrans.control_url}/pay", {"order_id": attempt_id})

    async def pay_xendit_va(self, attempt_id: str, amount: int) -> None:
        await _control(f"{self.sims.xendit.control_url}/pay",
                       {"kind": "va", "external_id": attempt_id, "amount": amount})

    async def outbox_rows(self, aggregate_ids: list[str]) -> list[Any]:
        async with self.container.db.read() as conn:
            return list((await conn.execute(sa.select(outbox).where(
                outbox.c.aggregate_id.in_(aggregate_ids)).order_by(outbox.c.id))).all())

    async def order_row(self, order_id: str) -> Any:
        async with self.container.db.read() as conn:
            return (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).one()


@contextlib.asynccontextmanager
async def shop(container: Container) -> AsyncIterator[Shop]:
    """The api on a real socket whose URL the adapters hand to the simulators (Midtrans
    notifications come back to it), and the real worker beside it."""
    sims = await start_simulators()
    port = free_port()
    base = gateway_settings(container.settings, sims)
    settings: Settings = replace(base, http=replace(base.http, host="127.0.0.1", port=port,
                                                    public_url=""))
    c = build(settings)
    await c.start()
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(c, stop))
    try:
        merchant = await new_merchant(c)
        async with serve(c, port) as url, httpx.AsyncClient(verify=default_trust(),
                                                            base_url=url, timeout=30) as client:
            await _control(f"{sims.xendit.control_url}/config", {
                "callback_url": f"{url}/v1/webhooks/xendit",
                "callback_token": c.settings.providers.xendit_callback_token})
            yield Shop(c, sims, client, merchant)
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=15)
        await c.close()
        await sims.stop()


async def _control(url: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(verify=default_trust()) as c:
        r = await c.post(url, json=body)
        assert r.status_code < 300, r.text


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Tree:
    """The finished spans of one trace, looked up by name and attributes."""

    def __init__(self, spans: list[ReadableSpan]) -> None:
        self.spans = spans
        self.by_id = {s.context.span_id: s for s in spans}

    def one(self, name: str, **attributes: object) -> ReadableSpan:
        found = [s for s in self.spans if s.name == name
                 and all((s.attributes or {}).get(k) == v for k, v in attributes.items())]
        assert len(found) == 1, (name, attributes, [s.name for s in self.spans])
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} is a root"
        assert span.parent.span_id in self.by_id, f"{span.name}'s parent is not in the trace"
        return self.by_id[span.parent.span_id]

    def is_under(self, span: ReadableSpan, ancestor: ReadableSpan) -> bool:
        while span.parent is not None and span.parent.span_id in self.by_id:
            span = self.by_id[span.parent.span_id]
            if span.context.span_id == ancestor.context.span_id:
                return True
        return False


def _start(span: ReadableSpan) -> int:
    assert span.start_time is not None
    return span.start_time


async def test_one_order_is_one_trace_from_capture_to_paid(
    container: Container, exporter: InMemorySpanExporter,
) -> None:
    async with shop(container) as s:
        order = await s.checkout(rail="va", channel="bca")
        route = order["routing"]["served_by"]
        assert route == "va:xendit:bca"
        attempt_id = order["payment"]["attempt_id"]
        va_number = order["payment"]["va_number"]
        # The customer transfers; Xendit calls the api back; the worker settles.
        await s.pay_xendit_va(attempt_id, order["payment"]["amount"])

        async def paid_and_announced() -> bool:
            rows = await s.outbox_rows([order["id"]])
            return any(r.event_type == "order.paid" and r.status == "done" for r in rows)

        await eventually(paid_and_announced, "order.paid handled by the relay")
        assert (await s.order_row(order["id"])).state == "paid"
        rows = await s.outbox_rows([order["id"], attempt_id])
        stored_order = await s.order_row(order["id"])

    finished = list(exporter.get_finished_spans())
    capture = next(sp for sp in finished if sp.name == "capture"
                   and (sp.attributes or {}).get("lunas.order_id") == order["id"])
    trace_id = capture.context.trace_id
    t = Tree([sp for sp in finished if sp.context.trace_id == trace_id])

    # api request → capture → routing → the provider's create call
    api = t.parent(capture)
    assert (api.name, api.kind) == ("POST /v1/orders", SpanKind.SERVER)
    assert api.parent is None  # the trace starts at the checkout's request
    assert api.attributes is not None and api.attributes["http.response.status_code"] == 201
    routing = t.one("routing", **{"lunas.order_id": order["id"]})
    assert t.parent(routing) is capture
    assert routing.attributes is not None
    assert routing.attributes["lunas.served_by"] == route
    create = t.one("provider.create")
    assert t.parent(create) is routing
    assert create.kind == SpanKind.CLIENT
    assert dict(create.attributes or {}) == {
        "lunas.provider": "xendit", "lunas.operation": "create", "lunas.route": route,
        "lunas.outcome": "created", "lunas.attempt_id": attempt_id,
        "http.response.status_code": 200,
    }

    # the outbox hand-off: the relay's span is a child of the span that wrote the row
    awaiting = t.one("outbox.handle order.awaiting_payment")
    assert awaiting.kind == SpanKind.CONSUMER
    written = t.parent(awaiting)
    assert (written.name, written.kind) == ("outbox.add", SpanKind.PRODUCER)
    assert t.parent(written) is capture

    # the webhook is a new HTTP request, yet its receipt joins the order's trace under capture
    receive = t.one("provider_webhook.receive")
    assert t.parent(receive) is capture
    assert receive.attributes is not None and receive.attributes["lunas.verified"] is True
    [link] = receive.links
    request = next(sp for sp in finished if sp.context.span_id == link.context.span_id)
    assert (request.name, request.kind) == ("POST /v1/webhooks/xendit", SpanKind.SERVER)
    assert request.context.trace_id != trace_id  # the request's own trace, linked

    delivery = t.one("outbox.handle provider.delivery")
    assert t.parent(t.parent(delivery)) is receive  # receive → outbox.add → relay
    process = t.one("provider_webhook.process")
    assert t.parent(process) is delivery
    settlement = t.one("settlement")
    assert t.parent(settlement) is process
    assert settlement.attributes is not None
    assert settlement.attributes["lunas.order_state"] == "paid"
    assert settlement.attributes["lunas.verdict"] == "settle"
    announced = t.one("outbox.handle order.paid")
    assert t.is_under(announced, settlement)

    # settlement is the last step of the flow; only what it caused starts after it
    for step in (api, capture, routing, create, receive, delivery, process):
        assert _start(step) < _start(settlement), step.name
    assert all(t.is_under(sp, settlement) for sp in t.spans
               if _start(sp) > _start(settlement) and sp.name != "outbox.handle order.captured"
               and not sp.name.startswith("outbox.handle order.awaiting_payment"))

    # one trace id across the api and the worker, stored as a W3C traceparent in every row
    assert {sp.kind for sp in t.spans} >= {SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.CLIENT}
    assert stored_order.trace_context["traceparent"].startswith(f"00-{trace_id:032x}-")
    for row in rows:
        assert row.trace_context["traceparent"].startswith(f"00-{trace_id:032x}-"), row.event_type

    # no span carries a secret or the VA number the customer was given
    providers = s.container.settings.providers
    forbidden = (va_number, providers.xendit_secret_key, providers.xendit_callback_token,
                 "Basic ")
    for sp in finished:
        for value in [*(sp.attributes or {}).values(), sp.status.description or ""]:
            assert not any(f in str(value) for f in forbidden), (sp.name, value)


async def test_orders_paid_by_a_statement_are_announced_in_their_own_traces(
    container: Container, exporter: InMemorySpanExporter,
) -> None:
    """The batch import settles many orders in a few statements, with no span per order: each
    order.paid event still carries its order's trace, so the merchant delivery joins it."""
    async with shop(container) as s:
        placed = [await s.checkout(rail="manual_transfer") for _ in range(2)]
        now = datetime.now(UTC)
        statement = bca_statement(s.merchant.account_number, [
            (now, f"TRSF CR {o['payment']['transfer_amount']}", o["payment"]["transfer_amount"],
             "CR") for o in placed])
        report = await s.container.reconciliation.import_statement(
            bank="bca", account_number=s.merchant.account_number, data=statement,
            filename=None, actor="test")
        assert report.matched == 2
        for o in placed:
            stored = await s.order_row(o["id"])
            assert stored.state == "paid"
            [paid] = [r for r in await s.outbox_rows([o["id"]]) if r.event_type == "order.paid"]
            trace_id = stored.trace_context["traceparent"].split("-")[1]
            assert paid.trace_context["traceparent"].split("-")[1] == trace_id
        trace_ids = {(await s.order_row(o["id"])).trace_context["traceparent"] for o in placed}
        assert len(trace_ids) == 2  # two orders, two traces


async def test_without_an_exporter_nothing_is_recorded_or_stored(
    container: Container, exporter: InMemorySpanExporter,
) -> None:
    assert tracing.configure(TelemetrySettings()) is None  # no endpoint: tracing off
    assert not tracing.enabled()
    async with shop(container) as s:
        order = await s.checkout(rail="qris")
        await s.pay_at_midtrans(order["payment"]["attempt_id"])

        async def settled() -> bool:
            return bool((await s.order_row(order["id"])).state == "paid")

        await eventually(settled, "the order paid")
        rows = await s.outbox_rows([order["id"], order["payment"]["attempt_id"]])
        stored_order = await s.order_row(order["id"])
    assert exporter.get_finished_spans() == ()
    assert stored_order.trace_context is None
    assert rows and all(r.trace_context is None for r in rows)


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []  # noqa: RUF012 - one collector per test

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_otlp_endpoint_exports_spans_there() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SERVICE_NAME": "lunas-x"}
    assert Settings.from_env(env).telemetry.traces_endpoint == "http://127.0.0.1:1/v1/traces"
    assert Settings.from_env({**env, "LUNAS_OTLP_ENDPOINT": "http://c:4318/"}
                             ).telemetry.traces_endpoint == "http://c:4318/v1/traces"
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        provider = tracing.configure(TelemetrySettings(
            otlp_endpoint=f"http://127.0.0.1:{server.server_port}", service_name="lunas-test"))
        assert provider is not None and tracing.enabled()
        with tracing.span("capture", attributes={"lunas.order_id": "ord_TEST"}):
            pass
        provider.shutdown()  # flushes the batch
    finally:
        tracing.use(None)
        server.shutdown()
        server.server_close()
    assert [path for path, _ in _Collector.received] == ["/v1/traces"]
    assert b"ord_TEST" in _Collector.received[0][1] and b"lunas-test" in _Collector.received[0][1]


def test_evidence_found_elsewhere_rejoins_the_orders_trace_with_a_link(
    exporter: InMemorySpanExporter,
) -> None:
    with tracing.span("capture") as capture:
        origin = tracing.carrier()
    assert origin is not None and set(origin) == {"traceparent"}
    with tracing.span("verification pass") as elsewhere:  # the verifier's own trace
        with tracing.flow_span("settlement", origin) as settled:
            pass
        with tracing.flow_span("settlement", None) as untraced_order:
            pass
    # The second context is evaluated inside the first, as if nested.
    with tracing.span("capture") as same, tracing.flow_span("settlement",
                                                             tracing.carrier()) as inside:
        pass
    spans = {sp.context.span_id: sp for sp in exporter.get_finished_spans()}
    joined = spans[settled.get_span_context().span_id]
    assert joined.context.trace_id == capture.get_span_context().trace_id
    assert joined.parent is not None
    assert joined.parent.span_id == capture.get_span_context().span_id
    assert [link.context.span_id for link in joined.links] == [
        elsewhere.get_span_context().span_id]
    plain = spans[untraced_order.get_span_context().span_id]
    assert plain.parent is not None
    assert plain.parent.span_id == elsewhere.get_span_context().span_id and not plain.links
    child = spans[inside.get_span_context().span_id]
    assert child.parent is not None and child.parent.span_id == same.get_span_context().span_id
    assert not child.links


def test_a_failed_span_names_the_error_type_never_its_message(
    exporter: InMemorySpanExporter,
) -> None:
    with pytest.raises(RuntimeError), tracing.span("settlement"):
        raise RuntimeError('duplicate key: Key (account_number)=(0123456789) already exists')
    [failed] = exporter.get_finished_spans()
    assert failed.status.status_code.name == "ERROR"
    assert failed.status.description == "RuntimeError"
    assert (failed.attributes or {})["error.type"] == "RuntimeError"
    assert not failed.events  # no exception event carrying the message
