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


GATEWAY_RAILS = (Rail.VA.value, Rail.QRIS.value, Rail.EWALLET.value)
"""Rails a merchant may order providers for: manual transfer has one route and no provider."""


def routing_problem(overrides: Mapping[str, object],
                    providers: Mapping[str, Mapping[Rail, tuple[str, ...]]]) -> str | None:
    """Why ``overrides`` (a merchant's ``routing``) cannot be stored, or None.

    ``RoutingPolicy.for_merchant`` skips what it cannot read, and ``plan_routes`` skips a
    provider that does not serve the rail and a fallback rail with no channel of its own: a
    mistyped preference would be stored, change nothing, and leave the operator believing it
    had. So every name is checked here, against ``providers`` (provider → rail → channels,
    every adapter Lunas has, configured here or not)."""
    unknown = sorted(set(overrides) - {"priorities", "fallback"})
    if unknown:
        return f"routing has priorities and fallback, not {', '.join(unknown)}"
    priorities, fallback = overrides.get("priorities", {}), overrides.get("fallback", {})
    if not isinstance(priorities, Mapping) or not isinstance(fallback, Mapping):
        return "priorities and fallback each map a rail to a list"
    for rail, names in priorities.items():
        if problem := _priority_problem(rail, names, providers):
            return problem
    for rail, rails in fallback.items():
        if problem := _fallback_problem(rail, rails):
            return problem
    return None


def _priority_problem(rail: object, names: object,
                      providers: Mapping[str, Mapping[Rail, tuple[str, ...]]]) -> str | None:
    if rail not in GATEWAY_RAILS:
        return (f"no provider order for {rail!r}: providers are ordered for "
                f"{', '.join(GATEWAY_RAILS)}")
    if not isinstance(names, list | tuple) or not names:
        return f"the providers for {rail} are a list of at least one"
    for name in names:
        if name not in providers:
            return f"unknown provider {name!r} for {rail}; known: {', '.join(sorted(providers))}"
        if not providers[name].get(Rail(str(rail))):
            return f"{name} does not serve {rail}"
    if len(set(names)) != len(names):
        return f"a provider is named twice for {rail}"
    return None


def _fallback_problem(rail: object, rails: object) -> str | None:
    every = [r.value for r in Rail]
    if rail not in every:
        return f"unknown rail {rail!r}; rails: {', '.join(every)}"
    if not isinstance(rails, list | tuple):
        return f"the fallback of {rail} is a list of rails (empty: none)"
    for fb in rails:
        if fb not in every:
            return f"unknown fallback rail {fb!r} for {rail}; rails: {', '.join(every)}"
        if fb == rail:
            return f"{rail} cannot fall back to itself"
        if fb not in DEFAULT_CHANNEL:
            # A customer who chose a VA bank or a wallet chose its channel; no other order's
            # choice says which bank or wallet a fallback to that rail would be.
            return (f"{rail} cannot fall back to {fb}: a fallback rail needs a channel of its "
                    f"own ({', '.join(DEFAULT_CHANNEL)})")
    if len(set(rails)) != len(rails):
        return f"a fallback rail is named twice for {rail}"
    return None
