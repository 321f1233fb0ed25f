"""Route planning: merchant priority within a rail, then the rail's fallback chain, ending in
manual transfer; nothing after the chosen rail when the merchant disallows fallback."""

from __future__ import annotations

import pytest

from orchestrator.rails.base import Rail
from orchestrator.rails.plan import (
    MANUAL_ROUTE,
    RoutingPolicy,
    channels_offered,
    plan_routes,
    routing_problem,
)

CATALOG = {
    "midtrans": {Rail.VA: ("bca", "bni", "bri", "permata", "mandiri"), Rail.QRIS: ("qris",),
                 Rail.EWALLET: ("gopay", "shopeepay")},
    "xendit": {Rail.VA: ("bca", "bni", "bri", "mandiri", "permata"), Rail.QRIS: ("qris",),
               Rail.EWALLET: ("ovo", "dana", "linkaja", "shopeepay")},
}


def keys(routes: list[object]) -> list[str]:
    return [r.key for r in routes]  # type: ignore[attr-defined]


def test_va_tries_xendit_then_midtrans_then_qris_then_manual_transfer() -> None:
    assert keys(plan_routes(Rail.VA, "bca", RoutingPolicy(), CATALOG)) == [
        "va:xendit:bca", "va:midtrans:bca", "qris:midtrans:qris", "qris:xendit:qris",
        "manual_transfer:bank:bank"]


def test_a_channel_only_one_provider_serves_has_one_gateway_route() -> None:
    assert keys(plan_routes(Rail.EWALLET, "gopay", RoutingPolicy(), CATALOG))[:1] == [
        "ewallet:midtrans:gopay"]
    assert keys(plan_routes(Rail.EWALLET, "ovo", RoutingPolicy(), CATALOG))[:1] == [
        "ewallet:xendit:ovo"]


def test_a_wallet_falls_back_to_qris_then_manual_transfer() -> None:
    assert keys(plan_routes(Rail.EWALLET, "gopay", RoutingPolicy(), CATALOG)) == [
        "ewallet:midtrans:gopay", "qris:midtrans:qris", "qris:xendit:qris",
        "manual_transfer:bank:bank"]


def test_qris_falls_back_to_manual_transfer_only() -> None:
    assert keys(plan_routes(Rail.QRIS, "qris", RoutingPolicy(), CATALOG)) == [
        "qris:midtrans:qris", "qris:xendit:qris", "manual_transfer:bank:bank"]


def test_no_fallback_means_only_the_chosen_rail() -> None:
    policy = RoutingPolicy(allow_fallback=False)
    assert keys(plan_routes(Rail.QRIS, "qris", policy, CATALOG)) == [
        "qris:midtrans:qris", "qris:xendit:qris"]


def test_merchant_overrides_priorities_and_fallback() -> None:
    policy = RoutingPolicy.for_merchant(
        {"priorities": {"va": ["midtrans"]}, "fallback": {"va": ["manual_transfer"]}},
        allow_fallback=True)
    assert keys(plan_routes(Rail.VA, "bni", policy, CATALOG)) == [
        "va:midtrans:bni", "manual_transfer:bank:bank"]


def test_a_merchant_without_overrides_gets_the_defaults_it_is_given() -> None:
    assert RoutingPolicy.for_merchant(None, allow_fallback=True) == RoutingPolicy()
    house = RoutingPolicy(priorities={"va": ("midtrans",)}, fallback={"va": ()})
    policy = RoutingPolicy.for_merchant({}, allow_fallback=True, defaults=house)
    assert keys(plan_routes(Rail.VA, "bca", policy, CATALOG)) == ["va:midtrans:bca"]


def test_overrides_that_are_not_lists_of_names_are_ignored() -> None:
    """Overrides are merchant JSON: a value of the wrong shape leaves the default in place."""
    for overrides in ({"priorities": "midtrans"}, {"priorities": {"va": "midtrans"}},
                      {"fallback": {"va": None}}, {"fallback": ["manual_transfer"]}):
        policy = RoutingPolicy.for_merchant(overrides, allow_fallback=True)
        assert keys(plan_routes(Rail.VA, "bca", policy, CATALOG)) == keys(
            plan_routes(Rail.VA, "bca", RoutingPolicy(), CATALOG)), overrides


