"""What the status page says, derived from what Lunas observes: pure functions, no I/O.

A component's *raw* status is derived on every evaluation from its routes' breakers, pauses,
maintenance windows and recent success rate (never hand-set alone). Customers see the *published*
status, which follows the raw one only after it has held for a dwell time (``Hysteresis``), so a
flapping breaker does not flap the page. Scheduled maintenance is published at once: it was
announced ahead of time and is not a flap.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise

from orchestrator.domain.clock import WIB


class ComponentStatus(enum.StrEnum):
    """Atlassian Statuspage's component statuses, so ``components.json`` readers understand us."""

    OPERATIONAL = "operational"
    DEGRADED = "degraded_performance"
    PARTIAL_OUTAGE = "partial_outage"
    MAJOR_OUTAGE = "major_outage"
    MAINTENANCE = "under_maintenance"

    @property
    def severity(self) -> int:
        """Order for "worst of": maintenance is worse than working but better than any outage."""
        return _SEVERITY[self]

    @property
    def impact(self) -> str:
        """Atlassian's incident impact / page indicator for a component in this status."""
        return _IMPACT[self]


_SEVERITY = {ComponentStatus.OPERATIONAL: 0, ComponentStatus.MAINTENANCE: 1,
             ComponentStatus.DEGRADED: 2, ComponentStatus.PARTIAL_OUTAGE: 3,
             ComponentStatus.MAJOR_OUTAGE: 4}
_IMPACT = {ComponentStatus.OPERATIONAL: "none", ComponentStatus.MAINTENANCE: "maintenance",
           ComponentStatus.DEGRADED: "minor", ComponentStatus.PARTIAL_OUTAGE: "major",
           ComponentStatus.MAJOR_OUTAGE: "critical"}
IMPACT_ORDER = ("none", "maintenance", "minor", "major", "critical")


def worst(statuses: Iterable[ComponentStatus]) -> ComponentStatus:
    return max(statuses, key=lambda s: s.severity, default=ComponentStatus.OPERATIONAL)


# -- components --------------------------------------------------------------------------------

INTAKE = "intake"
CONFIRMATION = "confirmation"
MANUAL = "manual_transfer"

_RAIL_NAMES = {"va": ("Virtual Account", "Virtual Account"), "qris": ("QRIS", "QRIS"),
               "ewallet": ("Dompet digital", "E-wallets"),
               MANUAL: ("Transfer bank manual", "Manual bank transfer")}
_CHANNEL_NAMES = {"bca": "BCA", "bni": "BNI", "bri": "BRI", "mandiri": "Mandiri",
                  "permata": "Permata", "gopay": "GoPay", "shopeepay": "ShopeePay", "ovo": "OVO",
                  "dana": "DANA", "linkaja": "LinkAja", "qris": "QRIS"}


@dataclass(frozen=True, kw_only=True)
class Component:
    id: str
    name: str
    """Bahasa Indonesia (the page's default language)."""
    name_en: str
    position: int
    group_id: str | None = None
    routes: tuple[str, ...] = ()
    """Route keys serving this component (channels and leaf rails)."""
    children: tuple[str, ...] = ()
    """Member component ids (rail groups)."""

    @property
    def is_group(self) -> bool:
        return bool(self.children)


