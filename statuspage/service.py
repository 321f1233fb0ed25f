"""The status page's use cases for the api: the cached snapshot, the customer's order lookup (rate
limited), and what ops post (incidents and their updates, audited)."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from redis.exceptions import RedisError

from orchestrator.domain.clock import Clock, SystemClock
from orchestrator.domain.errors import InvalidRequest, NotFound
from orchestrator.domain.ids import new_id
from orchestrator.domain.order import AttemptState, OrderState, nothing_left_to_pay
from orchestrator.rails.base import Rail
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import iso
from orchestrator.services.payment_failed import PAYABLE
from orchestrator.services.status_reads import LIVE
from orchestrator.store.database import Database
from orchestrator.store.redis_pause import RedisPause
from orchestrator.store.tables import (
    orders,
    payment_attempts,
    status_components,
    status_incident_updates,
    status_incidents,
)
from statuspage.model import Component
from statuspage.snapshot import SnapshotSource

INCIDENT_STATUSES = ("investigating", "identified", "monitoring", "resolved")
IMPACTS = ("none", "minor", "major", "critical")
_CODE = re.compile(r"(?:ORD_)?([0-9A-HJKMNP-TV-Z]{26})")


def catalog_of(router_catalog: Mapping[str, Mapping[Any, Sequence[str]]]
               ) -> dict[str, dict[str, tuple[str, ...]]]:
    """The router's catalog (provider → Rail → channels) with rails as plain strings."""
    return {p: {str(r): tuple(c) for r, c in rails.items()} for p, rails in router_catalog.items()}


@dataclass(frozen=True, kw_only=True)
class LookupLimit:
    per_client: int = 10
    per_order: int = 10
    window: timedelta = timedelta(minutes=10)


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class LookupLimiter:
    """Fixed windows counted in Redis (shared by every replica), or in this process when Redis is
    not configured or does not answer: a lookup is never refused because Redis is down, nor made
    to wait for it (``RedisPause``: after a failure, Redis is left alone for ``redis_pause``)."""

    def __init__(self, redis: aioredis.Redis | None, prefix: str, limit: LookupLimit,
                 *, redis_pause: float = 5.0,
                 on_redis_pause: Callable[[], None] | None = None,
                 clock: Clock | None = None) -> None:
        self._redis, self._prefix, self._limit = redis, prefix, limit
        self._clock = clock or SystemClock()
        self._local: dict[str, tuple[int, int]] = {}
        self._redis_pause = RedisPause("status page lookup limiting", redis_pause,
                                       counted=on_redis_pause)

    async def check(self, client: str, order_code: str) -> None:
        window = int(self._limit.window.total_seconds())
        now = int(self._clock.now().timestamp())
        slot, retry_after = now // window, window - now % window
        for name, key, cap in (("client", client, self._limit.per_client),
                               ("order", order_code, self._limit.per_order)):
            full = f"{self._prefix}statuspage:lookup:{name}:{key}:{slot}"
            if await self._count(full, window, now) > cap:
                raise RateLimited(retry_after)

    async def _count(self, key: str, window: int, now: int) -> int:
        if self._redis is not None and self._redis_pause.may_try:
            try:
                pipe = self._redis.pipeline(transaction=True)
                pipe.incr(key)
                pipe.expire(key, window)
                count, _ = await pipe.execute()
                return int(count)
            except (RedisError, OSError) as exc:
                self._redis_pause.failed(exc)
        count, expires = self._local.get(key, (0, now + window))
        if expires <= now:
            count, expires = 0, now + window
        self._local[key] = (count + 1, expires)
        if len(self._local) > 100_000:  # bounded: forget expired windows
            self._local = {k: v for k, v in self._local.items() if v[1] > now}
        return count + 1


