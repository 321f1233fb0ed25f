"""Route circuit breakers: our asyncio policy around pybreaker's state machine, shared via Redis.

Why not pybreaker alone (``/work/shared/LIBRARIES.md``, "pybreaker 1.4.1"): ``cb.call(async_fn)``
records a success when the coroutine is *created*, so failures are never counted; ``cb.calling()``
lets every concurrent caller through in half-open, re-fires transitions on late results, counts
``CancelledError`` as a failure and ``exclude``d errors as successes; it trips on N consecutive
failures only (no rate window, no minimum volume, no slow calls) and moves open → half-open lazily
on the next call. ``CircuitRedisStorage`` uses the blocking client, breaks with
``decode_responses=True``, raises at construction when Redis is down and races across processes.
So pybreaker is only the *state holder*: its states, its manual ``open()`` / ``half_open()`` /
``close()`` and its listener (every state write, even open → open, starts a new *generation*).
The policy below decides when to write; we never call ``cb.call`` / ``cb.calling``.

State machine of one route (``RouteBreaker``)::

             failure rate or slow-call rate ≥ threshold
             over ≥ minimum_number_of_calls in the window
  ┌────────┐ ───────────────────────────────────────────► ┌──────┐
  │ closed │                                               │ open │ ◄───────────────┐
  └────────┘ ◄──────────┐                                  └──────┘                 │
                        │ every trial reported,               │ timer at            │ trials fail:
                        │ rates below thresholds              │ open_until          │ wait × factor,
                        │ (or a cluster close)                ▼ (no call needed)    │ jittered
                        │                               ┌───────────┐               │
                        └────────────────────────────── │ half_open │ ──────────────┘
                                                        └───────────┘
            admits exactly permitted_calls_in_half_open trials (cluster-wide with Redis);
            a round with no verdict after max_wait_in_half_open starts a fresh round

  forced_open / forced_closed: ops overrides on top of everything (announced to every replica and
  kept in Redis; forcing drops the shared trip); release_force() → closed everywhere.

Outcomes: success; failure (any ``Exception``, including every ``BREAKER_FAILURES`` error and the
``TimeoutError`` of ``asyncio.timeout``, as Resilience4j records all exceptions by default); slow
(a success or failure that took ≥ ``slow_call_duration``); neutral (``Refused``, ``Unreadable``,
``Throttled``, ``CancelledError``, process-exit exceptions): counted nowhere. A permit remembers
the generation it was issued in; its outcome is ignored once the state has moved on, so late
results never re-fire transitions.

Cluster (``RedisCoordinator``; windows stay per process, as in Resilience4j and Envoy): a trip is
claimed and published atomically (``<prefix>breaker:<route>:open_until`` + PUBLISH on
``<prefix>breaker:events``), so every replica opens with the same trip id and deadline; half-open
trial permits come from ``<prefix>breaker:<route>:trials:<round>`` (a Lua check-and-INCR), trial
results gather in ``...:results:<round>`` and the report that completes the round decides and
broadcasts the close or re-open. If Redis is unreachable each process runs alone (local trial
permits), ``lunas_breaker_redis_fallback`` says 1, and a background task reconnects and re-syncs.
A trip missing from Redis on re-sync was closed by a replica, unless Redis itself forgot it
(``<prefix>breaker:epoch`` gone or replaced: restarted empty); then each replica announces its
open trips and overrides again instead of closing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fnmatch
import functools
import json
import logging
import math
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pybreaker
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from orchestrator.domain.clock import Clock, SystemClock
from orchestrator.rails.base import Route
from orchestrator.rails.errors import Refused, Throttled, Unreadable
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"


_FROM_PYBREAKER = {
    pybreaker.STATE_CLOSED: BreakerState.CLOSED,
    pybreaker.STATE_OPEN: BreakerState.OPEN,
    pybreaker.STATE_HALF_OPEN: BreakerState.HALF_OPEN,
}


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


def outcome_of(exc: BaseException | None) -> Outcome:
    """How a call that ended with ``exc`` (None: returned normally) counts for its route."""
    if exc is None:
        return Outcome.SUCCESS
    if isinstance(exc, asyncio.CancelledError | Refused | Unreadable | Throttled):
        # the caller gave up / the provider is up and said no / answered what we cannot read /
        # is up and wants fewer requests (a 429 on any call: the router still fails that
        # checkout over, and the pacer waits status reads out; the breaker says "down", which a
        # throttled provider is not). Not pybreaker's ``exclude``, which counts as a success.
        return Outcome.NEUTRAL
    if isinstance(exc, Exception):
        return Outcome.FAILURE
    return Outcome.NEUTRAL  # KeyboardInterrupt, SystemExit, GeneratorExit: we are stopping


class BreakerOpen(pybreaker.CircuitBreakerError):
    """The route's breaker refused the call: open, forced open, or half-open with every trial
    permit taken. Not a provider error: the router skips the route (never retry on it)."""

    def __init__(self, route_key: str, *, state: BreakerState, retry_at: datetime | None) -> None:
        until = f" until {retry_at.isoformat()}" if retry_at else ""
        super().__init__(f"breaker for {route_key} is {state}{until}")
        self.route_key = route_key
        self.state = state
        self.retry_at = retry_at


class TransitionListener(Protocol):
    """Observes state changes (metrics, outbox events, logs). Called synchronously inside the
    transition: do not block; schedule async work (e.g. an outbox write) yourself."""

    def __call__(self, route_key: str, old: BreakerState, new: BreakerState, reason: str,
                 at: datetime) -> None: ...


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    """Per-route policy; names follow Resilience4j's ``CircuitBreakerConfig``.

    The window is TIME_BASED (Resilience4j's and Envoy's outlier-detection style): the last
    ``sliding_window`` of calls, in ten buckets, so a quiet route's old failures age out instead of
    waiting for N newer calls. Defaults are sized for payment creates, not Resilience4j's
    high-volume defaults (minimum 100 calls, 10 half-open calls, 60 s open).
    """

    failure_rate_threshold: float = 0.5
    """Trip when failures / calls ≥ this (0–1) once the window holds the minimum number of calls."""
    slow_call_rate_threshold: float = 0.8
    """Trip when slow calls / calls ≥ this (0–1): a provider answering, but too slowly to use."""
    slow_call_duration: timedelta = timedelta(seconds=3)
    """A call at least this long is slow (whether it succeeded or failed)."""
    sliding_window: timedelta = timedelta(seconds=30)
    minimum_number_of_calls: int = 10
    """Below this many counted calls in the window nothing trips, even at 100 % failures."""
    permitted_calls_in_half_open: int = 3
    """Trial calls per half-open round: per process alone, cluster-wide with Redis."""
    wait_in_open: timedelta = timedelta(seconds=30)
    """Open time after a first trip; each re-open after failed trials multiplies it."""
    wait_multiplier: float = 2.0
    max_wait_in_open: timedelta = timedelta(minutes=5)
    wait_jitter: float = 0.2
    """Up to this fraction is taken off each wait, so routes do not probe in lockstep; the wait
    never exceeds ``max_wait_in_open``."""
    max_wait_in_half_open: timedelta = timedelta(seconds=30)
    """A round without a verdict this long (a trial lost with its replica) starts a new round."""

    def __post_init__(self) -> None:
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if not 0 <= self.wait_jitter < 1:
            raise ValueError("wait_jitter must be in [0, 1)")
        if self.minimum_number_of_calls < 1 or self.permitted_calls_in_half_open < 1:
            raise ValueError("minimum_number_of_calls and permitted_calls_in_half_open must be ≥ 1")
        if self.wait_multiplier < 1 or self.max_wait_in_open < self.wait_in_open:
            raise ValueError("waits must not shrink: wait_multiplier ≥ 1, max ≥ wait_in_open")
        for name in ("sliding_window", "wait_in_open", "max_wait_in_half_open",
                     "slow_call_duration"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")

    def open_wait(self, attempt: int, rng: random.Random) -> timedelta:
        """How long trip number ``attempt`` (1 = first since the last close) stays open."""
        grown = self.wait_in_open.total_seconds() * self.wait_multiplier ** min(attempt - 1, 64)
        capped = min(grown, self.max_wait_in_open.total_seconds())
        return timedelta(seconds=capped * (1 - self.wait_jitter * rng.random()))


@dataclass(frozen=True, kw_only=True)
class ClusterTimings:
    """Budgets for Redis. Only ``op_timeout`` is ever spent on a request (a half-open permit)."""

    op_timeout: timedelta = timedelta(milliseconds=250)
    """A half-open permit's wait for Redis; past it the process runs alone (fallback). Spent only
    on a trial, a few calls per round, so it is sized to the event loop's own lag under a burst,
    not to Redis: at 50 ms a replica busy with twenty captures missed it with Redis healthy, fell
    back and admitted its own trials beside the cluster's (CI, 2026-11-30). Equal to the client's
    socket timeout (bootstrap), past which Redis really is too slow to lean on."""
    sync_timeout: timedelta = timedelta(seconds=1)
    """Background calls: announcements, re-sync, heartbeat."""
    heartbeat: timedelta = timedelta(seconds=1)
    reconnect_min: timedelta = timedelta(milliseconds=100)
    reconnect_max: timedelta = timedelta(seconds=5)
    record_ttl: timedelta = timedelta(minutes=10)
    """How long a trip record outlives its open_until, so replicas starting or re-syncing during
    half-open join the trial round instead of starting closed."""


@dataclass(frozen=True, kw_only=True)
class Trip:
    """One opening of a route, shared by every replica: same id, same deadline, same backoff."""

    id: str
    until_ms: int
    """Wall-clock epoch milliseconds: the moment the route goes half-open."""
    attempt: int
    """Consecutive trips without a close (1 = first); drives the backoff."""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "until_ms": self.until_ms, "attempt": self.attempt}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trip:
        return cls(id=str(d["id"]), until_ms=int(d["until_ms"]), attempt=int(d["attempt"]))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Trip:
        return cls.from_dict(json.loads(raw))


@dataclass(frozen=True, kw_only=True)
class BreakerSnapshot:
    """What ops and the status page may show about one route's breaker."""

    route_key: str
    state: BreakerState
    retry_at: datetime | None
    generation: int
    calls: int
    failures: int
    slow: int
    attempt: int
    trip_id: str | None
    """Same on every replica for one opening: an idempotency key for events about it."""
    synced: bool
    """False while a local decision has not reached Redis yet (Redis unreachable)."""


