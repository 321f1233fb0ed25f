"""Outbox relay end to end: real PostgreSQL, real HTTP to a merchant endpoint, real processes.

Specifies that concurrent workers deliver each event exactly once; that a failing endpoint is
retried with backoff and finally dead-lettered; that the webhook timeout bounds a whole try; how
handler outcomes are recorded; that outcome writes are fenced by the lease; that a relay claims
again as soon as a slot is free and one slow merchant endpoint holds only its merchant's share of
the slots; and that a worker killed with SIGKILL loses nothing while its claims are respected
until their lease expires (and one stopped with SIGTERM exits cleanly).

A relay claims *every* due event, whoever wrote it, so this module runs on a private database on
the same server with the same migrations as ``pg_url``: other tests' pending events are neither
taken nor disturbed, and theirs cannot disturb these.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.clock import FrozenClock, SystemClock
from orchestrator.domain.errors import DomainError, NotFound
from orchestrator.domain.events import (
    ATTEMPT_VERIFY,
    MERCHANT_VISIBLE,
    ORDER_AWAITING_PAYMENT,
    ORDER_CAPTURED,
    ORDER_EXPIRED,
    ORDER_NEEDS_REVIEW,
    ORDER_PAID,
    ORDER_PAYMENT_PENDING,
)
from orchestrator.domain.ids import new_id
from orchestrator.notify.delivery import (
    USER_AGENT,
    MerchantWebhookHandler,
    merchant_webhook_handlers,
)
from orchestrator.notify.egress import OPEN
from orchestrator.notify.signing import verify
from orchestrator.outbox import queries
from orchestrator.outbox.relay import Handler, OutboxEvent, PermanentFailure, Relay
from orchestrator.outbox.retry import RetryPolicy
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.services import dead_letters
from orchestrator.services.expiry import payment_pending_event_id
from orchestrator.services.webhook_endpoints import rotate_webhook_secret, set_webhook_url
from orchestrator.settings import DatabaseSettings, OutboxSettings, Settings, WebhookSettings
from orchestrator.store.database import Database
from orchestrator.store.engine import create_engine, migrate
from orchestrator.store.tables import audit_log, merchants, outbox
from orchestrator.telemetry.metrics import Metrics
from orchestrator.tls import default_trust
from tests.conftest import create_database, drop_database
from tests.e2e.test_checkout_to_webhook import WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_relay_test_0123456789"
FAST = OutboxSettings(
    batch_size=20,
    lease=timedelta(seconds=10),
    poll_interval=timedelta(milliseconds=20),
    backoff=(timedelta(milliseconds=50),) * 3,
    concurrency=8,
)
CONTENDED = replace(FAST, batch_size=4, concurrency=4)
"""Small batches make the two workers claim at the same moment many times over: without
``SKIP LOCKED`` the exactly-once test sees duplicate deliveries on every run."""


# --------------------------------------------------------------------- a merchant's endpoint


@dataclass(frozen=True)
class Arrival:
    event_id: str
    at: datetime
    """Wall clock, comparable with ``lease_expires_at`` (same host)."""
    mono: float


class Receiver:
    """A merchant webhook endpoint on 127.0.0.1 that speaks just enough HTTP/1.1.

    Counts every request per ``Lunas-Event-Id`` on arrival, before answering (so a request whose
    sender is killed mid-flight still counts); checks signature and headers; answers slowly, a
    byte every ``drip`` seconds, or with errors when told to.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        drip: float = 0.0,
        fail_first: int = 0,
        always_fail: bool = False,
        failure_status: int = 500,
        failing: Mapping[str, int] | None = None,
        held: bool = False,
    ) -> None:
        self.delay = delay
        self.held = asyncio.Event()
        """While clear (``held=True``), requests are received and not answered: ``release``."""
        if not held:
            self.held.set()
        self.drip = drip
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.failure_status = failure_status
        self.failing = dict(failing or {})
        """Event id: how many of its first tries fail (beside ``fail_first``, for every event)."""
        self.arrivals: list[Arrival] = []
        self.problems: list[str] = []
        self.answering = 0
        """Requests received and not yet answered, now; ``most_answering`` is its peak."""
        self.most_answering = 0
        self.first_request = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks"

    def counts(self) -> Counter[str]:
        return Counter(a.event_id for a in self.arrivals)

    def times(self, event_id: str) -> list[float]:
        return [a.mono for a in self.arrivals if a.event_id == event_id]

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = await self._answer(request_line, headers, body)
            reason = "OK" if status < 300 else "Failed"
            answer = (f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n"
                      "Connection: close\r\n\r\n").encode()
            for chunk in ([answer[i:i + 1] for i in range(len(answer))] if self.drip
                          else [answer]):
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(self.drip)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender went away mid-request (killed): there is no one to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request_line: str, headers: dict[str, str], body: bytes) -> int:
        event_id = headers.get("lunas-event-id", "")
        self.arrivals.append(Arrival(event_id, datetime.now(UTC), time.monotonic()))
        self.first_request.set()
        self._check(request_line, headers, body, event_id)
        tries = len(self.times(event_id))
        self.answering += 1
        self.most_answering = max(self.most_answering, self.answering)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            await self.held.wait()
        finally:
            self.answering -= 1
        if self.always_fail or tries <= max(self.fail_first, self.failing.get(event_id, 0)):
            return self.failure_status
        return 200

    def _check(
        self, request_line: str, headers: dict[str, str], body: bytes, event_id: str
    ) -> None:
        signature = headers.get("lunas-signature", "")
        expected = {
            "request line": (request_line.split(" ")[:2], ["POST", "/hooks"]),
            "content type": (headers.get("content-type"), "application/json"),
            "user agent": (headers.get("user-agent"), USER_AGENT),
            "signature": (verify(SECRET, body, signature, now_ts=int(time.time())), True),
            "timestamp": (signature.startswith(f"t={headers.get('lunas-timestamp')},"), True),
        }
        document = json.loads(body)
        expected["body"] = (sorted(document), ["created_at", "data", "id", "type"])
        expected["body id"] = (document.get("id"), event_id)
        expected["UTC time"] = (str(document.get("created_at")).endswith("Z"), True)
        for what, (got, want) in expected.items():
            if got != want:
                self.problems.append(f"{event_id}: {what} is {got!r}, expected {want!r}")


# --------------------------------------------------------------------- database and relays


@pytest.fixture(scope="module")
async def db_url() -> AsyncIterator[str]:
    url = await create_database("lunas_relay")
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    yield url
    await drop_database(url)


@pytest.fixture(scope="module")
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    e = create_engine(DatabaseSettings(url=db_url, pool_size=5))
    yield e
    await e.dispose()


async def add_merchant(engine: AsyncEngine, webhook_url: str | None) -> str:
    merchant_id = new_id("mch")
    async with engine.begin() as conn:
        await conn.execute(merchants.insert().values(
            id=merchant_id, name="Toko Relay", webhook_url=webhook_url, webhook_secret=SECRET,
            created_at=datetime.now(UTC),
        ))
    return merchant_id


async def add_outbox_events(
    engine: AsyncEngine,
    count: int,
    *,
    merchant_id: str | None = None,
    aggregate_id: str | None = None,
    event_type: str = ORDER_PAID,
) -> list[str]:
    """Write ``count`` events through the real writer; returns their event ids in claim order."""
    events = [
        PendingEvent(event_type=event_type, aggregate_id=aggregate_id or new_id("ord"),
                     merchant_id=merchant_id, payload={"n": i, "amount": 150_000 + i})
        for i in range(count)
    ]
    async with engine.begin() as conn:
        newest = sa.select(sa.func.coalesce(sa.func.max(outbox.c.id), 0))
        floor = (await conn.execute(newest)).scalar_one()
        await add_events(conn, events, now=datetime.now(UTC))
        ids = await conn.execute(
            sa.select(outbox.c.event_id)
            .where(outbox.c.id > floor, _ours(merchant_id, aggregate_id))
            .order_by(outbox.c.id)
        )
        return list(ids.scalars())


async def add_order_events(
    engine: AsyncEngine, merchant_id: str, orders: int, event_types: Sequence[str]
) -> list[list[str]]:
    """Give each of ``orders`` new orders one event of each of ``event_types``, written in that
    order and all due at once; returns each order's event ids in outbox order."""
    order_ids = [new_id("ord") for _ in range(orders)]
    async with engine.begin() as conn:
        await add_events(conn, [
            PendingEvent(event_type=event_type, aggregate_id=order_id, merchant_id=merchant_id,
                         payload={"order_id": order_id, "event": event_type})
            for order_id in order_ids for event_type in event_types
        ], now=datetime.now(UTC))
    return [[r.event_id for r in await rows_where(engine, outbox.c.aggregate_id == order_id)]
            for order_id in order_ids]


def _ours(merchant_id: str | None, aggregate_id: str | None) -> sa.ColumnElement[bool]:
    if merchant_id is not None:
        return outbox.c.merchant_id == merchant_id
    return outbox.c.aggregate_id == aggregate_id


async def rows_where(engine: AsyncEngine, clause: sa.ColumnElement[bool]) -> list[sa.Row[Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(outbox).where(clause).order_by(outbox.c.id))
        return list(result.all())


async def settled(
    engine: AsyncEngine, clause: sa.ColumnElement[bool], count: int, statuses: Sequence[str]
) -> bool:
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.select(sa.func.count()).where(clause, outbox.c.status.in_(statuses))
        )
    return n == count


