"""Route breaker policy, one process: window, slow calls, neutral outcomes, half-open permits,
timer-driven half-open, backoff, late outcomes and ops overrides (no Redis: ``LocalOnly``)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.rails.breaker import (
    BreakerConfig,
    BreakerOpen,
    BreakerRegistry,
    BreakerState,
    Outcome,
    RouteBreaker,
    Trip,
    outcome_of,
)
from orchestrator.rails.errors import Refused, Throttled, Unavailable
from orchestrator.telemetry.metrics import Metrics

ROUTE = "va:midtrans:bca"
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeMonotonic:
    """Durations and window ageing move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Transitions:
    def __init__(self) -> None:
        self.seen: list[tuple[BreakerState, BreakerState, str]] = []

    def __call__(self, route_key: str, old: BreakerState, new: BreakerState, reason: str,
                 at: datetime) -> None:
        assert route_key == ROUTE and at.tzinfo is not None
        self.seen.append((old, new, reason))

    @property
    def states(self) -> list[tuple[BreakerState, BreakerState]]:
        return [(old, new) for old, new, _ in self.seen]


def config(**changes: Any) -> BreakerConfig:
    values: dict[str, Any] = dict(
        failure_rate_threshold=0.5, slow_call_rate_threshold=0.5,
        slow_call_duration=timedelta(seconds=1), sliding_window=timedelta(seconds=30),
        minimum_number_of_calls=5, permitted_calls_in_half_open=2,
        wait_in_open=timedelta(milliseconds=60), wait_multiplier=2.0,
        max_wait_in_open=timedelta(seconds=1), wait_jitter=0.0,
        max_wait_in_half_open=timedelta(seconds=5))
    values.update(changes)
    return BreakerConfig(**values)


@pytest.fixture
def mono() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def transitions() -> Transitions:
    return Transitions()


@pytest.fixture
def make(mono: FakeMonotonic, transitions: Transitions) -> Iterator[Callable[..., RouteBreaker]]:
    made: list[RouteBreaker] = []

    def build(cfg: BreakerConfig | None = None, **kwargs: Any) -> RouteBreaker:
        breaker = RouteBreaker(ROUTE, cfg or config(), monotonic=mono,
                               rng=kwargs.pop("rng", random.Random(7)), **kwargs)
        breaker.add_listener(transitions)
        made.append(breaker)
        return breaker

    yield build
    for breaker in made:
        breaker.shutdown()


async def calls(breaker: RouteBreaker, outcome: Outcome, n: int = 1, *,
                mono: FakeMonotonic | None = None, seconds: float = 0.0) -> None:
    for _ in range(n):
        permit = await breaker.acquire()
        if mono is not None:
            mono.advance(seconds)
        permit.record(outcome)


async def eventually(check: Callable[[], bool], within: float = 1.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.005)


async def half_open(breaker: RouteBreaker) -> None:
    """Trip with failures and let the open timer run out."""
    if breaker.state is CLOSED:
        await calls(breaker, Outcome.FAILURE, breaker.config.minimum_number_of_calls)
    assert breaker.state is OPEN
    await eventually(lambda: breaker.state is HALF_OPEN)


# -- closed: the window ------------------------------------------------------------------------

async def test_stays_closed_below_minimum_number_of_calls_even_at_100_percent_failures(
        make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(minimum_number_of_calls=5))
    await calls(breaker, Outcome.FAILURE, 4)
    assert breaker.state is CLOSED
    await calls(breaker, Outcome.FAILURE)
    assert breaker.state is OPEN


async def test_opens_at_the_failure_rate_threshold(
        make: Callable[..., RouteBreaker], transitions: Transitions) -> None:
    breaker = make(config(minimum_number_of_calls=10, failure_rate_threshold=0.5))
    await calls(breaker, Outcome.SUCCESS, 6)
    await calls(breaker, Outcome.FAILURE, 5)  # 5 / 11 = 45 %
    assert breaker.state is CLOSED
    await calls(breaker, Outcome.FAILURE)  # 6 / 12 = 50 %
    assert breaker.state is OPEN
    assert transitions.seen == [(CLOSED, OPEN, "failure rate 50%, slow-call rate 0% over 12 calls")]


