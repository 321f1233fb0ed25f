"""Which routes may serve a payment, in what order: a pure function of configuration.

For the rail the customer chose, the merchant's provider priority decides the order among the
providers that serve the channel. When the merchant allows fallback, the rail's fallback chain
follows (by default ending in manual transfer, which needs no gateway). Pauses, maintenance and
breakers are not considered here: the router skips those routes at call time, and says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.rails.base import Rail, Route

MANUAL_ROUTE = Route(rail=Rail.MANUAL_TRANSFER, provider="bank", channel="bank")

DEFAULT_PRIORITIES: Mapping[str, tuple[str, ...]] = {
    Rail.VA.value: ("xendit", "midtrans"),
    Rail.QRIS.value: ("midtrans", "xendit"),
    Rail.EWALLET.value: ("midtrans", "xendit"),
}
DEFAULT_FALLBACK: Mapping[str, tuple[str, ...]] = {
    # QRIS is payable from any Indonesian bank or wallet app, so it is the natural stand-in for a
    # VA or wallet; bank transfer with a unique code needs no gateway at all.
    Rail.VA.value: (Rail.QRIS.value, Rail.MANUAL_TRANSFER.value),
    Rail.EWALLET.value: (Rail.QRIS.value, Rail.MANUAL_TRANSFER.value),
    Rail.QRIS.value: (Rail.MANUAL_TRANSFER.value,),
    Rail.MANUAL_TRANSFER.value: (),
}
DEFAULT_CHANNEL: Mapping[str, str] = {Rail.QRIS.value: "qris", Rail.MANUAL_TRANSFER.value: "bank"}


@dataclass(frozen=True, kw_only=True)
class RoutingPolicy:
    priorities: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_PRIORITIES)
    fallback: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_FALLBACK)
    allow_fallback: bool = True

    @classmethod
    def for_merchant(cls, overrides: Mapping[str, object] | None, *, allow_fallback: bool,
                     defaults: RoutingPolicy | None = None) -> RoutingPolicy:
        base = defaults or cls()
        overrides = overrides or {}
        priorities = dict(base.priorities)
        priorities.update({k: tuple(v) for k, v in _mapping(overrides.get("priorities")).items()})
        fallback = dict(base.fallback)
        fallback.update({k: tuple(v) for k, v in _mapping(overrides.get("fallback")).items()})
        return cls(priorities=priorities, fallback=fallback, allow_fallback=allow_fallback)


def _mapping(value: object) -> Mapping[str, Sequence[str]]:
    if isinstance(value, Mapping):
        return {str(k): [str(x) for x in v] for k, v in value.items()
                if isinstance(v, list | tuple)}
    return {}


def plan_routes(
    rail: Rail, channel: str, policy: RoutingPolicy,
    catalog: Mapping[str, Mapping[Rail, tuple[str, ...]]],
) -> list[Route]:
    """Routes to try in order. ``catalog`` maps provider → rail → channels it serves."""
    routes = _routes_for(rail, channel, policy, catalog)
    if policy.allow_fallback:
        for fallback_rail in policy.fallback.get(rail.value, ()):
            fb = Rail(fallback_rail)
            fb_channel = DEFAULT_CHANNEL.get(fb.value)
            if fb_channel is not None:
                routes += [r for r in _routes_for(fb, fb_channel, policy, catalog)
                           if r not in routes]
    return routes


def _routes_for(rail: Rail, channel: str, policy: RoutingPolicy,
                catalog: Mapping[str, Mapping[Rail, tuple[str, ...]]]) -> list[Route]:
    if rail is Rail.MANUAL_TRANSFER:
        return [MANUAL_ROUTE]
    return [Route(rail=rail, provider=p, channel=channel)
            for p in policy.priorities.get(rail.value, ())
            if channel in catalog.get(p, {}).get(rail, ())]


def channels_offered(rail: Rail, catalog: Mapping[str, Mapping[Rail, tuple[str, ...]]]
                     ) -> tuple[str, ...]:
    if rail is Rail.MANUAL_TRANSFER:
        return ("bank",)
    seen: dict[str, None] = {}
    for by_rail in catalog.values():
        for c in by_rail.get(rail, ()):
            seen[c] = None
    return tuple(seen)
