"""What the status page shows at one moment, read from the database (what the recorder wrote) and
shaped in Atlassian Statuspage's vocabulary for ``/status/api/v2/*``.

Every api replica serves the page from one ``Snapshot`` rebuilt at most every ``ttl`` (one build
shared by all concurrent requests), so 200 requests/s cost a few queries per second, not 200. When
the database does not answer, the last snapshot is served, marked stale, with order intake shown
as down (capture needs the database).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.services.order_view import iso
from orchestrator.store.database import Database
from orchestrator.store.tables import (
    maintenance_windows,
    status_components,
    status_history,
    status_incident_updates,
    status_incidents,
)
from statuspage import model
from statuspage.model import Component, ComponentStatus, DayBar, Period

HISTORY_DAYS = 90
PAGE_ID = "lunas"


@dataclass(frozen=True, kw_only=True)
class ComponentView:
    component: Component
    status: ComponentStatus
    since: datetime
    updated_at: datetime
    bars: tuple[DayBar, ...]
    uptime: float | None


@dataclass(frozen=True, kw_only=True)
class UpdateView:
    id: str
    status: str
    body: str
    body_en: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class IncidentView:
    id: str
    name: str
    name_en: str | None
    status: str
    impact: str
    components: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    monitoring_at: datetime | None
    resolved_at: datetime | None
    updates: tuple[UpdateView, ...]
    scheduled_for: datetime | None = None
    scheduled_until: datetime | None = None

    @property
    def maintenance(self) -> bool:
        return self.scheduled_for is not None


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    taken_at: datetime
    components: tuple[ComponentView, ...]
    incidents: tuple[IncidentView, ...]
    """Newest first, the last ``HISTORY_DAYS`` days."""
    maintenances: tuple[IncidentView, ...]
    """Scheduled windows not yet over (upcoming and active), soonest first."""
    stale: bool = False
    renders: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Rendered pages of this snapshot, by (kind, language): built once, served many times."""

    @property
    def by_id(self) -> dict[str, ComponentView]:
        return {c.component.id: c for c in self.components}

    @property
    def indicator(self) -> str:
        return model.page_indicator(c.status for c in self.components)

    def unresolved(self) -> list[IncidentView]:
        return [i for i in self.incidents if i.status != "resolved"]

    def upcoming(self) -> list[IncidentView]:
        return [m for m in self.maintenances if m.status == "scheduled"]

    def active_maintenance(self) -> list[IncidentView]:
        return [m for m in self.maintenances if m.status == "in_progress"]

    # -- Atlassian Statuspage shapes ---------------------------------------------------------

    def page(self, url: str) -> dict[str, Any]:
        return {"id": PAGE_ID, "name": "Lunas", "url": url, "time_zone": "Asia/Jakarta",
                "updated_at": iso(self.taken_at)}

    def status_json(self, lang: str) -> dict[str, Any]:
        desc = model.PAGE_DESCRIPTIONS[self.indicator]
        return {"indicator": self.indicator, "description": desc[1] if lang == "en" else desc[0]}

    def component_json(self, view: ComponentView, lang: str) -> dict[str, Any]:
        c = view.component
        out: dict[str, Any] = {
            "id": c.id, "name": c.name_en if lang == "en" else c.name,
            "status": view.status.value, "created_at": iso(view.since),
            "updated_at": iso(view.updated_at), "position": c.position, "description": None,
            "showcase": c.group_id is None, "start_date": None, "group_id": c.group_id,
            "page_id": PAGE_ID, "group": c.is_group, "only_show_if_degraded": False,
        }
        if c.is_group:
            out["components"] = list(c.children)
        return out

    def components_json(self, lang: str) -> list[dict[str, Any]]:
        return [self.component_json(v, lang) for v in self.components]

    def incident_json(self, incident: IncidentView, lang: str, url: str) -> dict[str, Any]:
        views = self.by_id
        out: dict[str, Any] = {
            "id": incident.id,
            "name": (incident.name_en or incident.name) if lang == "en" else incident.name,
            "status": incident.status, "created_at": iso(incident.created_at),
            "updated_at": iso(incident.updated_at), "monitoring_at": iso(incident.monitoring_at),
            "resolved_at": iso(incident.resolved_at), "impact": incident.impact,
            "shortlink": f"{url}/incidents/{incident.id}", "started_at": iso(incident.created_at),
            "page_id": PAGE_ID,
            "incident_updates": [{
                "id": u.id, "status": u.status,
                "body": (u.body_en or u.body) if lang == "en" else u.body,
                "incident_id": incident.id, "created_at": iso(u.created_at),
                "updated_at": iso(u.created_at), "display_at": iso(u.created_at),
                "affected_components": None, "deliver_notifications": True,
                "custom_tweet": None, "tweet_id": None,
            } for u in incident.updates],
            "components": [self.component_json(views[c], lang) for c in incident.components
                           if c in views],
        }
        if incident.maintenance:
            out["scheduled_for"] = iso(incident.scheduled_for)
            out["scheduled_until"] = iso(incident.scheduled_until)
        return out

    def summary_json(self, lang: str, url: str) -> dict[str, Any]:
        return {"page": self.page(url), "components": self.components_json(lang),
                "incidents": [self.incident_json(i, lang, url) for i in self.unresolved()],
                "scheduled_maintenances": [self.incident_json(m, lang, url)
                                           for m in self.maintenances],
                "status": self.status_json(lang)}


