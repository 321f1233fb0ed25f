"""Ops API for the people who run Lunas: see routes, pause and resume them, force breakers,
schedule maintenance. Every change needs an ops token with the ``ops`` scope and a reason, and
lands in the audit log."""

from __future__ import annotations

import fnmatch
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from orchestrator.api.errors import BadRequest
from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.api.schemas import MAX_REASON, BreakerActionIn, MaintenanceIn, RouteChangeIn
from orchestrator.bootstrap import Container
from orchestrator.rails import midtrans, xendit
from orchestrator.rails.plan import MANUAL_ROUTE
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import iso

# fullmatch, not match with "$", which lets a trailing newline through. At most 62 characters,
# so a key fits the columns that keep it (the audit log's subject_id is the narrowest).
_ROUTE_KEY = re.compile(r"[a-z_]{1,20}:[a-z_]{1,20}:[a-z_]{1,20}")
_ROUTE_PATTERN = re.compile(r"[a-z_*]{1,20}:[a-z_*]{1,20}:[a-z_*]{1,20}")


def _reason(text: str) -> str:
    if not text.strip():
        raise BadRequest("say why in 'reason'; it goes to the audit log", code="reason_required")
    if len(text.strip()) > MAX_REASON:
        raise BadRequest(f"'reason' is kept to {MAX_REASON} characters", code="reason_too_long")
    return text.strip()


def _well_formed(route_key: str) -> None:
    if not _ROUTE_KEY.fullmatch(route_key):
        raise BadRequest("a route key is rail:provider:channel, e.g. va:xendit:bca",
                         code="bad_route")


def _route_key(container: Container, route_key: str) -> str:
    """A route Lunas has or can have: pausing or forcing a mistyped key would otherwise succeed
    and change nothing, while the SRE believes the route stopped."""
    _well_formed(route_key)
    if route_key not in _route_keys(container) and route_key not in _SUPPORTED_ROUTES:
        raise BadRequest(f"there is no route {route_key!r}; GET /v1/ops/routes lists them",
                         status=404, code="unknown_route")
    return route_key


def _gateway_routes(container: Container, pattern: str) -> None:
    """A maintenance pattern takes out gateway routes, at least one, and never manual transfer:
    a window matching nothing would be accepted and change nothing, and one covering manual
    transfer would be announced on the status page while every capture still offers it."""
    if fnmatch.fnmatchcase(MANUAL_ROUTE.key, pattern):
        raise _manual_transfer_stays()
    if not any(fnmatch.fnmatchcase(k, pattern)
               for k in (*_route_keys(container), *_SUPPORTED_ROUTES)):
        raise BadRequest(f"{pattern!r} matches no route; GET /v1/ops/routes lists them",
                         status=404, code="unknown_route")


def _manual_transfer_stays() -> BadRequest:
    # Manual transfer needs no gateway: it is what every other route falls back to, and a
    # manual-transfer capture never consults the router. To stop sending customers to one bank
    # account, deactivate that payout account instead.
    return BadRequest(f"{MANUAL_ROUTE.key} needs no gateway and is the last resort: it cannot "
                      "be paused or taken into maintenance (deactivate a payout account to stop "
                      "sending customers to it)", status=422, code="manual_transfer_stays")


# Every route the adapters can serve, configured here or not: a route may be paused before the
# deploy that configures its provider.
_SUPPORTED_ROUTES = frozenset(
    f"{rail.value}:{provider}:{channel}"
    for provider, channels in (("midtrans", midtrans.CHANNELS), ("xendit", xendit.CHANNELS))
    for rail, names in channels.items() for channel in names)


def _route_keys(container: Container) -> list[str]:
    catalog = container.router.catalog()
    keys = sorted({f"{rail.value}:{provider}:{channel}"
                   for provider, by_rail in catalog.items()
                   for rail, channels in by_rail.items() for channel in channels})
    return [*keys, "manual_transfer:bank:bank"]


_ROUTE_REFUSED = problem("bad_route (not rail:provider:channel), reason_required, "
                         "reason_too_long, or a malformed request.")
_NO_ROUTE = problem("unknown_route: no route by that key (GET /v1/ops/routes lists them).")
_STAYS = problem("manual_transfer_stays: manual transfer needs no gateway and cannot be paused "
                 "or taken into maintenance.")
