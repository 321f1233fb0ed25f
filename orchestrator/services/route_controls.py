"""What people decide about routes: pauses and scheduled maintenance windows (audited).

The router asks ``RouteControls.blocked(route_key, now)`` on every capture, so it reads a
snapshot refreshed at most every ``refresh`` seconds instead of querying each time; a change made
in this process applies at once, one made elsewhere within ``refresh``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.domain.clock import Clock
from orchestrator.domain.errors import InvalidRequest, NotFound
from orchestrator.domain.ids import new_id
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import iso
from orchestrator.store.database import Database, upsert_insert
from orchestrator.store.tables import maintenance_windows, route_controls

MAX_WINDOW = timedelta(days=7)
"""The longest maintenance window: a weekend's core-banking migration with margin. A longer one
is a year typed wrong far more often than a plan, and would take the route out and announce it
on the status page until then; a route out for longer is paused instead."""


@dataclass(frozen=True, kw_only=True)
class Window:
    id: str
    route_pattern: str
    starts_at: datetime
    ends_at: datetime
    reason: str

    def covers(self, route_key: str, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at and fnmatch.fnmatchcase(
            route_key, self.route_pattern)

    def render(self) -> dict[str, Any]:
        return {"id": self.id, "route": self.route_pattern, "starts_at": iso(self.starts_at),
                "ends_at": iso(self.ends_at), "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class _Snapshot:
    paused: dict[str, str]
    windows: tuple[Window, ...]
    taken_at: datetime


class RouteControls:
    def __init__(self, db: Database, *, clock: Clock, refresh: timedelta) -> None:
        self._db, self._clock, self._refresh = db, clock, refresh
        self._snapshot: _Snapshot | None = None

    async def blocked(self, route_key: str, now: datetime) -> str | None:
        """Why ``route_key`` may not be used at ``now`` (paused / in maintenance), or None.

        Never the operator's own reason (tickets, hosts, names): that is for the audit log and
        ``GET /v1/ops/routes``, and this answer reaches merchants (``GET /v1/rails``, an order's
        routing hops)."""
        snap = await self._current(now)
        if route_key in snap.paused:
            return "paused by ops"
        for w in snap.windows:
            if w.covers(route_key, now):
                return f"scheduled maintenance until {iso(w.ends_at)}"
        return None

    async def windows(self, *, now: datetime, include_past: bool = False) -> list[Window]:
        snap = await self._current(now, force=True)
        return [w for w in snap.windows if include_past or w.ends_at > now]

    async def paused(self, now: datetime) -> dict[str, str]:
        return dict((await self._current(now)).paused)

    async def _current(self, now: datetime, *, force: bool = False) -> _Snapshot:
        snap = self._snapshot
        if force or snap is None or now - snap.taken_at >= self._refresh or now < snap.taken_at:
            snap = await self._load(now)
            self._snapshot = snap
        return snap

    async def _load(self, now: datetime) -> _Snapshot:
        async with self._db.read() as conn:
            paused = {r.route_key: r.reason or "" for r in await conn.execute(
                sa.select(route_controls).where(route_controls.c.paused))}
            windows = tuple(
                Window(id=r.id, route_pattern=r.route_pattern, starts_at=r.starts_at,
                       ends_at=r.ends_at, reason=r.reason)
                for r in await conn.execute(
                    sa.select(maintenance_windows).where(
                        maintenance_windows.c.cancelled_at.is_(None),
                        maintenance_windows.c.ends_at > now - timedelta(days=1),
                    ).order_by(maintenance_windows.c.starts_at))
            )
        return _Snapshot(paused=paused, windows=windows, taken_at=now)

    async def set_paused(self, route_key: str, *, paused: bool, actor: str, reason: str) -> None:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            values = {"paused": paused, "reason": reason, "changed_by": actor, "changed_at": now}
            await conn.execute(
                upsert_insert(conn.dialect.name)(route_controls)
                .values(route_key=route_key, **values)
                .on_conflict_do_update(index_elements=["route_key"], set_=values)
            )
            await record_audit(conn, actor=actor, action="route.paused" if paused else
                               "route.resumed", subject_type="route", subject_id=route_key,
                               reason=reason, now=now)
        self._snapshot = None

    async def schedule(self, *, route_pattern: str, starts_at: datetime, ends_at: datetime,
                       reason: str, actor: str) -> Window:
        if ends_at <= starts_at:
            raise InvalidRequest("ends_at must be after starts_at", field="ends_at")
        if ends_at - starts_at > MAX_WINDOW:
            raise InvalidRequest(f"a maintenance window lasts at most {MAX_WINDOW.days} days; "
                                 "pause the route for longer", field="ends_at")
        now = self._clock.now()
        if ends_at <= now:
            raise InvalidRequest("the window has already ended", field="ends_at")
        window = Window(id=new_id("mnt"), route_pattern=route_pattern, starts_at=starts_at,
                        ends_at=ends_at, reason=reason)
        async with self._db.transaction() as conn:
            await conn.execute(maintenance_windows.insert().values(
                id=window.id, route_pattern=route_pattern, starts_at=starts_at, ends_at=ends_at,
                reason=reason, created_by=actor, created_at=now))
            await record_audit(conn, actor=actor, action="maintenance.scheduled",
                               subject_type="maintenance", subject_id=window.id, reason=reason,
                               details=window.render(), now=now)
        self._snapshot = None
        return window

    async def cancel_window(self, window_id: str, *, actor: str, reason: str
                            ) -> datetime | None:
        """Take a window back: one not started yet is cancelled outright (it took nothing
        out); one running is ended now, kept as the record of the maintenance that happened
        (the status page's history, GET /v1/ops/maintenance?include_past=true), which
        cancelling it would erase. An ended one stays as it is. Returns when a running window
        was ended, None for one cancelled."""
        now = self._clock.now()
        w = maintenance_windows.c
        async with self._db.transaction() as conn:
            row = (await conn.execute(sa.select(w.starts_at, w.ends_at).where(
                w.id == window_id, w.cancelled_at.is_(None)).with_for_update())).first()
            if row is None:
                raise NotFound(f"no active maintenance window {window_id}")
            if row.ends_at <= now:
                raise InvalidRequest(f"the window ended at {iso(row.ends_at)}: it is the record "
                                     "of maintenance that happened, and stays")
            running = row.starts_at < now
            await conn.execute(maintenance_windows.update().where(w.id == window_id).values(
                **({"ends_at": now} if running else {"cancelled_at": now})))
            await record_audit(conn, actor=actor, action="maintenance.ended_early" if running
                               else "maintenance.cancelled", subject_type="maintenance",
                               subject_id=window_id, reason=reason,
                               details={"was_to_end_at": iso(row.ends_at)} if running else None,
                               now=now)
        self._snapshot = None
        return now if running else None