class Permit:
    """Leave to make one call on a route. Report its outcome exactly once (later reports are
    ignored); ``guard()`` does it for you. A trial permit never reported holds its half-open slot
    until the round expires, so always report, even on cancellation."""

    __slots__ = ("_breaker", "_recorded", "cluster", "generation", "started", "trial")

    def __init__(self, breaker: RouteBreaker, *, generation: int, trial: bool, cluster: bool,
                 started: float) -> None:
        self._breaker = breaker
        self._recorded = False
        self.generation, self.trial, self.cluster, self.started = (
            generation, trial, cluster, started)

    @property
    def route_key(self) -> str:
        return self._breaker.key

    @property
    def recorded(self) -> bool:
        return self._recorded

    def record(self, outcome: Outcome) -> None:
        """Success or failure (slow is derived from the duration), or neutral."""
        if not self._recorded:
            self._recorded = True
            self._breaker._report(self, outcome)

    def success(self) -> None:
        self.record(Outcome.SUCCESS)

    def failure(self) -> None:
        """E.g. a result predicate: an HTTP 200 whose body says the provider failed."""
        self.record(Outcome.FAILURE)

    def neutral(self) -> None:
        self.record(Outcome.NEUTRAL)

    def record_error(self, exc: BaseException) -> None:
        self.record(outcome_of(exc))


class Coordinator(Protocol):
    """What a breaker needs from the cluster; ``LocalOnly`` when there is none."""

    @property
    def active(self) -> bool: ...

    async def take_trial(self, breaker: RouteBreaker, round_id: str) -> bool | None:
        """A cluster-wide trial permit: True/False, or None when the cluster cannot say."""
        ...

    def announce_trip(self, breaker: RouteBreaker, trip: Trip, expected_id: str) -> None: ...

    def announce_close(self, breaker: RouteBreaker, trip_id: str) -> None: ...

    def announce_force(self, breaker: RouteBreaker, state: BreakerState | None,
                       reason: str) -> None: ...

    def report_trial(self, breaker: RouteBreaker, round_id: str, outcome: Outcome,
                     slow: bool) -> None: ...


