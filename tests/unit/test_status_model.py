"""How the status page derives what it shows: component status from routes, hysteresis, automatic
incidents and the 90-day uptime bars (statuspage/model.py, pure)."""

from __future__ import annotations

import fnmatch
import random
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

import pytest

from statuspage import model
from statuspage.model import ComponentStatus as S
from statuspage.model import Dwell, Period, Published, RouteHealth, Thresholds

T = Thresholds()
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def route(key: str = "qris:midtrans:qris", **kw: object) -> RouteHealth:
    return RouteHealth(key=key, **kw)  # type: ignore[arg-type]


class TestAChannelFromItsRoutes:
    def test_every_route_working_is_operational(self) -> None:
        assert model.derive_routes([route(), route("qris:xendit:qris")], T).status is S.OPERATIONAL

    def test_one_of_two_providers_down_is_degraded_not_an_outage(self) -> None:
        d = model.derive_routes([route(breaker="open"), route("qris:xendit:qris")], T)
        assert d.status is S.DEGRADED
        assert d.reasons == ("qris:midtrans:qris: breaker open",)

    def test_every_route_down_is_a_major_outage(self) -> None:
        d = model.derive_routes([route(breaker="open"), route("qris:xendit:qris", paused=True)], T)
        assert d.status is S.MAJOR_OUTAGE

    def test_every_route_down_with_one_in_a_window_is_maintenance(self) -> None:
        d = model.derive_routes([route(in_maintenance=True),
                                 route("qris:xendit:qris", breaker="forced_open")], T)
        assert d.status is S.MAINTENANCE

    def test_a_provider_in_maintenance_while_another_serves_changes_nothing(self) -> None:
        d = model.derive_routes([route(in_maintenance=True), route("qris:xendit:qris")], T)
        assert d.status is S.OPERATIONAL

    def test_a_half_open_breaker_on_the_only_route_is_degraded(self) -> None:
        assert model.derive_routes([route(breaker="half_open")], T).status is S.DEGRADED

    @pytest.mark.parametrize(("attempts", "failed", "status"), [
        (100, 4, S.OPERATIONAL), (100, 6, S.DEGRADED), (100, 26, S.PARTIAL_OUTAGE),
        (9, 9, S.OPERATIONAL),  # too few attempts to say anything
    ])
    def test_the_recent_success_rate_worsens_it(self, attempts: int, failed: int,
                                                status: S) -> None:
        d = model.derive_routes([route(attempts=attempts, failed=failed)], T)
        assert d.status is status


class TestARailGroup:
    def test_one_channel_down_is_a_partial_outage(self) -> None:
        assert model.derive_group([S.MAJOR_OUTAGE, S.OPERATIONAL]) is S.PARTIAL_OUTAGE

    def test_every_channel_down_is_a_major_outage(self) -> None:
        assert model.derive_group([S.MAJOR_OUTAGE, S.MAJOR_OUTAGE]) is S.MAJOR_OUTAGE

    def test_maintenance_of_one_channel_leaves_the_group_operational(self) -> None:
        assert model.derive_group([S.MAINTENANCE, S.OPERATIONAL]) is S.OPERATIONAL
        assert model.derive_group([S.MAINTENANCE, S.MAINTENANCE]) is S.MAINTENANCE


class TestConfirmationAndIntake:
    def test_a_stale_feed_is_a_partial_outage_of_confirmation(self) -> None:
        d = model.derive_confirmation(oldest_wait=None, deferred=0, feed_stale=True, t=T)
        assert d.status is S.PARTIAL_OUTAGE

    def test_reads_parked_behind_a_breaker_degrade_confirmation(self) -> None:
        d = model.derive_confirmation(oldest_wait=timedelta(minutes=1), deferred=3,
                                      feed_stale=False, t=T)
        assert d.status is S.DEGRADED

    def test_intake_is_down_only_when_nothing_can_be_paid(self) -> None:
        assert model.derive_intake(rails=[S.MAJOR_OUTAGE, S.OPERATIONAL],
                                   database_ok=True).status is S.OPERATIONAL
        assert model.derive_intake(rails=[S.MAJOR_OUTAGE, S.MAINTENANCE],
                                   database_ok=True).status is S.MAJOR_OUTAGE
        assert model.derive_intake(rails=[], database_ok=False).status is S.MAJOR_OUTAGE