def components_for(catalog: Mapping[str, Mapping[str, Sequence[str]]],
                   manual_route: str) -> list[Component]:
    """Every component, in page order, from the router's catalog (provider → rail → channels).

    A rail with one channel (QRIS) is a leaf; a rail with several (VA, e-wallets) is a group of
    channel components, so "BCA VA down" does not read as "every VA down".
    """
    out = [Component(id=INTAKE, name="Penerimaan pesanan", name_en="Order intake", position=0)]
    position = 1
    for rail in ("va", "qris", "ewallet"):
        channels: dict[str, list[str]] = {}
        for provider, rails in sorted(catalog.items()):
            for channel in rails.get(rail, ()):
                channels.setdefault(channel, []).append(f"{rail}:{provider}:{channel}")
        if not channels:
            continue
        name, name_en = _RAIL_NAMES[rail]
        if len(channels) == 1:
            (routes,) = channels.values()
            out.append(Component(id=rail, name=name, name_en=name_en, position=position,
                                 routes=tuple(routes)))
            position += 1
            continue
        ids = tuple(f"{rail}.{c}" for c in channels)
        out.append(Component(id=rail, name=name, name_en=name_en, position=position,
                             children=ids))
        position += 1
        for channel, routes in channels.items():
            label = _CHANNEL_NAMES.get(channel, channel.upper())
            out.append(Component(id=f"{rail}.{channel}", name=label, name_en=label,
                                 position=position, group_id=rail, routes=tuple(routes)))
            position += 1
    name, name_en = _RAIL_NAMES[MANUAL]
    out.append(Component(id=MANUAL, name=name, name_en=name_en, position=position,
                         routes=(manual_route,)))
    out.append(Component(id=CONFIRMATION, name="Konfirmasi pembayaran",
                         name_en="Payment confirmation", position=position + 1))
    return out


# -- observations and derivation ----------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RouteHealth:
    """What Lunas knows about one route at one moment."""

    key: str
    breaker: str = "closed"
    """The breaker's state (``BreakerState`` value); "closed" for routes without one."""
    paused: bool = False
    in_maintenance: bool = False
    attempts: int = 0
    """Payment attempts started on the route in the recent window."""
    failed: int = 0
    """Of those, the ones the provider did not serve (failed, or left unknown)."""

    @property
    def usable(self) -> bool:
        return not (self.paused or self.in_maintenance
                    or self.breaker in ("open", "forced_open"))


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    min_attempts: int = 10
    """Fewer recent attempts than this say nothing about a route's success rate."""
    degraded_below: float = 0.95
    partial_below: float = 0.75
    confirmation_degraded_after: timedelta = timedelta(minutes=10)
    confirmation_partial_after: timedelta = timedelta(minutes=30)


@dataclass(frozen=True, kw_only=True)
class Derived:
    status: ComponentStatus
    reasons: tuple[str, ...] = ()


def derive_routes(routes: Sequence[RouteHealth], t: Thresholds) -> Derived:
    """A channel (or leaf rail) from the routes that serve it.

    Every route unusable: maintenance if any is in a window, else a major outage. Some unusable
    (customers are served by the others, perhaps more slowly): degraded. A usable route still
    probing in half-open, or a success rate below the thresholds, worsens that.
    """
    if not routes:
        return Derived(status=ComponentStatus.OPERATIONAL)
    reasons: list[str] = []
    for r in routes:
        if r.in_maintenance:
            reasons.append(f"{r.key}: maintenance")
        elif r.paused:
            reasons.append(f"{r.key}: paused")
        elif not r.usable:
            reasons.append(f"{r.key}: breaker {r.breaker}")
    usable = [r for r in routes if r.usable]
    if not usable:
        if any(r.in_maintenance for r in routes):
            return Derived(status=ComponentStatus.MAINTENANCE, reasons=tuple(reasons))
        return Derived(status=ComponentStatus.MAJOR_OUTAGE, reasons=tuple(reasons))
    status = ComponentStatus.DEGRADED if len(usable) < len(routes) and any(
        not r.in_maintenance for r in routes if not r.usable) else ComponentStatus.OPERATIONAL
    if all(r.breaker == "half_open" for r in usable):
        reasons.append("recovering: breaker half-open")
        status = worst((status, ComponentStatus.DEGRADED))
    attempts = sum(r.attempts for r in usable)
    if attempts >= t.min_attempts:
        rate = 1 - sum(r.failed for r in usable) / attempts
        if rate < t.partial_below:
            reasons.append(f"success rate {rate:.0%}")
            status = worst((status, ComponentStatus.PARTIAL_OUTAGE))
        elif rate < t.degraded_below:
            reasons.append(f"success rate {rate:.0%}")
            status = worst((status, ComponentStatus.DEGRADED))
    return Derived(status=status, reasons=tuple(reasons))


