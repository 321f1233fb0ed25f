"""Hooks a game day (``lunas chaos run``) uses to drive running Lunas processes from outside.

Both are off unless configured, and refused in production (``Settings.refuse_insecure_production``):

- ``OffsetFileClock``: system time plus an offset in seconds read from a file, so the harness can
  move every api and worker process past deadlines and verification windows at once instead of
  waiting hours (``LUNAS_GAMEDAY_CLOCK_FILE``).
- ``CrashAfterCommit``: ends the api process abruptly after its N-th committed capture and before
  the reply leaves, the moment where a client cannot know whether its order exists
  (``LUNAS_GAMEDAY_EXIT_AFTER_COMMIT``). The client's retry with the same idempotency key must get
  that order, not a second one.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger("lunas.gameday")


class OffsetFileClock:
    def __init__(self, path: str | Path, *, reread_every: float = 0.2) -> None:
        self._path = Path(path)
        self._reread_every = reread_every
        self._offset = timedelta(0)
        self._read_at = float("-inf")

    def now(self) -> datetime:
        if time.monotonic() - self._read_at >= self._reread_every:
            self._read_at = time.monotonic()
            self._offset = timedelta(seconds=self._read())
        return datetime.now(UTC) + self._offset

    def _read(self) -> float:
        try:
            return float(self._path.read_text().strip() or 0)
        except (OSError, ValueError):  # missing or half-written: keep the last offset
            return self._offset.total_seconds()


CRASH_EXIT_CODE = 137
"""What a process dying of SIGKILL reports; the game day tells a planned crash by it."""


class CrashAfterCommit:
    def __init__(self, after: int) -> None:
        self._left = after

    def reply_ready(self) -> None:
        """Called with a new order committed and its reply not yet sent."""
        if self._left <= 0:
            return
        self._left -= 1
        if self._left == 0:
            log.error("game day: exiting after a committed capture, before its reply")
            os._exit(CRASH_EXIT_CODE)  # as SIGKILL would: no cleanup, no reply
