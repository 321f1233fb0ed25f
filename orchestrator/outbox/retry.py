"""Retry policy as data: after a failed try, when to try again, or that it is time to give up.

``backoff[n - 1]`` is the wait after the n-th failed try, so an event gets ``len(backoff) + 1``
tries in all; the failure of the last one dead-letters it. Each wait is spread by ±``jitter`` so
events that failed together (a merchant endpoint down for an hour) do not all come back in the same
instant. The random source is injected so tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from orchestrator.settings import OutboxSettings


@dataclass(frozen=True, kw_only=True)
class Retry:
    at: datetime
    """The event becomes claimable again at this instant."""


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """No tries left: the event is parked for a person (and counted and alerted on)."""


Decision = Retry | DeadLetter


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    backoff: tuple[timedelta, ...]
    jitter: float = 0.1
    """Fraction of each wait added or removed at random: 0.1 means ±10%."""
    uniform: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    """A source of floats in [0, 1); ``random.Random(seed).random`` in tests."""

    def __post_init__(self) -> None:
        if any(wait < timedelta(0) for wait in self.backoff):
            raise ValueError("backoff waits must not be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @classmethod
    def from_settings(
        cls, settings: OutboxSettings, *, uniform: Callable[[], float] = random.random
    ) -> RetryPolicy:
        return cls(backoff=settings.backoff, uniform=uniform)

    @property
    def max_tries(self) -> int:
        return len(self.backoff) + 1

    def decide(self, attempts_made: int, now: datetime) -> Decision:
        """What to do after try number ``attempts_made`` (1-based, the one that just failed)."""
        if attempts_made < 1:
            raise ValueError("a decision follows at least one try")
        if attempts_made >= self.max_tries:
            return DeadLetter()
        wait = self.backoff[attempts_made - 1]
        spread = 1 + self.jitter * (2 * self.uniform() - 1)
        return Retry(at=now + wait * spread)
