"""What can go wrong when Lunas asks a provider for something, normalised across providers.

    RailError
    ├── Refused               the provider processed the request and said no for a business
    │                         reason (amount out of range, channel not enabled). Not an outage:
    │                         neutral for the breaker; the router may try another route.
    ├── Misconfigured         our credentials or setup are wrong (401/403, unknown merchant):
    │                         a route that cannot work until ops fix it; counts as a failure.
    ├── Throttled             429: not processed; retry after ``retry_after`` seconds. The
    │                         provider is up and wants fewer requests: neutral for the breaker
    │                         on any call (a create still fails over to the next route).
    ├── TransientBeforeSend   the request never reached the provider (connection refused, DNS,
    │                         connect timeout): safe to retry; counts as a failure.
    ├── Unavailable           the provider answered that it cannot serve now (5xx, maintenance)
    │                         on a request that is safe to repeat (a read, or a create the
    │                         provider guarantees it did not process); counts as a failure.
    ├── Unreadable            a status read was answered (2xx, JSON) but Lunas cannot read what
    │                         it says (an unknown Midtrans ``transaction_status``, a
    │                         field of an unexpected type): the provider is up, our reading
    │                         failed. Neutral for the breaker; the read is retried with backoff.
    └── OutcomeUnknown        the request may have been processed (timeout after sending,
                              connection lost mid-response, 5xx on a create), or was and made
                              something unusable (``provider_ref``): never retried blindly;
                              the attempt becomes ``unknown`` and is verified.

Adapters raise exactly these, chained with ``from`` to the transport or wire error underneath.
"""

from __future__ import annotations


class RailError(Exception):
    """Base of every provider-call failure. ``provider`` and ``operation`` name the call."""

    def __init__(self, detail: str, *, provider: str, operation: str) -> None:
        super().__init__(f"{provider} {operation}: {detail}")
        self.detail = detail
        self.provider = provider
        self.operation = operation


class Refused(RailError):
    def __init__(self, detail: str, *, provider: str, operation: str, code: str = "") -> None:
        super().__init__(detail, provider=provider, operation=operation)
        self.code = code


class Misconfigured(RailError):
    pass


class Throttled(RailError):
    def __init__(self, detail: str, *, provider: str, operation: str,
                 retry_after: float | None = None) -> None:
        super().__init__(detail, provider=provider, operation=operation)
        self.retry_after = retry_after


class TransientBeforeSend(RailError):
    pass


class Unavailable(RailError):
    pass


class OutcomeUnknown(RailError):
    def __init__(self, detail: str, *, provider: str, operation: str,
                 provider_ref: str | None = None) -> None:
        super().__init__(detail, provider=provider, operation=operation)
        self.provider_ref = provider_ref
        """The provider's id of what a create made, when its answer named it but the resource
        must never reach a customer (it is not what was asked for): verification cancels and
        watches it (``gateway_jobs.resolve_unknown``). None when nothing is known of it."""


class Unreadable(RailError):
    pass


BREAKER_FAILURES: tuple[type[RailError], ...] = (
    Misconfigured, TransientBeforeSend, Unavailable, OutcomeUnknown,
)
"""Outcomes that count against a route's breaker; ``Refused``, ``Throttled`` and ``Unreadable``
are neutral."""

RETRYABLE: tuple[type[RailError], ...] = (TransientBeforeSend, Throttled)
"""Safe to send again within the request's budget: the provider did not process the request."""