class LocalOnly:
    """No cluster (embedded mode, unit tests): every decision is this process's alone."""

    active = False

    async def take_trial(self, breaker: RouteBreaker, round_id: str) -> bool | None:
        return None

    def announce_trip(self, breaker: RouteBreaker, trip: Trip, expected_id: str) -> None:
        pass

    def announce_close(self, breaker: RouteBreaker, trip_id: str) -> None:
        pass

    def announce_force(self, breaker: RouteBreaker, state: BreakerState | None,
                       reason: str) -> None:
        pass

    def report_trial(self, breaker: RouteBreaker, round_id: str, outcome: Outcome,
                     slow: bool) -> None:
        pass


@dataclass
class _Bucket:
    index: int
    calls: int = 0
    failures: int = 0
    slow: int = 0


class _Window:
    """Time-based sliding window: ten buckets, each a tenth of the span; totals kept as it goes."""

    BUCKETS = 10

    def __init__(self, span: timedelta) -> None:
        self._width = span.total_seconds() / self.BUCKETS
        self._buckets: deque[_Bucket] = deque()
        self.calls = self.failures = self.slow = 0

    def add(self, now: float, *, failed: bool, slow: bool) -> None:
        index = math.floor(now / self._width)
        self._evict(index)
        if not self._buckets or self._buckets[-1].index != index:
            self._buckets.append(_Bucket(index))
        bucket = self._buckets[-1]
        bucket.calls += 1
        bucket.failures += failed
        bucket.slow += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._evict(math.floor(now / self._width))
        return self.calls, self.failures, self.slow

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = self.failures = self.slow = 0

    def _evict(self, index: int) -> None:
        while self._buckets and self._buckets[0].index <= index - self.BUCKETS:
            old = self._buckets.popleft()
            self.calls -= old.calls
            self.failures -= old.failures
            self.slow -= old.slow


@dataclass
class _TrialRound:
    """This process's view of one half-open round (id shared cluster-wide: ``<trip>.<n>``)."""

    id: str
    issued: int = 0
    successes: int = 0
    failures: int = 0
    slow: int = 0
    cluster_exhausted: bool = False


