"""The shared request pace: several processes drawing on one Redis bucket keep, together, to the
provider's limit; without Redis each paces itself. A caller that will not wait long asks within
a bound, and a refused ask reserves nothing, with Redis or without."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from orchestrator.bootstrap import Container
from orchestrator.rails.ratelimit import Pace, PaceBusy, RequestPacer

PACE = Pace(per_minute=1_200, headroom=0.0)  # 20 a second


async def _stamps(pacer: RequestPacer, n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        await pacer.acquire("xendit")
        out.append(time.monotonic())
    return out


async def test_two_processes_share_one_pace_through_redis(container: Container) -> None:
    url = container.settings.redis.url
    assert url is not None
    prefix = f"{container.settings.redis.key_prefix}pace{uuid.uuid4().hex[:6]}:"
    first, second = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    try:
        a = RequestPacer({"xendit": PACE}, redis=first, key_prefix=prefix)
        b = RequestPacer({"xendit": PACE}, redis=second, key_prefix=prefix)
        one, two = await asyncio.gather(_stamps(a, 10), _stamps(b, 10))
        got = sorted(one + two)
    finally:
        await first.aclose()
        await second.aclose()
    # Twenty requests at 20/s: the first goes at once, the last 19 intervals later, whichever
    # process asked. Alone, each process would have finished in half the time. (Not the gap
    # between two wake-ups: on a loaded machine one late wake-up and the next on time come
    # closer than an interval, which the send-time log allows; see the cap test below.)
    assert got[-1] - got[0] >= 19 / 20 * 0.95


async def test_an_unpaced_provider_is_not_slowed() -> None:
    pacer = RequestPacer({"xendit": PACE}, redis=None)
    assert pacer.pace("midtrans") is None
    for _ in range(100):
        assert await pacer.acquire("midtrans") is True


async def test_without_redis_a_process_paces_itself() -> None:
    pacer = RequestPacer({"xendit": PACE}, redis=None)
    got = await _stamps(pacer, 6)
    assert got[-1] - got[0] >= 5 / 20 * 0.95


async def test_redis_lost_falls_back_to_local_pacing() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    pauses: list[None] = []
    try:
        pacer = RequestPacer({"xendit": PACE}, redis=dead,
                             on_redis_pause=lambda: pauses.append(None))
        got = await _stamps(pacer, 4)
    finally:
        await dead.aclose()
    assert got[-1] - got[0] >= 3 / 20 * 0.95
    assert len(pauses) == 1  # one fallback, counted once; Redis not dialled per request


async def test_no_window_ever_holds_more_than_the_cap_even_with_a_burst(
        container: Container) -> None:
    """Late wake-ups (a busy process) or a generous burst can bunch slots; the send-time log
    still keeps every one-second window at or under the cap.

    Measured on the log's own admission times (Redis's clock), which is what the pacer promises:
    the caller's wake-up times add this machine's scheduling jitter (a test on them failed once in
    a loaded run with 20 in a window of 19)."""
    url = container.settings.redis.url
    assert url is not None
    bursty = Pace(per_minute=1_200, burst=40, headroom=0.03)  # cap 19 a second
    prefix = f"{container.settings.redis.key_prefix}cap{uuid.uuid4().hex[:6]}:"
    client = aioredis.Redis.from_url(url)
    admitted: dict[bytes, float] = {}
    try:
        pacer = RequestPacer({"xendit": bursty}, redis=client, key_prefix=prefix)
        for _ in range(30):
            await pacer.acquire("xendit")
            # Every admission is in the log right after it is made (older ones may be trimmed).
            admitted.update(await client.zrange(f"{prefix}pace:xendit:sent", 0, -1,
                                                withscores=True))
    finally:
        await client.aclose()
    assert len(admitted) == 30
    got = sorted(us / 1_000_000 for us in admitted.values())
    peak = max(sum(1 for u in got if t <= u < t + 1.0) for t in got)
    assert bursty.cap == 19 and peak <= bursty.cap


async def test_calls_in_flight_when_redis_fails_count_as_one_fallback() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    pauses: list[None] = []
    try:
        pacer = RequestPacer({"xendit": Pace(per_minute=60_000, headroom=0.0)}, redis=dead,
                             on_redis_pause=lambda: pauses.append(None))
        # Eight requests ask Redis at once; all eight find it failing.
        await asyncio.gather(*(pacer.acquire("xendit") for _ in range(8)))
    finally:
        await dead.aclose()
    assert len(pauses) == 1


async def test_a_pause_reaches_every_process_and_is_never_shortened(container: Container) -> None:
    """A 429 with Retry-After told to one process stops the provider's reads in all of them."""
    url = container.settings.redis.url
    assert url is not None
    prefix = f"{container.settings.redis.key_prefix}pause{uuid.uuid4().hex[:6]}:"
    first, second = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    try:
        a = RequestPacer({"xendit": PACE}, redis=first, key_prefix=prefix)
        b = RequestPacer({"xendit": PACE}, redis=second, key_prefix=prefix)
        assert await b.paused_for("midtrans") == 0
        await a.pause("midtrans", 30)
        await a.pause("midtrans", 2)  # a later, shorter 429 does not end the longer pause
        assert 28 < await b.paused_for("midtrans") <= 30
        assert await b.paused_for("xendit") == 0
    finally:
        await first.aclose()
        await second.aclose()