def derive_group(members: Sequence[ComponentStatus]) -> ComponentStatus:
    """A rail group from its channels: all in maintenance → maintenance; all down → major;
    some down → partial; otherwise the worst of its members."""
    if not members:
        return ComponentStatus.OPERATIONAL
    if all(m is ComponentStatus.MAINTENANCE for m in members):
        return ComponentStatus.MAINTENANCE
    if all(m is ComponentStatus.MAJOR_OUTAGE for m in members):
        return ComponentStatus.MAJOR_OUTAGE
    if any(m is ComponentStatus.MAJOR_OUTAGE for m in members):
        return ComponentStatus.PARTIAL_OUTAGE
    return worst(m for m in members if m is not ComponentStatus.MAINTENANCE)


def derive_confirmation(*, oldest_wait: timedelta | None, deferred: int, feed_stale: bool,
                        t: Thresholds) -> Derived:
    """Payment confirmation: are payments being confirmed as they arrive?

    Status reads parked behind an open breaker, or a bank feed gone quiet, mean payments made now
    are confirmed late (they are not lost: they settle on recovery).
    """
    reasons: list[str] = []
    status = ComponentStatus.OPERATIONAL
    if feed_stale:
        reasons.append("bank mutation feed stale")
        status = ComponentStatus.PARTIAL_OUTAGE
    if deferred:
        reasons.append(f"{deferred} status reads waiting for a provider")
        status = worst((status, ComponentStatus.DEGRADED))
    if oldest_wait is not None and oldest_wait >= t.confirmation_partial_after:
        reasons.append(f"oldest check waiting {int(oldest_wait.total_seconds())} s")
        status = worst((status, ComponentStatus.PARTIAL_OUTAGE))
    elif oldest_wait is not None and oldest_wait >= t.confirmation_degraded_after:
        reasons.append(f"oldest check waiting {int(oldest_wait.total_seconds())} s")
        status = worst((status, ComponentStatus.DEGRADED))
    return Derived(status=status, reasons=tuple(reasons))


def derive_intake(*, rails: Sequence[ComponentStatus], database_ok: bool) -> Derived:
    """Order intake: can a checkout be captured at all? Capture needs only the database (it never
    waits on a provider), and something to pay with; manual transfer is always the last resort."""
    if not database_ok:
        return Derived(status=ComponentStatus.MAJOR_OUTAGE, reasons=("database unreachable",))
    if rails and all(r in (ComponentStatus.MAJOR_OUTAGE, ComponentStatus.MAINTENANCE)
                     for r in rails):
        return Derived(status=ComponentStatus.MAJOR_OUTAGE, reasons=("no payment method works",))
    return Derived(status=ComponentStatus.OPERATIONAL)


# -- hysteresis ---------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Dwell:
    worsen_after: timedelta = timedelta(seconds=60)
    """How long a worse raw status must hold before customers see it."""
    recover_after: timedelta = timedelta(minutes=5)
    """How long a better raw status must hold before the page says it is better."""


@dataclass(frozen=True, kw_only=True)
class Published:
    status: ComponentStatus
    since: datetime
    candidate: ComponentStatus | None = None
    candidate_since: datetime | None = None


def advance(current: Published, raw: ComponentStatus, now: datetime, dwell: Dwell) -> Published:
    """The published status after observing ``raw`` at ``now``.

    A candidate is a raw status on one side of the published one (worse, or better); while raw
    stays on that side the candidate keeps its start time and takes the latest raw value, so a
    rail going degraded → major during one outage is not held back twice.
    """
    if raw is current.status:
        return replace(current, candidate=None, candidate_since=None)
    if raw is ComponentStatus.MAINTENANCE or current.status is ComponentStatus.MAINTENANCE:
        # Scheduled: announced in advance, begins and ends on the clock.
        return Published(status=raw, since=now)
    worse = raw.severity > current.status.severity
    same_side = current.candidate is not None and (
        (current.candidate.severity > current.status.severity) == worse)
    since = current.candidate_since if same_side and current.candidate_since else now
    needed = dwell.worsen_after if worse else dwell.recover_after
    if now - since >= needed:
        return Published(status=raw, since=now)
    return replace(current, candidate=raw, candidate_since=since)


