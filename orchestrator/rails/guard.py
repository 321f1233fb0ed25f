"""The breakers as the router sees them: ``RouteGuard`` over a ``BreakerRegistry``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

from orchestrator.rails.breaker import BreakerOpen, BreakerRegistry, BreakerState, Permit
from orchestrator.rails.router import RouteUnavailable

_OPEN = (BreakerState.OPEN, BreakerState.FORCED_OPEN)


class BreakerGuard:
    def __init__(self, registry: BreakerRegistry) -> None:
        self.registry = registry

    def is_open(self, route_key: str) -> bool:
        return self.registry.get(route_key).state in _OPEN

    def refuses_now(self, route_key: str) -> bool:
        """Open, or half-open with no trial left this round (``RouteBreaker.refuses_now``)."""
        return self.registry.get(route_key).refuses_now()

    def state(self, route_key: str) -> BreakerState:
        return self.registry.get(route_key).state

    def settled(self, route_key: str) -> bool:
        """Whether the route's state here reflects the cluster's (``RouteBreaker.settled``)."""
        return self.registry.get(route_key).settled

    def retry_at(self, route_key: str) -> datetime | None:
        """When an open breaker next lets a trial call through, if it is open."""
        return self.registry.get(route_key).retry_at

    @contextlib.asynccontextmanager
    async def guard(self, route_key: str) -> AsyncIterator[Permit]:
        """The call's permit: success unless the block raises, or records otherwise through
        the permit (``permit.neutral()`` for an answer that says nothing of the provider's
        health)."""
        try:
            async with self.registry.get(route_key).guard() as permit:
                yield permit
        except BreakerOpen as exc:
            raise RouteUnavailable(route_key) from exc