class TestHysteresis:
    dwell = Dwell(worsen_after=timedelta(seconds=60), recover_after=timedelta(minutes=5))

    def run(self, raws: list[tuple[int, S]]) -> list[S]:
        current = Published(status=S.OPERATIONAL, since=NOW)
        out = []
        for seconds, raw in raws:
            current = model.advance(current, raw, NOW + timedelta(seconds=seconds), self.dwell)
            out.append(current.status)
        return out

    def test_a_flap_shorter_than_the_dwell_never_reaches_the_page(self) -> None:
        flaps = [(t, S.DEGRADED if (t // 30) % 2 == 0 else S.OPERATIONAL)
                 for t in range(0, 600, 15)]
        assert set(self.run(flaps)) == {S.OPERATIONAL}

    def test_a_lasting_outage_is_shown_after_the_dwell(self) -> None:
        assert self.run([(0, S.DEGRADED), (59, S.DEGRADED), (60, S.DEGRADED)]) == [
            S.OPERATIONAL, S.OPERATIONAL, S.DEGRADED]

    def test_worsening_within_one_outage_is_not_held_back_twice(self) -> None:
        assert self.run([(0, S.DEGRADED), (30, S.MAJOR_OUTAGE), (60, S.MAJOR_OUTAGE)])[-1] \
            is S.MAJOR_OUTAGE

    def test_recovery_waits_longer_than_worsening(self) -> None:
        seen = self.run([(0, S.MAJOR_OUTAGE), (60, S.MAJOR_OUTAGE), (70, S.OPERATIONAL),
                         (300, S.OPERATIONAL), (370, S.OPERATIONAL)])
        assert seen == [S.OPERATIONAL, S.MAJOR_OUTAGE, S.MAJOR_OUTAGE, S.MAJOR_OUTAGE,
                        S.OPERATIONAL]

    def test_maintenance_begins_and_ends_on_the_clock(self) -> None:
        assert self.run([(0, S.MAINTENANCE), (1, S.OPERATIONAL)]) == [S.MAINTENANCE,
                                                                       S.OPERATIONAL]


class TestAutomaticIncidents:
    def test_a_degraded_component_opens_an_incident(self) -> None:
        plan = model.plan_incident(None, {"qris": S.DEGRADED, "va": S.OPERATIONAL},
                                   {"qris": S.DEGRADED})
        assert plan.open_for == ("qris",) and plan.impact == "minor"

    def test_maintenance_opens_none(self) -> None:
        assert model.plan_incident(None, {"qris": S.MAINTENANCE}, {}).open_for == ()

    def test_a_second_component_joins_the_open_incident_and_raises_its_impact(self) -> None:
        open_ = model.OpenIncident(id="inc_1", components=("qris",), impact="minor")
        plan = model.plan_incident(open_, {"qris": S.DEGRADED, "va.bca": S.MAJOR_OUTAGE},
                                   {"va.bca": S.MAJOR_OUTAGE})
        assert plan.add == ("va.bca",) and plan.impact == "critical" and not plan.resolve

    def test_it_resolves_when_every_member_is_back(self) -> None:
        open_ = model.OpenIncident(id="inc_1", components=("qris",), impact="minor")
        plan = model.plan_incident(open_, {"qris": S.OPERATIONAL}, {"qris": S.OPERATIONAL})
        assert plan.resolve and plan.note == (("qris", S.OPERATIONAL),)


class TestScheduledMaintenance:
    """What customers are told ahead of and during the operators' maintenance windows."""

    COMPONENTS = model.components_for(
        {"midtrans": {"va": ("bca", "permata"), "ewallet": ("gopay", "shopeepay")},
         "xendit": {"va": ("bca",), "ewallet": ("ovo",)}}, "manual_transfer:bank:bank")

    @staticmethod
    def window(id_: str, pattern: str, starts_in: int, ends_in: int) -> model.MaintenanceWindow:
        return model.MaintenanceWindow(
            id=id_, route_pattern=pattern, starts_at=NOW + timedelta(hours=starts_in),
            ends_at=NOW + timedelta(hours=ends_in), created_at=NOW - timedelta(days=1))

    def notices(self, *windows: model.MaintenanceWindow, now: datetime = NOW
                ) -> list[tuple[str, tuple[str, ...], int, int]]:
        return [(n.id, n.components, int((n.starts_at - NOW) / timedelta(hours=1)),
                 int((n.ends_at - NOW) / timedelta(hours=1)))
                for n in model.maintenance_notices(windows, self.COMPONENTS, now)]

    def test_a_window_names_only_what_no_other_provider_serves(self) -> None:
        # BCA VA is served by Xendit too: customers can still pay with it.
        assert self.notices(self.window("mnt_1", "*:midtrans:*", 1, 3)) == [
            ("mnt_1", ("va.permata", "ewallet.gopay", "ewallet.shopeepay"), 1, 3)]

    def test_two_windows_together_take_out_what_neither_does_alone(self) -> None:
        midtrans = self.window("mnt_m", "va:midtrans:*", 1, 4)
        xendit = self.window("mnt_x", "va:xendit:*", 2, 5)
        assert self.notices(midtrans, xendit) == [
            ("mnt_m", ("va.permata",), 1, 4),
            ("mnt_m~mnt_x~20261128T1200Z", ("va.bca",), 2, 4)]  # only while both run

    def test_windows_that_never_overlap_take_nothing_out_together(self) -> None:
        assert self.notices(self.window("mnt_m", "va:midtrans:bca", 1, 2),
                            self.window("mnt_x", "va:xendit:bca", 2, 3)) == []

    def test_back_to_back_windows_are_each_their_own_notice(self) -> None:
        assert self.notices(self.window("mnt_1", "ewallet:midtrans:gopay", 1, 2),
                            self.window("mnt_2", "ewallet:midtrans:gopay", 2, 3)) == [
            ("mnt_1", ("ewallet.gopay",), 1, 2), ("mnt_2", ("ewallet.gopay",), 2, 3)]

    def test_an_overlap_already_over_is_not_shown(self) -> None:
        midtrans = self.window("mnt_m", "va:midtrans:bca", -3, 2)
        xendit = self.window("mnt_x", "va:xendit:bca", -2, -1)
        assert self.notices(midtrans, xendit) == []

    def test_the_notice_agrees_with_the_component_status_at_every_hour(self) -> None:
        windows = [self.window("mnt_a", "va:*:bca", 0, 2),
                   self.window("mnt_b", "*:midtrans:*", 1, 4),
                   self.window("mnt_c", "*:xendit:*", 3, 6),
                   self.window("mnt_d", "ewallet:*", 5, 7)]
        notices = model.maintenance_notices(windows, self.COMPONENTS, NOW - timedelta(hours=1))
        for half_hours in range(-1, 16):
            at = NOW + timedelta(minutes=30 * half_hours)
            for c in self.COMPONENTS:
                if not c.routes:
                    continue
                status = model.derive_routes([route(r, in_maintenance=any(
                    w.starts_at <= at < w.ends_at and fnmatch.fnmatchcase(r, w.route_pattern)
                    for w in windows)) for r in c.routes], T).status
                noticed = any(c.id in n.components and n.starts_at <= at < n.ends_at
                              for n in notices)
                assert noticed == (status is S.MAINTENANCE), (c.id, half_hours)


class TestUptimeBars:
    def test_a_day_with_an_hour_of_major_outage(self) -> None:
        day = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)  # 28 Nov 00:00 WIB
        now = day + timedelta(days=1)
        periods = [Period(status=S.OPERATIONAL, start=day, end=day + timedelta(hours=5)),
                   Period(status=S.MAJOR_OUTAGE, start=day + timedelta(hours=5),
                          end=day + timedelta(hours=6)),
                   Period(status=S.OPERATIONAL, start=day + timedelta(hours=6), end=None)]
        bars = model.uptime_bars(periods, now=now, days=3)
        assert [b.day.isoformat() for b in bars] == ["2026-11-27", "2026-11-28", "2026-11-29"]
        assert bars[0].uptime is None  # before the record began: no data, not 100 %
        assert bars[1].uptime == pytest.approx(23 / 24)
        assert bars[1].worst is S.MAJOR_OUTAGE
        assert bars[1].outage_seconds == {"major_outage": 3600}

    def test_a_partial_outage_counts_thirty_percent(self) -> None:
        start = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
        bars = model.uptime_bars([Period(status=S.PARTIAL_OUTAGE, start=start, end=None)],
                                 now=start + timedelta(hours=10), days=1)
        assert bars[0].uptime == pytest.approx(0.7)

    def test_bars_agree_with_scanning_every_day_against_every_period(self) -> None:
        rng = random.Random(7)
        now = datetime(2026, 11, 29, 3, 17, tzinfo=UTC)
        for _ in range(50):
            periods, t = [], now - timedelta(days=rng.uniform(1, 120))
            while t < now:
                end = t + timedelta(hours=rng.expovariate(1 / 30))
                periods.append(Period(status=rng.choice(list(S)), start=t,
                                      end=None if end >= now else end))
                t = end
            assert model.uptime_bars(periods, now=now, days=90) == _bars_by_scanning(periods, now)


def _bars_by_scanning(periods: list[Period], now: datetime) -> list[model.DayBar]:
    """The definition, spelled out: each WIB day against each period."""
    today = now.astimezone(model.WIB).date()
    bars = []
    for i in range(90):
        day = today - timedelta(days=89 - i)
        start = datetime.combine(day, dtime(), model.WIB)
        end = min(start + timedelta(days=1), now)
        covered = down = 0.0
        seconds: dict[str, float] = {}
        seen: S | None = None
        for p in periods:
            span = (min(p.end or now, end) - max(p.start, start)).total_seconds()
            if span <= 0:
                continue
            covered += span
            down += span * model.OUTAGE_WEIGHT.get(p.status, 0.0)
            if p.status is not S.OPERATIONAL:
                seconds[p.status.value] = seconds.get(p.status.value, 0.0) + span
            seen = p.status if seen is None else model.worst((seen, p.status))
        bars.append(model.DayBar(day=day, uptime=None, worst=None) if covered <= 0 else
                    model.DayBar(day=day, uptime=max(0.0, 1 - down / covered), worst=seen,
                                 outage_seconds={k: int(v) for k, v in seconds.items()}))
    return bars


def test_components_follow_the_router_catalog() -> None:
    catalog = {"midtrans": {"va": ("bca",), "qris": ("qris",), "ewallet": ("gopay",)},
               "xendit": {"va": ("bca", "bni"), "qris": ("qris",)}}
    comps = {c.id: c for c in model.components_for(catalog, "manual_transfer:bank:bank")}
    assert list(comps) == ["intake", "va", "va.bca", "va.bni", "qris", "ewallet",
                           "manual_transfer", "confirmation"]
    assert comps["va"].children == ("va.bca", "va.bni")
    assert comps["va.bca"].routes == ("va:midtrans:bca", "va:xendit:bca")
    assert comps["qris"].routes == ("qris:midtrans:qris", "qris:xendit:qris")
    assert comps["ewallet"].routes == ("ewallet:midtrans:gopay",)  # one channel: a leaf