async def let_go_of_unclaimed(engine: AsyncEngine, clause: sa.ColumnElement[bool]) -> None:
    """Discard the events of ``clause`` no relay holds, so later tests' relays do not meet them
    (for a test that stops its relay with work left on purpose)."""
    async with engine.begin() as conn:
        await conn.execute(outbox.update().where(
            clause, outbox.c.status == queries.PENDING, outbox.c.lease_owner.is_(None)
        ).values(status="discarded"))


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def webhook_relay(
    db_url: str,
    worker_id: str,
    settings: OutboxSettings = FAST,
    *,
    retry: RetryPolicy | None = None,
    metrics: Metrics | None = None,
    jobs: Mapping[str, Handler] | None = None,
) -> AsyncIterator[Relay]:
    """A relay with the merchant webhook handlers, each merchant's in its own lane, and its own
    engine, as a worker process has; ``jobs``: handlers of other event types beside them."""
    engine = create_engine(DatabaseSettings(url=db_url, pool_size=10))
    try:
        async with httpx.AsyncClient(verify=default_trust(), trust_env=False) as http:
            handler = MerchantWebhookHandler(engine, http, timedelta(seconds=2))
            yield Relay(engine, {**merchant_webhook_handlers(handler), **(jobs or {})},
                        settings, worker_id,
                        SystemClock(), retry=retry, per_merchant=MERCHANT_VISIBLE,
                        metrics=metrics)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def start_worker(
    db_url: str, worker_id: str, log: Path, *, lease: float, slots: int
) -> asyncio.subprocess.Process:
    """``python -m orchestrator.outbox`` as operations would run it, configured by environment,
    with ``slots`` handlers at once (so it never holds more than that many leases)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LUNAS_") and "proxy" not in k.lower()}
    env.update(
        LUNAS_ENV="development",
        LUNAS_DATABASE_URL=db_url,
        LUNAS_WORKER_ID=worker_id,
        LUNAS_OUTBOX_LEASE=str(lease),
        LUNAS_OUTBOX_BATCH=str(slots),
        LUNAS_OUTBOX_CONCURRENCY=str(slots),
        LUNAS_OUTBOX_POLL="0.05",
        LUNAS_OUTBOX_BACKOFF="0.05",
        LUNAS_WEBHOOK_TIMEOUT="2",
    )
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.outbox",
            cwd=REPO, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await asyncio.wait_for(proc.wait(), timeout=10)


# --------------------------------------------------------------------- specifications


async def test_two_workers_deliver_every_event_exactly_once(
    engine: AsyncEngine, db_url: str
) -> None:
    async with Receiver() as receiver:
        merchant = await add_merchant(engine, receiver.url)
        event_ids = await add_outbox_events(engine, 200, merchant_id=merchant)
        mine = outbox.c.merchant_id == merchant
        finished = asyncio.Event()

        async def drive(relay: Relay) -> int:
            handled = 0
            while not finished.is_set():
                n = await relay.run_once()
                handled += n
                if n == 0:
                    await asyncio.sleep(0.01)
            return handled

        tag = new_id("w")[-6:]
        async with webhook_relay(db_url, f"alpha-{tag}", CONTENDED) as alpha, \
                webhook_relay(db_url, f"beta-{tag}", CONTENDED) as beta:
            drivers = [asyncio.create_task(drive(r)) for r in (alpha, beta)]
            try:
                await eventually(lambda: settled(engine, mine, 200, ["done"]), timeout=30,
                                 what="200 events done")
            finally:
                finished.set()
                handled = await asyncio.gather(*drivers)

    counts = receiver.counts()
    assert receiver.problems == []
    assert set(counts) == set(event_ids)
    assert {eid: n for eid, n in counts.items() if n != 1} == {}
    assert all(n > 0 for n in handled), f"both workers should have claimed work: {handled}"
    assert sum(handled) == 200
    rows = await rows_where(engine, mine)
    assert {(r.status, r.attempts, r.lease_owner, r.lease_expires_at) for r in rows} == {
        ("done", 1, None, None)
    }
    assert all(r.processed_at is not None for r in rows)


async def test_a_failing_endpoint_is_retried_with_backoff_then_dead_lettered(
    engine: AsyncEngine, db_url: str
) -> None:
    retry = RetryPolicy(backoff=FAST.backoff, uniform=random.Random(3).random)  # 4 tries
    async with Receiver(fail_first=2) as flaky, \
            Receiver(always_fail=True, failure_status=503) as down:
        flaky_merchant = await add_merchant(engine, flaky.url)
        down_merchant = await add_merchant(engine, down.url)
        silent_merchant = await add_merchant(engine, None)
        flaky_ids = await add_outbox_events(engine, 5, merchant_id=flaky_merchant)
        down_ids = await add_outbox_events(
            engine, 3, merchant_id=down_merchant, event_type=ORDER_EXPIRED
        )
        silent_ids = await add_outbox_events(engine, 2, merchant_id=silent_merchant)
        ours = outbox.c.merchant_id.in_([flaky_merchant, down_merchant, silent_merchant])
        async with webhook_relay(db_url, f"retry-{new_id('w')[-6:]}", retry=retry) as relay, \
                running(relay):
            await eventually(lambda: settled(engine, ours, 10, ["done", "dead"]), timeout=15,
                             what="every event done or dead")

    rows = {r.event_id: r for r in await rows_where(engine, ours)}
    assert flaky.problems == down.problems == []
    for eid in flaky_ids:  # answered 500 twice, then 200
        assert (rows[eid].status, rows[eid].attempts) == ("done", 3)
        assert rows[eid].last_error == "WebhookDeliveryError: merchant endpoint answered HTTP 500"
        gaps = [later - earlier for earlier, later in pairwise(flaky.times(eid))]
        assert len(gaps) == 2
        assert all(0.045 <= gap < 2.0 for gap in gaps), gaps  # 50 ms ±10%, then promptly
    for eid in down_ids:  # never answers 2xx: four tries, then the dead letters
        row = rows[eid]
        assert (row.status, row.attempts, row.lease_owner) == ("dead", 4, None)
        assert row.last_error == "WebhookDeliveryError: merchant endpoint answered HTTP 503"
        assert row.processed_at is not None
        assert down.counts()[eid] == 4
    for eid in silent_ids:  # no webhook URL configured: nothing to deliver, done at once
        assert (rows[eid].status, rows[eid].attempts, rows[eid].last_error) == ("done", 1, None)
    assert not set(silent_ids) & (set(flaky.counts()) | set(down.counts()))


async def test_the_webhook_timeout_bounds_a_whole_try_even_against_a_byte_a_time_answer(
    engine: AsyncEngine, db_url: str
) -> None:
    """The endpoint keeps every single read within httpx's per-read timeout, yet the whole answer
    would take 12 s: the try still ends at the 2 s webhook timeout, not at the relay's 7.5 s
    handler timeout, so a slow merchant holds a relay slot no longer than it was promised."""
    async with Receiver(drip=0.2) as dripping:
        merchant = await add_merchant(engine, dripping.url)
        [event_id] = await add_outbox_events(engine, 1, merchant_id=merchant)
        ours = outbox.c.merchant_id == merchant
        one_try = RetryPolicy(backoff=())
        async with webhook_relay(db_url, f"drip-{new_id('w')[-6:]}", retry=one_try) as relay, \
                running(relay):
            await eventually(lambda: settled(engine, ours, 1, ["dead"]), timeout=15,
                             what="the one try recorded")
    [row] = await rows_where(engine, ours)
    [arrival] = [a for a in dripping.arrivals if a.event_id == event_id]
    assert row.last_error == "WebhookDeliveryError: timed out after 2s"
    assert (row.processed_at - arrival.at).total_seconds() < 3.0


async def test_one_slow_merchant_endpoint_delays_no_other_merchant_and_no_other_job(
    engine: AsyncEngine, db_url: str
) -> None:
    """A merchant whose endpoint does not answer (until the test lets it) has more due webhooks
    than the relay has slots. Another merchant's new webhook, and a job of the slow merchant
    that is not a webhook (order.captured: deferred issuance), still go out while the slow
    merchant's lane is full and before any of its tries ends, the webhook timeout included:
    a relay whose slots the slow endpoint held would send them only once a slow try timed out
    and was recorded. Asserted on the order of events, so a slow machine cannot flip it."""
    async with Receiver(held=True) as slow, Receiver() as fast:
        slow_m = await add_merchant(engine, slow.url)
        fast_m = await add_merchant(engine, fast.url)
        await add_outbox_events(engine, FAST.concurrency + 2, merchant_id=slow_m)
        slow_tries_ended = sa.and_(outbox.c.merchant_id == slow_m,
                                   outbox.c.last_error.is_not(None))
        async with webhook_relay(db_url, f"hol-{new_id('w')[-6:]}",
                                 jobs={ORDER_CAPTURED: _nothing_to_do}) as relay, running(relay):
            try:
                await asyncio.wait_for(slow.first_request.wait(), timeout=10)
                [job] = await add_outbox_events(engine, 1, merchant_id=slow_m,
                                                event_type=ORDER_CAPTURED)
                await add_outbox_events(engine, 1, merchant_id=fast_m)
                await asyncio.wait_for(fast.first_request.wait(), timeout=10)
                ended_before_webhook = len(await rows_where(engine, slow_tries_ended))
                await eventually(lambda: settled(engine, outbox.c.event_id == job, 1, ["done"]),
                                 timeout=10, what="the slow merchant's own job done")
                ended_before_job = len(await rows_where(engine, slow_tries_ended))
                lane = slow.answering
            finally:
                slow.held.set()
        await let_go_of_unclaimed(engine, outbox.c.merchant_id == slow_m)
    assert lane == FAST.merchant_concurrency, "the slow merchant's lane was full all along"
    assert (ended_before_webhook, ended_before_job) == (0, 0)
    assert slow.problems == fast.problems == []


async def test_a_merchant_endpoint_that_hangs_holds_only_its_share_of_the_slots(
    engine: AsyncEngine, db_url: str
) -> None:
    """Per merchant, at most ``merchant_concurrency`` webhooks are in flight at once (4 of 8
    slots here); the rest of its events wait unleased, and every one is delivered once when
    the endpoint answers. The worker's gauges say so meanwhile."""
    assert FAST.merchant_concurrency == 4 < FAST.concurrency
    metrics = Metrics()
    async with Receiver(delay=0.6) as hanging:
        merchant = await add_merchant(engine, hanging.url)
        event_ids = await add_outbox_events(engine, 10, merchant_id=merchant)
        ours = outbox.c.merchant_id == merchant
        async with webhook_relay(db_url, f"lane-{new_id('w')[-6:]}", metrics=metrics) as relay, \
                running(relay):
            await asyncio.wait_for(hanging.first_request.wait(), timeout=10)
            await asyncio.sleep(0.2)  # every slot it may take, it has taken by now
            rows = await rows_where(engine, ours)
            leased = [r for r in rows if r.lease_owner is not None]
            assert len(leased) == 4
            assert {(r.attempts, r.lease_owner) for r in rows if r not in leased} == {(0, None)}
            assert metrics.outbox_in_flight._value.get() == 4
            assert metrics.outbox_merchants_at_cap._value.get() == 1
            await eventually(lambda: settled(engine, ours, 10, ["done"]), timeout=15,
                             what="all ten delivered")
    assert hanging.most_answering == 4
    assert hanging.counts() == Counter(dict.fromkeys(event_ids, 1))
    assert metrics.outbox_in_flight._value.get() == 0
    assert metrics.outbox_merchants_at_cap._value.get() == 0


