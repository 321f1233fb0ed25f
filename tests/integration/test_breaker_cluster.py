"""Route breakers across replicas on real Redis: trips, closes and overrides reach every replica,
half-open trials are counted cluster-wide, and a replica that loses Redis keeps serving alone.

Each test gets its own key prefix under the session's (``redis_prefix``), which the session
fixture deletes; the shared server is never stopped or flushed. "Redis stopped mid-run" is a small
TCP proxy in front of it that we stop and start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from orchestrator.rails.breaker import (
    BreakerConfig,
    BreakerOpen,
    BreakerRegistry,
    BreakerState,
    ClusterTimings,
    Outcome,
    RouteBreaker,
)
from orchestrator.telemetry.metrics import Metrics
from tests.conftest import REDIS_URL
from tests.support import free_port

ROUTE = "qris:xendit:qris"
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
PERMITTED = 3

# op_timeout as in production: at 50 ms a replica taking ten permits at once on a loaded 2-core
# runner missed it with Redis healthy and admitted its trials alone (CI, 2026-12-01).
TIMINGS = ClusterTimings(op_timeout=timedelta(milliseconds=250),
                         sync_timeout=timedelta(milliseconds=300),
                         heartbeat=timedelta(milliseconds=100),
                         reconnect_min=timedelta(milliseconds=50),
                         reconnect_max=timedelta(milliseconds=200))


def config(**changes: Any) -> BreakerConfig:
    values: dict[str, Any] = dict(
        minimum_number_of_calls=4, failure_rate_threshold=0.5,
        permitted_calls_in_half_open=PERMITTED, wait_in_open=timedelta(milliseconds=300),
        max_wait_in_open=timedelta(seconds=5), wait_jitter=0.0,
        max_wait_in_half_open=timedelta(seconds=5))
    values.update(changes)
    return BreakerConfig(**values)


async def eventually(check: Callable[[], bool], within: float = 1.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.01)


async def fail(breaker: RouteBreaker, n: int) -> None:
    for _ in range(n):
        (await breaker.acquire()).record(Outcome.FAILURE)


class Replicas:
    """Builds registries ("replicas") with their own Redis clients under one test's prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._opened: list[tuple[BreakerRegistry, aioredis.Redis]] = []

    async def start(self, name: str, *, url: str = REDIS_URL, cfg: BreakerConfig | None = None
                    ) -> tuple[BreakerRegistry, Metrics]:
        client = aioredis.Redis.from_url(url)
        metrics = Metrics()
        registry = BreakerRegistry(cfg or config(), redis=client, key_prefix=self.prefix,
                                   timings=TIMINGS, metrics=metrics, node_id=name)
        self._opened.append((registry, client))
        await registry.start()
        return registry, metrics

    async def close(self) -> None:
        for registry, client in self._opened:
            await registry.close()
            await client.aclose()


@pytest.fixture
async def replicas(redis_client: aioredis.Redis, redis_prefix: str) -> AsyncIterator[Replicas]:
    built = Replicas(f"{redis_prefix}{secrets.token_hex(3)}:")
    yield built
    await built.close()


