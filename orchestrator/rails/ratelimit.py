"""A request pace shared by every Lunas process: GCRA token buckets in Redis.

Why GCRA (the generic cell rate algorithm) rather than a counter per window: it spaces requests
evenly (one every ``1/rate`` seconds, plus a configurable burst) so a provider that enforces a
sliding window, as Xendit does, never sees a spike at a window edge; and it keeps one number per
bucket (the theoretical arrival time, TAT), updated atomically by a Lua script on Redis's own
clock, so workers on several hosts share one pace without trusting each other's clocks.

Slots alone are not enough: a reserved slot is *used* when the caller wakes, and a busy process
wakes late, so several late callers can go out back to back and a one-second window then holds
more than the pace (measured: 104 in one second at a 100/s pace on a saturated 2-core machine).
So each request is also *admitted* at send time by a sliding log of what was actually sent in the
last window (a Redis sorted set), which never holds more than the window's cap.

A caller *reserves* its slot: the script answers how long to wait and moves TAT on, so callers
sleep exactly until their turn instead of polling. A reservation further ahead than ``max_wait``
is refused (nothing is reserved) and the caller asks again later, so a stalled caller cannot
book the provider's capacity for minutes ahead.

A caller with something better to do than wait (a relay handler, whose slot other jobs need)
asks ``within`` a bound instead: the same script reserves a slot only if it comes that soon, and
otherwise reserves nothing and ``PaceBusy`` says when the next one would have come, so giving up
costs the provider's pace nothing. The bound covers the reservation, the caller's turn; the
send-time admission after it waits only for scheduling jitter, since a slot reserved and then
abandoned would be a slot nobody uses.

A provider that answers 429 with ``Retry-After`` asks for silence, not a slower pace: ``pause``
records "no requests to this provider until then" (``<prefix>pace:<bucket>:paused``, a key that
lives as long as the pause) and ``paused_for`` tells every process, so no worker spends another
request the provider will refuse. A pause is never shortened by a later, shorter one.

Without Redis (the embedded default, or Redis down) each process paces itself alone with the same
algorithm on its monotonic clock (bounded asks included), and keeps its pauses to itself; several
processes then add up, which the fallback metric (``lunas_breaker_redis_fallback``) and a log line
make visible.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from orchestrator.store.redis_pause import RedisPause

# KEYS[1] = bucket; ARGV = interval_us, tolerance_us, tokens, max_wait_us.
# Returns the microseconds to wait before the reserved slot (0 = now), or -wait when refused.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * tokens
local wait = new_tat - tolerance - interval - now
if wait < 0 then wait = 0 end
if wait > max_wait then return -wait end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return wait
"""