async def test_an_orders_webhooks_reach_the_merchant_in_the_order_they_were_written(
    engine: AsyncEngine, db_url: str
) -> None:
    """Merchants build state machines on their webhooks, so one order's go out one at a time, in
    outbox order: while one is pending, in flight or waiting for its retry, the order's later
    ones wait. Here the first webhook of every order fails once; no order's ``order.paid`` still
    arrives before its ``order.payment_pending`` was delivered, while the other orders' go on."""
    retry = RetryPolicy(backoff=FAST.backoff, uniform=random.Random(11).random)
    async with Receiver() as endpoint:
        merchant = await add_merchant(engine, endpoint.url)
        orders = await add_order_events(
            engine, merchant, 4, [ORDER_AWAITING_PAYMENT, ORDER_PAYMENT_PENDING, ORDER_PAID])
        endpoint.failing = {first: 1 for first, *_ in orders}
        ours = outbox.c.merchant_id == merchant
        async with webhook_relay(db_url, f"order-{new_id('w')[-6:]}", retry=retry) as relay, \
                running(relay):
            await eventually(lambda: settled(engine, ours, 12, ["done"]), timeout=15,
                             what="every webhook delivered")
    assert endpoint.problems == []
    for event_ids in orders:
        tries = [endpoint.times(eid) for eid in event_ids]
        assert [len(t) for t in tries] == [2, 1, 1]
        for earlier, later in pairwise(tries):
            assert max(earlier) < min(later), "a later webhook arrived before an earlier one"


async def test_an_orders_dead_lettered_webhook_holds_back_its_later_ones_no_longer(
    engine: AsyncEngine, db_url: str
) -> None:
    """The endpoint refuses one order's ``order.payment_pending`` every time: after its last try
    it is dead-lettered (a person may send it again), and the order's ``order.paid`` goes out
    then, rather than wait for that person for ever."""
    retry = RetryPolicy(backoff=FAST.backoff, uniform=random.Random(13).random)  # 4 tries
    async with Receiver() as endpoint:
        merchant = await add_merchant(engine, endpoint.url)
        [[refused, paid]] = await add_order_events(
            engine, merchant, 1, [ORDER_PAYMENT_PENDING, ORDER_PAID])
        endpoint.failing = {refused: 100}
        ours = outbox.c.merchant_id == merchant
        async with webhook_relay(db_url, f"dead-{new_id('w')[-6:]}", retry=retry) as relay, \
                running(relay):
            await eventually(lambda: settled(engine, ours, 2, ["done", "dead"]), timeout=15,
                             what="both webhooks settled")
    rows = {r.event_id: r for r in await rows_where(engine, ours)}
    assert [(rows[e].status, rows[e].attempts) for e in (refused, paid)] == [
        ("dead", 4), ("done", 1)]
    assert max(endpoint.times(refused)) < min(endpoint.times(paid))
    assert endpoint.problems == []


async def test_an_orders_new_webhook_has_its_earlier_one_waiting_for_a_retry_tried_at_once(
    engine: AsyncEngine, db_url: str
) -> None:
    """After an endpoint outage an order's ``order.payment_pending`` waits an hour for its next
    try, and the order's later webhooks wait behind it. Writing one (``order.paid``, say) brings
    that try forward to now, once per webhook written: while the endpoint still refuses, the
    earlier one is tried once more and waits an hour again, the new one still behind it; once
    the endpoint answers, both go out at once, in order. Every try counts as one."""
    retry = RetryPolicy(backoff=(timedelta(hours=1),) * 5, uniform=random.Random(17).random)
    async with Receiver() as endpoint:
        merchant = await add_merchant(engine, endpoint.url)
        [[pending]] = await add_order_events(engine, merchant, 1, [ORDER_PAYMENT_PENDING])
        order = (await rows_where(engine, outbox.c.event_id == pending))[0].aggregate_id
        endpoint.failing = {pending: 2}
        ours = outbox.c.merchant_id == merchant

        async def write(event_type: str) -> str:
            async with engine.begin() as conn:
                await add_events(conn, [PendingEvent(
                    event_type=event_type, aggregate_id=order, merchant_id=merchant,
                    payload={"order_id": order})], now=datetime.now(UTC))
            return str((await rows_where(engine, ours))[-1].event_id)

        async def tried(event_id: str, times: int) -> bool:
            return len(endpoint.times(event_id)) == times

        async with webhook_relay(db_url, f"ahead-{new_id('w')[-6:]}", retry=retry) as relay, \
                running(relay):
            await eventually(lambda: tried(pending, 1), timeout=10, what="the first try")
            paid = await write(ORDER_PAID)
            await eventually(lambda: tried(pending, 2), timeout=10, what="a try brought forward")
            await asyncio.sleep(0.5)  # many polls: a refused try is not made again meanwhile
            assert len(endpoint.times(pending)) == 2 and endpoint.times(paid) == []
            # Held, and not due either: waiting with the try it waits for, it is not at the
            # front of its merchant's queue for every claim to read and pass over.
            held = {r.event_id: r for r in await rows_where(engine, ours)}
            assert held[paid].available_at >= held[pending].available_at > datetime.now(UTC)
            review = await write(ORDER_NEEDS_REVIEW)
            await eventually(lambda: settled(engine, ours, 3, ["done"]), timeout=10,
                             what="every webhook delivered")
    rows = {r.event_id: r for r in await rows_where(engine, ours)}
    assert [rows[e].attempts for e in (pending, paid, review)] == [3, 1, 1]
    assert max(endpoint.times(pending)) < min(endpoint.times(paid)) < min(endpoint.times(review))
    assert endpoint.problems == []


async def test_a_webhook_written_while_its_orders_earlier_one_is_tried_brings_its_retry_forward(
    engine: AsyncEngine, db_url: str
) -> None:
    """The order's ``order.payment_pending`` is on its way to an endpoint that is about to
    refuse it when its ``order.paid`` is written. The earlier one was in flight, so the writer
    could not bring its retry forward; its refusal must not then put it, and the news behind
    it, an hour out: it is tried again at once, and both go out, in order. Before: the retry
    waited its full backoff (up to 8 hours by default) with the ``order.paid`` behind it."""
    retry = RetryPolicy(backoff=(timedelta(hours=1),) * 5, uniform=random.Random(17).random)
    async with Receiver(held=True) as endpoint:
        merchant = await add_merchant(engine, endpoint.url)
        [[pending]] = await add_order_events(engine, merchant, 1, [ORDER_PAYMENT_PENDING])
        order = (await rows_where(engine, outbox.c.event_id == pending))[0].aggregate_id
        endpoint.failing = {pending: 1}
        ours = outbox.c.merchant_id == merchant
        async with webhook_relay(db_url, f"inflight-{new_id('w')[-6:]}", retry=retry) as relay, \
                running(relay):
            await asyncio.wait_for(endpoint.first_request.wait(), timeout=10)
            async with engine.begin() as conn:  # while the first try waits for its answer
                await add_events(conn, [PendingEvent(
                    event_type=ORDER_PAID, aggregate_id=order, merchant_id=merchant,
                    payload={"order_id": order})], now=datetime.now(UTC))
            endpoint.held.set()  # the first try is refused now
            await eventually(lambda: settled(engine, ours, 2, ["done"]), timeout=10,
                             what="both webhooks delivered")
    rows = sorted(await rows_where(engine, ours), key=lambda r: r.id)
    assert [(r.event_type, r.attempts) for r in rows] == [
        (ORDER_PAYMENT_PENDING, 2), (ORDER_PAID, 1)]
    assert max(endpoint.times(pending)) < min(endpoint.times(rows[1].event_id))
    assert endpoint.problems == []


async def test_a_webhook_written_again_under_its_fixed_id_brings_no_retry_forward(
    engine: AsyncEngine, db_url: str
) -> None:
    """``order.payment_pending`` is told once per order, under a fixed event id, and the verifier
    writes it again each time a provider's breaker lets a trial through and the read is deferred
    again: the repeat is dropped. Being no news, it brings no retry forward either: the refused
    first one waits its backoff. Before, each dropped repeat brought it forward, so while a
    breaker flapped a failing endpoint was tried once a round instead of on the backoff, and the
    event was dead-lettered after a few rounds instead of about a day. A new webhook of the
    order (``order.paid``) still brings it forward."""
    retry = RetryPolicy(backoff=(timedelta(hours=1),) * 5, uniform=random.Random(19).random)
    async with Receiver() as endpoint:
        merchant = await add_merchant(engine, endpoint.url)
        order = new_id("ord")
        pending = payment_pending_event_id(order)
        endpoint.failing = {pending: 100}

        async def write(event_type: str, event_id: str | None = None) -> None:
            async with engine.begin() as conn:
                await add_events(conn, [PendingEvent(
                    event_type=event_type, aggregate_id=order, merchant_id=merchant,
                    payload={"order_id": order}, event_id=event_id)], now=datetime.now(UTC))

        async def waiting() -> sa.Row[Any]:
            [row] = await rows_where(engine, outbox.c.event_id == pending)
            return row

        async def refusal_recorded() -> bool:
            row = await waiting()
            return row.attempts == 1 and row.lease_owner is None and row.last_error is not None

        await write(ORDER_PAYMENT_PENDING, pending)
        async with webhook_relay(db_url, f"again-{new_id('w')[-6:]}", retry=retry) as relay, \
                running(relay):
            await eventually(refusal_recorded, timeout=10, what="the first try refused")
        refused = await waiting()
        assert (refused.attempts, refused.lease_owner) == (1, None)
        assert refused.available_at > datetime.now(UTC) + timedelta(minutes=30)
        for _ in range(3):  # three breaker rounds, each deferring the read again
            await write(ORDER_PAYMENT_PENDING, pending)
        still = await waiting()
        assert (still.available_at, still.attempts) == (refused.available_at, 1)
        assert len(await rows_where(engine, outbox.c.aggregate_id == order)) == 1
        await write(ORDER_PAID)  # news: the order's waiting webhook is tried at once
        assert (await waiting()).available_at <= datetime.now(UTC)
        await let_go_of_unclaimed(engine, outbox.c.aggregate_id == order)
    assert endpoint.problems == []


