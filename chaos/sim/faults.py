"""The fault book: which faults a simulator injects, per channel and operation, right now.

A fault applies to requests whose channel and operation match (``"*"`` matches any). Bursts are
consumed request by request; timed faults lapse at ``until`` (monotonic seconds). Every decision is
counted so a test can ask how many calls reached a provider and what each got.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


class FaultKind(enum.StrEnum):
    DOWN = "down"  # provider-wide: the data port stops listening (connection refused)
    HANG = "hang"  # accept the request, never answer (until the client gives up)
    SLOW = "slow"  # answer after latency_ms (+ uniform jitter_ms)
    ERROR_BURST = "error_burst"  # the next ``count`` matching requests get ``status``
    ERROR_RATE = "error_rate"  # each matching request gets ``status`` with ``probability``
    TIMEOUT_AFTER_SUCCESS = "timeout_after_success"  # do the work, then never answer
    RATE_LIMIT = "rate_limit"  # 429 with the provider's rate-limit headers (retry_after_s)
    MAINTENANCE = "maintenance"  # 503 with a maintenance message
    BODY_ERROR = "body_error"  # HTTP 200 whose body carries an error status (Midtrans style)


@dataclass(kw_only=True)
class Fault:
    kind: FaultKind
    channel: str = "*"
    operation: str = "*"  # "create" | "status" | "cancel" | "*"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    status: int = 500
    count: int = 0
    probability: float = 1.0
    retry_after_s: float | None = None  # RATE_LIMIT: the Retry-After (reset) it announces
    until: float | None = None  # time.monotonic() deadline; None = until cleared

    def matches(self, channel: str, operation: str, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        return self.channel in ("*", channel) and self.operation in ("*", operation)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fault:
        known = set(cls.__dataclass_fields__) - {"until"}
        unknown = set(body) - known - {"duration_s"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        values = {k: v for k, v in body.items() if k in known}
        values["kind"] = FaultKind(values["kind"])
        fault = cls(**values)
        if body.get("duration_s") is not None:
            fault.until = time.monotonic() + float(body["duration_s"])
        return fault


REQUEST_LOG_SIZE = 200_000


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What to do with one request: at most one fault (the first that fires) plus latency."""

    fault: Fault | None
    delay_s: float = 0.0


@dataclass
class FaultBook:
    faults: list[Fault] = field(default_factory=list)
    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    log: deque[tuple[float, str, str, str]] = field(
        default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    """Every data-plane request as (wall-clock time, channel, operation, outcome), newest last:
    what a test measures a request rate from."""
    rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear(self, channel: str | None = None) -> None:
        with self._lock:
            self.faults = [f for f in self.faults if channel is not None and f.channel != channel]

    def is_down(self) -> bool:
        now = time.monotonic()
        return any(f.kind is FaultKind.DOWN and f.matches("*", "*", now) for f in self.faults)

    def decide(self, channel: str, operation: str) -> Decision:
        """Pick the fault for one request and count it under (channel, operation, outcome)."""
        now = time.monotonic()
        delay, chosen = 0.0, None
        with self._lock:
            for f in self.faults:
                if not f.matches(channel, operation, now) or f.kind is FaultKind.DOWN:
                    continue
                if f.kind is FaultKind.SLOW:
                    delay += (f.latency_ms + self.rng.uniform(0, f.jitter_ms)) / 1000
                    continue
                if chosen is not None:
                    continue
                if f.kind is FaultKind.ERROR_BURST:
                    if f.count <= 0:
                        continue
                    f.count -= 1
                elif f.kind is FaultKind.ERROR_RATE and self.rng.random() >= f.probability:
                    continue
                chosen = f
            self.faults = [f for f in self.faults
                           if not (f.kind is FaultKind.ERROR_BURST and f.count <= 0)]
            outcome = chosen.kind.value if chosen else "ok"
            self.calls[(channel, operation, outcome)] += 1
            self.log.append((time.time(), channel, operation, outcome))
        return Decision(fault=chosen, delay_s=delay)

    def call_counts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"channel": c, "operation": o, "outcome": r, "count": n}
                    for (c, o, r), n in sorted(self.calls.items())]

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()
            self.log.clear()

    def request_log(self, operation: str | None = None, since: float = 0.0
                    ) -> list[dict[str, Any]]:
        with self._lock:
            return [{"at": at, "channel": c, "operation": o, "outcome": r}
                    for at, c, o, r in self.log
                    if at >= since and (operation is None or o == operation)]