def test_a_fallback_rail_without_a_default_channel_adds_no_routes() -> None:
    """Falling back to VA or a wallet would need a bank or wallet the customer never chose."""
    policy = RoutingPolicy.for_merchant({"fallback": {"qris": ["va", "ewallet",
                                                               "manual_transfer"]}},
                                        allow_fallback=True)
    assert keys(plan_routes(Rail.QRIS, "qris", policy, CATALOG)) == [
        "qris:midtrans:qris", "qris:xendit:qris", "manual_transfer:bank:bank"]


def test_a_route_is_planned_once_even_if_the_fallback_names_its_rail_again() -> None:
    policy = RoutingPolicy.for_merchant({"fallback": {"qris": ["qris", "manual_transfer",
                                                               "manual_transfer"]}},
                                        allow_fallback=True)
    assert keys(plan_routes(Rail.QRIS, "qris", policy, CATALOG)) == [
        "qris:midtrans:qris", "qris:xendit:qris", "manual_transfer:bank:bank"]


def test_manual_transfer_is_its_own_plan() -> None:
    assert plan_routes(Rail.MANUAL_TRANSFER, "bank", RoutingPolicy(), CATALOG) == [MANUAL_ROUTE]


def test_channels_offered_are_the_union_over_providers() -> None:
    assert set(channels_offered(Rail.EWALLET, CATALOG)) == {"gopay", "shopeepay", "ovo", "dana",
                                                           "linkaja"}


def test_manual_transfer_offers_one_channel_the_bank_whatever_the_gateways_serve() -> None:
    assert channels_offered(Rail.MANUAL_TRANSFER, CATALOG) == ("bank",)
    assert channels_offered(Rail.MANUAL_TRANSFER, {}) == ("bank",)


# ---------------------------------------------------------------------------------------------
# a merchant's routing as an operator sets it: every name one the planner will use
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("routing", [
    {},
    {"priorities": {"va": ["midtrans", "xendit"]}},
    {"priorities": {"ewallet": ["xendit"]}, "fallback": {"ewallet": ["manual_transfer"]}},
    {"fallback": {"va": []}},
    {"fallback": {"manual_transfer": [], "va": ["qris"]}},
], ids=str)
def test_routing_the_planner_can_follow_is_accepted(routing: dict[str, object]) -> None:
    assert routing_problem(routing, CATALOG) is None


@pytest.mark.parametrize(("routing", "says"), [
    ({"priority": {"va": ["xendit"]}}, "not priority"),
    ({"priorities": ["xendit"]}, "map a rail to a list"),
    ({"priorities": {"va": ["doku"]}}, "unknown provider 'doku' for va; known: midtrans, xendit"),
    ({"priorities": {"VA": ["xendit"]}}, "no provider order for 'VA'"),
    ({"priorities": {"manual_transfer": ["xendit"]}}, "no provider order for 'manual_transfer'"),
    ({"priorities": {"va": []}}, "a list of at least one"),
    ({"priorities": {"va": "xendit"}}, "a list of at least one"),
    ({"priorities": {"va": ["xendit", "xendit"]}}, "named twice"),
    ({"fallback": {"va": ["cheque"]}}, "unknown fallback rail 'cheque'"),
    ({"fallback": {"bank": ["qris"]}}, "unknown rail 'bank'"),
    ({"fallback": {"qris": ["qris"]}}, "cannot fall back to itself"),
    ({"fallback": {"qris": ["va"]}}, "needs a channel of its own"),
    ({"fallback": {"va": ["qris", "qris"]}}, "named twice"),
    ({"fallback": {"va": "qris"}}, "a list of rails"),
], ids=str)
def test_routing_the_planner_would_silently_skip_is_refused_naming_what(
    routing: dict[str, object], says: str,
) -> None:
    problem = routing_problem(routing, CATALOG)
    assert problem is not None and says in problem, problem


def test_a_provider_is_preferred_only_for_a_rail_it_serves() -> None:
    qris_only = {"midtrans": CATALOG["midtrans"], "qrisco": {Rail.QRIS: ("qris",)}}
    assert routing_problem({"priorities": {"qris": ["qrisco"]}}, qris_only) is None
    assert routing_problem({"priorities": {"va": ["qrisco"]}}, qris_only) == (
        "qrisco does not serve va")