async def test_writing_webhooks_brings_forward_only_their_orders_earlier_ones_waiting_for_a_retry(
    private: AsyncEngine,
) -> None:
    """What one ``add_events`` call of several events brings forward, on every database
    (PostgreSQL runs the UPDATE inside each row's INSERT, SQLite before all of them): each
    order a new webhook is written for has its earlier webhooks waiting for a retry due now,
    once, however many of its webhooks the call writes. Left alone: an order that only gets a
    job (not a webhook), or only a repeat of a webhook's fixed event id (dropped: no news), a
    webhook written to start later (never tried), a leased one (in flight), and the new events
    themselves, one of which starts in an hour."""
    now = datetime.now(UTC).replace(microsecond=0)
    later = now + timedelta(hours=1)

    async def webhook(order: str, event_type: str = ORDER_PAYMENT_PENDING, **row: Any) -> str:
        [event_id] = await add_outbox_events(private, 1, merchant_id=f"mch_{order}",
                                             aggregate_id=order, event_type=event_type)
        async with private.begin() as conn:
            await conn.execute(outbox.update().where(outbox.c.event_id == event_id)
                               .values(available_at=later, **row))
        return event_id

    waiting_a, waiting_b = await webhook("ord_a", attempts=1), await webhook("ord_b", attempts=3)
    waiting_c = await webhook("ord_c", attempts=1)  # its order only gets a job
    repeated = await webhook("ord_e", attempts=1)  # its order only gets it again
    untried = await webhook("ord_d")  # written to start in an hour: attempts 0
    leased = await webhook("ord_d", ORDER_EXPIRED, attempts=1, lease_owner="w-elsewhere",
                           lease_expires_at=later)
    async with private.begin() as conn:
        await add_events(conn, [
            PendingEvent(event_type=ORDER_PAID, aggregate_id="ord_a", merchant_id="mch_ord_a",
                         payload={}, event_id="evt_paid_a"),
            PendingEvent(event_type=ORDER_NEEDS_REVIEW, aggregate_id="ord_a",
                         merchant_id="mch_ord_a", payload={}, available_at=later),
            PendingEvent(event_type=ORDER_PAID, aggregate_id="ord_b", merchant_id="mch_ord_b",
                         payload={}),
            PendingEvent(event_type=ATTEMPT_VERIFY, aggregate_id="ord_c", merchant_id=None,
                         payload={}),
            PendingEvent(event_type=ORDER_PAID, aggregate_id="ord_d", merchant_id="mch_ord_d",
                         payload={}),
            PendingEvent(event_type=ORDER_PAYMENT_PENDING, aggregate_id="ord_e",
                         merchant_id="mch_ord_e", payload={}, event_id=repeated),
        ], now=now)
    rows = {r.event_id: r for r in await rows_where(private, outbox.c.id > 0)}
    assert {e: (rows[e].available_at, rows[e].attempts) for e in (
        waiting_a, waiting_b, waiting_c, repeated, untried, leased)} == {
        waiting_a: (now, 1), waiting_b: (now, 3), waiting_c: (later, 1), repeated: (later, 1),
        untried: (later, 0), leased: (later, 1)}
    written = sorted((r.aggregate_id, r.event_type, r.available_at, r.attempts)
                     for r in rows.values() if r.created_at == now)
    assert written == [("ord_a", ORDER_NEEDS_REVIEW, later, 0), ("ord_a", ORDER_PAID, now, 0),
                       ("ord_b", ORDER_PAID, now, 0), ("ord_c", ATTEMPT_VERIFY, now, 0),
                       ("ord_d", ORDER_PAID, now, 0)]


async def test_the_relay_claims_again_as_soon_as_a_slot_is_free(engine: AsyncEngine) -> None:
    """A handler that takes its time holds its own slot, not the relay: an event due meanwhile
    starts and is done while it is still in flight, not once it ends (released, or cut by the
    handler timeout). Stopping then lets the handler in flight finish and records it."""
    tag = new_id("tst")
    release = asyncio.Event()
    started: dict[str, float] = {}
    happened: list[str] = []

    async def lingers(event: OutboxEvent) -> None:
        started[event.event_id] = time.monotonic()
        happened.append("lingers started")
        try:
            await release.wait()
        finally:
            happened.append("lingers ended")

    async def quick(event: OutboxEvent) -> None:
        started[event.event_id] = time.monotonic()
        happened.append("quick ran")

    relay = Relay(engine, {"test.lingers": lingers, "test.quick": quick}, FAST,
                  f"slots-{tag[-6:]}", SystemClock())
    stop = asyncio.Event()
    running_relay = asyncio.create_task(relay.run(stop))
    try:
        [slow_id] = await add_outbox_events(engine, 1, aggregate_id=tag,
                                            event_type="test.lingers")
        await eventually(lambda: _true(slow_id in started), timeout=10, what="lingers started")
        [quick_id] = await add_outbox_events(engine, 1, aggregate_id=tag,
                                             event_type="test.quick")
        await eventually(lambda: settled(engine, outbox.c.event_id == quick_id, 1, ["done"]),
                         timeout=10, what="the quick event done")
        assert happened == ["lingers started", "quick ran"]
        stop.set()
        await asyncio.sleep(0.1)
        assert not running_relay.done(), "stopping waits for the handler in flight"
        release.set()
        await asyncio.wait_for(running_relay, timeout=10)
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(running_relay, timeout=10)
    rows = await rows_where(engine, outbox.c.aggregate_id == tag)
    assert [(r.event_id, r.status, r.attempts, r.lease_owner) for r in rows] == [
        (slow_id, "done", 1, None), (quick_id, "done", 1, None)
    ]


async def _nothing_to_do(event: OutboxEvent) -> None:
    return None


async def _true(value: bool) -> bool:
    return value