PAUSE = contract("ops", body=True, answers={
    200: Answer(description="The route, paused"), 400: _ROUTE_REFUSED, 404: _NO_ROUTE,
    422: _STAYS})
RESUME = contract("ops", body=True, answers={200: Answer(description="The route, routed to"),
                                             400: _ROUTE_REFUSED})
ROUTES = contract("ops", {200: Answer(description="`data`: every route with its breaker, "
                                                  "pause and maintenance")})
BREAKER = contract("ops", body=True, answers={
    200: Answer(description="The route's breaker state now"),
    400: problem("bad_action, bad_route, reason_required, reason_too_long, or a malformed "
                 "request."),
    404: _NO_ROUTE})
WINDOWS = contract("ops", {200: Answer(description="`data`: the windows")})
SCHEDULE = contract("ops", body=True, answers={
    201: Answer(description="The window"),
    400: problem("bad_route, bad_datetime, naive_datetime (a time without a zone), "
                 "reason_required, reason_too_long, or a malformed request."),
    404: _NO_ROUTE,
    422: problem("manual_transfer_stays, or invalid_request: the window ends before it "
                 "starts, has ended, or lasts longer than 7 days.")})
CANCEL_WINDOW = contract("ops", body=True, answers={
    200: Answer(description="`cancelled: true`: the window had not started and is gone; "
                            "`cancelled: false` with `ended_at`: it was running and ends now, "
                            "kept as the record of the maintenance that happened"),
    400: problem("reason_required, reason_too_long, or a malformed request."),
    404: problem("No active window by that id (not_found)."),
    422: problem("invalid_request: the window has ended; it stays as the record of past "
                 "maintenance.")})