# -- incidents ----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class OpenIncident:
    id: str
    components: tuple[str, ...]
    impact: str


@dataclass(frozen=True, kw_only=True)
class IncidentPlan:
    """What the recorder does about automatic incidents after one evaluation."""

    open_for: tuple[str, ...] = ()
    """Open a new automatic incident for these components."""
    add: tuple[str, ...] = ()
    """Add these components to the open automatic incident."""
    impact: str | None = None
    """The open (or new) incident's impact, when it changed."""
    note: tuple[tuple[str, ComponentStatus], ...] = ()
    """Components whose published status changed while the incident is open (an update each)."""
    resolve: bool = False


def plan_incident(open_incident: OpenIncident | None,
                  published: Mapping[str, ComponentStatus],
                  changed: Mapping[str, ComponentStatus]) -> IncidentPlan:
    """One automatic incident at a time gathers every component that degraded while it was open;
    it resolves when all of them are back (operational or in scheduled maintenance)."""
    hurting = {c for c, s in published.items() if s.severity >= ComponentStatus.DEGRADED.severity}
    if open_incident is None:
        if not hurting:
            return IncidentPlan()
        return IncidentPlan(open_for=tuple(sorted(hurting)),
                            impact=_impact_of(published, hurting))
    members = set(open_incident.components) | hurting
    add = tuple(sorted(hurting - set(open_incident.components)))
    notes = tuple((c, s) for c, s in sorted(changed.items()) if c in members)
    if not hurting:
        return IncidentPlan(note=notes, resolve=True)
    impact = max(_impact_of(published, hurting), open_incident.impact, key=IMPACT_ORDER.index)
    return IncidentPlan(add=add, note=notes,
                        impact=impact if impact != open_incident.impact else None)


def _impact_of(published: Mapping[str, ComponentStatus], ids: Iterable[str]) -> str:
    return worst(published[c] for c in ids).impact


# -- scheduled maintenance ----------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class MaintenanceWindow:
    """An operator's window (``lunas maintenance``) as the page needs it: no ``reason``, which is
    the operator's note for the audit log, not words for the public."""

    id: str
    route_pattern: str
    starts_at: datetime
    ends_at: datetime
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class MaintenanceNotice:
    """One published maintenance: the components customers cannot pay with from ``starts_at``
    to ``ends_at``, and the windows that together take them out."""

    id: str
    components: tuple[str, ...]
    windows: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime
    created_at: datetime


def maintenance_notices(windows: Sequence[MaintenanceWindow], components: Sequence[Component],
                        now: datetime) -> list[MaintenanceNotice]:
    """What customers are told about scheduled maintenance, soonest first.

    A component is out only while every route serving it is in some window, as its status says
    (``derive_routes``): one still served by another provider works as before. The windows need
    not be one: ``va:midtrans:*`` and ``va:xendit:*`` together take out every VA bank for the
    hours they overlap, and customers are told so. Each stretch of time is attributed to the
    windows in force over it; components out over the same stretch by the same windows share a
    notice. A notice of one window over its whole span keeps that window's id (its page link
    is the window's); one made of several windows gets an id of theirs and its start."""
    shared: dict[tuple[datetime, datetime, tuple[str, ...]], list[str]] = {}
    for c in components:
        if not c.routes:
            continue
        mine = [w for w in windows if any(_covers(w, r) for r in c.routes)]
        bounds = sorted({t for w in mine for t in (w.starts_at, w.ends_at)})
        stretches: list[tuple[datetime, datetime, tuple[str, ...]]] = []
        for start, end in pairwise(bounds):
            live = [w for w in mine if w.starts_at <= start and end <= w.ends_at]
            if not all(any(_covers(w, r) for w in live) for r in c.routes):
                continue
            ids = tuple(sorted(w.id for w in live))
            if stretches and stretches[-1][1] == start and stretches[-1][2] == ids:
                stretches[-1] = (stretches[-1][0], end, ids)
            else:
                stretches.append((start, end, ids))
        for stretch in stretches:
            if stretch[1] > now:
                shared.setdefault(stretch, []).append(c.id)
    by_id = {w.id: w for w in windows}
    notices = []
    for (start, end, ids), component_ids in shared.items():
        whole = len(ids) == 1 and (by_id[ids[0]].starts_at, by_id[ids[0]].ends_at) == (start, end)
        notices.append(MaintenanceNotice(
            id=ids[0] if whole else f"{'~'.join(ids)}~{start.astimezone(UTC):%Y%m%dT%H%MZ}",
            components=tuple(component_ids), windows=ids, starts_at=start, ends_at=end,
            created_at=max(by_id[i].created_at for i in ids)))
    return sorted(notices, key=lambda n: (n.starts_at, n.ends_at, n.id))