@pytest.fixture(params=["postgresql", "sqlite"])
async def private(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database of its own, for a test that claims directly (a claim takes every due event)."""
    sqlite = request.param == "sqlite"
    url = (f"sqlite+aiosqlite:///{tmp_path / 'claim.db'}" if sqlite
           else await create_database("lunas_claim"))
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()
        if not sqlite:
            await drop_database(url)


async def claimed(engine: AsyncEngine, limit: int, cap: queries.MerchantCap | None = None
                  ) -> list[str]:
    claim = queries.claim_batch(engine.dialect.name, worker_id="w-claim", now=datetime.now(UTC),
                                lease=timedelta(seconds=30), limit=limit, cap=cap)
    async with engine.begin() as conn:
        return sorted(r.event_id for r in await claim.run(conn))


async def test_a_relay_that_claimed_every_due_event_claims_again_on_a_poll_or_a_freed_slot(
    private: AsyncEngine,
) -> None:
    """A claim that took every due event it saw is not followed by another at once: that one
    would find nothing, and a relay draining a trickle of events paid a statement for it after
    every claim. A claim that gave a merchant's lane all its room is: it may have passed over
    that merchant's other webhooks, and another merchant's behind them must not wait for the
    poll (the slow-merchant isolation). Handlers here hold their slots; the poll is 30 s."""
    release = asyncio.Event()
    started: list[str] = []

    async def holds(event: OutboxEvent) -> None:
        started.append(event.event_id)
        await release.wait()

    claims = 0

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal claims
        claims += statement.startswith("UPDATE outbox SET attempts")

    async def claims_made(events: Callable[[], Awaitable[object]], to_start: int) -> int:
        nonlocal claims
        await events()
        release.clear()
        started.clear()
        claims = 0
        settings = replace(FAST, poll_interval=timedelta(seconds=30))
        relay = Relay(private, {"test.holds": holds, ORDER_PAID: holds}, settings,
                      f"claims-{new_id('w')[-6:]}", SystemClock(), per_merchant=MERCHANT_VISIBLE)
        async with running(relay):
            try:
                await eventually(lambda: _true(len(started) == to_start), timeout=10,
                                 what=f"{to_start} handlers started")
                await asyncio.sleep(0.3)  # long enough for a second claim, well inside a poll
                return claims
            finally:
                release.set()  # stopping waits for the handlers in flight

    sa.event.listen(private.sync_engine, "before_cursor_execute", count)
    try:
        assert await claims_made(lambda: add_outbox_events(
            private, 3, aggregate_id="trickle", event_type="test.holds"), 3) == 1
        lane = FAST.merchant_concurrency
        assert await claims_made(lambda: add_outbox_events(
            private, lane + 2, merchant_id="mch_l"), lane) == 2
    finally:
        sa.event.remove(private.sync_engine, "before_cursor_execute", count)


async def test_a_claim_takes_the_events_due_longest_first(private: AsyncEngine) -> None:
    """By ``available_at``, not by age: a retry whose backoff ended a minute ago goes before
    an event written after it, but that became due only now."""
    now = datetime.now(UTC)
    async with private.begin() as conn:
        await add_events(conn, [
            PendingEvent(event_type="test.x", aggregate_id="x", merchant_id=None, payload={},
                         available_at=now - timedelta(seconds=s)) for s in (1, 60, 30)
        ], now=now - timedelta(minutes=5))
    rows = await rows_where(private, outbox.c.aggregate_id == "x")
    assert await claimed(private, 1) == [rows[1].event_id]
    assert await claimed(private, 1) == [rows[2].event_id]
    assert await claimed(private, 1) == [rows[0].event_id]


async def test_a_claim_gives_each_merchant_lane_only_the_slots_it_has_room_for(
    private: AsyncEngine,
) -> None:
    """The claim behind the merchant cap (2 here). Webhooks of a merchant whose lane is full
    are passed over, so its backlog cannot fill the claim; a lane holding one slot gets one
    more, even when its backlog fills the claim's window; jobs that are not webhooks, and events
    naming no merchant, are not capped. What a claim leaves stays unleased, its tries unspent."""
    named: dict[str, list[str]] = {}
    for name, merchant, event_type, n in [
        ("B", "mch_b", ORDER_PAID, 3), ("A", "mch_a", ORDER_PAID, 4),
        ("A job", "mch_a", ORDER_CAPTURED, 1), ("C", "mch_c", ORDER_EXPIRED, 3),
        ("no merchant", None, "attempt.verify", 1),
    ]:
        named[name] = await add_outbox_events(  # a merchant's: each of another order
            private, n, merchant_id=merchant, aggregate_id=None if merchant else name,
            event_type=event_type)

    def cap(**held: int) -> queries.MerchantCap:
        return queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=2,
                                   held={f"mch_{m}": n for m, n in held.items()})

    a, b, c = named["A"], named["B"], named["C"]
    first = await claimed(private, 3, cap(a=1, b=2))
    if private.dialect.name == "sqlite":
        assert first == a[:1]  # the window held three of A's
    else:  # a lane's queue gives the window no more than its cap: A's job fits in it too
        assert first == sorted([*a[:1], *named["A job"]])
    assert await claimed(private, 10, cap(a=2, b=2)) == sorted(
        {*named["A job"], *c[:2], *named["no merchant"]} - {*first})
    assert await claimed(private, 10, cap(b=1, c=2)) == sorted([*a[1:3], b[0]])
    rows = await rows_where(private, outbox.c.lease_owner.is_(None))
    assert [(r.event_id, r.attempts) for r in rows] == [
        (b[1], 0), (b[2], 0), (a[3], 0), (c[2], 0)]


async def test_a_full_lanes_backlog_costs_a_claim_nothing_to_pass_over() -> None:
    """A statement import leaves up to a million ``order.paid`` of one merchant pending, and its
    lane is full (the relay is delivering four of them) on nearly every claim. That claim must
    still find a job that names no merchant, and another merchant's webhook, without reading
    the full lane's backlog: what it reads (buffers, from PostgreSQL's own count) stays the same
    whether the backlog is a hundred events or thousands. Through the index of every pending
    event by due time it read the whole backlog, and took half a second at a million."""
    url = await create_database("lunas_claim_lanes")
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        cap = queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=4,
                                  held={"mch_import": 4})

        async def claim_reads() -> tuple[list[str], int]:
            claim = queries.claim_batch("postgresql", worker_id="w-lanes", now=datetime.now(UTC),
                                        lease=timedelta(seconds=30), limit=16, cap=cap)
            sent: list[tuple[str, Any]] = []

            def capture(conn: Any, cursor: Any, statement: str, parameters: Any,
                        *args: Any) -> None:
                if statement.startswith("UPDATE outbox SET attempts"):
                    sent.append((statement, parameters))

            sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
            try:  # the claim as it is sent, rolled back, then explained as it runs
                async with engine.connect() as conn, conn.begin() as trans:
                    await claim.run(conn)
                    await trans.rollback()
            finally:
                sa.event.remove(engine.sync_engine, "before_cursor_execute", capture)
            async with engine.connect() as conn, conn.begin() as trans:
                (plan,) = (await conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sent[0][0], sent[0][1])
                ).scalar_one()
                await trans.rollback()
            async with engine.begin() as conn:
                rows = await claim.run(conn)
            if isinstance(plan, str):
                plan = json.loads(plan)[0]
            top = plan["Plan"]
            return (sorted(r.event_id for r in rows),
                    top["Shared Hit Blocks"] + top["Shared Read Blocks"])

        async def backlog(n: int) -> None:
            await add_outbox_events(engine, n, merchant_id="mch_import")
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE outbox")

        await backlog(100)
        job = await add_outbox_events(engine, 1, aggregate_id="att_verify",
                                      event_type=ATTEMPT_VERIFY)
        other = await add_outbox_events(engine, 1, merchant_id="mch_other")
        taken, small = await claim_reads()
        assert taken == sorted([*job, *other])
        await backlog(5000)
        await add_outbox_events(engine, 1, aggregate_id="att_verify_2", event_type=ATTEMPT_VERIFY)
        taken, large = await claim_reads()
        assert len(taken) == 1
        assert large < small + 50, f"{large} buffers read behind 5,100 events, {small} behind 100"
    finally:
        await engine.dispose()
        await drop_database(url)


async def test_a_merchant_behind_an_older_backlog_and_many_waiting_queues_is_served_within_a_lap(
) -> None:
    """An incident: many merchants' endpoints are down, each with a webhook waiting for its
    retry, and one merchant has a backlog due before anyone else's. A claim reads only the
    first due events (that backlog, capped at its lane) and a window of the merchants' queues,
    not every queue; the window goes on where the last claim's stopped, so the merchant whose
    queue sorts last is still served within one lap (queues / window claims), while the
    backlog is still there. A window that started at the first queue every time would not
    reach it until the backlog was gone."""
    url = await create_database("lunas_claim_lap")
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        now = datetime.now(UTC)

        def paid(merchant_id: str, due: datetime) -> PendingEvent:
            order_id = new_id("ord")
            return PendingEvent(event_type=ORDER_PAID, aggregate_id=order_id,
                                merchant_id=merchant_id, payload={"order_id": order_id},
                                available_at=due)

        waiting = [f"mch_waiting_{i:05d}" for i in range(2 * queries.WALK_WIDE + 100)]
        async with engine.begin() as conn:
            await add_events(conn, [
                *(paid("mch_backlog", now - timedelta(minutes=10)) for _ in range(400)),
                *(paid(m, now + timedelta(hours=1)) for m in waiting),
                paid("mch_zz_last", now - timedelta(seconds=1)),
            ], now=now - timedelta(minutes=10))
        delivered: list[str] = []

        async def deliver(event: OutboxEvent) -> None:
            assert event.merchant_id is not None
            delivered.append(event.merchant_id)

        relay = Relay(engine, {ORDER_PAID: deliver}, FAST, "w-lap", SystemClock(),
                      per_merchant=MERCHANT_VISIBLE)
        window = max(queries.WALK_MIN, queries.WALK_PER_EVENT * FAST.concurrency)  # narrowest
        lap = -(-(len(waiting) + 2) // window)
        for _ in range(lap):
            await relay.run_once()
        assert "mch_zz_last" in delivered, f"not served in {lap} claims: {Counter(delivered)}"
        assert delivered.count("mch_backlog") < 400  # the backlog was there all along
        assert set(delivered) == {"mch_backlog", "mch_zz_last"}  # waiting ones still wait
    finally:
        await engine.dispose()
        await drop_database(url)


async def test_a_merchants_jobs_beyond_the_walk_are_claimed_a_batch_at_a_time_not_a_lane(
) -> None:
    """Jobs that name a merchant but are not webhooks (``order.captured``: deferred issuance)
    have no lane: a claim that finds them through its first read of the due events (their
    queue lies beyond its walk of the merchants' queues) takes as many as it asked for, not
    the 4 a webhook lane holds. Before: the first read capped every queue at a lane's 4, so
    issuance behind thousands of waiting queues went 4 a claim."""
    url = await create_database("lunas_claim_jobs")
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        now = datetime.now(UTC)
        later = now + timedelta(hours=1)
        waiting = [f"mch_waiting_{i:05d}" for i in range(queries.WALK_WIDE + 100)]
        async with engine.begin() as conn:
            await add_events(conn, [
                *(PendingEvent(event_type=ORDER_PAID, aggregate_id=new_id("ord"),
                               merchant_id=m, payload={}, available_at=later)
                  for m in waiting),
                *(PendingEvent(event_type=ORDER_CAPTURED, aggregate_id=new_id("ord"),
                               merchant_id="mch_zz_issuing", payload={},
                               available_at=now - timedelta(seconds=1)) for _ in range(40)),
            ], now=now - timedelta(minutes=1))
        claim = queries.claim_batch(
            engine.dialect.name, worker_id="w-jobs", now=now, lease=timedelta(seconds=30),
            limit=16, cap=queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=4),
            wide=True)
        async with engine.begin() as conn:
            taken = await claim.taking(conn)
        assert claim.walk is not None and taken.after is not None  # the walk stopped short
        assert len(taken.rows) == 16
    finally:
        await engine.dispose()
        await drop_database(url)


async def test_a_claim_racing_anothers_takes_the_next_due_events_not_none() -> None:
    """Two workers claim at the same moment, behind a backlog of webhooks of many merchants
    and jobs. The second one's claim passes over the events the first one locked and takes the
    next due ones, as an uncapped claim does (``SKIP LOCKED``). A capped claim that chose its
    candidates (the first ``limit`` due) before locking took nothing there: the worker then
    slept a poll with every slot free while the backlog waited, on every collision."""
    url = await create_database("lunas_claim_race")
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            await add_events(conn, [
                *(PendingEvent(event_type=ORDER_PAID, aggregate_id=new_id("ord"),
                               merchant_id=f"mch_race_{i:02d}", payload={},
                               available_at=now - timedelta(seconds=60 - i)) for i in range(12)),
                *(PendingEvent(event_type=ATTEMPT_VERIFY, aggregate_id=new_id("att"),
                               merchant_id=None, payload={},
                               available_at=now - timedelta(seconds=30 - i)) for i in range(12)),
            ], now=now - timedelta(minutes=1))
        cap = queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=4)

        def claim(worker: str) -> queries.Claim:
            return queries.claim_batch(engine.dialect.name, worker_id=worker, now=now,
                                       lease=timedelta(seconds=30), limit=4, cap=cap)

        async with engine.connect() as first, first.begin():
            taken_first = {r.id for r in await claim("w-first").run(first)}  # not committed
            assert len(taken_first) == 4
            async with engine.begin() as second:
                taken_second = {r.id for r in await claim("w-second").run(second)}
        assert len(taken_second) == 4, f"{len(taken_second)} of 20 due events left taken"
        assert not taken_first & taken_second
    finally:
        await engine.dispose()
        await drop_database(url)


async def test_a_claim_takes_only_the_first_undelivered_webhook_of_each_order(
    private: AsyncEngine,
) -> None:
    """The claim behind the ordering of an order's webhooks, on every database. Of one order's
    webhooks to its merchant only the earliest (by outbox id) not yet done or dead is
    claimable: the next one waits while it is due, leased or waiting for its retry, and becomes
    claimable once it is done or dead-lettered. Jobs that are not webhooks (``order.captured``:
    deferred issuance) neither wait nor hold the order's webhooks back; other orders go on."""
    x = await add_outbox_events(private, 1, merchant_id="mch_o", aggregate_id="ord_x",
                                event_type=ORDER_CAPTURED)
    x += await add_outbox_events(private, 1, merchant_id="mch_o", aggregate_id="ord_x",
                                 event_type=ORDER_AWAITING_PAYMENT)
    x += await add_outbox_events(private, 2, merchant_id="mch_o", aggregate_id="ord_x")  # paid
    y = await add_outbox_events(private, 1, merchant_id="mch_o", aggregate_id="ord_y",
                                event_type=ORDER_PAYMENT_PENDING)
    y += await add_outbox_events(private, 1, merchant_id="mch_o", aggregate_id="ord_y",
                                 event_type=ORDER_EXPIRED)
    job = await add_outbox_events(private, 1, aggregate_id="ord_y", event_type=ATTEMPT_VERIFY)
    cap = queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=10)
    now = datetime.now(UTC)

    async def claim() -> dict[str, sa.Row[Any]]:
        claim = queries.claim_batch(private.dialect.name, worker_id="w-order", now=now,
                                    lease=timedelta(seconds=30), limit=10, cap=cap)
        async with private.begin() as conn:
            return {r.event_id: r for r in await claim.run(conn)}

    async def record(outcome: queries.OutcomeWrite) -> None:
        async with private.begin() as conn:
            assert await outcome.run(conn) == 1

    first = await claim()
    assert sorted(first) == sorted([x[0], x[1], y[0], *job])
    assert await claim() == {}  # the heads are leased: in flight
    head = first[x[1]]
    await record(queries.mark_retry(head.id, worker_id="w-order", attempts=head.attempts,
                                    available_at=now + timedelta(hours=1), error="HTTP 503"))
    assert await claim() == {}  # waiting for its retry
    async with private.begin() as conn:  # the retry comes due and is claimed again
        await conn.execute(outbox.update().where(outbox.c.event_id == x[1])
                           .values(available_at=now))
    head = (await claim())[x[1]]
    await record(queries.mark_done(head.id, worker_id="w-order", attempts=head.attempts,
                                   now=now))
    assert list(await claim()) == [x[2]]
    head = first[y[0]]
    await record(queries.mark_dead(head.id, worker_id="w-order", attempts=head.attempts,
                                   now=now, error="HTTP 410"))
    assert list(await claim()) == [y[1]]  # a dead letter holds nothing back


