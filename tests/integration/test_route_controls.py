"""Ops controls routes: pauses and maintenance windows need the ops scope and a reason, are
audited, and the router sees them (``RouteControls.blocked``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.services.order_view import iso
from orchestrator.store.tables import audit_log, maintenance_windows
from tests.support import new_merchant, new_ops_token


@pytest.fixture(scope="module")
async def ops(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {await new_ops_token(container)}"}


async def test_pause_and_resume_are_audited_and_seen_by_the_router(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    route = "va:xendit:bni"
    r = await client.post(f"/v1/ops/routes/{route}/pause", headers=ops,
                          json={"reason": "BNI host-to-host down per Xendit status page"})
    assert r.status_code == 200 and r.json() == {"route": route, "paused": True}
    now = datetime.now(UTC)
    assert await container.route_controls.blocked(route, now) == "paused by ops"
    # The note is the operators' (GET /v1/ops/routes); merchants (GET /v1/rails, an order's
    # routing hops) see that the route is paused.
    [seen] = [x for x in (await client.get("/v1/ops/routes", headers=ops)).json()["data"]
              if x["route"] == route]
    assert seen["pause_reason"] == "BNI host-to-host down per Xendit status page"
    assert await container.route_controls.blocked("va:midtrans:bni", now) is None
    await client.post(f"/v1/ops/routes/{route}/resume", headers=ops, json={"reason": "recovered"})
    assert await container.route_controls.blocked(route, now) is None
    async with container.db.read() as conn:
        actions = (await conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.subject_id == route).order_by(audit_log.c.id))).scalars().all()
    assert actions == ["route.paused", "route.resumed"]


async def test_a_maintenance_window_blocks_its_routes_only_while_it_lasts(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    start = datetime.now(UTC) + timedelta(hours=1)
    r = await client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "qris:midtrans:*", "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=2)).isoformat(), "reason": "acquirer upgrade"})
    assert r.status_code == 201, r.text
    window = r.json()
    rc = container.route_controls
    assert await rc.blocked("qris:midtrans:qris", start - timedelta(minutes=1)) is None
    inside = await rc.blocked("qris:midtrans:qris", start + timedelta(minutes=1))
    # Merchants read this (GET /v1/rails, routing hops): the end, never the operator's reason.
    assert inside == f"scheduled maintenance until {iso(start + timedelta(hours=2))}"
    assert await rc.blocked("qris:xendit:qris", start + timedelta(minutes=1)) is None
    assert await rc.blocked("qris:midtrans:qris", start + timedelta(hours=2)) is None
    listed = (await client.get("/v1/ops/maintenance", headers=ops)).json()["data"]
    assert window["id"] in [w["id"] for w in listed]
    gone = await client.delete(f"/v1/ops/maintenance/{window['id']}", headers=ops,
                               params={"reason": "postponed"})
    assert gone.status_code == 200
    assert await rc.blocked("qris:midtrans:qris", start + timedelta(minutes=1)) is None


async def test_ops_endpoints_refuse_merchants_missing_reasons_and_bad_routes(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    r = await client.post("/v1/ops/routes/va:xendit:bca/pause", headers=m.headers,
                          json={"reason": "x"})
    assert r.status_code == 401
    r = await client.post("/v1/ops/routes/va:xendit:bca/pause", headers=ops, json={"reason": " "})
    assert r.status_code == 400 and r.json()["code"] == "reason_required"
    r = await client.post("/v1/ops/routes/not-a-route/pause", headers=ops, json={"reason": "x"})
    assert r.status_code == 400 and r.json()["code"] == "bad_route"
    r = await client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "va:*:*", "starts_at": "2026-12-01T01:00:00+07:00",
        "ends_at": "2026-12-01T00:00:00+07:00", "reason": "backwards"})
    assert r.status_code == 422


async def test_manual_transfer_cannot_be_paused_or_taken_into_maintenance(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Manual transfer needs no gateway and is what every route falls back to; a manual-transfer
    capture never asks the router. A pause of it answered 200 and changed nothing for captures,
    while /v1/rails and the status page called it unavailable: it is refused instead."""
    r = await client.post("/v1/ops/routes/manual_transfer:bank:bank/pause", headers=ops,
                          json={"reason": "bank statements late"})
    assert (r.status_code, r.json()["code"]) == (422, "manual_transfer_stays")
    start = datetime.now(UTC) + timedelta(hours=1)
    window = {"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=1)).isoformat(),
              "reason": "everything"}
    for pattern in ("*:*:*", "manual_transfer:*:*", "*:bank:*"):
        r = await client.post("/v1/ops/maintenance", headers=ops, json={"route": pattern, **window})
        assert (r.status_code, r.json()["code"]) == (422, "manual_transfer_stays"), pattern
    # A pattern that matches no route would be accepted and change nothing.
    r = await client.post("/v1/ops/maintenance", headers=ops, json={"route": "bsi:x:*", **window})
    assert (r.status_code, r.json()["code"]) == (404, "unknown_route")
    m = await new_merchant(container)
    rails = (await client.get("/v1/rails", headers=m.headers)).json()
    [manual] = [x for x in rails["data"] if x["rail"] == "manual_transfer"]
    assert manual["available"] is True