def _covers(window: MaintenanceWindow, route: str) -> bool:
    return fnmatch.fnmatchcase(route, window.route_pattern)


# -- uptime -------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Period:
    status: ComponentStatus
    start: datetime
    end: datetime | None


@dataclass(frozen=True, kw_only=True)
class DayBar:
    day: date
    """The calendar day in WIB."""
    uptime: float | None
    """Fraction of the day up (None: no record for that day)."""
    worst: ComponentStatus | None
    outage_seconds: dict[str, int] = field(default_factory=dict)


OUTAGE_WEIGHT = {ComponentStatus.MAJOR_OUTAGE: 1.0, ComponentStatus.PARTIAL_OUTAGE: 0.3}
"""Atlassian's weighting: a partial outage counts 30 % as down; degraded and maintenance count
as up."""


def uptime_bars(periods: Sequence[Period], *, now: datetime, days: int = 90) -> list[DayBar]:
    """One bar per WIB day, oldest first, ending today.

    Each period is spread over the days it touches (not each day scanned against every period):
    the page rebuilds this for every component every few seconds on the api's event loop.
    """
    today = now.astimezone(WIB).date()
    first = today - timedelta(days=days - 1)
    window_start = datetime.combine(first, time(), WIB)
    covered = [0.0] * days
    down = [0.0] * days
    seconds: list[dict[str, float]] = [{} for _ in range(days)]
    worst_seen: list[ComponentStatus | None] = [None] * days
    for p in periods:
        lo, hi = max(p.start, window_start), min(p.end or now, now)
        if hi <= lo:
            continue
        index = (lo.astimezone(WIB).date() - first).days
        day_start = datetime.combine(first + timedelta(days=index), time(), WIB)
        while index < days and day_start < hi:
            day_end = day_start + timedelta(days=1)
            span = (min(hi, day_end) - max(lo, day_start)).total_seconds()
            if span > 0:
                covered[index] += span
                down[index] += span * OUTAGE_WEIGHT.get(p.status, 0.0)
                if p.status is not ComponentStatus.OPERATIONAL:
                    seconds[index][p.status.value] = seconds[index].get(p.status.value, 0.0) + span
                seen = worst_seen[index]
                worst_seen[index] = p.status if seen is None else worst((seen, p.status))
            index, day_start = index + 1, day_end
    bars = []
    for i in range(days):
        day = first + timedelta(days=i)
        if covered[i] <= 0:
            bars.append(DayBar(day=day, uptime=None, worst=None))
            continue
        bars.append(DayBar(day=day, uptime=max(0.0, 1 - down[i] / covered[i]),
                           worst=worst_seen[i],
                           outage_seconds={k: int(v) for k, v in seconds[i].items()}))
    return bars


def uptime_over(bars: Sequence[DayBar]) -> float | None:
    known = [b.uptime for b in bars if b.uptime is not None]
    return sum(known) / len(known) if known else None


# -- the page as a whole ------------------------------------------------------------------------

PAGE_DESCRIPTIONS = {
    "none": ("Semua sistem berjalan normal", "All Systems Operational"),
    "maintenance": ("Sedang dalam pemeliharaan", "Service Under Maintenance"),
    "minor": ("Sebagian layanan melambat", "Minor Service Outage"),
    "major": ("Gangguan sebagian sistem", "Partial System Outage"),
    "critical": ("Gangguan besar layanan", "Major Service Outage"),
}


def page_indicator(statuses: Iterable[ComponentStatus]) -> str:
    return worst(statuses).impact