class SnapshotSource:
    """Builds snapshots from the database; serves a cached one for ``ttl``.

    Past ``ttl`` it goes on serving the last snapshot while one rebuild runs in the background
    (stale-while-revalidate): a request never waits on the database, except for the first build,
    after ``invalidate()`` (an ops update must show on the next read), when ``ttl`` is zero, or
    when the last snapshot is older than ``max_stale`` (a rebuild that hangs must not freeze the
    page on old news).
    """

    def __init__(self, db: Database, components: Callable[[], list[Component]],
                 now: Callable[[], datetime], *, ttl: timedelta = timedelta(seconds=2),
                 max_stale: timedelta = timedelta(seconds=30)) -> None:
        self._db, self._components, self._now = db, components, now
        self._ttl = ttl.total_seconds()
        self._max_stale = max(max_stale.total_seconds(), self._ttl)
        self._current: Snapshot | None = None
        self._built_at = float("-inf")
        self._building: asyncio.Future[Snapshot] | None = None
        self._building_for = 0
        # invalidate() bumps the wanted generation; a build records the one it started at.
        self._wanted = 0
        self._have = 0

    def invalidate(self) -> None:
        self._built_at = float("-inf")
        self._wanted += 1

    async def get(self) -> Snapshot:
        while True:
            age = time.monotonic() - self._built_at
            if self._current is not None and age < self._ttl:
                return self._current
            if self._building is None or self._building.done():
                self._building_for = self._wanted
                self._building = asyncio.ensure_future(self._rebuild(self._wanted))
            if (self._current is not None and self._ttl > 0 and self._have >= self._wanted
                    and age < self._max_stale):
                return self._current
            building, generation = self._building, self._building_for
            snap = await asyncio.shield(building)
            if self._building is building:
                self._building = None
            if generation >= self._wanted:
                return snap
            # That build began before an invalidate(): what it read may predate the change.

    async def _rebuild(self, generation: int) -> Snapshot:
        try:
            snap = await build_snapshot(self._db, self._components(), self._now())
        except Exception:  # the database is down: say so, and show what we last knew
            snap = _degraded(self._current, self._components(), self._now())
            self._current, self._built_at = snap, time.monotonic() - self._ttl / 2
            self._have = max(self._have, generation)
            return snap
        self._current, self._built_at = snap, time.monotonic()
        self._have = max(self._have, generation)
        return snap


def _degraded(last: Snapshot | None, components: list[Component], now: datetime) -> Snapshot:
    if last is None:
        views = tuple(ComponentView(component=c, status=ComponentStatus.OPERATIONAL, since=now,
                                    updated_at=now, bars=(), uptime=None) for c in components)
        last = Snapshot(taken_at=now, components=views, incidents=(), maintenances=())
    views = tuple(replace(v, status=ComponentStatus.MAJOR_OUTAGE, updated_at=now)
                  if v.component.id == model.INTAKE else v for v in last.components)
    return replace(last, components=views, stale=True, renders={})


