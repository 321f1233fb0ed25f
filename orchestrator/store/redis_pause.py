"""After Redis fails to answer, leave it alone for a while.

The request pacer and the status page's lookup limiter keep their state in Redis when it answers
and in this process when it does not. While Redis is down, trying it first on every call would
make each call of the outage wait for its own failed connection; instead, one failure pauses
Redis for that caller for a few seconds, and the failure is logged once per pause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class RedisPause:
    def __init__(self, what: str, seconds: float = 5.0, *,
                 counted: Callable[[], None] | None = None) -> None:
        """``what`` names the caller in the log line ("request pacing"); ``counted`` is called
        once per pause (a metric's ``inc``)."""
        self._what, self._seconds = what, seconds
        self._counted = counted
        self._until = 0.0

    @property
    def may_try(self) -> bool:
        return time.monotonic() >= self._until

    def failed(self, exc: BaseException) -> None:
        """Called by every call that found Redis failing; calls already in flight when it
        failed end up here too, and belong to the same pause."""
        if not self.may_try:
            return
        self._until = time.monotonic() + self._seconds
        if self._counted is not None:
            self._counted()
        log.warning("%s falls back to this process alone for %.0f s: %s", self._what,
                    self._seconds, exc)