class _Generations(pybreaker.CircuitBreakerListener):
    """pybreaker notifies every state write (even open → open): each starts a new generation."""

    def __init__(self) -> None:
        self.value = 0

    def state_change(self, cb: pybreaker.CircuitBreaker,
                     old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        self.value += 1


def _call_label(outcome: Outcome, slow: bool) -> str:
    if outcome is Outcome.NEUTRAL:
        return "neutral"
    return f"slow_{outcome.value}" if slow else outcome.value


class RouteBreaker:
    """One route's breaker. Single-threaded (the event loop): every decision below runs without
    an ``await`` between its check and its write, so concurrent callers cannot overtake it."""

    def __init__(self, route_key: str, config: BreakerConfig, *,
                 coordinator: Coordinator | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None, monotonic: Callable[[], float] = time.monotonic,
                 on_call: Callable[[str, str], None] | None = None) -> None:
        self.key = route_key
        self.config = config
        self._coordinator: Coordinator = coordinator or LocalOnly()
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._on_call = on_call
        self._listeners: list[TransitionListener] = []
        self._generations = _Generations()
        self._cb = pybreaker.CircuitBreaker(name=route_key, listeners=[self._generations])
        self._window = _Window(config.sliding_window)
        self._forced: BreakerState | None = None
        self._force_reason = ""
        self._trip: Trip | None = None
        self._round = _TrialRound(id="")
        self._timer: asyncio.TimerHandle | None = None
        self._trip_unsynced = False  # tripped here, Redis not told yet
        self._force_unsynced = False  # forced/released here, Redis not told yet
        self._closed_offline: str | None = None  # trip closed here, Redis not told yet
        self._last_closed: str | None = None
        self._read_cluster = False  # Redis's record of this route has been read at least once

    # -- what callers see -------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        return self._forced or _FROM_PYBREAKER[self._cb.current_state]

    @property
    def generation(self) -> int:
        return self._generations.value

    @property
    def retry_at(self) -> datetime | None:
        """When an open breaker goes half-open; None in every other state."""
        if self.state is BreakerState.OPEN and self._trip is not None:
            return datetime.fromtimestamp(self._trip.until_ms / 1000, UTC)
        return None

    @property
    def settled(self) -> bool:
        """False while a breaker just created here has not yet read what the cluster holds for
        its route: its ``closed`` then means "not known yet", not "the route works". True
        without a cluster, or while Redis is unreachable (local state is all there is)."""
        return self._read_cluster or not self._coordinator.active

    def add_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    async def acquire(self) -> Permit:
        """A permit to call the route, or ``BreakerOpen``. Awaits Redis (≤ op_timeout) only for
        a half-open trial permit; closed and open answer without suspending."""
        for _ in range(3):
            state = self.state
            if state in (BreakerState.CLOSED, BreakerState.FORCED_CLOSED):
                return self._new_permit(trial=False, cluster=False)
            if state is not BreakerState.HALF_OPEN:
                break
            permit = await self._acquire_trial()
            if permit is not None:
                return permit
        raise self._rejection()

    def refuses_now(self) -> bool:
        """Whether ``acquire`` would refuse a call right now: open, forced open, or half-open
        with every trial of the round issued here or cluster-wide. A caller about to wait for
        something else first (a paced slot) asks this, so a call that cannot go spends nothing
        on the way to its refusal. Advisory: the state may change during that wait, and
        ``acquire`` decides."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            round_ = self._round
            return (round_.issued >= self.config.permitted_calls_in_half_open
                    or round_.cluster_exhausted)
        return state in (BreakerState.OPEN, BreakerState.FORCED_OPEN)

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[Permit]:
        """``async with breaker.guard() as call:`` — success unless the block raises (then
        ``outcome_of``) or already recorded through ``call``."""
        permit = await self.acquire()
        try:
            yield permit
        except BaseException as exc:
            permit.record_error(exc)
            raise
        permit.success()

    def force_open(self, reason: str) -> None:
        self._set_forced(BreakerState.FORCED_OPEN, reason)
        self._announce_force(BreakerState.FORCED_OPEN, reason)

    def force_closed(self, reason: str) -> None:
        self._set_forced(BreakerState.FORCED_CLOSED, reason)
        self._announce_force(BreakerState.FORCED_CLOSED, reason)

    def release_force(self, reason: str = "override released by ops") -> None:
        if self._forced is not None:
            self._close(reason)
            self._announce_force(None, reason)

    def snapshot(self) -> BreakerSnapshot:
        calls, failures, slow = self._window.totals(self._monotonic())
        synced = isinstance(self._coordinator, LocalOnly) or not (
            self._trip_unsynced or self._force_unsynced or self._closed_offline)
        return BreakerSnapshot(
            route_key=self.key, state=self.state, retry_at=self.retry_at,
            generation=self.generation, calls=calls, failures=failures, slow=slow,
            attempt=self._trip.attempt if self._trip else 0,
            trip_id=self._trip.id if self._trip else None, synced=synced)

    def shutdown(self) -> None:
        """Cancel the pending timer (the registry's ``close`` does this for every breaker)."""
        self._cancel_timer()

    # -- outcomes ---------------------------------------------------------------------------

    async def _acquire_trial(self) -> Permit | None:
        round_, generation = self._round, self.generation
        if round_.issued >= self.config.permitted_calls_in_half_open or round_.cluster_exhausted:
            raise self._rejection()
        round_.issued += 1  # reserved before any await: concurrent callers see it taken
        try:
            granted = await self._coordinator.take_trial(self, round_.id)
        except BaseException:
            round_.issued -= 1
            raise
        if generation != self.generation:
            return None  # the state moved on while Redis answered: look again
        if granted is False:
            round_.issued -= 1
            round_.cluster_exhausted = True
            raise self._rejection()
        return self._new_permit(trial=True, cluster=granted is True)

    def _new_permit(self, *, trial: bool, cluster: bool) -> Permit:
        return Permit(self, generation=self.generation, trial=trial, cluster=cluster,
                      started=self._monotonic())

    def _rejection(self) -> BreakerOpen:
        self._count("rejected")
        return BreakerOpen(self.key, state=self.state, retry_at=self.retry_at)

    def _report(self, permit: Permit, outcome: Outcome) -> None:
        elapsed = self._monotonic() - permit.started
        slow = outcome is not Outcome.NEUTRAL and elapsed >= self._slow_seconds
        if permit.generation != self.generation:
            self._count("late")
            return
        self._count(_call_label(outcome, slow))
        if self._forced is not None:
            return
        if permit.trial:
            self._report_trial(permit, outcome, slow)
        elif outcome is not Outcome.NEUTRAL:
            self._window.add(self._monotonic(), failed=outcome is Outcome.FAILURE, slow=slow)
            self._check_window()

    @property
    def _slow_seconds(self) -> float:
        return self.config.slow_call_duration.total_seconds()

    def _check_window(self) -> None:
        calls, failures, slow = self._window.totals(self._monotonic())
        if calls < self.config.minimum_number_of_calls:
            return
        failure_rate, slow_rate = failures / calls, slow / calls
        if (failure_rate >= self.config.failure_rate_threshold
                or slow_rate >= self.config.slow_call_rate_threshold):
            self._trip_now(1, f"failure rate {failure_rate:.0%}, slow-call rate "
                              f"{slow_rate:.0%} over {calls} calls")

    def _report_trial(self, permit: Permit, outcome: Outcome, slow: bool) -> None:
        round_ = self._round
        if outcome is Outcome.NEUTRAL:  # no evidence: the slot goes to another caller
            round_.issued -= 1
            if permit.cluster:
                round_.cluster_exhausted = False
                self._coordinator.report_trial(self, round_.id, outcome, slow)
            return
        round_.failures += outcome is Outcome.FAILURE
        round_.successes += outcome is Outcome.SUCCESS
        round_.slow += slow
        if permit.cluster and self._coordinator.active:
            self._coordinator.report_trial(self, round_.id, outcome, slow)
        elif round_.successes + round_.failures >= self.config.permitted_calls_in_half_open:
            self.apply_verdict(round_.id, round_.successes, round_.failures, round_.slow)

    def apply_verdict(self, round_id: str, successes: int, failures: int, slow: int) -> None:
        """Every trial of ``round_id`` reported (here, or cluster-wide via the coordinator)."""
        trip = self._trip
        if self.state is not BreakerState.HALF_OPEN or self._round.id != round_id or not trip:
            return
        total = successes + failures
        failure_rate, slow_rate = failures / total, slow / total
        if (failure_rate < self.config.failure_rate_threshold
                and slow_rate < self.config.slow_call_rate_threshold):
            self._close(f"{successes} of {total} trial calls succeeded")
            self._closed_offline = trip.id
            self._coordinator.announce_close(self, trip.id)
        else:
            self._trip_now(trip.attempt + 1, f"trial calls: failure rate {failure_rate:.0%}, "
                                              f"slow-call rate {slow_rate:.0%}", trip.id)

    # -- state writes (the only places that touch pybreaker) --------------------------------

    def _trip_now(self, attempt: int, reason: str, expected_id: str = "") -> None:
        wait = self.config.open_wait(attempt, self._rng)
        trip = Trip(id=secrets.token_hex(8), attempt=attempt,
                    until_ms=self._now_ms() + round(wait.total_seconds() * 1000))
        self._apply_trip(trip, reason)
        self._trip_unsynced = True
        self._coordinator.announce_trip(self, trip, expected_id)

    def _apply_trip(self, trip: Trip, reason: str) -> None:
        current = self._trip.id if self._trip is not None else None
        if self._forced is not None or trip.id in (self._last_closed, current):
            return
        self._trip, self._closed_offline = trip, None
        if self._cb.current_state != pybreaker.STATE_OPEN:
            self._write(self._cb.open, reason)
        self._schedule(trip.until_ms, self._on_wait_elapsed, trip.id, 0)

    def _on_wait_elapsed(self, trip_id: str, _: int) -> None:
        self._timer = None
        trip = self._trip
        if trip is not None and trip.id == trip_id and self.state is BreakerState.OPEN:
            span = self.round_ms
            self._start_round(max(0, (self._now_ms() - trip.until_ms) // span),
                              "wait in open elapsed")

    def _on_round_expired(self, trip_id: str, number: int) -> None:
        self._timer = None
        trip = self._trip
        if trip is not None and trip.id == trip_id and self.state is BreakerState.HALF_OPEN:
            log.info("breaker %s: trial round %d without a verdict; starting another",
                     self.key, number - 1)
            self._start_round(number, "trial round expired without a verdict")

    def _start_round(self, number: int, reason: str) -> None:
        assert self._trip is not None
        self._round = _TrialRound(id=f"{self._trip.id}.{number}")
        self._write(self._cb.half_open, reason)  # half_open → half_open: a new generation
        self._schedule(self._trip.until_ms + (number + 1) * self.round_ms,
                       self._on_round_expired, self._trip.id, number + 1)

    def _close(self, reason: str) -> None:
        self._cancel_timer()
        if self._trip is not None:
            self._last_closed = self._trip.id
        self._trip, self._round, self._trip_unsynced = None, _TrialRound(id=""), False
        self._window.clear()
        self._write(self._cb.close, reason)

    def _set_forced(self, state: BreakerState, reason: str) -> None:
        self._cancel_timer()
        self._trip, self._round, self._trip_unsynced = None, _TrialRound(id=""), False
        self._window.clear()
        self._force_reason = reason
        action = self._cb.open if state is BreakerState.FORCED_OPEN else self._cb.close
        self._write(action, reason, forced=state)

    def _write(self, action: Callable[[], object], reason: str, *,
               forced: BreakerState | None = None) -> None:
        old = self.state
        self._forced = forced
        action()
        if self.state is not old:
            self._notify(old, self.state, reason)

    def _notify(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        at = self._clock.now()
        opened = new in (BreakerState.OPEN, BreakerState.FORCED_OPEN)
        log.log(logging.WARNING if opened else logging.INFO, "breaker %s: %s -> %s (%s)",
                self.key, old, new, reason)
        for listener in self._listeners:
            try:
                listener(self.key, old, new, reason, at)
            except Exception:
                # The state is already written and must stay right; a broken observer is a bug
                # to see loudly, not a reason to fail the payment call that caused the change.
                log.exception("breaker listener %r failed on %s %s -> %s", listener, self.key,
                              old, new)

    def _announce_force(self, state: BreakerState | None, reason: str) -> None:
        self._force_unsynced = True
        self._coordinator.announce_force(self, state, reason)

    # -- timers and time --------------------------------------------------------------------

    @property
    def round_ms(self) -> int:
        """Length of a half-open trial round (``max_wait_in_half_open``) in milliseconds."""
        return max(1, round(self.config.max_wait_in_half_open.total_seconds() * 1000))

    def _now_ms(self) -> int:
        return round(self._clock.now().timestamp() * 1000)

    def _schedule(self, at_ms: int, callback: Callable[[str, int], None], trip_id: str,
                  number: int) -> None:
        self._cancel_timer()
        delay = max(0.0, (at_ms - self._now_ms()) / 1000)
        self._timer = asyncio.get_running_loop().call_later(delay, callback, trip_id, number)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _count(self, label: str) -> None:
        if self._on_call is not None:
            self._on_call(self.key, label)

    # -- what the coordinator tells us ------------------------------------------------------

    def apply_remote_trip(self, trip: Trip, origin: str) -> None:
        self._apply_trip(trip, f"tripped on {origin}")
        if self._trip is not None and self._trip.id == trip.id:
            self._trip_unsynced = False

    def apply_remote_close(self, trip_id: str, origin: str) -> None:
        if self._forced is None and self._trip is not None and self._trip.id == trip_id:
            self._close(f"trial calls succeeded on {origin}")

    def apply_remote_force(self, state: BreakerState | None, reason: str, origin: str) -> None:
        self._force_unsynced = False
        if state is None:
            if self._forced is not None:
                self._close(f"override released on {origin}: {reason}")
        elif state is not self._forced:
            self._set_forced(state, f"forced on {origin}: {reason}")

    def trip_synced(self, trip_id: str) -> None:
        if self._trip is not None and self._trip.id == trip_id:
            self._trip_unsynced = False

    def close_synced(self, trip_id: str) -> None:
        if self._closed_offline == trip_id:
            self._closed_offline = None

    def force_synced(self) -> None:
        self._force_unsynced = False

    def resync(self, trip: Trip | None, forced: tuple[BreakerState, str] | None, *,
               redis_lost: bool = False) -> None:
        """Reconcile with what Redis holds after (re)connecting. Redis wins, except for decisions
        taken here while it was unreachable, which are announced now (a trip claim keeps
        whichever trip is still active, so the cluster converges on one).

        ``redis_lost``: Redis came back without what it held (restarted empty). A missing trip or
        override then says nothing about the route: ours is announced again rather than
        dropped, or every replica would close an open route at once."""
        self._read_cluster = True
        if self._force_unsynced or (redis_lost and forced is None and self._forced is not None):
            self._coordinator.announce_force(self, self._forced, self._force_reason)
        elif forced is not None or self._forced is not None:
            self.apply_remote_force(forced[0] if forced else None,
                                    forced[1] if forced else "not in Redis", "resync")
        if self._forced is None:
            self._resync_trip(trip, redis_lost)

    def _resync_trip(self, trip: Trip | None, redis_lost: bool = False) -> None:
        mine = self._trip
        if mine is not None and (self._trip_unsynced or (redis_lost and trip is None)):
            self._trip_unsynced = True
            self._coordinator.announce_trip(self, mine, "")
        elif trip is not None and trip.id == self._closed_offline:
            self._coordinator.announce_close(self, trip.id)
        elif trip is not None:
            self.apply_remote_trip(trip, "resync")
        elif mine is not None:
            self._close("closed elsewhere while Redis was unreachable")


# -- cluster coordination ---------------------------------------------------------------------

_REDIS_DOWN = (RedisError, OSError, TimeoutError)

# KEYS[1] trip record. ARGV: record, its id, id it may replace, now ms, ttl ms, channel, message.
# An active trip (until in the future, not the one we replace) wins: the caller adopts it.
_CLAIM_TRIP = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local c = cjson.decode(cur)
  if c['id'] == ARGV[2] then return cur end
  if c['id'] ~= ARGV[3] and tonumber(c['until_ms']) > tonumber(ARGV[4]) then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return ARGV[1]
"""

# KEYS[1] trip record. ARGV: trip id, channel, message. Returns the newer trip if one replaced it.
_CLOSE_TRIP = """
local cur = redis.call('GET', KEYS[1])
if cur and cjson.decode(cur)['id'] ~= ARGV[1] then return cur end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return false
"""

# KEYS[1] trial counter. ARGV: permitted, ttl ms. Never counts past ``permitted``.
_TAKE_TRIAL = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] trial counter, KEYS[2] results hash. ARGV: outcome, slow (1/0), permitted, ttl ms.
# Neutral gives the permit back; the report completing the round gets {successes, failures, slow}.
_REPORT_TRIAL = """
if ARGV[1] == 'neutral' then
  if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
  return {}
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[2], 'slow', 1) end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local s = tonumber(redis.call('HGET', KEYS[2], 'success') or '0')
local f = tonumber(redis.call('HGET', KEYS[2], 'failure') or '0')
if s + f ~= tonumber(ARGV[3]) then return {} end
return {s, f, tonumber(redis.call('HGET', KEYS[2], 'slow') or '0')}
"""


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def _honour_cancel() -> None:
    """Call after every redis-py await. redis-py 8.1 sometimes completes a command after its task
    was cancelled and swallows the ``CancelledError`` (about 1 cancel in 5 landing mid-command, in
    our probe); the task's ``cancelling()`` count still says so, so raise it again here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _stop(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any that swallowed it (see above)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: an error here was already logged or is a shutdown race


def _parse_forced(raw: bytes | str | None) -> tuple[BreakerState, str] | None:
    if raw is None:
        return None
    d = json.loads(raw)
    return BreakerState(d["state"]), str(d.get("reason", ""))


class RedisCoordinator:
    """Shares trips, closes, overrides and half-open permits between replicas through Redis.

    Request path: only ``take_trial`` awaits Redis, within ``op_timeout``. Everything else runs in
    two background tasks: an ordered job queue (announcements, trial reports) and a supervisor
    (subscribe, re-sync, listen, heartbeat; on any failure: fallback, back off, reconnect).
    The Redis client is injected and owned by the caller.
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str, node_id: str,
                 timings: ClusterTimings, clock: Clock,
                 breaker_for: Callable[[str], RouteBreaker],
                 breakers: Callable[[], Sequence[RouteBreaker]],
                 on_fallback: Callable[[bool], None]) -> None:
        self._redis, self._prefix, self.node_id, self._t = redis, prefix, node_id, timings
        self._clock, self._breaker_for, self._breakers = clock, breaker_for, breakers
        self._on_fallback = on_fallback
        self._channel = f"{prefix}breaker:events"
        self._claim = redis.register_script(_CLAIM_TRIP)
        self._close_script = redis.register_script(_CLOSE_TRIP)
        self._take = redis.register_script(_TAKE_TRIAL)
        self._report = redis.register_script(_REPORT_TRIAL)
        self._active = False
        self.fallback = False
        self._broken = asyncio.Event()
        self._settled = asyncio.Event()
        self._jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._delay = _seconds(timings.reconnect_min)
        self._epoch: str | None = None
        self._giving_back: set[asyncio.Future[None]] = set()

    @property
    def active(self) -> bool:
        return self._active

    def ensure_started(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._supervise(), name="breaker-redis-link"),
                           asyncio.create_task(self._drain(), name="breaker-redis-jobs")]

    async def start(self) -> None:
        """Start, and wait (≤ 2 × sync_timeout) until the first connection succeeded or failed."""
        self.ensure_started()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_seconds(self._t.sync_timeout) * 2):
                await self._settled.wait()

    async def close(self) -> None:
        await _stop(self._tasks)
        self._tasks, self._active = [], False

    def _key(self, route_key: str, *parts: str) -> str:
        return ":".join((f"{self._prefix}breaker", route_key, *parts))

    def _message(self, kind: str, route_key: str, **fields: Any) -> str:
        return json.dumps({"kind": kind, "route": route_key, "origin": self.node_id, **fields})

    def _now_ms(self) -> int:
        return round(self._clock.now().timestamp() * 1000)

    # -- the breaker's side -----------------------------------------------------------------

    async def take_trial(self, breaker: RouteBreaker, round_id: str) -> bool | None:
        if not self._active:
            return None
        ttl = 2 * breaker.round_ms
        # Shielded: a slow answer is given up on after op_timeout, but the script may already
        # have counted the permit; once it answers, a permit nobody uses is given back, or the
        # round would wait for a report that never comes and no verdict could be reached.
        taking = asyncio.ensure_future(self._take(
            keys=[self._key(breaker.key, "trials", round_id)],
            args=[breaker.config.permitted_calls_in_half_open, ttl]))
        try:
            async with asyncio.timeout(_seconds(self._t.op_timeout)):
                granted = await asyncio.shield(taking)
                _honour_cancel()  # inside the timeout: a swallowed expiry becomes TimeoutError
        except _REDIS_DOWN as exc:
            taking.add_done_callback(functools.partial(self._give_back, breaker, round_id))
            self._lost(exc)
            return None
        except BaseException:
            taking.add_done_callback(functools.partial(self._give_back, breaker, round_id))
            raise
        return int(granted) == 1

    def _give_back(self, breaker: RouteBreaker, round_id: str, taking: asyncio.Future[Any]
                   ) -> None:
        """A trial permit granted to a caller that had stopped waiting: report it neutral (the
        script then counts it free again), in the background and whether or not this process
        is in fallback now."""
        if taking.cancelled() or taking.exception() is not None or int(taking.result()) != 1:
            return

        async def give_back() -> None:
            with contextlib.suppress(*_REDIS_DOWN):
                async with asyncio.timeout(_seconds(self._t.sync_timeout)):
                    await self._report(
                        keys=[self._key(breaker.key, "trials", round_id),
                              self._key(breaker.key, "results", round_id)],
                        args=[Outcome.NEUTRAL.value, 0,
                              breaker.config.permitted_calls_in_half_open,
                              2 * breaker.round_ms])

        task = asyncio.ensure_future(give_back())
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    def announce_trip(self, breaker: RouteBreaker, trip: Trip, expected_id: str) -> None:
        self._enqueue(functools.partial(self._claim_trip, breaker, trip, expected_id))

    def announce_close(self, breaker: RouteBreaker, trip_id: str) -> None:
        self._enqueue(functools.partial(self._announce_close, breaker, trip_id))

    def announce_force(self, breaker: RouteBreaker, state: BreakerState | None,
                       reason: str) -> None:
        self._enqueue(functools.partial(self._announce_force, breaker, state, reason))

    def report_trial(self, breaker: RouteBreaker, round_id: str, outcome: Outcome,
                     slow: bool) -> None:
        self._enqueue(functools.partial(self._report_trial, breaker, round_id, outcome, slow))

    def watch(self, breaker: RouteBreaker) -> None:
        """A breaker created after connecting: read what Redis holds for its route."""
        self._enqueue(functools.partial(self._resync, [breaker]))

    def _enqueue(self, job: Callable[[], Awaitable[None]]) -> None:
        if self._active:  # otherwise the breaker's unsynced flags carry it to the next re-sync
            self._jobs.put_nowait(job)

    # -- jobs -------------------------------------------------------------------------------

    async def _claim_trip(self, breaker: RouteBreaker, trip: Trip, expected_id: str) -> None:
        now = self._now_ms()
        ttl = max(1, trip.until_ms - now) + round(_seconds(self._t.record_ttl) * 1000)
        raw = await self._claim(
            keys=[self._key(breaker.key, "open_until")],
            args=[json.dumps(trip.as_dict()), trip.id, expected_id, now, ttl, self._channel,
                  self._message("trip", breaker.key, trip=trip.as_dict())])
        _honour_cancel()
        winner = Trip.from_json(raw)
        if winner.id == trip.id:
            breaker.trip_synced(trip.id)
        else:
            breaker.apply_remote_trip(winner, "another replica")

    async def _announce_close(self, breaker: RouteBreaker, trip_id: str) -> None:
        raw = await self._close_script(
            keys=[self._key(breaker.key, "open_until")],
            args=[trip_id, self._channel, self._message("close", breaker.key, trip_id=trip_id)])
        _honour_cancel()
        breaker.close_synced(trip_id)
        if raw is not None:  # a newer trip replaced ours meanwhile: it stands
            breaker.apply_remote_trip(Trip.from_json(raw), "another replica")

    async def _announce_force(self, breaker: RouteBreaker, state: BreakerState | None,
                              reason: str) -> None:
        key = self._key(breaker.key, "forced")
        message = self._message("force", breaker.key, state=state, reason=reason)
        async with self._redis.pipeline(transaction=True) as pipe:
            if state is None:
                pipe.delete(key)
            else:  # an override supersedes the trip: release starts from closed everywhere
                pipe.set(key, json.dumps({"state": state.value, "reason": reason}))
                pipe.delete(self._key(breaker.key, "open_until"))
            pipe.publish(self._channel, message)
            await pipe.execute()
        _honour_cancel()
        breaker.force_synced()
        if state is None:
            await self._resync([breaker])  # adopt the trip the cluster may hold

    async def _report_trial(self, breaker: RouteBreaker, round_id: str, outcome: Outcome,
                            slow: bool) -> None:
        ttl = 2 * breaker.round_ms
        verdict = await self._report(
            keys=[self._key(breaker.key, "trials", round_id),
                  self._key(breaker.key, "results", round_id)],
            args=[outcome.value, int(slow), breaker.config.permitted_calls_in_half_open, ttl])
        _honour_cancel()
        if verdict:
            successes, failures, slow_calls = (int(v) for v in verdict)
            breaker.apply_verdict(round_id, successes, failures, slow_calls)

    async def _resync(self, breakers: Sequence[RouteBreaker], *, redis_lost: bool = False
                      ) -> None:
        if not breakers:
            return
        keys = [k for b in breakers
                for k in (self._key(b.key, "open_until"), self._key(b.key, "forced"))]
        generations = [b.generation for b in breakers]
        values = await self._redis.mget(keys)
        _honour_cancel()
        for i, breaker in enumerate(breakers):
            if breaker.generation != generations[i]:
                # It moved while Redis answered: a trip message (published after its record was
                # written) may have overtaken this read, which must not close it. Read again.
                self._enqueue(functools.partial(self._resync, [breaker], redis_lost=redis_lost))
                continue
            trip_raw, forced_raw = values[2 * i], values[2 * i + 1]
            breaker.resync(Trip.from_json(trip_raw) if trip_raw else None,
                           _parse_forced(forced_raw), redis_lost=redis_lost)

    async def _redis_lost_state(self) -> bool:
        """True when Redis no longer holds what it held when this process last saw it: its
        epoch (a key created once, never expiring) is gone or replaced, as after a restart
        without persistence. A trip missing then was forgotten, not closed by a replica."""
        token = secrets.token_hex(8)
        held: Any = await self._redis.set(self._key("epoch"), token, nx=True, get=True)
        _honour_cancel()
        current = held.decode() if isinstance(held, bytes) else held if isinstance(
            held, str) else token
        lost = self._epoch is not None and current != self._epoch
        self._epoch = current
        if lost:
            log.warning("Redis lost the breaker state it held (restarted empty?): open routes "
                        "are announced again instead of closing")
        return lost

    async def _drain(self) -> None:
        while True:
            job = await self._jobs.get()
            if not self._active:
                continue
            try:
                async with asyncio.timeout(_seconds(self._t.sync_timeout)):
                    await job()
            except _REDIS_DOWN as exc:
                self._lost(exc)
            except Exception:
                # A bug in one job must not end coordination for every route.
                log.exception("breaker cluster job failed")

    # -- the link -----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                await self._session()
            except _REDIS_DOWN as exc:
                self._lost(exc)
            except Exception as exc:
                log.exception("breaker Redis link failed")  # a bug: still fall back, retry
                self._lost(exc)
            self._settled.set()
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, _seconds(self._t.reconnect_max))

    async def _session(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(_seconds(self._t.sync_timeout)):
                await pubsub.subscribe(self._channel)
                _honour_cancel()
                self._broken.clear()
                self._active = True
                await self._resync(self._breakers(), redis_lost=await self._redis_lost_state())
            self._recovered()
            await self._watch(pubsub)
        finally:
            self._active = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1

    async def _watch(self, pubsub: PubSub) -> None:
        tasks = [asyncio.create_task(self._listen(pubsub)),
                 asyncio.create_task(self._heartbeat()),
                 asyncio.create_task(self._broken.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise the listener's or heartbeat's error
            raise ConnectionError("a Redis call on the request path failed")
        finally:
            await _stop(tasks)

    async def _listen(self, pubsub: PubSub) -> None:
        async for message in pubsub.listen():
            _honour_cancel()
            if message.get("type") == "message":
                self._on_message(message["data"])
        raise ConnectionError("breaker subscription ended")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(_seconds(self._t.heartbeat))
            async with asyncio.timeout(_seconds(self._t.sync_timeout)):
                await self._redis.ping()
                _honour_cancel()

    def _on_message(self, raw: bytes | str) -> None:
        try:
            msg = json.loads(raw)
            if msg["origin"] == self.node_id:
                return
            breaker, origin = self._breaker_for(str(msg["route"])), str(msg["origin"])
            if msg["kind"] == "trip":
                breaker.apply_remote_trip(Trip.from_dict(msg["trip"]), origin)
            elif msg["kind"] == "close":
                breaker.apply_remote_close(str(msg["trip_id"]), origin)
            elif msg["kind"] == "force":
                state = BreakerState(msg["state"]) if msg["state"] else None
                breaker.apply_remote_force(state, str(msg["reason"]), origin)
                if state is None:
                    self.watch(breaker)  # a trip claimed since (a replica in fallback) applies
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed breaker message %r: %s", raw[:200], exc)

    def _lost(self, exc: BaseException) -> None:
        self._broken.set()
        self._active = False
        if not self.fallback:
            log.warning("Redis unreachable (%s: %s): route breakers run on local state",
                        type(exc).__name__, exc)
            self.fallback = True
            self._on_fallback(True)

    def _recovered(self) -> None:
        self._delay = _seconds(self._t.reconnect_min)
        self._settled.set()
        if self.fallback:
            log.warning("Redis reachable again: route breakers re-synced")
            self.fallback = False
            self._on_fallback(False)


# -- the registry -----------------------------------------------------------------------------

def _default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class BreakerRegistry:
    """One ``RouteBreaker`` per route key, created on first use, plus the Redis coordinator.

    ``overrides`` maps a route key or an fnmatch pattern (``"ewallet:xendit:*"``) to its own
    config; exact keys win, then patterns in order. Without ``redis`` every breaker is local.
    Call ``await start()`` at start-up (``get`` also starts the link lazily inside a running loop)
    and ``await close()`` at shutdown; the Redis client stays the caller's to close.
    """

    def __init__(self, config: BreakerConfig | None = None, *,
                 overrides: Mapping[str, BreakerConfig] | None = None,
                 redis: aioredis.Redis | None = None, key_prefix: str = "lunas:",
                 timings: ClusterTimings | None = None, metrics: Metrics | None = None,
                 clock: Clock | None = None, rng: random.Random | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 node_id: str | None = None) -> None:
        self._config = config or BreakerConfig()
        self._overrides = dict(overrides or {})
        self._clock, self._rng, self._monotonic = clock or SystemClock(), rng or random.Random(), (
            monotonic)
        self._metrics = metrics
        self._breakers: dict[str, RouteBreaker] = {}
        self._listeners: list[TransitionListener] = []
        self._coordinator: RedisCoordinator | None = None
        if metrics is not None:
            self._listeners.append(functools.partial(_observe_transition, metrics))
            metrics.breaker_redis_fallback.set(0)
        if redis is not None:
            self._coordinator = RedisCoordinator(
                redis, prefix=key_prefix, node_id=node_id or _default_node_id(),
                timings=timings or ClusterTimings(), clock=self._clock, breaker_for=self.get,
                breakers=lambda: tuple(self._breakers.values()), on_fallback=self._fallback)

    def get(self, route: Route | str) -> RouteBreaker:
        key = route if isinstance(route, str) else route.key
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._create(key)
        return breaker

    def __iter__(self) -> Iterator[RouteBreaker]:
        return iter(tuple(self._breakers.values()))

    def config_for(self, route_key: str) -> BreakerConfig:
        if route_key in self._overrides:
            return self._overrides[route_key]
        for pattern, config in self._overrides.items():
            if fnmatch.fnmatchcase(route_key, pattern):
                return config
        return self._config

    def add_listener(self, listener: TransitionListener) -> None:
        """Observe every breaker's transitions, present and future."""
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    @property
    def redis_fallback(self) -> bool:
        return self._coordinator is not None and self._coordinator.fallback

    async def start(self) -> None:
        if self._coordinator is not None:
            await self._coordinator.start()

    async def close(self) -> None:
        if self._coordinator is not None:
            await self._coordinator.close()
        for breaker in self._breakers.values():
            breaker.shutdown()

    def _create(self, key: str) -> RouteBreaker:
        breaker = RouteBreaker(
            key, self.config_for(key), coordinator=self._coordinator, clock=self._clock,
            rng=self._rng, monotonic=self._monotonic,
            on_call=self._count_call if self._metrics is not None else None)
        for listener in self._listeners:
            breaker.add_listener(listener)
        self._breakers[key] = breaker
        if self._metrics is not None:
            _set_state_gauge(self._metrics, key, breaker.state)
        if self._coordinator is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: start() will link it
                asyncio.get_running_loop()
                self._coordinator.ensure_started()
            self._coordinator.watch(breaker)
        return breaker

    def _count_call(self, route_key: str, outcome: str) -> None:
        assert self._metrics is not None
        self._metrics.breaker_calls.labels(route_key, outcome).inc()

    def _fallback(self, on: bool) -> None:
        if self._metrics is not None:
            self._metrics.breaker_redis_fallback.set(1 if on else 0)


def _set_state_gauge(metrics: Metrics, route_key: str, state: BreakerState) -> None:
    for candidate in BreakerState:
        metrics.breaker_state.labels(route_key, candidate.value).set(
            1 if candidate is state else 0)


def _observe_transition(metrics: Metrics, route_key: str, old: BreakerState, new: BreakerState,
                        reason: str, at: datetime) -> None:
    metrics.breaker_transitions.labels(route_key, old.value, new.value).inc()
    _set_state_gauge(metrics, route_key, new)