def normalise_phone(raw: str) -> str:
    digits = re.sub(r"\D", "", raw)
    if digits.startswith("62"):
        digits = "0" + digits[2:]
    return digits


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class StatusPage:
    def __init__(self, db: Database, clock: Clock, components: Callable[[], list[Component]],
                 *, redis: aioredis.Redis | None, key_prefix: str, public_url: str,
                 lookup_limit: LookupLimit | None = None,
                 cache_ttl: timedelta = timedelta(seconds=2),
                 on_redis_pause: Callable[[], None] | None = None) -> None:
        self._db, self._clock = db, clock
        self.components = components
        self.snapshots = SnapshotSource(db, components, clock.now, ttl=cache_ttl)
        self.limiter = LookupLimiter(redis, key_prefix, lookup_limit or LookupLimit(),
                                     on_redis_pause=on_redis_pause, clock=clock)
        self.base_url = f"{public_url.rstrip('/')}/status"

    async def lookup(self, code: str, contact: str, client: str) -> dict[str, Any] | None:
        """The order named by ``code`` if ``contact`` is its customer's email or phone; None
        otherwise, the same way whichever was wrong, so the page reveals nothing about other
        customers' orders."""
        normal = code.strip().upper()
        m = _CODE.fullmatch(normal)
        await self.limiter.check(client, m.group(1) if m else normal[:40])
        if m is None or not contact.strip():
            return None
        order_id = f"ord_{m.group(1)}"
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(
                orders.c.id, orders.c.state, orders.c.amount, orders.c.expires_at,
                orders.c.paid_at, orders.c.customer_email, orders.c.customer_phone)
                .where(orders.c.id == order_id))).first()
            if row is None:
                return None
            a = payment_attempts.c
            # The amount a bank transfer must be of (amount + unique code): the mutation is
            # matched on it, so the bare order amount would pay nothing.
            manual = a.rail == Rail.MANUAL_TRANSFER.value
            next_check, payable, to_transfer, by_bank, provider_down = (await conn.execute(
                sa.select(
                    sa.func.min(a.next_check_at),
                    sa.func.count().filter(a.state.in_(PAYABLE)),
                    sa.func.max(a.transfer_amount).filter(
                        manual, a.state == AttemptState.ACTIVE.value),
                    sa.func.count().filter(manual, a.state.in_(LIVE)),
                    sa.func.count().filter(~manual, a.deferred_on.is_not(None)),
                ).where(a.order_id == order_id, a.state.in_((*LIVE, *PAYABLE))))).one()
        given = contact.strip()
        if "@" in given:
            ok = _same(given.lower(), (row.customer_email or "").strip().lower())
        else:
            phone = normalise_phone(given)
            ok = bool(phone) and _same(phone, normalise_phone(row.customer_phone or ""))
        if not ok:
            return None
        show_check = row.state in ("awaiting_payment", "verifying", "captured")
        # Its instruments closed unpaid (a declined charge) and none may yet turn out live:
        # "pay as instructed" would be wrong. Decided as the order API decides it.
        state = "payment_failed" if nothing_left_to_pay(row.state, payable) else row.state
        return {"code": row.id, "state": state, "amount": int(row.amount),
                "transfer_amount": int(to_transfer) if to_transfer is not None
                and state == OrderState.AWAITING_PAYMENT.value else None,
                "expires_at": row.expires_at, "paid_at": row.paid_at,
                "next_check_at": next_check if show_check else None,
                # What a verifying order waits on, as its verification says (order_view): a
                # provider's recovery only while a read of it is deferred (its route down); a
                # bank transfer otherwise waits on the mutation feed, and a gateway payment on
                # nothing (None): the verifier is reading it from its provider now.
                "waiting_on": None if state != OrderState.VERIFYING.value
                else "provider" if provider_down else "bank_feed" if by_bank else None}

    # -- ops --------------------------------------------------------------------------------

    async def component_states(self) -> list[dict[str, Any]]:
        """Per component, what customers see and why: the published status, the candidate
        waiting out its dwell time, and what the last evaluation observed (the raw status and
        its reasons, in machine words). For SREs asking why the page says what it says."""
        async with self._db.read() as conn:
            rows = (await conn.execute(
                sa.select(status_components).order_by(status_components.c.id))).all()
        return [{"id": r.id, "status": r.status, "since": iso(r.since),
                 "candidate": r.candidate, "candidate_since": iso(r.candidate_since),
                 "observed": r.observed, "evaluated_at": iso(r.updated_at)} for r in rows]

    async def open_incident(self, *, name: str, name_en: str | None, status: str, impact: str,
                            components: Sequence[str], body: str, body_en: str | None,
                            actor: str) -> str:
        self._check_status(status)
        if impact not in IMPACTS:
            raise InvalidRequest(f"impact is one of {', '.join(IMPACTS)}", field="impact")
        known = {c.id for c in self.components()}
        unknown = sorted(set(components) - known)
        if unknown:
            raise InvalidRequest(f"unknown components: {', '.join(unknown)}", field="components")
        now = self._clock.now()
        incident_id = new_id("inc")
        async with self._db.transaction() as conn:
            await conn.execute(status_incidents.insert().values(
                id=incident_id, name=name, name_en=name_en, status=status, impact=impact,
                automatic=False, components=list(components), created_at=now, updated_at=now,
                monitoring_at=now if status == "monitoring" else None,
                resolved_at=now if status == "resolved" else None))
            await conn.execute(status_incident_updates.insert().values(
                id=new_id("upd"), incident_id=incident_id, status=status, body=body,
                body_en=body_en, author=actor, created_at=now))
            await record_audit(conn, actor=actor, action="status.incident_opened",
                               subject_type="incident", subject_id=incident_id, reason=body[:2000],
                               details={"name": name, "impact": impact,
                                        "components": list(components)}, now=now)
        self.snapshots.invalidate()
        return incident_id

    async def post_update(self, incident_id: str, *, status: str, body: str,
                          body_en: str | None, actor: str) -> str:
        self._check_status(status)
        now = self._clock.now()
        update_id = new_id("upd")
        i = status_incidents.c
        async with self._db.transaction() as conn:
            row = (await conn.execute(sa.select(i.status).where(i.id == incident_id))).first()
            if row is None:
                raise NotFound(f"no incident {incident_id}")
            values: dict[str, Any] = {"status": status, "updated_at": now}
            if status == "monitoring":
                values["monitoring_at"] = now
            # Reopened (any status after resolved): no longer resolved, so no resolved_at, or
            # the feeds would show an open incident with a resolution time.
            values["resolved_at"] = now if status == "resolved" else None
            await conn.execute(status_incidents.update().where(i.id == incident_id)
                               .values(**values))
            await conn.execute(status_incident_updates.insert().values(
                id=update_id, incident_id=incident_id, status=status, body=body,
                body_en=body_en, author=actor, created_at=now))
            await record_audit(conn, actor=actor, action="status.incident_updated",
                               subject_type="incident", subject_id=incident_id, reason=body[:2000],
                               details={"status": status, "update_id": update_id}, now=now)
        self.snapshots.invalidate()
        return update_id

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in INCIDENT_STATUSES:
            raise InvalidRequest(f"status is one of {', '.join(INCIDENT_STATUSES)}",
                                 field="status")