async def test_handler_outcomes_are_recorded_as_data(engine: AsyncEngine) -> None:
    tag = new_id("tst")
    seen: list[OutboxEvent] = []

    async def permanent(event: OutboxEvent) -> None:
        raise PermanentFailure("order no longer exists")

    async def fails_once(event: OutboxEvent) -> None:
        seen.append(event)
        if event.attempts == 1:
            raise RuntimeError("first try fails")

    async def hangs(event: OutboxEvent) -> None:
        await asyncio.sleep(30)

    handlers: dict[str, Handler] = {
        "test.permanent": permanent, "test.fails_once": fails_once, "test.hangs": hangs,
    }
    for event_type in [*handlers, "test.unhandled"]:
        await add_outbox_events(engine, 1, aggregate_id=tag, event_type=event_type)
    settings = replace(FAST, lease=timedelta(seconds=2), backoff=(timedelta(milliseconds=50),))
    relay = Relay(engine, handlers, settings, f"outcomes-{tag[-6:]}", SystemClock(),
                  handler_timeout=timedelta(milliseconds=200))
    async with running(relay):
        await eventually(
            lambda: settled(engine, outbox.c.aggregate_id == tag, 4, ["done", "dead"]),
            timeout=10, what="four events settled",
        )

    rows = {r.event_type: r for r in await rows_where(engine, outbox.c.aggregate_id == tag)}
    outcome = {t: (r.status, r.attempts, r.last_error) for t, r in rows.items()}
    assert outcome == {
        "test.permanent": ("dead", 1, "PermanentFailure: order no longer exists"),
        "test.fails_once": ("done", 2, "RuntimeError: first try fails"),
        "test.hangs": ("dead", 2, "handler timed out after 0.2s"),
        "test.unhandled": ("dead", 2, "no handler for test.unhandled in this worker"),
    }
    row = rows["test.fails_once"]
    assert [(e.event_id, e.attempts) for e in seen] == [(row.event_id, 1), (row.event_id, 2)]
    assert seen[0] == replace(seen[1], attempts=1)
    assert (seen[0].id, seen[0].aggregate_id, seen[0].merchant_id) == (row.id, tag, None)
    assert (seen[0].payload, seen[0].created_at) == ({"n": 0, "amount": 150_000}, row.created_at)


async def test_an_event_a_worker_has_no_handler_for_waits_for_one_that_has(
    engine: AsyncEngine,
) -> None:
    """A rolling deploy: a newer worker writes an event type an older worker does not know. The
    older one records a failed try, not a done event (which would drop the job unhandled), and
    the event waits out its back-off for a worker that handles it."""
    tag = new_id("tst")
    handled: list[tuple[str, int]] = []

    async def newer_job(event: OutboxEvent) -> None:
        handled.append((event.event_id, event.attempts))

    [event_id] = await add_outbox_events(engine, 1, aggregate_id=tag, event_type="test.newer")
    older = Relay(engine, {}, FAST, f"older-{tag[-6:]}", SystemClock())
    assert await older.run_once() == 1
    [row] = await rows_where(engine, outbox.c.aggregate_id == tag)
    assert (row.status, row.attempts, row.last_error) == (
        "pending", 1, "no handler for test.newer in this worker")
    assert row.available_at > row.created_at

    newer = Relay(engine, {"test.newer": newer_job}, FAST, f"newer-{tag[-6:]}", SystemClock())

    async def newer_tried() -> bool:
        await newer.run_once()
        return bool(handled)

    await eventually(newer_tried, timeout=10, what="the newer worker's try")
    [row] = await rows_where(engine, outbox.c.aggregate_id == tag)
    assert handled == [(event_id, 2)]
    assert (row.status, row.attempts) == ("done", 2)


async def test_a_worker_handles_every_event_type_lunas_writes(tmp_path: Path) -> None:
    """The other half of the rule above: an event type missing from the worker's map would be
    retried a day and dead-lettered, in every deploy, not only a rolling one."""
    from orchestrator import worker
    from orchestrator.bootstrap import build
    from orchestrator.domain import events

    written = {value for name, value in vars(events).items()
               if name.isupper() and isinstance(value, str)}
    container = build(Settings(database=DatabaseSettings(
        url=f"sqlite+aiosqlite:///{tmp_path}/l.db")))
    try:
        async with httpx.AsyncClient(verify=default_trust()) as http:
            handled = set(worker.relay_handlers(container, http))
    finally:
        await container.close()
    assert ORDER_CAPTURED in written and len(written) >= 16
    assert written - handled == set()


async def test_events_that_cannot_start_within_the_lease_are_handed_back_untried(
    engine: AsyncEngine,
) -> None:
    """A relay claims only for free slots, so its events start at once, unless the process
    stalls: here the first handler blocks the event loop for 0.45 s. A handler may take 0.5 s
    and must end by 0.9 s into the 1 s lease, so only an event that starts by 0.4 s may start at
    all: the other two, due to start after the stall, go back untried."""
    tag = new_id("tst")
    started: list[str] = []

    async def stalls_once(event: OutboxEvent) -> None:
        if not started:
            time.sleep(0.45)  # CPU-bound, or a blocking call: nothing else runs meanwhile
        started.append(event.event_id)

    event_ids = await add_outbox_events(engine, 3, aggregate_id=tag, event_type="test.stall")
    settings = replace(FAST, lease=timedelta(seconds=1), batch_size=3, concurrency=3)
    relay = Relay(engine, {"test.stall": stalls_once}, settings, f"narrow-{tag[-6:]}",
                  SystemClock(), handler_timeout=timedelta(milliseconds=500))
    assert await relay.run_once() == 1

    rows = await rows_where(engine, outbox.c.aggregate_id == tag)
    assert started == event_ids[:1]
    assert [(r.status, r.attempts, r.lease_owner) for r in rows] == [
        ("done", 1, None), ("pending", 0, None), ("pending", 0, None)
    ]
    assert await relay.run_once() == 2  # handed back means claimable again at once
    assert started == event_ids


async def test_a_cancelled_worker_still_records_what_its_handler_did(engine: AsyncEngine) -> None:
    tag = new_id("tst")
    returned = asyncio.Event()

    async def quick(event: OutboxEvent) -> None:
        returned.set()

    [event_id] = await add_outbox_events(engine, 1, aggregate_id=tag, event_type="test.quick")
    relay = Relay(engine, {"test.quick": quick}, FAST, f"cancel-{tag[-6:]}", SystemClock())
    task = asyncio.create_task(relay.run(asyncio.Event()))
    await asyncio.wait_for(returned.wait(), timeout=10)
    task.cancel()  # the outcome write is on its way to the database right now
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await rows_where(engine, outbox.c.event_id == event_id)
    assert (row.status, row.lease_owner) == ("done", None)


async def test_an_expired_lease_cannot_overwrite_the_new_owners_outcome(
    engine: AsyncEngine,
) -> None:
    tag = new_id("tst")
    [event_id] = await add_outbox_events(engine, 1, aggregate_id=tag, event_type="test.fencing")
    lease = timedelta(seconds=5)
    t0 = datetime.now(UTC)

    async def claim(worker: str, at: datetime) -> list[sa.Row[Any]]:
        claim = queries.claim_batch(engine.dialect.name, worker_id=worker, now=at, lease=lease,
                                    limit=100)
        async with engine.begin() as conn:
            return [r for r in await claim.run(conn) if r.event_id == event_id]

    async def write(outcome: queries.OutcomeWrite) -> int:
        async with engine.begin() as conn:
            return await outcome.run(conn)

    [first] = await claim("worker-old", t0)
    assert await claim("worker-new", t0 + timedelta(seconds=4)) == []  # lease still live
    [second] = await claim("worker-new", t0 + timedelta(seconds=6))  # expired: reclaimed
    assert (first.attempts, second.attempts) == (1, 2)

    stale = {"worker_id": "worker-old", "attempts": 1}
    assert await write(queries.mark_done(first.id, now=t0, **stale)) == 0
    assert await write(queries.mark_retry(first.id, available_at=t0, error="x", **stale)) == 0
    assert await write(queries.mark_dead(first.id, now=t0, error="x", **stale)) == 0
    assert await write(queries.release(first.id, **stale)) == 0
    # The same worker id claiming again is a new claim too: the old one's write is still fenced.
    [third] = await claim("worker-new", t0 + timedelta(seconds=12))
    assert await write(queries.mark_done(first.id, worker_id="worker-new", attempts=2,
                                         now=t0)) == 0
    [row] = await rows_where(engine, outbox.c.event_id == event_id)
    assert (row.status, row.lease_owner, row.attempts) == ("pending", "worker-new", 3)

    done_at = t0 + timedelta(seconds=13)
    assert await write(queries.mark_done(third.id, worker_id="worker-new", attempts=3,
                                         now=done_at)) == 1
    [row] = await rows_where(engine, outbox.c.event_id == event_id)
    assert (row.status, row.lease_owner, row.lease_expires_at, row.processed_at) == (
        "done", None, None, done_at
    )


async def test_the_embedded_sqlite_database_relays_too(tmp_path: Path) -> None:
    sqlite = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'lunas.db'}"))
    try:
        await migrate(sqlite)
        handled: list[str] = []

        async def record(event: OutboxEvent) -> None:
            handled.append(event.event_id)

        event_ids = await add_outbox_events(sqlite, 3, aggregate_id="agg", event_type="test.x")
        relay = Relay(sqlite, {"test.x": record}, FAST, "embedded", SystemClock())
        assert await relay.run_once() == 3
        assert await relay.run_once() == 0
        rows = await rows_where(sqlite, outbox.c.aggregate_id == "agg")
    finally:
        await sqlite.dispose()
    assert handled == event_ids
    assert {(r.status, r.attempts, r.lease_owner) for r in rows} == {("done", 1, None)}