async def test_the_window_forgets_calls_older_than_its_span(
        make: Callable[..., RouteBreaker], mono: FakeMonotonic) -> None:
    breaker = make(config(minimum_number_of_calls=5, sliding_window=timedelta(seconds=30)))
    await calls(breaker, Outcome.FAILURE, 4)
    mono.advance(31)
    await calls(breaker, Outcome.FAILURE, 4)
    assert breaker.state is CLOSED and breaker.snapshot().calls == 4
    await calls(breaker, Outcome.FAILURE)
    assert breaker.state is OPEN


async def test_the_window_ages_out_a_tenth_of_its_span_at_a_time(
        make: Callable[..., RouteBreaker], mono: FakeMonotonic) -> None:
    """A 30 s window is ten 3 s buckets: a call leaves it with its bucket, counts and all."""
    breaker = make(config(minimum_number_of_calls=100, sliding_window=timedelta(seconds=30)))
    await calls(breaker, Outcome.FAILURE, 2)  # t = 1000: bucket [999, 1002)
    mono.advance(15)
    await calls(breaker, Outcome.SUCCESS, mono=mono, seconds=1.5)  # slow, reported at 1016.5
    await calls(breaker, Outcome.SUCCESS)

    def window() -> tuple[int, int, int]:
        snap = breaker.snapshot()
        return snap.calls, snap.failures, snap.slow

    assert window() == (4, 2, 1)
    mono.now = 1028.9
    assert window() == (4, 2, 1)
    mono.now = 1029.0  # the bucket of t = 1000 is ten buckets old
    assert window() == (2, 0, 1)
    mono.now = 1044.0
    assert window() == (0, 0, 0)


async def test_a_cleared_window_forgets_its_buckets_too(
        make: Callable[..., RouteBreaker], mono: FakeMonotonic) -> None:
    breaker = make(config(minimum_number_of_calls=100))
    await calls(breaker, Outcome.FAILURE, 2)
    breaker.force_closed("ops")
    breaker.release_force()
    mono.advance(60)
    assert (breaker.snapshot().calls, breaker.snapshot().failures) == (0, 0)


async def test_a_slow_failure_counts_as_slow_too(
        make: Callable[..., RouteBreaker], mono: FakeMonotonic) -> None:
    breaker = make(config(minimum_number_of_calls=100, slow_call_duration=timedelta(seconds=1)))
    await calls(breaker, Outcome.FAILURE, mono=mono, seconds=1.5)
    assert (breaker.snapshot().failures, breaker.snapshot().slow) == (1, 1)


@pytest.mark.parametrize(("exc", "outcome"), [
    pytest.param(None, Outcome.SUCCESS, id="returned"),
    pytest.param(Unavailable("503", provider="midtrans", operation="create"), Outcome.FAILURE,
                 id="provider down"),
    pytest.param(TimeoutError(), Outcome.FAILURE, id="timed out"),
    pytest.param(RuntimeError("bug"), Outcome.FAILURE, id="any other exception"),
    pytest.param(Refused("no", provider="midtrans", operation="create"), Outcome.NEUTRAL,
                 id="business refusal"),
    pytest.param(Throttled("429", provider="midtrans", operation="create"), Outcome.NEUTRAL,
                 id="throttled create: up, wants fewer requests"),
    pytest.param(asyncio.CancelledError(), Outcome.NEUTRAL, id="caller gave up"),
    pytest.param(KeyboardInterrupt(), Outcome.NEUTRAL, id="interrupted"),
    pytest.param(SystemExit(0), Outcome.NEUTRAL, id="exiting"),
    pytest.param(GeneratorExit(), Outcome.NEUTRAL, id="generator closed"),
])
def test_how_a_call_that_ended_counts_for_its_route(exc: BaseException | None,
                                                     outcome: Outcome) -> None:
    assert outcome_of(exc) is outcome