# KEYS[1] = log; ARGV = window_us, cap, member. Returns 0 when admitted, else microseconds until
# the oldest entry leaves the window.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return math.max(1, oldest + window - now)
"""


# KEYS[1] = pause key; ARGV[1] = milliseconds. Lengthens the pause, never shortens it.
_PAUSE = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""


class PaceBusy(Exception):
    """No slot of ``bucket``'s pace within the caller's bound; nothing was reserved. ``wait``:
    seconds until the slot the caller would have had."""

    def __init__(self, bucket: str, wait: float) -> None:
        super().__init__(f"no {bucket} slot soon enough: the next is {wait:.1f} s away")
        self.bucket, self.wait = bucket, wait


@dataclass(frozen=True, kw_only=True)
class Pace:
    per_minute: float
    """Requests a minute the provider accepts (Xendit documents 600 live per endpoint)."""
    burst: int = 1
    """Requests that may go back to back after a quiet spell; 1 spaces every request."""
    headroom: float = 0.10
    """Fraction of the limit left unused. Requests are admitted on time but reach the provider
    with scheduling jitter: pacing exactly at the limit put one request over in a second at
    10/s, and with 3 % headroom a saturated 2-core machine still delivered 103 in one second
    at 100/s (bench/recovery.py, first run). With 8 % the busiest second stayed at 97-99 while
    the worker could not keep the pace, and reached 100-102 once it could (three 20,000-order
    drains, 2026-11-29): about nine requests over the cap, so 10 %."""

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1 or not 0 <= self.headroom < 1:
            raise ValueError("a pace needs a positive rate, a burst of at least 1 and a "
                             "headroom in [0, 1)")

    @property
    def interval_us(self) -> int:
        return max(1, round(60_000_000 / (self.per_minute * (1 - self.headroom))))

    @property
    def window_us(self) -> int:
        """The sliding window checked at send time: a second, or a minute for slow paces."""
        return 1_000_000 if self.per_minute >= 60 else 60_000_000

    @property
    def cap(self) -> int:
        """Requests allowed in one window, headroom taken off."""
        per_window = self.per_minute * (1 - self.headroom) * self.window_us / 60_000_000
        return max(1, int(per_window))


class _LocalBucket:
    """The same reservation and admission on this process's monotonic clock."""

    def __init__(self) -> None:
        self.tat_us = 0
        self.sent: deque[int] = deque()

    def admit(self, pace: Pace) -> int:
        now = time.monotonic_ns() // 1000
        while self.sent and self.sent[0] <= now - pace.window_us:
            self.sent.popleft()
        if len(self.sent) < pace.cap:
            self.sent.append(now)
            return 0
        return max(1, self.sent[0] + pace.window_us - now)

    def reserve(self, pace: Pace, tokens: int, max_wait_us: int) -> int:
        now = time.monotonic_ns() // 1000
        tat = max(self.tat_us, now)
        new_tat = tat + pace.interval_us * tokens
        wait = max(0, new_tat - (pace.burst - 1) * pace.interval_us - pace.interval_us - now)
        if wait > max_wait_us:
            return -wait
        self.tat_us = new_tat
        return wait