@pytest.mark.slow
async def test_a_killed_worker_loses_nothing_and_its_claims_wait_for_their_lease(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    async with Receiver(delay=1.5) as receiver:
        merchant = await add_merchant(engine, receiver.url)
        event_ids = await add_outbox_events(engine, 6, merchant_id=merchant)
        mine = outbox.c.merchant_id == merchant
        killed = f"killed-{new_id('w')[-6:]}"
        log = tmp_path / "killed-worker.log"
        proc = await start_worker(db_url, killed, log, lease=3, slots=2)
        try:
            await asyncio.wait_for(receiver.first_request.wait(), timeout=20)
            await asyncio.sleep(0.3)  # the rest of its batch is on the wire too
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), timeout=10)
        finally:
            await kill(proc)
        killed_at = datetime.now(UTC)
        in_flight = set(receiver.counts())

        at_kill = {r.event_id: r for r in await rows_where(engine, mine)}
        claimed = {eid for eid, r in at_kill.items() if r.lease_owner == killed}
        assert {r.status for r in at_kill.values()} == {"pending"}, log.read_text()
        assert in_flight and in_flight <= claimed and len(claimed) <= 2
        for eid in claimed:
            assert at_kill[eid].attempts == 1
            assert at_kill[eid].lease_expires_at > killed_at
        for eid in set(event_ids) - claimed:
            assert (at_kill[eid].attempts, at_kill[eid].lease_owner) == (0, None)
        expiry = {eid: at_kill[eid].lease_expires_at for eid in claimed}

        receiver.delay = 0.0
        samples: list[tuple[datetime, str, str | None, int]] = []
        settings = replace(FAST, lease=timedelta(seconds=3))
        async with webhook_relay(db_url, f"rescuer-{killed[-6:]}", settings) as rescuer, \
                running(rescuer):

            async def all_done_meanwhile_sampling() -> bool:
                rows = await rows_where(engine, outbox.c.event_id.in_(claimed))
                read_by = datetime.now(UTC)
                samples.extend((read_by, r.event_id, r.lease_owner, r.attempts) for r in rows)
                return await settled(engine, mine, 6, ["done"])

            await eventually(all_done_meanwhile_sampling, timeout=20, what="all events done")

    assert receiver.problems == []
    counts = receiver.counts()
    assert set(counts) == set(event_ids), "every event was received"
    assert {eid: n for eid, n in counts.items() if eid not in in_flight and n != 1} == {}
    assert {eid: counts[eid] for eid in in_flight} == dict.fromkeys(in_flight, 2)
    # While the killed worker's lease was live its rows stayed exactly as it left them ...
    live = [s for s in samples if s[0] < expiry[s[1]]]
    assert live, "the rescuer should have started before the lease expired"
    assert {(owner, attempts) for _, _, owner, attempts in live} == {(killed, 1)}
    # ... and nothing of them reached the merchant again until it expired.
    for arrival in receiver.arrivals:
        if arrival.event_id in claimed and arrival.at > killed_at:
            assert arrival.at >= expiry[arrival.event_id]
    final = {r.event_id: r.attempts for r in await rows_where(engine, mine)}
    assert final == {eid: 2 if eid in claimed else 1 for eid in event_ids}