async def test_a_permit_reports_once_and_later_reports_are_ignored(
        make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(minimum_number_of_calls=2))
    permit = await breaker.acquire()
    assert permit.route_key == ROUTE and not permit.recorded
    permit.failure()
    assert permit.recorded
    permit.failure()  # a second report of the same call: ignored
    assert breaker.state is CLOSED and breaker.snapshot().calls == 1
    neutral = await breaker.acquire()
    neutral.neutral()
    assert neutral.recorded and breaker.snapshot().calls == 1


async def test_slow_calls_trip_on_the_slow_call_rate_even_when_they_succeed(
        make: Callable[..., RouteBreaker], mono: FakeMonotonic, transitions: Transitions) -> None:
    breaker = make(config(slow_call_duration=timedelta(seconds=1), slow_call_rate_threshold=0.5,
                          minimum_number_of_calls=5))
    await calls(breaker, Outcome.SUCCESS, 3, mono=mono, seconds=0.2)
    await calls(breaker, Outcome.SUCCESS, 2, mono=mono, seconds=1.5)  # 2 / 5 slow
    assert breaker.state is CLOSED
    await calls(breaker, Outcome.SUCCESS, mono=mono, seconds=1.0)  # exactly the limit: slow
    assert breaker.state is OPEN
    assert transitions.seen[-1][2] == "failure rate 0%, slow-call rate 50% over 6 calls"


