"""The router: try a payment's planned routes in order, within the request's time budget.

For each route it skips what ops paused or put in maintenance and what an open breaker guards,
and says why. It calls the provider through the route's breaker, retrying (tenacity, full jitter)
only errors raised before the request was processed (``rails.errors.RETRYABLE``) and only while
the budget allows. An unknown outcome is never retried: the attempt is recorded ``unknown`` for
verification and the next route is tried, except another e-wallet route after an e-wallet
create went unanswered: that would be a second charge, a second payment prompt the customer may
approve as well as the first. Manual transfer, the last resort, needs no provider.

The router writes nothing itself: an ``AttemptJournal`` (the issuance service) records each
attempt *before* its provider call, so a crash mid-call leaves an attempt to verify, never an
untracked live instrument.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from orchestrator.rails import errors
from orchestrator.rails.base import ChargeRequest, Instrument, PaymentProvider, Rail, Route
from orchestrator.rails.errors import RETRYABLE, OutcomeUnknown, RailError, Refused

UNANSWERED_EWALLET = ("an e-wallet charge made for this order may still be paid (the create "
                      "on {} went unanswered); never charged twice")


class RouteNotBegun(Exception):
    """The journal will not begin a try on this route now; the router skips it, saying ``reason``
    (an e-wallet charge for the order may still be paid: ``AttemptJournal.begin``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RouteUnavailable(Exception):
    """The route's breaker does not admit a call now."""


class RouteGuard(Protocol):
    """What the router needs from the breakers: a verdict before, an outcome after."""

    def is_open(self, route_key: str) -> bool: ...

    def guard(self, route_key: str) -> AbstractAsyncContextManager[object]:
        """Admit one call or raise ``RouteUnavailable``; record the call's outcome on exit."""
        ...


class Controls(Protocol):
    async def blocked(self, route_key: str, now: datetime) -> str | None: ...


class AttemptJournal(Protocol):
    """Durable record of each try (implemented by the issuance service over the database)."""

    async def begin(self, route: Route) -> str:
        """Record a ``creating`` attempt on ``route``; returns its id (the provider reference).
        Raises ``RouteNotBegun`` when the order must not be charged on it now."""
        ...

    async def served(self, attempt_id: str, instrument: Instrument) -> None: ...

    async def failed(self, attempt_id: str, reason: str) -> None: ...

    async def unknown(self, attempt_id: str, reason: str) -> None: ...

    async def manual_transfer(self) -> str:
        """Issue the last-resort instrument in the database; returns the attempt id."""
        ...


@dataclass(frozen=True, kw_only=True)
class Hop:
    """One route considered for this payment and what happened, in Lunas's words."""

    route: str
    outcome: str  # served | skipped | failed | unknown
    reason: str = ""


@dataclass(kw_only=True)
class IssueResult:
    served: Route | None = None
    attempt_id: str | None = None
    hops: list[Hop] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        return any(h.outcome != "served" for h in self.hops) and self.served is not None


@dataclass(frozen=True, kw_only=True)
class RouterSettings:
    capture_budget: timedelta = timedelta(seconds=3)
    min_call_time: timedelta = timedelta(milliseconds=150)
    """Do not start a provider call with less budget left than this: skip to the next route."""
    retry_attempts: int = 3
    retry_max_wait: timedelta = timedelta(milliseconds=200)


class Router:
    def __init__(self, providers: Mapping[str, PaymentProvider], guard: RouteGuard,
                 controls: Controls, settings: RouterSettings,
                 clock: Callable[[], datetime]) -> None:
        self._providers, self._guard, self._controls = providers, guard, controls
        self._settings, self._now = settings, clock

    def catalog(self) -> dict[str, dict[Rail, tuple[str, ...]]]:
        return {name: {rail: p.channels(rail) for rail in Rail if rail is not Rail.MANUAL_TRANSFER}
                for name, p in self._providers.items()}

    async def why_unusable(self, route: Route) -> str | None:
        """Why ``route`` would be skipped right now, or None if the router would try it."""
        if route.rail is Rail.MANUAL_TRANSFER:
            # Needs no gateway, and a manual-transfer capture never asks the router: ops cannot
            # pause it (api/ops.py refuses), so a pause or window left from before is ignored
            # rather than honoured on the failover path alone.
            return None
        if route.provider not in self._providers:
            return "provider not configured"
        blocked = await self._controls.blocked(route.key, self._now())
        if blocked:
            return blocked
        if self._guard.is_open(route.key):
            return "provider is failing; circuit breaker open"
        return None

    async def issue(self, plan: list[Route], request_for: Callable[[Route, str], ChargeRequest],
                    journal: AttemptJournal, *, budget: timedelta | None = None) -> IssueResult:
        result = IssueResult()
        deadline = time.monotonic() + (budget or self._settings.capture_budget).total_seconds()
        ewallet_doubt: str | None = None  # why no e-wallet route may be tried any more
        for route in plan:
            skip = (ewallet_doubt if ewallet_doubt is not None and route.rail is Rail.EWALLET
                    else await self.why_unusable(route))
            if skip:
                result.hops.append(Hop(route=route.key, outcome="skipped", reason=skip))
                continue
            if route.rail is Rail.MANUAL_TRANSFER:
                result.attempt_id = await journal.manual_transfer()
                result.served = route
                result.hops.append(Hop(route=route.key, outcome="served"))
                return result
            remaining = deadline - time.monotonic()
            if remaining < self._settings.min_call_time.total_seconds():
                result.hops.append(Hop(route=route.key, outcome="skipped",
                                       reason="no time left in this request's budget"))
                continue
            try:
                attempt_id = await journal.begin(route)
            except RouteNotBegun as refused:
                result.hops.append(Hop(route=route.key, outcome="skipped", reason=refused.reason))
                if route.rail is Rail.EWALLET:
                    ewallet_doubt = refused.reason
                continue
            hop = await self._try(route, request_for(route, attempt_id), attempt_id, journal,
                                  deadline)
            result.hops.append(hop)
            if hop.outcome == "unknown" and route.rail is Rail.EWALLET:
                ewallet_doubt = UNANSWERED_EWALLET.format(route.key)
            if hop.outcome == "served":
                result.served, result.attempt_id = route, attempt_id
                return result
        return result

    async def _try(self, route: Route, request: ChargeRequest, attempt_id: str,
                   journal: AttemptJournal, deadline: float) -> Hop:
        try:
            instrument = await self._create(route, request, deadline)
        except RouteUnavailable:
            await journal.failed(attempt_id, "circuit breaker opened; not sent")
            return Hop(route=route.key, outcome="skipped",
                       reason="provider is failing; circuit breaker open")
        except OutcomeUnknown:
            await journal.unknown(attempt_id, "no answer from provider; verifying")
            return Hop(route=route.key, outcome="unknown",
                       reason="provider did not answer in time; verification queued")
        except Refused as exc:
            await journal.failed(attempt_id, f"refused by provider ({exc.code or 'refused'})")
            return Hop(route=route.key, outcome="failed", reason="provider refused this payment")
        except RailError as exc:
            reason = _describe(exc)
            await journal.failed(attempt_id, reason)
            return Hop(route=route.key, outcome="failed", reason=reason)
        await journal.served(attempt_id, instrument)
        return Hop(route=route.key, outcome="served")

    async def _create(self, route: Route, request: ChargeRequest, deadline: float) -> Instrument:
        provider = self._providers[route.provider]
        s = self._settings
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop_after_attempt(s.retry_attempts)
            | stop_before_delay(max(0.0, deadline - time.monotonic())),
            wait=wait_random_exponential(multiplier=0.02, max=s.retry_max_wait.total_seconds()),
            reraise=True,
        )
        last: RailError | None = None
        async for attempt in retrying:
            with attempt:
                try:
                    async with self._guard.guard(route.key):
                        return await _bounded(provider.create(request), deadline, route)
                except RouteUnavailable:
                    if last is not None:  # a call was made; the breaker stopped the retry:
                        raise last from None  # report the failure the provider gave
                    raise
                except RailError as exc:
                    last = exc
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")


async def _bounded(call: object, deadline: float, route: Route) -> Instrument:
    """Run a create within what is left of the budget; running out mid-call is an unknown
    outcome (the request may have reached the provider)."""
    assert asyncio.iscoroutine(call)
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            result: Instrument = await call
            return result
    except TimeoutError as exc:
        raise OutcomeUnknown("capture budget ran out mid-call", provider=route.provider,
                             operation="create") from exc
    except RailError:
        raise
    except Exception as exc:
        # An adapter that raised something else could not read the answer (a bug, or a shape
        # it never met): the charge may exist, and the plan's other routes must still be tried.
        raise OutcomeUnknown(f"unreadable answer ({type(exc).__name__})",
                             provider=route.provider, operation="create") from exc


def _describe(exc: RailError) -> str:
    if isinstance(exc, errors.Misconfigured):
        return "provider rejected our credentials or setup"
    if isinstance(exc, errors.Throttled):
        return "provider is rate limiting"
    if isinstance(exc, errors.TransientBeforeSend):
        return "provider unreachable"
    return "provider unavailable"