async def test_a_window_of_absurd_length_is_refused_with_its_reason(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A year typed wrong ("2027" for "2026", "0001" for a start) was accepted with 201: the
    route left routing for a year or more, announced as maintenance on the status page, with
    nothing to say it was a slip. A window longer than a week is refused; a route out for
    longer is paused, which says so and is not announced as ending."""
    start = datetime.now(UTC) + timedelta(hours=1)
    for starts_at, ends_at in (
        (start, start.replace(year=start.year + 1)),
        (datetime(1, 1, 1, tzinfo=UTC), start + timedelta(hours=2)),
        (start, start + timedelta(days=7, seconds=1)),
    ):
        r = await client.post("/v1/ops/maintenance", headers=ops, json={
            "route": "ewallet:xendit:*", "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(), "reason": "core banking migration"})
        assert r.status_code == 422, r.text
        assert (r.status_code, r.json()["code"], r.json()["field"]) == (
            422, "invalid_request", "ends_at"), r.text
        assert "7 days" in r.json()["detail"]
    listed = (await client.get("/v1/ops/maintenance", headers=ops)).json()["data"]
    assert not [w for w in listed if w["route"] == "ewallet:xendit:*"]
    # A week is still a window (a weekend's core-banking migration with margin).
    r = await client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "ewallet:xendit:*", "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(days=7)).isoformat(), "reason": "core banking migration"})
    assert r.status_code == 201, r.text
    await client.delete(f"/v1/ops/maintenance/{r.json()['id']}", headers=ops,
                        params={"reason": "test over"})


async def test_a_window_that_has_ended_cannot_be_cancelled(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A window past its end is the record of maintenance that happened (the status page's
    history, GET /v1/ops/maintenance?include_past=true): cancelling it answered 200 and erased
    it from that record as if the route had never been out."""
    start = datetime.now(UTC) + timedelta(hours=1)
    r = await client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "va:midtrans:*", "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=2)).isoformat(), "reason": "BNI host upgrade"})
    window = r.json()
    # The window's hours pass: it ran yesterday.
    async with container.db.transaction() as conn:
        await conn.execute(maintenance_windows.update()
                           .where(maintenance_windows.c.id == window["id"])
                           .values(starts_at=start - timedelta(days=1, hours=1),
                                   ends_at=start - timedelta(days=1)))
    gone = await client.delete(f"/v1/ops/maintenance/{window['id']}", headers=ops,
                               params={"reason": "tidy up"})
    assert (gone.status_code, gone.json()["code"]) == (422, "invalid_request"), gone.text
    assert "ended" in gone.json()["detail"]
    past = (await client.get("/v1/ops/maintenance", headers=ops,
                             params={"include_past": "true"})).json()["data"]
    assert window["id"] in [w["id"] for w in past]


async def test_a_running_window_taken_back_ends_now_and_stays_as_the_record(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A window already running that ops take back (the upgrade finished early) took its
    routes out for the hours it ran: DELETE cancelled it, erasing it from GET
    /v1/ops/maintenance?include_past=true as if the routes had never been out. It ends now
    instead, kept and audited as ended early; one not started yet is still cancelled."""
    now = datetime.now(UTC)
    r = await client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "ewallet:midtrans:*", "starts_at": (now - timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(), "reason": "GoPay host upgrade"})
    assert r.status_code == 201, r.text
    running = r.json()
    rc = container.route_controls
    assert await rc.blocked("ewallet:midtrans:gopay", datetime.now(UTC)) is not None

    ended = await client.delete(f"/v1/ops/maintenance/{running['id']}", headers=ops,
                                params={"reason": "upgrade finished early"})
    assert ended.status_code == 200, ended.text
    assert ended.json()["cancelled"] is False, ended.text
    ended_at = datetime.fromisoformat(ended.json()["ended_at"])
    assert await rc.blocked("ewallet:midtrans:gopay", datetime.now(UTC)) is None
    current = (await client.get("/v1/ops/maintenance", headers=ops)).json()["data"]
    assert running["id"] not in [w["id"] for w in current]
    past = (await client.get("/v1/ops/maintenance", headers=ops,
                             params={"include_past": "true"})).json()["data"]
    [kept] = [w for w in past if w["id"] == running["id"]]
    assert (kept["starts_at"], kept["ends_at"]) == (running["starts_at"], iso(ended_at))
    async with container.db.read() as conn:
        audited = (await conn.execute(sa.select(audit_log.c.action, audit_log.c.reason).where(
            audit_log.c.subject_id == running["id"]).order_by(audit_log.c.id))).all()
    assert [tuple(a) for a in audited] == [
        ("maintenance.scheduled", "GoPay host upgrade"),
        ("maintenance.ended_early", "upgrade finished early")]

    r = await client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "ewallet:midtrans:*", "starts_at": (now + timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=2)).isoformat(), "reason": "GoPay host upgrade"})
    ahead = r.json()
    gone = await client.delete(f"/v1/ops/maintenance/{ahead['id']}", headers=ops,
                               params={"reason": "postponed"})
    assert gone.json() == {"id": ahead["id"], "cancelled": True}, gone.text
    past = (await client.get("/v1/ops/maintenance", headers=ops,
                             params={"include_past": "true"})).json()["data"]
    assert ahead["id"] not in [w["id"] for w in past]