class RequestPacer:
    """``await pacer.acquire("midtrans", 1)`` returns when one more request is allowed."""

    def __init__(self, paces: dict[str, Pace], *, redis: aioredis.Redis | None,
                 key_prefix: str = "lunas:", max_wait: float = 2.0,
                 on_redis_pause: Callable[[], None] | None = None) -> None:
        self._paces, self._redis = paces, redis
        self._prefix, self._max_wait_us = key_prefix, int(max_wait * 1_000_000)
        self._local: dict[str, _LocalBucket] = {}
        self._script = redis.register_script(_RESERVE) if redis is not None else None
        self._admit_script = redis.register_script(_ADMIT) if redis is not None else None
        self._pause_script = redis.register_script(_PAUSE) if redis is not None else None
        self._paused_until: dict[str, float] = {}  # bucket -> time.monotonic() deadline
        self._redis_pause = RedisPause("request pacing", counted=on_redis_pause)

    def pace(self, bucket: str) -> Pace | None:
        return self._paces.get(bucket)

    async def acquire(self, bucket: str, tokens: int = 1,
                      before_send: Callable[[], Awaitable[bool]] | None = None, *,
                      within: float | None = None) -> bool:
        """Wait for ``tokens`` requests' worth of the bucket's pace. A bucket with no configured
        pace is unlimited. ``before_send`` runs once the reserved slot has come and before the
        send-time admission (so its own latency, a database round trip, never sits between
        admission and the request); if it answers False nothing is admitted and ``acquire``
        returns False. ``within``: take a slot only if it comes within that many seconds, else
        raise ``PaceBusy`` at once, having reserved nothing."""
        pace = self._paces.get(bucket)
        if pace is None or tokens <= 0:
            return before_send is None or await before_send()
        if within is None:
            await self._wait_for_turn(bucket, pace, tokens)
        else:
            wait_us = await self._reserve(bucket, pace, tokens, max(0, round(within * 1e6)))
            if wait_us < 0:
                raise PaceBusy(bucket, -wait_us / 1_000_000)
            if wait_us:
                await asyncio.sleep(wait_us / 1_000_000)
        if before_send is not None and not await before_send():
            return False
        admitted = 0
        while admitted < tokens:  # polled, not signalled: the log is shared across processes
            late_us = await self._admit(bucket, pace)
            if late_us:
                await asyncio.sleep(late_us / 1_000_000)
            else:
                admitted += 1
        return True

    async def _wait_for_turn(self, bucket: str, pace: Pace, tokens: int) -> None:
        while True:
            wait_us = await self._reserve(bucket, pace, tokens, self._max_wait_us)
            if wait_us >= 0:
                if wait_us:
                    await asyncio.sleep(wait_us / 1_000_000)
                return
            # Refused: the slot is too far ahead. Sleep part of the way and ask again.
            await asyncio.sleep(min(-wait_us, self._max_wait_us) / 1_000_000)

    async def pause(self, bucket: str, seconds: float) -> None:
        """No requests to ``bucket`` for ``seconds`` (its provider said 429, Retry-After), in
        every process that shares Redis; in this one alone without it."""
        if seconds <= 0:
            return
        until = time.monotonic() + seconds
        self._paused_until[bucket] = max(until, self._paused_until.get(bucket, 0.0))
        if self._pause_script is not None and self._redis_pause.may_try:
            try:
                await self._pause_script(keys=[self._pause_key(bucket)],
                                         args=[max(1, math.ceil(seconds * 1000))])
            except (RedisError, OSError) as exc:
                self._redis_pause.failed(exc)

    async def paused_for(self, bucket: str) -> float:
        """Seconds left of the longest pause of ``bucket`` known here or in Redis; 0 if none."""
        left = max(0.0, self._paused_until.get(bucket, 0.0) - time.monotonic())
        if self._redis is not None and self._redis_pause.may_try:
            try:
                ttl_ms = int(await self._redis.pttl(self._pause_key(bucket)))
            except (RedisError, OSError) as exc:
                self._redis_pause.failed(exc)
            else:
                left = max(left, ttl_ms / 1000)  # -2: no key, -1: no expiry (never ours)
        return left

    def _pause_key(self, bucket: str) -> str:
        return f"{self._prefix}pace:{bucket}:paused"

    async def _admit(self, bucket: str, pace: Pace) -> int:
        if self._admit_script is not None and self._redis_pause.may_try:
            try:
                return int(await self._admit_script(
                    keys=[f"{self._prefix}pace:{bucket}:sent"],
                    args=[pace.window_us, pace.cap, uuid.uuid4().hex]))
            except (RedisError, OSError) as exc:
                self._redis_pause.failed(exc)
        return self._local.setdefault(bucket, _LocalBucket()).admit(pace)

    async def _reserve(self, bucket: str, pace: Pace, tokens: int, max_wait_us: int) -> int:
        """Microseconds until the reserved slot, or minus that when it is further than
        ``max_wait_us`` (then nothing is reserved), in Redis or, without it, here alone.

        Never a bound below what an idle pace makes ``tokens`` requests wait (``interval`` for
        each beyond the burst): a read of two requests at 20 a minute waits 3.3 s however idle
        the pace, and a smaller bound refused it every time, for ever (seams review), whether
        the bound was a caller's ``within`` or the pacer's own ``max_wait``."""
        max_wait_us = max(max_wait_us, pace.interval_us * max(0, tokens - pace.burst))
        if self._script is not None and self._redis_pause.may_try:
            try:
                return int(await self._script(
                    keys=[f"{self._prefix}pace:{bucket}"],
                    args=[pace.interval_us, (pace.burst - 1) * pace.interval_us, tokens,
                          max_wait_us]))
            except (RedisError, OSError) as exc:
                self._redis_pause.failed(exc)
        local = self._local.setdefault(bucket, _LocalBucket())
        return local.reserve(pace, tokens, max_wait_us)