class OpsController(Controller):
    path = "/v1/ops"
    tags = ("ops",)

    @post("/routes/{route_key:str}/pause", status_code=200, summary="Stop routing to a route",
          responses=PAUSE.responses, operation_class=PAUSE.operation)
    async def pause(self, request: Request[Any, Any, Any], route_key: FromPath[str],
                    data: JSONBody[RouteChangeIn],
                    container: NamedDependency[Container]) -> dict[str, Any]:
        return await self._set(request, container, route_key, data, paused=True)

    @post("/routes/{route_key:str}/resume", status_code=200, summary="Route to it again",
          responses=RESUME.responses, operation_class=RESUME.operation)
    async def resume(self, request: Request[Any, Any, Any], route_key: FromPath[str],
                     data: JSONBody[RouteChangeIn],
                     container: NamedDependency[Container]) -> dict[str, Any]:
        return await self._set(request, container, route_key, data, paused=False)

    async def _set(self, request: Request[Any, Any, Any], container: Container, route_key: str,
                   data: RouteChangeIn, *, paused: bool) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        # Resuming needs only a well-formed key: whatever was paused can be released.
        if paused:
            _route_key(container, route_key)
            if route_key == MANUAL_ROUTE.key:
                raise _manual_transfer_stays()
        else:
            _well_formed(route_key)
        await container.route_controls.set_paused(route_key, paused=paused,
                                                  actor=f"ops:{principal.name}",
                                                  reason=_reason(data.reason))
        return {"route": route_key, "paused": paused}

    @get("/routes", summary="Every route: breaker state and counts, pause, maintenance",
         responses=ROUTES.responses, operation_class=ROUTES.operation)
    async def routes(self, request: Request[Any, Any, Any],
                     container: NamedDependency[Container]) -> dict[str, Any]:
        await container.auth.ops(request, "ops")
        now = container.clock.now()
        paused = await container.route_controls.paused(now)
        windows = await container.route_controls.windows(now=now)
        keys = _route_keys(container)
        data = []
        # A route paused before the deploy that configures its provider is listed too.
        for key in [*keys, *sorted(set(paused) - set(keys))]:
            snap = container.breakers.get(key).snapshot()
            data.append({
                "route": key, "breaker": snap.state.value,
                "retry_at": iso(snap.retry_at), "window": {"calls": snap.calls,
                                                           "failures": snap.failures,
                                                           "slow": snap.slow},
                "blocked": await container.route_controls.blocked(key, now),
                # The operators' own notes, which merchants never see.
                "pause_reason": paused.get(key),
                "maintenance": [w.render() for w in windows if w.covers(key, now)],
            })
        return {"data": data, "redis_fallback": container.breakers.redis_fallback}

    @post("/routes/{route_key:str}/breaker", status_code=200,
          summary="Force a route's breaker open or closed, or release the override",
          responses=BREAKER.responses, operation_class=BREAKER.operation)
    async def breaker(self, request: Request[Any, Any, Any], route_key: FromPath[str],
                      data: JSONBody[BreakerActionIn],
                      container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        # Release too: every key that can be forced is a known route, and a breaker for any
        # other key would be created here and export lunas_breaker_state series for every
        # well-formed key anyone posts. A breaker this process already has stays releasable.
        if data.action != "release" or route_key not in {b.key for b in container.breakers}:
            _route_key(container, route_key)
        reason = _reason(data.reason)
        breaker = container.breakers.get(route_key)
        actions = {"force_open": breaker.force_open, "force_closed": breaker.force_closed,
                   "release": breaker.release_force}
        if data.action not in actions:
            raise BadRequest(f"action must be one of: {', '.join(actions)}", code="bad_action")
        # An override lives in Redis and the processes, not in the database, so it cannot share
        # the audit row's transaction: it is applied once that row is committed, never before.
        # The other way round, an audit write that failed (a read-only failover) left a
        # cluster-wide override nobody could say who made or why.
        async with container.db.transaction() as conn:
            await record_audit(conn, actor=f"ops:{principal.name}",
                               action=f"breaker.{data.action}", subject_type="route",
                               subject_id=route_key, reason=reason, now=container.clock.now())
        actions[data.action](f"ops:{principal.name}: {reason}")
        return {"route": route_key, "breaker": breaker.state.value}

    @get("/maintenance", summary="Scheduled and current maintenance windows",
         responses=WINDOWS.responses, operation_class=WINDOWS.operation)
    async def list_windows(self, request: Request[Any, Any, Any],
                           container: NamedDependency[Container],
                           include_past: FromQuery[bool] = False) -> dict[str, Any]:
        await container.auth.ops(request, "ops")
        windows = await container.route_controls.windows(now=container.clock.now(),
                                                         include_past=include_past)
        return {"data": [w.render() for w in windows]}

    @post("/maintenance", status_code=201, summary="Schedule a maintenance window",
          responses=SCHEDULE.responses, operation_class=SCHEDULE.operation)
    async def schedule(self, request: Request[Any, Any, Any], data: JSONBody[MaintenanceIn],
                       container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        if not _ROUTE_PATTERN.fullmatch(data.route):
            raise BadRequest("route is rail:provider:channel, '*' allowed, e.g. va:xendit:*",
                             code="bad_route")
        _gateway_routes(container, data.route)
        starts_at, ends_at = _utc("starts_at", data.starts_at), _utc("ends_at", data.ends_at)
        window = await container.route_controls.schedule(
            route_pattern=data.route, starts_at=starts_at, ends_at=ends_at,
            reason=_reason(data.reason), actor=f"ops:{principal.name}")
        return window.render()

    @delete("/maintenance/{window_id:str}", status_code=200,
            summary="Cancel a window, or end a running one now",
            responses=CANCEL_WINDOW.responses, operation_class=CANCEL_WINDOW.operation)
    async def cancel(self, request: Request[Any, Any, Any], window_id: FromPath[str],
                     container: NamedDependency[Container],
                     reason: FromQuery[str] = "") -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        ended = await container.route_controls.cancel_window(
            window_id, actor=f"ops:{principal.name}", reason=_reason(reason))
        if ended is not None:
            return {"id": window_id, "cancelled": False, "ended_at": iso(ended)}
        return {"id": window_id, "cancelled": True}


def _utc(name: str, text: str) -> datetime:
    """An ISO-8601 (RFC 3339) time with a zone, as UTC."""
    try:
        when = msgspec.convert(text, datetime)  # strict: a string, in RFC 3339
    except msgspec.ValidationError:
        raise BadRequest(f"{name} is not a time like 2026-11-24T01:00:00+07:00",
                         code="bad_datetime") from None
    if when.tzinfo is None:
        raise BadRequest(f"{name} needs a zone, e.g. 2026-11-24T01:00:00+07:00",
                         code="naive_datetime")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 has no UTC
        raise BadRequest(f"{name} is out of range", code="bad_datetime") from None