async def test_refusals_and_cancellations_are_neutral(make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(minimum_number_of_calls=1))
    for _ in range(20):
        with pytest.raises(Refused):
            async with breaker.guard():
                raise Refused("amount too small", provider="midtrans", operation="create")
    await calls(breaker, Outcome.NEUTRAL, 20)
    entered = asyncio.Event()

    async def abandoned_call() -> None:
        async with breaker.guard():
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(abandoned_call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is CLOSED and breaker.snapshot().calls == 0
    with pytest.raises(Unavailable):  # and one real failure is enough at minimum 1
        async with breaker.guard():
            raise Unavailable("503", provider="midtrans", operation="create")
    assert breaker.state is OPEN


async def test_a_result_predicate_can_fail_a_call_that_returned(
        make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(minimum_number_of_calls=1))
    async with breaker.guard() as call:
        call.failure()  # e.g. HTTP 200 whose body says status_code 503
    assert breaker.state is OPEN


# -- open --------------------------------------------------------------------------------------

async def test_open_rejects_at_once_with_breaker_open(make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(wait_in_open=timedelta(seconds=1), max_wait_in_open=timedelta(seconds=9)))
    before = datetime.now(UTC)
    await calls(breaker, Outcome.FAILURE, 5)
    attempt = breaker.acquire()
    with pytest.raises(BreakerOpen) as rejected:
        attempt.send(None)  # raises on its first step: it never suspends, let alone waits
    assert rejected.value.route_key == ROUTE and rejected.value.state is OPEN
    assert rejected.value.retry_at is not None
    ms = timedelta(milliseconds=1)  # deadlines are whole epoch milliseconds (shared via Redis)
    assert before + timedelta(seconds=1) - ms <= rejected.value.retry_at
    assert rejected.value.retry_at <= datetime.now(UTC) + timedelta(seconds=1) + ms
    ran = False
    with pytest.raises(BreakerOpen):
        async with breaker.guard():
            ran = True
    assert not ran


def test_a_refusal_names_the_route_its_state_and_until_when() -> None:
    at = datetime(2026, 5, 15, 3, 0, 30, tzinfo=UTC)
    assert str(BreakerOpen(ROUTE, state=OPEN, retry_at=at)) == (
        "breaker for va:midtrans:bca is open until 2026-05-15T03:00:30+00:00")
    assert str(BreakerOpen(ROUTE, state=BreakerState.FORCED_OPEN, retry_at=None)) == (
        "breaker for va:midtrans:bca is forced_open")


async def test_a_timer_moves_open_to_half_open_without_any_call(
        make: Callable[..., RouteBreaker], transitions: Transitions) -> None:
    breaker = make(config(wait_in_open=timedelta(milliseconds=60)))
    await calls(breaker, Outcome.FAILURE, 5)
    assert breaker.state is OPEN
    await asyncio.sleep(0.03)
    assert breaker.state is OPEN
    await eventually(lambda: breaker.state is HALF_OPEN, within=0.5)
    assert transitions.seen[-1] == (OPEN, HALF_OPEN, "wait in open elapsed")
    assert breaker.retry_at is None


# -- half-open ---------------------------------------------------------------------------------

Storm = tuple[list[int], list[BreakerOpen], asyncio.Event, list[asyncio.Task[None]]]


async def _storm(breaker: RouteBreaker, callers: int) -> Storm:
    """``callers`` concurrent calls that hold their permit until ``gate`` is set."""
    admitted: list[int] = []
    rejected: list[BreakerOpen] = []
    gate = asyncio.Event()

    async def caller(i: int) -> None:
        try:
            async with breaker.guard():
                admitted.append(i)
                await gate.wait()
        except BreakerOpen as exc:
            rejected.append(exc)

    tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
    await eventually(lambda: len(admitted) + len(rejected) == callers)
    return admitted, rejected, gate, tasks


async def test_half_open_admits_exactly_the_permitted_trials_among_50_concurrent_callers(
        make: Callable[..., RouteBreaker], transitions: Transitions) -> None:
    breaker = make(config(permitted_calls_in_half_open=2))
    await half_open(breaker)
    admitted, rejected, gate, tasks = await _storm(breaker, 50)
    assert len(admitted) == 2 and len(rejected) == 48
    assert {exc.state for exc in rejected} == {HALF_OPEN}
    gate.set()
    await asyncio.gather(*tasks)
    assert breaker.state is CLOSED
    assert transitions.seen[-1] == (HALF_OPEN, CLOSED, "2 of 2 trial calls succeeded")


class SlowGenerousCluster:
    """A coordinator that takes 5 ms to answer and grants every trial it is asked for."""

    active = True

    def __init__(self) -> None:
        self.asked = 0
        self.reports: list[tuple[str, Outcome]] = []
        self.closed: list[str] = []

    async def take_trial(self, breaker: RouteBreaker, round_id: str) -> bool | None:
        self.asked += 1
        await asyncio.sleep(0.005)
        return True

    def announce_trip(self, breaker: RouteBreaker, trip: Trip, expected_id: str) -> None:
        pass

    def announce_close(self, breaker: RouteBreaker, trip_id: str) -> None:
        self.closed.append(trip_id)

    def announce_force(self, breaker: RouteBreaker, state: BreakerState | None,
                       reason: str) -> None:
        pass

    def report_trial(self, breaker: RouteBreaker, round_id: str, outcome: Outcome,
                     slow: bool) -> None:
        self.reports.append((round_id, outcome))


async def test_local_trial_slots_are_taken_before_waiting_for_the_cluster(
        make: Callable[..., RouteBreaker]) -> None:
    cluster = SlowGenerousCluster()
    breaker = make(config(permitted_calls_in_half_open=2), coordinator=cluster)
    await half_open(breaker)
    admitted, rejected, gate, tasks = await _storm(breaker, 50)
    assert len(admitted) == 2 and len(rejected) == 48 and cluster.asked == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert [outcome for _, outcome in cluster.reports] == [Outcome.SUCCESS] * 2
    assert breaker.state is HALF_OPEN  # with a cluster, the round's last reporter decides


async def test_a_neutral_cluster_trial_is_reported_and_frees_the_round(
        make: Callable[..., RouteBreaker]) -> None:
    cluster = SlowGenerousCluster()
    breaker = make(config(permitted_calls_in_half_open=1), coordinator=cluster)
    await half_open(breaker)
    (await breaker.acquire()).neutral()
    assert [outcome for _, outcome in cluster.reports] == [Outcome.NEUTRAL]
    await breaker.acquire()  # the slot is free again, here and in the cluster
    assert cluster.asked == 2


class SilentCluster(SlowGenerousCluster):
    """Redis is configured but cannot say (timed out): trial permits are this process's own."""

    async def take_trial(self, breaker: RouteBreaker, round_id: str) -> bool | None:
        return None


async def test_trials_the_cluster_could_not_grant_are_judged_here_and_the_close_announced(
        make: Callable[..., RouteBreaker]) -> None:
    cluster = SilentCluster()
    breaker = make(config(permitted_calls_in_half_open=2), coordinator=cluster)
    await half_open(breaker)
    trip_id = breaker.snapshot().trip_id
    await calls(breaker, Outcome.SUCCESS, 2)
    assert breaker.state is CLOSED and cluster.reports == []
    assert cluster.closed == [trip_id]
    assert not breaker.snapshot().synced  # until Redis confirms the close (close_synced)


async def test_trials_granted_by_a_cluster_that_then_drops_are_judged_here(
        make: Callable[..., RouteBreaker]) -> None:
    cluster = SlowGenerousCluster()
    breaker = make(config(permitted_calls_in_half_open=2), coordinator=cluster)
    await half_open(breaker)
    trials = [await breaker.acquire(), await breaker.acquire()]
    cluster.active = False  # Redis lost mid-round: nobody would gather the reports
    for trial in trials:
        trial.success()
    assert breaker.state is CLOSED and cluster.reports == []


async def test_a_late_verdict_for_a_round_already_decided_is_ignored(
        make: Callable[..., RouteBreaker]) -> None:
    cluster = SlowGenerousCluster()
    breaker = make(config(permitted_calls_in_half_open=2), coordinator=cluster)
    await half_open(breaker)
    await calls(breaker, Outcome.FAILURE, 2)
    [(round_id, _), _] = cluster.reports
    breaker.apply_verdict(round_id, successes=0, failures=2, slow=0)  # the round's verdict
    assert breaker.state is OPEN
    breaker.apply_verdict(round_id, successes=2, failures=0, slow=0)  # a stale duplicate
    assert breaker.state is OPEN


async def test_a_neutral_trial_frees_exactly_its_own_slot(
        make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(permitted_calls_in_half_open=1))
    await half_open(breaker)
    (await breaker.acquire()).neutral()
    await breaker.acquire()
    with pytest.raises(BreakerOpen):
        await breaker.acquire()


async def test_a_cancelled_trial_gives_its_slot_to_the_next_caller(
        make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(permitted_calls_in_half_open=1))
    await half_open(breaker)
    entered = asyncio.Event()

    async def abandoned_trial() -> None:
        async with breaker.guard():
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(abandoned_trial())
    await entered.wait()
    with pytest.raises(BreakerOpen):
        await breaker.acquire()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is HALF_OPEN
    await calls(breaker, Outcome.SUCCESS)
    assert breaker.state is CLOSED


async def test_a_failed_trial_reopens_with_a_longer_jittered_wait(
        make: Callable[..., RouteBreaker]) -> None:
    cfg = config(wait_in_open=timedelta(milliseconds=100), wait_multiplier=3.0, wait_jitter=0.5,
                 max_wait_in_open=timedelta(seconds=10), permitted_calls_in_half_open=2)
    breaker = make(cfg, rng=random.Random())
    before = datetime.now(UTC)
    await calls(breaker, Outcome.FAILURE, 5)
    after = datetime.now(UTC)
    first = breaker.retry_at
    assert first is not None
    assert before + timedelta(milliseconds=49) <= first <= after + timedelta(milliseconds=101)
    await eventually(lambda: breaker.state is HALF_OPEN)
    await calls(breaker, Outcome.SUCCESS)
    assert breaker.state is HALF_OPEN  # one trial still out
    before = datetime.now(UTC)
    await calls(breaker, Outcome.FAILURE)  # 1 of 2 failed: 50 % ≥ threshold
    after = datetime.now(UTC)
    second = breaker.retry_at
    assert breaker.state is OPEN and second is not None and breaker.snapshot().attempt == 2
    assert before + timedelta(milliseconds=149) <= second <= after + timedelta(milliseconds=301)


@pytest.mark.parametrize(("failures", "slow", "state"), [
    pytest.param(1, 0, CLOSED, id="1 of 3 failed: 33 % is below 50 %"),
    pytest.param(0, 1, CLOSED, id="1 of 3 slow: 33 % is below 50 %"),
    pytest.param(2, 0, OPEN, id="2 of 3 failed"),
    pytest.param(0, 2, OPEN, id="2 of 3 slow"),
])
async def test_the_trial_round_closes_below_both_thresholds_and_reopens_at_either(
        make: Callable[..., RouteBreaker], mono: FakeMonotonic, failures: int, slow: int,
        state: BreakerState) -> None:
    breaker = make(config(permitted_calls_in_half_open=3, failure_rate_threshold=0.5,
                          slow_call_rate_threshold=0.5))
    await half_open(breaker)
    await calls(breaker, Outcome.FAILURE, failures)
    await calls(breaker, Outcome.SUCCESS, slow, mono=mono, seconds=1.5)
    await calls(breaker, Outcome.SUCCESS, 3 - failures - slow)
    assert breaker.state is state


async def test_a_slow_call_rate_exactly_at_the_threshold_reopens(
        make: Callable[..., RouteBreaker], mono: FakeMonotonic) -> None:
    breaker = make(config(permitted_calls_in_half_open=2, slow_call_rate_threshold=0.5))
    await half_open(breaker)
    await calls(breaker, Outcome.SUCCESS, mono=mono, seconds=1.5)
    await calls(breaker, Outcome.SUCCESS)
    assert breaker.state is OPEN


async def test_a_verdict_for_another_round_is_ignored(make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(permitted_calls_in_half_open=2))
    await half_open(breaker)
    generation = breaker.generation
    breaker.apply_verdict("another-trip.0", successes=0, failures=2, slow=0)
    assert breaker.state is HALF_OPEN and breaker.generation == generation


@pytest.mark.parametrize("attempt", range(1, 9))
def test_open_wait_grows_is_capped_and_jitter_only_shortens_it(attempt: int) -> None:
    cfg = config(wait_in_open=timedelta(seconds=1), wait_multiplier=2.0, wait_jitter=0.25,
                 max_wait_in_open=timedelta(seconds=30))
    nominal = min(2.0 ** (attempt - 1), 30.0)
    rng = random.Random(attempt)
    waits = [cfg.open_wait(attempt, rng).total_seconds() for _ in range(500)]
    assert all(nominal * 0.75 <= w <= nominal for w in waits)
    assert max(waits) - min(waits) > nominal * 0.2  # it really is jittered


async def test_late_outcomes_from_an_earlier_generation_are_ignored(
        make: Callable[..., RouteBreaker], transitions: Transitions) -> None:
    breaker = make(config(minimum_number_of_calls=1, permitted_calls_in_half_open=2))
    slow_caller = await breaker.acquire()  # issued while closed, reports much later
    await calls(breaker, Outcome.FAILURE)
    await eventually(lambda: breaker.state is HALF_OPEN)
    generation = breaker.generation
    slow_caller.failure()  # would re-open a half-open breaker if it counted
    assert breaker.state is HALF_OPEN and breaker.generation == generation
    await calls(breaker, Outcome.SUCCESS, 2)
    assert breaker.state is CLOSED
    stale_trial_check = len(transitions.seen)
    late = await breaker.acquire()
    await calls(breaker, Outcome.FAILURE)  # trips again (minimum 1): a new generation
    assert breaker.state is OPEN
    late.success()  # from before the trip: must not count towards anything
    assert len(transitions.seen) == stale_trial_check + 1 and breaker.state is OPEN


async def test_a_round_without_a_verdict_starts_a_new_round(
        make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(permitted_calls_in_half_open=1,
                          max_wait_in_half_open=timedelta(milliseconds=80)))
    await half_open(breaker)
    lost = await breaker.acquire()  # a trial whose replica "died": never reported in time
    with pytest.raises(BreakerOpen):
        await breaker.acquire()
    generation = breaker.generation
    await eventually(lambda: breaker.generation > generation, within=0.5)
    assert breaker.state is HALF_OPEN
    lost.failure()  # from the expired round: ignored
    await calls(breaker, Outcome.SUCCESS)
    assert breaker.state is CLOSED


# -- ops overrides -----------------------------------------------------------------------------

async def test_force_open_rejects_everything_until_released(
        make: Callable[..., RouteBreaker], transitions: Transitions) -> None:
    breaker = make(config(minimum_number_of_calls=1, wait_in_open=timedelta(milliseconds=20)))
    breaker.force_open("provider announced maintenance")
    with pytest.raises(BreakerOpen) as rejected:
        await breaker.acquire()
    assert rejected.value.state is BreakerState.FORCED_OPEN and rejected.value.retry_at is None
    await asyncio.sleep(0.05)  # no timer turns a forced open into half-open
    assert breaker.state is BreakerState.FORCED_OPEN
    breaker.release_force()
    assert breaker.state is CLOSED
    assert transitions.states == [(CLOSED, BreakerState.FORCED_OPEN),
                                  (BreakerState.FORCED_OPEN, CLOSED)]
    await calls(breaker, Outcome.FAILURE)  # the policy is back
    assert breaker.state is OPEN


async def test_force_closed_admits_through_failures_and_an_open_breaker(
        make: Callable[..., RouteBreaker]) -> None:
    breaker = make(config(minimum_number_of_calls=1, wait_in_open=timedelta(seconds=5),
                          max_wait_in_open=timedelta(seconds=9)))
    await calls(breaker, Outcome.FAILURE)
    assert breaker.state is OPEN
    breaker.force_closed("ops: the provider confirmed it is healthy")
    await calls(breaker, Outcome.FAILURE, 10)
    assert breaker.state is BreakerState.FORCED_CLOSED and breaker.snapshot().calls == 0
    breaker.release_force("ops: back to automatic")
    assert breaker.state is CLOSED
    await calls(breaker, Outcome.FAILURE)
    assert breaker.state is OPEN


# -- registry, listeners, metrics --------------------------------------------------------------

async def test_registry_wires_metrics_and_per_route_overrides() -> None:
    metrics = Metrics()
    strict = config(minimum_number_of_calls=1)
    registry = BreakerRegistry(config(), overrides={"ewallet:xendit:*": strict}, metrics=metrics)
    try:
        lenient = registry.get(ROUTE)
        ovo = registry.get("ewallet:xendit:ovo")
        assert ovo.config is strict and lenient.config.minimum_number_of_calls == 5
        assert registry.get(ROUTE) is lenient and not registry.redis_fallback
        await calls(ovo, Outcome.FAILURE)
        with pytest.raises(BreakerOpen):
            await ovo.acquire()
        sample = metrics.registry.get_sample_value
        route = {"route": "ewallet:xendit:ovo"}
        assert sample("lunas_breaker_state", {**route, "state": "open"}) == 1
        assert sample("lunas_breaker_state", {**route, "state": "closed"}) == 0
        assert sample("lunas_breaker_transitions_total",
                      {**route, "from_state": "closed", "to_state": "open"}) == 1
        assert sample("lunas_breaker_calls_total", {**route, "outcome": "failure"}) == 1
        assert sample("lunas_breaker_calls_total", {**route, "outcome": "rejected"}) == 1
        assert sample("lunas_breaker_redis_fallback") == 0
    finally:
        await registry.close()


async def test_every_kind_of_call_is_counted_under_its_own_label() -> None:
    metrics = Metrics()
    mono = FakeMonotonic()
    registry = BreakerRegistry(config(minimum_number_of_calls=100), metrics=metrics,
                               monotonic=mono)
    try:
        breaker = registry.get(ROUTE)
        late = await breaker.acquire()
        await calls(breaker, Outcome.SUCCESS)
        await calls(breaker, Outcome.NEUTRAL)
        await calls(breaker, Outcome.FAILURE, mono=mono, seconds=1.5)
        await calls(breaker, Outcome.SUCCESS, mono=mono, seconds=1.5)
        breaker.force_open("ops")  # a new generation: the permit taken before is late
        late.success()
        sample = metrics.registry.get_sample_value
        counted = {label: sample("lunas_breaker_calls_total", {"route": ROUTE, "outcome": label})
                   for label in ("success", "neutral", "slow_failure", "slow_success", "late")}
        assert counted == {"success": 1, "neutral": 1, "slow_failure": 1, "slow_success": 1,
                           "late": 1}
    finally:
        await registry.close()


def test_a_trip_travels_between_replicas_as_json_with_three_fields() -> None:
    trip = Trip(id="a1b2c3d4e5f60718", until_ms=1_778_814_030_000, attempt=2)
    assert trip.as_dict() == {"id": "a1b2c3d4e5f60718", "until_ms": 1_778_814_030_000,
                              "attempt": 2}
    assert Trip.from_json(json.dumps(trip.as_dict())) == trip
    assert Trip.from_json(json.dumps(trip.as_dict()).encode()) == trip


async def test_a_failing_listener_does_not_stop_the_transition(
        make: Callable[..., RouteBreaker], caplog: pytest.LogCaptureFixture) -> None:
    breaker = make(config(minimum_number_of_calls=1))

    def broken(*_: Any) -> None:
        raise RuntimeError("observer bug")

    breaker.add_listener(broken)
    await calls(breaker, Outcome.FAILURE)
    assert breaker.state is OPEN
    assert "breaker listener" in caplog.text


@pytest.mark.parametrize("bad", [
    {"failure_rate_threshold": 0}, {"slow_call_rate_threshold": 1.5}, {"wait_jitter": 1.0},
    {"minimum_number_of_calls": 0}, {"permitted_calls_in_half_open": 0},
    {"max_wait_in_open": timedelta(milliseconds=1)}, {"sliding_window": timedelta(0)},
    {"wait_jitter": -0.1}, {"wait_multiplier": 0.5}, {"wait_in_open": timedelta(0)},
    {"max_wait_in_half_open": timedelta(0)}, {"slow_call_duration": timedelta(0)},
])
def test_config_refuses_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        config(**bad)


@pytest.mark.parametrize("edge", [
    {"failure_rate_threshold": 1.0}, {"slow_call_rate_threshold": 1.0}, {"wait_jitter": 0.0},
    {"wait_multiplier": 1.0},
    {"wait_in_open": timedelta(seconds=5), "max_wait_in_open": timedelta(seconds=5)},
])
def test_config_accepts_its_edges(edge: dict[str, Any]) -> None:
    """Trip only at 100 %, never jitter, never grow the wait: strict, but not nonsense."""
    assert config(**edge)