async def build_snapshot(db: Database, components: Sequence[Component],
                         now: datetime) -> Snapshot:
    since = now - timedelta(days=HISTORY_DAYS)
    async with db.read() as conn:
        rows = {r.id: r for r in await conn.execute(sa.select(status_components))}
        h = status_history.c
        periods: dict[str, list[Period]] = {}
        for r in await conn.execute(
                sa.select(h.component_id, h.status, h.started_at, h.ended_at)
                .where(sa.or_(h.ended_at.is_(None), h.ended_at >= since))
                .order_by(h.component_id, h.started_at)):
            periods.setdefault(r.component_id, []).append(
                Period(status=ComponentStatus(r.status), start=r.started_at, end=r.ended_at))
        i = status_incidents.c
        incident_rows = list(await conn.execute(
            sa.select(status_incidents).where(sa.or_(i.created_at >= since,
                                                     i.status != "resolved"))
            .order_by(i.created_at.desc()).limit(200)))
        updates: dict[str, list[UpdateView]] = {}
        if incident_rows:
            u = status_incident_updates.c
            for r in await conn.execute(
                    sa.select(status_incident_updates)
                    .where(u.incident_id.in_([x.id for x in incident_rows]))
                    .order_by(u.created_at.desc(), u.id.desc())):
                updates.setdefault(r.incident_id, []).append(UpdateView(
                    id=r.id, status=r.status, body=r.body, body_en=r.body_en,
                    created_at=r.created_at))
        m = maintenance_windows.c
        windows = list(await conn.execute(
            sa.select(maintenance_windows).where(m.cancelled_at.is_(None), m.ends_at > now)
            .order_by(m.starts_at)))
    views = []
    for c in components:
        row = rows.get(c.id)
        bars = tuple(model.uptime_bars(periods.get(c.id, []), now=now, days=HISTORY_DAYS))
        views.append(ComponentView(
            component=c, status=ComponentStatus(row.status) if row else
            ComponentStatus.OPERATIONAL, since=row.since if row else now,
            updated_at=row.updated_at if row else now, bars=bars,
            uptime=model.uptime_over(bars)))
    incidents = tuple(IncidentView(
        id=r.id, name=r.name, name_en=r.name_en, status=r.status, impact=r.impact,
        components=tuple(r.components), created_at=r.created_at, updated_at=r.updated_at,
        monitoring_at=r.monitoring_at, resolved_at=r.resolved_at,
        updates=tuple(updates.get(r.id, ()))) for r in incident_rows)
    notices = model.maintenance_notices([model.MaintenanceWindow(
        id=w.id, route_pattern=w.route_pattern, starts_at=w.starts_at, ends_at=w.ends_at,
        created_at=w.created_at) for w in windows], components, now)
    names = {c.id: c for c in components}
    maintenances = tuple(_maintenance(n, [names[i] for i in n.components], now)
                         for n in notices)
    return Snapshot(taken_at=now, components=tuple(views), incidents=incidents,
                    maintenances=maintenances)


def _maintenance(notice: model.MaintenanceNotice, affected: Sequence[Component], now: datetime
                 ) -> IncidentView:
    """A maintenance notice as an incident of the page (``model.maintenance_notices`` decides
    which components it names, never from the windows' ``reason``)."""
    names = ", ".join(c.name for c in affected)
    names_en = ", ".join(c.name_en for c in affected)
    status = "in_progress" if notice.starts_at <= now else "scheduled"
    update = UpdateView(id=f"{notice.id}-scheduled", status="scheduled",
                        body=f"Pemeliharaan terjadwal pada {names}. Metode pembayaran ini "
                             "tidak tersedia selama pemeliharaan.",
                        body_en=f"Scheduled maintenance of {names_en}. These payment methods "
                                "are unavailable during the maintenance.",
                        created_at=notice.created_at)
    return IncidentView(
        id=notice.id, name=f"Pemeliharaan terjadwal: {names}",
        name_en=f"Scheduled maintenance: {names_en}", status=status, impact="maintenance",
        components=notice.components, created_at=notice.created_at,
        updated_at=notice.created_at, monitoring_at=None, resolved_at=None, updates=(update,),
        scheduled_for=notice.starts_at, scheduled_until=notice.ends_at)