async def test_without_redis_a_pause_holds_in_its_own_process() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    pacer = RequestPacer({"xendit": PACE}, redis=dead)
    try:
        await pacer.pause("xendit", 60)  # a failed connect may itself take seconds
        assert 45 < await pacer.paused_for("xendit") <= 60
    finally:
        await dead.aclose()


SLOW = Pace(per_minute=6, headroom=0.0)  # one every 10 s: a slot is far off after the first


async def _bounded_asks(pacer: RequestPacer) -> None:
    """A bounded ask takes a slot that comes within its bound, and otherwise reserves nothing:
    however many are refused, the next slot stays where the last taken one put it."""
    assert await pacer.acquire("midtrans", within=0) is True  # an idle pace: a slot now
    waits: list[float] = []
    for _ in range(5):
        with pytest.raises(PaceBusy) as refused:
            await pacer.acquire("midtrans", within=5)
        waits.append(refused.value.wait)
    # Each refusal saw the same next slot, one interval after the first (had a refused ask
    # reserved, the fifth would have been told 50 s).
    assert all(5 < w <= 10 for w in waits), waits
    assert waits == sorted(waits, reverse=True), waits


async def test_a_bounded_ask_reserves_a_slot_only_if_it_comes_soon(container: Container) -> None:
    url = container.settings.redis.url
    assert url is not None
    prefix = f"{container.settings.redis.key_prefix}bound{uuid.uuid4().hex[:6]}:"
    client = aioredis.Redis.from_url(url)
    try:
        pacer = RequestPacer({"midtrans": SLOW}, redis=client, key_prefix=prefix)
        await _bounded_asks(pacer)
        # Shared through Redis: another process asking within the bound is refused too.
        other = RequestPacer({"midtrans": SLOW}, redis=client, key_prefix=prefix)
        with pytest.raises(PaceBusy):
            await other.acquire("midtrans", within=5)
    finally:
        await client.aclose()


async def test_without_redis_a_bounded_ask_reserves_a_slot_only_if_it_comes_soon() -> None:
    await _bounded_asks(RequestPacer({"midtrans": SLOW}, redis=None))


async def test_redis_lost_a_bounded_ask_still_reserves_nothing_it_will_not_use() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        await _bounded_asks(RequestPacer({"midtrans": SLOW}, redis=dead))
    finally:
        await dead.aclose()


TWO_A_SECOND = Pace(per_minute=120, headroom=0.0)  # one request every 0.5 s


async def _reads_of_two_requests(pacer: RequestPacer) -> None:
    """A read of two requests (a Xendit QR: the QR, then its payments) waits one interval for its
    second even when the pace is idle. Before, a bound shorter than that refused it every time:
    ``within=0`` raised PaceBusy for ever, and the pacer's own ``max_wait`` (here 0.1 s) made an
    unbounded ask loop for ever; the read never went."""
    assert await pacer.acquire("xendit", 2, within=0) is True
    await asyncio.sleep(1.1)  # idle again
    async with asyncio.timeout(5):
        assert await pacer.acquire("xendit", 2) is True


async def test_a_read_of_more_requests_than_the_burst_goes_on_an_idle_pace(
    container: Container,
) -> None:
    url = container.settings.redis.url
    assert url is not None
    prefix = f"{container.settings.redis.key_prefix}two{uuid.uuid4().hex[:6]}:"
    client = aioredis.Redis.from_url(url)
    try:
        await _reads_of_two_requests(RequestPacer({"xendit": TWO_A_SECOND}, redis=client,
                                                  key_prefix=prefix, max_wait=0.1))
    finally:
        await client.aclose()


async def test_without_redis_a_read_of_more_requests_than_the_burst_goes_on_an_idle_pace(
) -> None:
    await _reads_of_two_requests(RequestPacer({"xendit": TWO_A_SECOND}, redis=None,
                                              max_wait=0.1))
