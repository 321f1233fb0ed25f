"""The status recorder: evaluates every component, publishes through hysteresis, keeps the
history for the uptime bars, and opens and resolves automatic incidents. Runs in the worker.

Several workers may run it: each evaluation locks the component rows (``FOR UPDATE`` on
PostgreSQL; SQLite has one writer), so two evaluations never interleave, and a second one right
after the first changes nothing (hysteresis works on times, not on counts of evaluations).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.clock import Clock
from orchestrator.domain.ids import new_id
from orchestrator.services.status_reads import LIVE
from orchestrator.store.database import Database, upsert_insert
from orchestrator.store.tables import (
    payment_attempts,
    status_components,
    status_history,
    status_incident_updates,
    status_incidents,
)
from statuspage import model
from statuspage.model import Component, ComponentStatus, Derived, RouteHealth
from statuspage.texts import incident_texts

log = logging.getLogger("lunas.statuspage")

UNSERVED = ("failed", "unknown")


class Sources(Protocol):
    """What the recorder reads besides the database (the worker's breakers, controls, feed)."""

    def catalog(self) -> Mapping[str, Mapping[str, Sequence[str]]]: ...

    def breaker_state(self, route_key: str) -> str: ...

    async def paused(self, now: datetime) -> Mapping[str, str]: ...

    async def maintenance_patterns(self, now: datetime) -> Sequence[str]: ...

    def feed_stale(self, now: datetime) -> bool: ...


@dataclass(frozen=True, kw_only=True)
class RecorderSettings:
    interval: timedelta = timedelta(seconds=15)
    success_window: timedelta = timedelta(minutes=5)
    dwell: model.Dwell = field(default_factory=model.Dwell)
    thresholds: model.Thresholds = field(default_factory=model.Thresholds)


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    raw: dict[str, Derived]
    published: dict[str, ComponentStatus]
    changed: dict[str, ComponentStatus]


class StatusRecorder:
    def __init__(self, db: Database, sources: Sources, clock: Clock, *,
                 manual_route: str, settings: RecorderSettings | None = None) -> None:
        self._db, self._sources, self._clock = db, sources, clock
        self._manual_route = manual_route
        self.settings = settings or RecorderSettings()
        self._usable_since: dict[str, datetime] = {}
        """When each route last came back (breaker closed, pause or window over): its failures
        from before count no more, or a recovered route would read as failing for a window."""
        self._unusable: set[str] = set()

    def components(self) -> list[Component]:
        catalog = {p: {r: tuple(c) for r, c in rails.items()}
                   for p, rails in self._sources.catalog().items()}
        return model.components_for(catalog, self._manual_route)

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.interval.total_seconds()
        while not stop.is_set():
            try:
                await self.evaluate()
            except Exception:  # a database blip must not end the loop; the next pass retries
                log.exception("status evaluation failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def evaluate(self, now: datetime | None = None) -> Evaluation:
        now = now or self._clock.now()
        components = self.components()
        raw = await self._derive(components, now)
        async with self._db.transaction() as conn:
            await self._ensure_rows(conn, components, now)
            query = sa.select(status_components)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            rows = {r.id: r for r in await conn.execute(query.order_by(status_components.c.id))}
            if any(r.updated_at > now for r in rows.values()):
                # Another worker evaluated a later instant while this one derived: its view is
                # newer. Writing ours would end periods before they began and flip the page back.
                return Evaluation(raw=raw, published={
                    c.id: ComponentStatus(rows[c.id].status) for c in components}, changed={})
            published: dict[str, ComponentStatus] = {}
            changed: dict[str, ComponentStatus] = {}
            for c in components:
                row = rows[c.id]
                current = model.Published(
                    status=ComponentStatus(row.status), since=row.since,
                    candidate=ComponentStatus(row.candidate) if row.candidate else None,
                    candidate_since=row.candidate_since)
                derived = raw[c.id]
                nxt = model.advance(current, derived.status, now, self.settings.dwell)
                published[c.id] = nxt.status
                await conn.execute(status_components.update().where(
                    status_components.c.id == c.id).values(
                    status=nxt.status.value, since=nxt.since,
                    candidate=nxt.candidate.value if nxt.candidate else None,
                    candidate_since=nxt.candidate_since,
                    observed={"raw": derived.status.value, "reasons": list(derived.reasons)},
                    updated_at=now))
                if nxt.status is not current.status:
                    changed[c.id] = nxt.status
                    await self._record_period(conn, c.id, nxt.status, now)
                    log.info("component status changed", extra={
                        "component": c.id, "from": current.status.value,
                        "to": nxt.status.value, "reasons": list(derived.reasons)})
            await self._incidents(conn, components, published, changed, now)
        return Evaluation(raw=raw, published=published, changed=changed)

    # -- derivation -------------------------------------------------------------------------

    async def _derive(self, components: Sequence[Component], now: datetime) -> dict[str, Derived]:
        paused = await self._sources.paused(now)
        patterns = await self._sources.maintenance_patterns(now)
        counts = await self._recent_attempts(now)
        confirmation = await self._confirmation(now)
        t = self.settings.thresholds

        def health(key: str) -> RouteHealth:
            attempts, failed = counts.get(key, (0, 0))
            gateway = key != self._manual_route
            # Manual transfer cannot be paused or taken into maintenance (api/ops.py): a pause
            # or window left from before changes nothing for customers, so nothing here either.
            route = RouteHealth(
                key=key, breaker=self._sources.breaker_state(key) if gateway else "closed",
                paused=gateway and key in paused,
                in_maintenance=gateway and any(fnmatch.fnmatchcase(key, p) for p in patterns),
                attempts=attempts, failed=failed)
            if not route.usable:
                self._unusable.add(key)
            elif key in self._unusable:
                self._unusable.discard(key)
                self._usable_since[key] = now
            return route

        for c in components:  # learn which routes came back before counting their attempts
            for key in c.routes:
                health(key)
        counts.update(await self._attempts_since_recovery(now))

        raw: dict[str, Derived] = {}
        for c in components:
            if c.routes:
                raw[c.id] = model.derive_routes([health(k) for k in c.routes], t)
        for c in components:
            if c.is_group:
                status = model.derive_group([raw[m].status for m in c.children])
                reasons = tuple(r for m in c.children for r in raw[m].reasons)
                raw[c.id] = Derived(status=status, reasons=reasons)
        oldest, deferred = confirmation
        raw[model.CONFIRMATION] = model.derive_confirmation(
            oldest_wait=oldest, deferred=deferred, feed_stale=self._sources.feed_stale(now), t=t)
        rails = [raw[c.id].status for c in components
                 if c.group_id is None and c.id not in (model.INTAKE, model.CONFIRMATION)]
        raw[model.INTAKE] = model.derive_intake(rails=rails, database_ok=True)
        return raw

    async def _recent_attempts(self, now: datetime) -> dict[str, tuple[int, int]]:
        a = payment_attempts.c
        since = now - self.settings.success_window
        route = a.rail + ":" + a.provider + ":" + sa.func.coalesce(a.channel, "")
        async with self._db.read() as conn:
            rows = (await conn.execute(
                sa.select(route.label("route"), sa.func.count().label("n"),
                          sa.func.count().filter(a.state.in_(UNSERVED)).label("unserved"))
                .where(a.created_at >= since).group_by(route))).all()
        return {r.route: (r.n, r.unserved) for r in rows}

    async def _attempts_since_recovery(self, now: datetime) -> dict[str, tuple[int, int]]:
        window_start = now - self.settings.success_window
        for key, since in list(self._usable_since.items()):
            if since < window_start:
                del self._usable_since[key]
        if not self._usable_since:
            return {}
        a = payment_attempts.c
        route = a.rail + ":" + a.provider + ":" + sa.func.coalesce(a.channel, "")
        out = {}
        async with self._db.read() as conn:
            for key, since in self._usable_since.items():
                n, unserved = (await conn.execute(
                    sa.select(sa.func.count(), sa.func.count().filter(a.state.in_(UNSERVED)))
                    .where(route == key, a.created_at >= since))).one()
                out[key] = (int(n), int(unserved))
        return out

    async def _confirmation(self, now: datetime) -> tuple[timedelta | None, int]:
        """The longest any live gateway attempt's due status read has waited, and how many reads
        are parked behind open breakers."""
        a = payment_attempts.c
        async with self._db.read() as conn:
            oldest, deferred = (await conn.execute(
                sa.select(sa.func.min(sa.case((a.deferred_on.is_not(None), a.last_checked_at),
                                              else_=a.next_check_at)),
                          sa.func.count().filter(a.deferred_on.is_not(None)))
                .where(a.state.in_(LIVE), a.rail != "manual_transfer",
                       sa.or_(a.deferred_on.is_not(None), a.next_check_at <= now)))).one()
        return (now - oldest if oldest is not None else None), int(deferred)

    # -- storage ----------------------------------------------------------------------------

    async def _ensure_rows(self, conn: AsyncConnection, components: Sequence[Component],
                           now: datetime) -> None:
        known = set((await conn.execute(sa.select(status_components.c.id))).scalars())
        for c in components:
            if c.id in known:
                continue
            inserted = await conn.execute(
                upsert_insert(conn.dialect.name)(status_components).values(
                    id=c.id, status=ComponentStatus.OPERATIONAL.value, since=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["id"]))
            if inserted.rowcount:
                await conn.execute(status_history.insert().values(
                    component_id=c.id, status=ComponentStatus.OPERATIONAL.value, started_at=now))

    async def _record_period(self, conn: AsyncConnection, component_id: str,
                             status: ComponentStatus, now: datetime) -> None:
        h = status_history.c
        await conn.execute(status_history.update().where(
            h.component_id == component_id, h.ended_at.is_(None)).values(ended_at=now))
        await conn.execute(status_history.insert().values(
            component_id=component_id, status=status.value, started_at=now))

    async def _incidents(self, conn: AsyncConnection, components: Sequence[Component],
                         published: Mapping[str, ComponentStatus],
                         changed: Mapping[str, ComponentStatus], now: datetime) -> None:
        i = status_incidents.c
        row = (await conn.execute(sa.select(status_incidents).where(
            i.automatic.is_(True), i.status != "resolved").order_by(i.created_at.desc())
            .limit(1))).first()
        current = None if row is None else model.OpenIncident(
            id=row.id, components=tuple(row.components), impact=row.impact)
        plan = model.plan_incident(current, published, changed)
        names = {c.id: (c.name, c.name_en) for c in components}
        methods = {c.id for c in components if c.routes}
        if plan.open_for:
            incident_id = new_id("inc")
            texts = incident_texts(names, plan.open_for, published, methods)
            await conn.execute(status_incidents.insert().values(
                id=incident_id, name=texts.title, name_en=texts.title_en, status="investigating",
                impact=plan.impact or "minor", automatic=True, components=list(plan.open_for),
                created_at=now, updated_at=now))
            await _add_update(conn, incident_id, "investigating", texts.opened,
                              texts.opened_en, now)
            return
        if current is None:
            return
        values: dict[str, Any] = {}
        if plan.add:
            values["components"] = sorted({*current.components, *plan.add})
        if plan.impact:
            values["impact"] = plan.impact
        members = tuple(values.get("components", current.components))
        texts = incident_texts(names, members, published, methods)
        # A resolving tick says it once: per-component "operational again" notes stamped with the
        # same instant as the resolution would only crowd (and could reorder) the timeline.
        notes = () if plan.resolve else plan.note
        for component_id, status in notes:
            body, body_en = texts.changed(component_id, status)
            hurting = status.severity >= ComponentStatus.DEGRADED.severity
            await _add_update(conn, current.id, "identified" if hurting else "monitoring",
                              body, body_en, now)
        if plan.resolve:
            values.update(status="resolved", resolved_at=now)
            await _add_update(conn, current.id, "resolved", texts.resolved, texts.resolved_en,
                              now)
        elif plan.note:
            values["status"] = "identified"
        if values or plan.note:
            await conn.execute(status_incidents.update().where(i.id == current.id).values(
                updated_at=now, **values))


async def _add_update(conn: AsyncConnection, incident_id: str, status: str, body: str,
                      body_en: str, now: datetime, author: str = "lunas") -> None:
    await conn.execute(status_incident_updates.insert().values(
        id=new_id("upd"), incident_id=incident_id, status=status, body=body, body_en=body_en,
        author=author, created_at=now))