@pytest.mark.slow
async def test_sigterm_finishes_the_handlers_in_flight_and_exits_cleanly(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    async with Receiver(delay=0.5) as receiver:
        merchant = await add_merchant(engine, receiver.url)
        event_ids = await add_outbox_events(engine, 5, merchant_id=merchant)
        mine = outbox.c.merchant_id == merchant
        log = tmp_path / "stopped-worker.log"
        proc = await start_worker(db_url, f"term-{new_id('w')[-6:]}", log, lease=5, slots=2)
        try:
            await asyncio.wait_for(receiver.first_request.wait(), timeout=20)
            proc.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(proc.wait(), timeout=10)
        finally:
            await kill(proc)
        assert returncode == 0, log.read_text()

        delivered = set(receiver.counts())
        rows = {r.event_id: r for r in await rows_where(engine, mine)}
        assert delivered and {eid for eid, r in rows.items() if r.status == "done"} == delivered
        for eid in set(event_ids) - delivered:  # never claimed, or handed back untried
            assert (rows[eid].status, rows[eid].attempts, rows[eid].lease_owner) == (
                "pending", 0, None
            )

        # What it left is another worker's to deliver, at once: no lease to wait for.
        async with webhook_relay(db_url, f"next-{new_id('w')[-6:]}") as relay, running(relay):
            await eventually(lambda: settled(engine, mine, 5, ["done"]), timeout=10,
                             what="the rest delivered")
    assert receiver.counts() == Counter(dict.fromkeys(event_ids, 1))
    assert receiver.problems == []


async def test_a_failed_handlers_span_names_the_error_type_not_its_message(
    engine: AsyncEngine,
) -> None:
    """Exception text can carry SQL parameters (an email, an account number); spans leave the
    process unredacted, so they carry the type alone; last_error keeps the message in our DB."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestrator.telemetry import tracing

    tag = new_id("tst")

    async def leaks(event: OutboxEvent) -> None:
        raise RuntimeError("duplicate key: (account_number)=(0123456789)")

    await add_outbox_events(engine, 1, aggregate_id=tag, event_type="test.leaks")
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use(provider)
    try:
        relay = Relay(engine, {"test.leaks": leaks}, FAST, f"leaks-{tag[-6:]}", SystemClock())
        assert await relay.run_once() == 1
    finally:
        tracing.use(None)
        provider.shutdown()
    [span] = [s for s in memory.get_finished_spans() if s.name == "outbox.handle test.leaks"]
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == "RuntimeError"
    assert not any("0123456789" in str(v) for v in (span.attributes or {}).values())
    [row] = await rows_where(engine, outbox.c.aggregate_id == tag)
    assert row.last_error == "RuntimeError: duplicate key: (account_number)=(0123456789)"


async def test_dead_letters_are_redelivered_once_the_endpoint_is_fixed_or_discarded(
    engine: AsyncEngine, db_url: str
) -> None:
    """After a merchant's endpoint outage a person sends the dead events again (all of that
    merchant's at once) or lets one go; both audited, and a discarded event is never sent."""
    retry = RetryPolicy(backoff=FAST.backoff, uniform=random.Random(5).random)
    db = Database(engine)
    async with Receiver(always_fail=True, failure_status=502) as endpoint:
        merchant = await add_merchant(engine, endpoint.url)
        ids = await add_outbox_events(engine, 4, merchant_id=merchant)
        ours = outbox.c.merchant_id == merchant
        async with webhook_relay(db_url, f"dead-{new_id('w')[-6:]}", retry=retry) as relay, \
                running(relay):
            await eventually(lambda: settled(engine, ours, 4, ["dead"]), timeout=15,
                             what="every event dead-lettered")
            listed = await dead_letters.list_dead(db, limit=100, merchant_id=merchant)
            assert [e["event_id"] for e in listed] == ids
            assert listed[0]["last_error"].endswith("HTTP 502")
            now = datetime.now(UTC)
            let_go = await dead_letters.discard(db, event_id=ids[0], actor="ops:sre",
                                                reason="order cancelled by phone", now=now)
            assert let_go["status"] == "discarded"
            with pytest.raises(dead_letters.NotDead):  # one person's second click
                await dead_letters.discard(db, event_id=ids[0], actor="ops:sre",
                                           reason="again", now=now)
            endpoint.always_fail = False  # the merchant fixed their TLS certificate
            sent = await dead_letters.redeliver(db, event_ids=[], merchant_id=merchant,
                                                actor="ops:sre", reason="endpoint fixed",
                                                now=now)
            assert sent == ids[1:]
            await eventually(lambda: settled(engine, ours, 3, ["done"]), timeout=15,
                             what="the re-delivered events done")
        rows = {r.event_id: r for r in await rows_where(engine, ours)}
        assert rows[ids[0]].status == "discarded"
        assert endpoint.counts()[ids[0]] == 4  # its four failed tries, and no fifth
        for eid in ids[1:]:
            assert (rows[eid].status, rows[eid].attempts) == ("done", 1)  # a fresh schedule
            assert endpoint.counts()[eid] == 5
        with pytest.raises(dead_letters.NotDead):  # nothing dead is left to name
            await dead_letters.redeliver(db, event_ids=[ids[1]], merchant_id=None,
                                         actor="ops:sre", reason="again", now=now)
        async with engine.connect() as conn:
            audit = (await conn.execute(sa.select(audit_log.c.action, audit_log.c.subject_id)
                                        .where(audit_log.c.actor == "ops:sre")
                                        .order_by(audit_log.c.id))).all()
        assert [tuple(a) for a in audit] == [("outbox.discard", ids[0]),
                                             ("outbox.redeliver", merchant)]


# ------------------------------------------------------------ the merchant's endpoint changes


def _v1s(header: str) -> list[str]:
    return [part.removeprefix("v1=") for part in header.split(",") if part.startswith("v1=")]


def _hmac(secret: str, body: bytes, ts: int) -> str:
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


async def test_a_rotated_secret_signs_beside_the_new_one_until_its_overlap_ends(
    engine: AsyncEngine,
) -> None:
    """During the overlap every try carries ``v1=<new>,v1=<previous>``, so the merchant's
    receiver verifies with whichever secret it holds while they deploy; afterwards the new one
    alone. A rotation with no overlap (a leaked secret) drops the previous at once; a rotation
    within an overlap keeps only the two newest. Each is audited without the secret."""
    db = Database(engine)
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        merchant = await add_merchant(engine, f"http://127.0.0.1:{receiver.port}/hooks")
        rotated_at = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
        first = await rotate_webhook_secret(db, merchant_id=merchant,
                                            overlap=timedelta(hours=24), actor="ops:rotation",
                                            reason="yearly rotation", now=rotated_at)
        assert first.webhook_secret.startswith("whsec_") and first.webhook_secret != SECRET
        assert first.previous_valid_until == rotated_at + timedelta(hours=24)

        async def deliver(at: datetime) -> tuple[int, bytes, list[str]]:
            async with httpx.AsyncClient(verify=default_trust(), trust_env=False) as http:
                handler = MerchantWebhookHandler(engine, http, timedelta(seconds=5),
                                                 clock=FrozenClock(at))
                await handler(OutboxEvent(id=0, event_id=new_id("evt"), event_type=ORDER_PAID,
                                          aggregate_id="ord_1", merchant_id=merchant,
                                          payload={"order_id": "ord_1"}, attempts=1,
                                          created_at=at))
            headers, body = receiver.deliveries[-1]
            ts = int(headers["lunas-timestamp"])
            assert headers["lunas-signature"].startswith(f"t={ts},")
            return ts, body, _v1s(headers["lunas-signature"])

        ts, body, v1 = await deliver(rotated_at + timedelta(hours=23, minutes=59))
        assert v1 == [_hmac(first.webhook_secret, body, ts), _hmac(SECRET, body, ts)]
        header = receiver.deliveries[-1][0]["lunas-signature"]
        assert verify(first.webhook_secret, body, header, now_ts=ts)  # switched already
        assert verify(SECRET, body, header, now_ts=ts)  # not yet

        ts, body, v1 = await deliver(rotated_at + timedelta(hours=24))
        assert v1 == [_hmac(first.webhook_secret, body, ts)]  # the overlap is over

        second_at = rotated_at + timedelta(days=2)
        second = await rotate_webhook_secret(db, merchant_id=merchant,
                                             overlap=timedelta(hours=1), actor="ops:rotation",
                                             reason=None, now=second_at)
        third = await rotate_webhook_secret(db, merchant_id=merchant,
                                            overlap=timedelta(hours=1), actor="ops:rotation",
                                            reason=None, now=second_at + timedelta(minutes=5))
        ts, body, v1 = await deliver(second_at + timedelta(minutes=10))
        assert v1 == [_hmac(third.webhook_secret, body, ts), _hmac(second.webhook_secret, body, ts)]

        leaked = await rotate_webhook_secret(db, merchant_id=merchant, overlap=timedelta(0),
                                             actor="ops:rotation", reason="secret leaked",
                                             now=second_at + timedelta(minutes=20))
        assert leaked.previous_valid_until is None
        ts, body, v1 = await deliver(second_at + timedelta(minutes=21))
        assert v1 == [_hmac(leaked.webhook_secret, body, ts)]

        with pytest.raises(NotFound):
            await rotate_webhook_secret(db, merchant_id="mer_nobody", overlap=timedelta(hours=1),
                                        actor="ops:rotation", reason=None, now=second_at)
        for overlap in (timedelta(seconds=-1), timedelta(days=31)):  # a month at most
            with pytest.raises(DomainError, match="overlap"):
                await rotate_webhook_secret(db, merchant_id=merchant, overlap=overlap,
                                            actor="ops:rotation", reason=None, now=second_at)
    finally:
        await receiver.stop()
    async with engine.connect() as conn:
        audit = (await conn.execute(sa.select(audit_log).where(
            audit_log.c.subject_id == merchant).order_by(audit_log.c.id))).all()
    assert [(a.actor, a.action, a.reason, a.details) for a in audit] == [
        ("ops:rotation", "merchant.webhook_secret_rotated", "yearly rotation",
         {"previous_valid_until": "2026-12-01T03:00:00Z"}),
        ("ops:rotation", "merchant.webhook_secret_rotated", None,
         {"previous_valid_until": "2026-12-02T04:00:00Z"}),
        ("ops:rotation", "merchant.webhook_secret_rotated", None,
         {"previous_valid_until": "2026-12-02T04:05:00Z"}),
        ("ops:rotation", "merchant.webhook_secret_rotated", "secret leaked",
         {"previous_valid_until": None}),
    ]


async def test_a_changed_webhook_url_takes_the_next_try_of_events_already_failing(
    engine: AsyncEngine, db_url: str
) -> None:
    """The merchant's old endpoint is gone; ops point Lunas at the new one while the events are
    between retries, and the next try of each is delivered there, signed as before."""
    retry = RetryPolicy(backoff=(timedelta(seconds=3),) * 3, uniform=random.Random(9).random)
    db = Database(engine)
    moved = WebhookReceiver()
    await moved.start()
    try:
        async with Receiver(always_fail=True, failure_status=404) as gone:
            old_url = gone.url
            merchant = await add_merchant(engine, old_url)
            ids = await add_outbox_events(engine, 3, merchant_id=merchant)
            ours = outbox.c.merchant_id == merchant
            async with webhook_relay(db_url, f"moved-{new_id('w')[-6:]}", retry=retry) as relay, \
                    running(relay):
                await eventually(lambda: _all_tried(gone, ids), timeout=15,
                                 what="a first try of each event at the old endpoint")
                new_url = f"http://127.0.0.1:{moved.port}/lunas/webhooks?shop=42"
                stored = await set_webhook_url(db, merchant_id=merchant, url=new_url,
                                               actor="ops:endpoint", reason="merchant moved",
                                               now=datetime.now(UTC), egress=OPEN)
                assert stored == new_url
                await eventually(lambda: settled(engine, ours, 3, ["done"]), timeout=15,
                                 what="every event delivered to the new endpoint")
    finally:
        await moved.stop()
    assert sorted(json.loads(body)["id"] for _, body in moved.deliveries) == sorted(ids)
    assert gone.problems == []
    for headers, body in moved.deliveries:
        assert verify(SECRET, body, headers["lunas-signature"], now_ts=int(time.time()))
    rows = await rows_where(engine, ours)
    assert {(r.status, r.attempts) for r in rows} == {("done", 2)}
    async with engine.connect() as conn:
        audit = (await conn.execute(sa.select(audit_log).where(
            audit_log.c.subject_id == merchant))).all()
    # The origin only: the path and query may carry the merchant's token.
    assert [(a.actor, a.action, a.reason, a.details) for a in audit] == [
        ("ops:endpoint", "merchant.webhook_url_set", "merchant moved",
         {"from": old_url.removesuffix("/hooks"), "to": f"http://127.0.0.1:{moved.port}"})]


async def test_a_fixed_webhook_url_has_the_merchants_failed_webhooks_tried_there_at_once(
    engine: AsyncEngine, db_url: str
) -> None:
    """The merchant's webhooks failed against a wrong URL and wait hours for their next try,
    each order's later webhooks behind them. Ops setting the right URL is the news they wait
    for: the merchant's webhooks waiting for a retry are tried at once, at the new URL, each
    order's in order, rather than the rest of their backoff (up to 8 hours by default) later.
    Another merchant's waiting webhooks are left alone."""
    retry = RetryPolicy(backoff=(timedelta(hours=1),) * 5, uniform=random.Random(23).random)
    db = Database(engine)
    moved = WebhookReceiver()
    await moved.start()
    try:
        async with Receiver(always_fail=True, failure_status=404) as gone:
            merchant = await add_merchant(engine, gone.url)
            other = await add_merchant(engine, gone.url)
            [[pending, paid]] = await add_order_events(
                engine, merchant, 1, [ORDER_PAYMENT_PENDING, ORDER_PAID])
            [elsewhere] = await add_outbox_events(engine, 1, merchant_id=other)
            ours = outbox.c.merchant_id == merchant
            async with webhook_relay(db_url, f"fixed-{new_id('w')[-6:]}", retry=retry) as relay, \
                    running(relay):
                await eventually(lambda: _all_tried(gone, [pending, elsewhere]), timeout=10,
                                 what="a first try of each, refused")
                await eventually(lambda: settled(engine, outbox.c.lease_owner.is_(None) & (
                    outbox.c.event_id.in_([pending, elsewhere])), 2, ["pending"]), timeout=10,
                    what="the refusals recorded")
                now = datetime.now(UTC)
                await set_webhook_url(db, merchant_id=merchant,
                                      url=f"http://127.0.0.1:{moved.port}/hooks", actor="ops:sre",
                                      reason="the merchant gave the wrong URL", now=now,
                                      egress=OPEN)
                rows = {r.event_id: r for r in await rows_where(engine, outbox.c.event_id.in_(
                    [pending, elsewhere]))}
                assert rows[elsewhere].available_at > now + timedelta(minutes=30)
                assert rows[pending].status == "done" or rows[pending].available_at <= now
                await eventually(lambda: settled(engine, ours, 2, ["done"]), timeout=10,
                                 what="both webhooks delivered at the new URL")
            await let_go_of_unclaimed(engine, outbox.c.merchant_id == other)
    finally:
        await moved.stop()
    assert [json.loads(body)["id"] for _, body in moved.deliveries] == [pending, paid]
    assert gone.counts() == Counter({pending: 1, elsewhere: 1})


async def test_a_production_worker_sends_no_webhook_to_a_loopback_or_private_address(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """A webhook URL is an address the worker POSTs to from inside Lunas's network: one naming
    (or resolving to) loopback, a private network or link-local (the cloud metadata service at
    169.254.169.254) would have Lunas call its own neighbours with a signed body for whoever set
    it. A production worker refuses such a host before connecting (the try fails, and is
    retried as any other, should the name come to resolve elsewhere), unless
    ``LUNAS_WEBHOOK_ALLOW_PRIVATE`` says the merchants' endpoints are on a private network.
    Here the endpoint listens on 127.0.0.1 and hears nothing, by address or by name."""
    from orchestrator import worker
    from orchestrator.bootstrap import build

    receiver = WebhookReceiver()
    await receiver.start()
    try:
        by_address = await add_merchant(engine, f"http://127.0.0.1:{receiver.port}/hooks")
        by_name = await add_merchant(engine, f"http://localhost:{receiver.port}/hooks")

        async def deliver(settings: Settings, merchant: str) -> str | None:
            container = build(replace(settings, database=DatabaseSettings(url=db_url)))
            try:
                async with httpx.AsyncClient(verify=default_trust(), trust_env=False) as http:
                    handler = worker.relay_handlers(container, http)[ORDER_PAID]
                    await handler(OutboxEvent(
                        id=0, event_id=new_id("evt"), event_type=ORDER_PAID,
                        aggregate_id="ord_1", merchant_id=merchant,
                        payload={"order_id": "ord_1"}, attempts=1, created_at=datetime.now(UTC)))
            except Exception as exc:  # the failed try, as the relay records it
                return f"{type(exc).__name__}: {exc}"
            finally:
                await container.close()
            return None

        # http:// allowed, so what refuses is the address (https is test_webhook_egress.py's)
        production = Settings(environment="production",
                              webhooks=WebhookSettings(allow_http=True))
        for merchant in (by_address, by_name):
            error = await deliver(production, merchant)
            assert error is not None and "not a public address" in error, error
            assert str(receiver.port) not in error and "/hooks" not in error  # no URL in it
        assert receiver.deliveries == []
        allowed = replace(production, webhooks=replace(production.webhooks, allow_private=True))
        assert await deliver(allowed, by_address) is None
        assert await deliver(Settings(), by_name) is None  # development: the demo's receivers
        assert len(receiver.deliveries) == 2
    finally:
        await receiver.stop()


async def _all_tried(receiver: Receiver, event_ids: list[str]) -> bool:
    return set(event_ids) <= set(receiver.counts())