def fallback(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("lunas_breaker_redis_fallback")


async def trial_storm(breakers: list[RouteBreaker], per_replica: int
                      ) -> tuple[list[str], Callable[[Outcome], Awaitable[None]]]:
    """Concurrent callers on every replica; the admitted ones hold their permit until released
    with an outcome. Returns which replicas the admitted calls ran on, and the release."""
    admitted: list[str] = []
    settled = 0
    gate = asyncio.Event()
    verdict: list[Outcome] = []

    async def caller(breaker: RouteBreaker, who: str) -> None:
        nonlocal settled
        try:
            permit = await breaker.acquire()
        except BreakerOpen:
            settled += 1
            return
        admitted.append(who)
        settled += 1
        await gate.wait()
        permit.record(verdict[0])

    tasks = [asyncio.create_task(caller(b, f"replica-{i}"))
             for i, b in enumerate(breakers) for _ in range(per_replica)]
    await eventually(lambda: settled == len(tasks))

    async def release(outcome: Outcome) -> None:
        verdict.append(outcome)
        gate.set()
        await asyncio.gather(*tasks)

    return admitted, release


async def test_a_trip_on_one_replica_opens_the_other(replicas: Replicas) -> None:
    a, _ = await replicas.start("api-a")
    b, _ = await replicas.start("api-b")
    await fail(a.get(ROUTE), 4)
    assert a.get(ROUTE).state is OPEN
    await eventually(lambda: b.get(ROUTE).state is OPEN, within=1.0)
    assert b.get(ROUTE).retry_at == a.get(ROUTE).retry_at  # one trip, one deadline
    with pytest.raises(BreakerOpen):
        await b.get(ROUTE).acquire()


async def test_a_replica_starting_late_sees_the_trip_in_redis(replicas: Replicas) -> None:
    a, _ = await replicas.start("api-a", cfg=config(wait_in_open=timedelta(seconds=3)))
    await fail(a.get(ROUTE), 4)
    await asyncio.sleep(0.1)  # the claim reaches Redis in the background
    late, _ = await replicas.start("api-late")
    await eventually(lambda: late.get(ROUTE).state is OPEN, within=1.0)


async def test_recovering_provider_sees_only_the_permitted_trials_across_replicas(
        replicas: Replicas) -> None:
    a, _ = await replicas.start("api-a")
    b, _ = await replicas.start("api-b")
    await fail(a.get(ROUTE), 4)
    await eventually(lambda: a.get(ROUTE).state is HALF_OPEN and b.get(ROUTE).state is HALF_OPEN,
                     within=1.5)
    admitted, release = await trial_storm([a.get(ROUTE), b.get(ROUTE)], per_replica=20)
    assert len(admitted) == PERMITTED, admitted
    await release(Outcome.SUCCESS)
    await eventually(lambda: a.get(ROUTE).state is CLOSED and b.get(ROUTE).state is CLOSED,
                     within=1.0)


async def test_failed_trials_reopen_every_replica_with_a_longer_wait(replicas: Replicas) -> None:
    a, _ = await replicas.start("api-a")
    b, _ = await replicas.start("api-b")
    await fail(b.get(ROUTE), 4)
    first = b.get(ROUTE).retry_at
    await eventually(lambda: a.get(ROUTE).state is HALF_OPEN and b.get(ROUTE).state is HALF_OPEN,
                     within=1.5)
    admitted, release = await trial_storm([a.get(ROUTE), b.get(ROUTE)], per_replica=10)
    assert len(admitted) == PERMITTED
    await release(Outcome.FAILURE)
    await eventually(lambda: a.get(ROUTE).state is OPEN and b.get(ROUTE).state is OPEN)
    assert a.get(ROUTE).retry_at == b.get(ROUTE).retry_at
    assert a.get(ROUTE).snapshot().attempt == b.get(ROUTE).snapshot().attempt == 2
    assert first is not None and a.get(ROUTE).retry_at is not None
    assert a.get(ROUTE).retry_at - first >= timedelta(milliseconds=550)  # ≈ 300 ms × 2 later


async def test_ops_overrides_reach_every_replica(replicas: Replicas) -> None:
    a, _ = await replicas.start("api-a")
    b, _ = await replicas.start("api-b")
    a.get(ROUTE).force_open("provider maintenance")
    await eventually(lambda: b.get(ROUTE).state is BreakerState.FORCED_OPEN)
    late, _ = await replicas.start("api-late")
    await eventually(lambda: late.get(ROUTE).state is BreakerState.FORCED_OPEN)
    b.get(ROUTE).release_force("maintenance over")
    await eventually(lambda: all(r.get(ROUTE).state is CLOSED for r in (a, b, late)))


class TcpProxy:
    """127.0.0.1:port → Redis, stoppable and restartable on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


async def test_redis_stopped_mid_run_the_replica_keeps_serving_and_resyncs(
        replicas: Replicas) -> None:
    target = urlsplit(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    await proxy.start()
    cfg = config(wait_in_open=timedelta(seconds=3))
    try:
        direct, _ = await replicas.start("api-direct", cfg=cfg)
        proxied, metrics = await replicas.start(
            "api-proxied", url=f"redis://127.0.0.1:{proxy.port}/0", cfg=cfg)
        assert fallback(metrics) == 0 and not proxied.redis_fallback

        await proxy.stop()  # Redis "stops" for this replica
        await eventually(lambda: fallback(metrics) == 1, within=1.0)
        assert proxied.redis_fallback
        other = proxied.get("va:xendit:bni")
        for _ in range(10):  # it keeps serving...
            (await other.acquire()).record(Outcome.SUCCESS)
        await fail(proxied.get(ROUTE), 4)  # ...and keeps protecting, on its own
        with pytest.raises(BreakerOpen):
            await proxied.get(ROUTE).acquire()
        await asyncio.sleep(0.2)
        assert direct.get(ROUTE).state is CLOSED  # the trip could not be broadcast

        await proxy.start()  # Redis is back
        await eventually(lambda: fallback(metrics) == 0, within=1.5)
        await eventually(lambda: direct.get(ROUTE).state is OPEN, within=1.0)  # re-sync shared it
        assert direct.get(ROUTE).retry_at == proxied.get(ROUTE).retry_at
        assert other.state is CLOSED and direct.get("va:xendit:bni").state is CLOSED
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()


async def test_a_replica_that_never_reaches_redis_runs_alone(replicas: Replicas) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    alone, metrics = await replicas.start("api-alone", url=dead,
                                          cfg=config(wait_in_open=timedelta(milliseconds=100)))
    assert fallback(metrics) == 1 and alone.redis_fallback
    breaker = alone.get(ROUTE)
    await fail(breaker, 4)
    assert breaker.state is OPEN
    await eventually(lambda: breaker.state is HALF_OPEN)
    admitted, release = await trial_storm([breaker], per_replica=10)
    assert len(admitted) == PERMITTED  # local trial permits
    await release(Outcome.SUCCESS)
    assert breaker.state is CLOSED


async def test_redis_restarted_empty_keeps_open_routes_open_on_every_replica(
        replicas: Replicas, redis_client: aioredis.Redis) -> None:
    """Regression (review): after Redis restarted without its data, re-sync read the missing
    trip record as "closed elsewhere while Redis was unreachable", so every replica closed the
    route at once, long before its wait in open ran out and without a trial call; an ops
    override was dropped the same way."""
    target = urlsplit(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    await proxy.start()
    cfg = config(wait_in_open=timedelta(seconds=10), max_wait_in_open=timedelta(seconds=20))
    url = f"redis://127.0.0.1:{proxy.port}/0"
    forced_route = "va:xendit:bni"
    try:
        (a, metrics_a), (b, metrics_b) = [await replicas.start(name, url=url, cfg=cfg)
                                          for name in ("api-a", "api-b")]
        await fail(a.get(ROUTE), 4)
        a.get(forced_route).force_open("provider maintenance")
        await eventually(lambda: b.get(ROUTE).state is OPEN
                         and b.get(forced_route).state is BreakerState.FORCED_OPEN)
        retry_at = a.get(ROUTE).retry_at

        await proxy.stop()  # Redis restarts without persistence ...
        await eventually(lambda: fallback(metrics_a) == 1 and fallback(metrics_b) == 1)
        held = await redis_client.keys(f"{replicas.prefix}*")
        assert held
        await redis_client.delete(*held)  # ... and comes back empty
        await proxy.start()
        await eventually(lambda: fallback(metrics_a) == 0 and fallback(metrics_b) == 0,
                         within=2.0)
        await asyncio.sleep(0.3)
        for replica in (a, b):
            assert replica.get(ROUTE).state is OPEN
            assert replica.get(ROUTE).retry_at == retry_at  # the same trip, not a new one
            assert replica.get(forced_route).state is BreakerState.FORCED_OPEN
        late, _ = await replicas.start("api-late", cfg=cfg)  # and Redis holds them again
        await eventually(lambda: late.get(ROUTE).state is OPEN
                         and late.get(forced_route).state is BreakerState.FORCED_OPEN)
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()


async def test_a_trip_closed_while_a_replica_was_cut_off_closes_it_on_reconnect(
        replicas: Replicas) -> None:
    """The other side of the rule above: Redis kept its data, so a missing trip was closed."""
    target = urlsplit(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    await proxy.start()
    cfg = config(wait_in_open=timedelta(milliseconds=300))
    try:
        direct, _ = await replicas.start("api-direct", cfg=cfg)
        proxied, metrics = await replicas.start(
            "api-proxied", url=f"redis://127.0.0.1:{proxy.port}/0", cfg=cfg)
        await fail(direct.get(ROUTE), 4)
        trip_id = direct.get(ROUTE).snapshot().trip_id
        await eventually(lambda: proxied.get(ROUTE).snapshot().trip_id == trip_id)
        await proxy.stop()
        await eventually(lambda: fallback(metrics) == 1)
        await eventually(lambda: direct.get(ROUTE).state is HALF_OPEN, within=1.5)
        for _ in range(PERMITTED):
            (await direct.get(ROUTE).acquire()).record(Outcome.SUCCESS)
        await eventually(lambda: direct.get(ROUTE).state is CLOSED)
        await asyncio.sleep(0.1)  # the close reaches Redis
        await proxy.start()
        await eventually(lambda: proxied.get(ROUTE).state is CLOSED, within=2.0)
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()


class SlowReads(TcpProxy):
    """A proxy that answers ``command`` (MGET: a breaker's re-sync read) ``lag`` late, once
    ``lagging``: a trip published after the read then reaches the client before its answer."""

    def __init__(self, target: tuple[str, int], lag: float) -> None:
        super().__init__(target)
        self.lag, self.lagging, self.command = lag, False, b"MGET"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.add(up_writer)
        read_sent = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.lagging and self.command in data.upper():
                    read_sent.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if read_sent.is_set():
                    read_sent.clear()
                    await asyncio.sleep(self.lag)
                writer.write(data)
                await writer.drain()

        try:
            with contextlib.suppress(ConnectionError):
                await asyncio.gather(upstream(), downstream())
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)


async def test_a_trip_message_overtaking_a_resync_read_is_not_undone_by_it(
        replicas: Replicas) -> None:
    """Regression (review): a replica that starts watching a route reads its record from Redis;
    when another replica tripped the route meanwhile, the trip message could arrive before that
    read's (older) answer, which then closed the breaker again as "closed elsewhere while Redis
    was unreachable": one replica kept calling a failing provider for the whole open wait."""
    target = urlsplit(REDIS_URL)
    proxy = SlowReads((target.hostname or "127.0.0.1", target.port or 6379), lag=0.2)
    await proxy.start()
    cfg = config(wait_in_open=timedelta(seconds=10), max_wait_in_open=timedelta(seconds=10))
    try:
        a, _ = await replicas.start("api-a", cfg=cfg)
        b, _ = await replicas.start("api-b", url=f"redis://127.0.0.1:{proxy.port}/0", cfg=cfg)
        proxy.lagging = True
        watching = b.get(ROUTE)  # its record is read from Redis: the answer is slow to come
        await asyncio.sleep(0.08)
        await fail(a.get(ROUTE), 4)  # tripped meanwhile; the message comes straight away
        await eventually(lambda: watching.state is OPEN, within=1.0)
        await asyncio.sleep(0.5)  # every late answer is in
        assert watching.state is OPEN
        assert watching.retry_at == a.get(ROUTE).retry_at
    finally:
        await proxy.stop()


async def test_a_trial_permit_answered_too_late_is_given_back_to_the_round(
        replicas: Replicas) -> None:
    """Regression (review): a half-open permit is taken in Redis within ``op_timeout``; when the
    answer came later, the caller gave up (and ran alone, as Redis looked unreachable) but the
    permit stayed counted. The cluster's round then waited for a report that never came: with
    the provider back and every admitted trial succeeding, no replica closed until the round
    expired (``max_wait_in_half_open``, 30 s by default)."""
    target = urlsplit(REDIS_URL)
    proxy = SlowReads((target.hostname or "127.0.0.1", target.port or 6379), lag=0.5)
    await proxy.start()
    try:
        a, _ = await replicas.start("api-a")
        b, _ = await replicas.start("api-b")
        slow, metrics = await replicas.start("api-slow", url=f"redis://127.0.0.1:{proxy.port}/0")
        await fail(a.get(ROUTE), 4)
        await eventually(lambda: all(r.get(ROUTE).state is HALF_OPEN for r in (a, b, slow)),
                         within=1.5)
        proxy.command, proxy.lagging = b"EVALSHA", True  # trial permits answer after 500 ms
        _, release_alone = await trial_storm([slow.get(ROUTE)], per_replica=1)
        assert fallback(metrics) == 1  # it gave up on Redis and runs alone for now
        await asyncio.sleep(0.6)  # the late answer arrives
        admitted, release = await trial_storm([a.get(ROUTE), b.get(ROUTE)], per_replica=10)
        assert len(admitted) == PERMITTED, admitted
        await release(Outcome.SUCCESS)
        await release_alone(Outcome.SUCCESS)
        await eventually(lambda: a.get(ROUTE).state is CLOSED and b.get(ROUTE).state is CLOSED,
                         within=1.0)
    finally:
        await proxy.stop()
