"""The actions and probes our Chaos Toolkit experiments call (``"type": "python"`` providers).

Chaos Toolkit runs them one by one on the main thread; the stack they act on (simulators, proxies,
load, throwaway servers) lives on the game day's event loop in another thread (runner.py). Each
function hands its work to that loop and waits for it. A probe that finds what it was looking for
returns a value its tolerance accepts; one that cannot raises, which Chaos Toolkit records as a
failed activity and the runner reports as a failed experiment.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from chaos.gameday.load import Load, LoadSettings
from chaos.gameday.stack import Stack
from chaos.invariants import RulesReport, check_rules_of_state
from chaos.sim.midtrans import sign
from orchestrator.domain.clock import WIB
from orchestrator.gameday import CRASH_EXIT_CODE
from orchestrator.tls import default_trust

T = TypeVar("T")


@dataclass
class Session:
    """What one experiment's activities share: the stack, its loop, the load, what was seen."""

    loop: asyncio.AbstractEventLoop
    stack: Stack
    load: Load | None = None
    faults: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    rules: RulesReport | None = None
    review_reasons: dict[str, int] = field(default_factory=dict)
    reversed_orders: set[str] = field(default_factory=set)
    contradicted: dict[str, str] = field(default_factory=dict)
    """Paid attempt id -> order id, of payments a provider was made to deny."""


_session: Session | None = None


def bind(session: Session | None) -> None:
    global _session
    _session = session


def _s() -> Session:
    if _session is None:
        raise RuntimeError("no game day is running: start experiments with `lunas chaos run`")
    return _session


def _on_loop(work: Coroutine[Any, Any, T], timeout: float = 600) -> T:
    return asyncio.run_coroutine_threadsafe(work, _s().loop).result(timeout)


def _fault(text: str) -> None:
    _s().faults.append(f"t+{time.monotonic() - _s().stack.prometheus.log.started:.0f}s {text}")


async def _states(stack: Stack, order_ids: set[str]) -> dict[str, str]:
    import sqlalchemy as sa

    from orchestrator.store.tables import orders

    assert stack.db is not None
    ids = sorted(order_ids)
    found: dict[str, str] = {}
    async with stack.db.read() as conn:
        for i in range(0, len(ids), 5_000):
            rows = await conn.execute(sa.select(orders.c.id, orders.c.state)
                                      .where(orders.c.id.in_(ids[i:i + 5_000])))
            found.update({r.id: r.state for r in rows})
    return found


async def _review_reasons(stack: Stack) -> dict[str, int]:
    import sqlalchemy as sa

    from orchestrator.store.tables import orders

    assert stack.db is not None
    async with stack.db.read() as conn:
        rows = await conn.execute(sa.select(orders.c.review_reason, sa.func.count())
                                  .where(orders.c.state == "needs_review")
                                  .group_by(orders.c.review_reason))
        return {str(reason): int(n) for reason, n in rows}


def _saw(text: str) -> None:
    _s().observations.append(text)


# --------------------------------------------------------------------------------------- load


def start_load(**settings: Any) -> str:
    s = _s()

    async def go() -> None:
        s.load = Load(s.stack, LoadSettings.from_json(settings))
        s.load.start()

    _on_loop(go())
    return f"load started: {json.dumps(settings)}"


def stop_load() -> str:
    s = _s()
    if s.load is None:
        return "no load"
    _on_loop(s.load.stop())
    return s.load.report.line()


def run_for(seconds: float) -> str:
    """Let the load run (the fault in force) for ``seconds``."""
    time.sleep(seconds)
    return f"ran {seconds} s"


# --------------------------------------------------------------------------------- providers


def provider_fault(provider: str, kind: str, **fault: Any) -> str:
    """A fault in a simulator's fault book (chaos/sim/faults.py): down, error_rate, slow, ..."""
    url = f"{_s().stack.provider_control_url(provider)}/faults"
    r = httpx.post(url, json={"kind": kind, **fault}, timeout=5)
    r.raise_for_status()
    _fault(f"{provider}: {kind} {json.dumps(fault) if fault else ''}".strip())
    return r.text


UNREADABLE_LISTINGS = (
    {"amount": "1.500.000,00 IDR"},             # a locale's amount, not Moota's
    {"mutation_id": None, "token": None},       # no id at all
    {"date": "29/11/2026 10:00", "type": "K"},  # another date form, an unknown direction
)


def feed_lists_unreadable_items(count: int) -> str:
    """The Moota feed lists ``count`` credits malformed (one of ``UNREADABLE_LISTINGS`` each),
    to an account no order pays into: Lunas must set them aside and keep reading the rest."""
    url = f"{_s().stack.provider_control_url('moota')}/mutations"
    for n in range(count):
        r = httpx.post(url, json={
            "account_number": "7770001112", "amount": 1_500_000 + n, "type": "CR",
            "description": "SETORAN TUNAI", "listed_as": UNREADABLE_LISTINGS[n % 3]}, timeout=5)
        r.raise_for_status()
    _fault(f"moota: lists {count} unreadable items")
    return f"{count} unreadable items listed"


def _unreadable_open() -> list[dict[str, Any]]:
    s = _s()
    r = httpx.get(f"{s.stack.api_url}/v1/reconciliation/unreadable",
                  headers={"Authorization": f"Bearer {s.stack.ops_token}"}, timeout=5)
    r.raise_for_status()
    return list(r.json()["data"])


def unreadable_items_set_aside(count: int, within_s: float = 30) -> str:
    """The ops API lists ``count`` open unreadable items, each once, and the feed keeps moving:
    every readable transfer made so far is stored within ``within_s``."""
    s = _s()
    made = [m["mutation_id"] for m in list(s.stack.moota.mutations)]
    deadline = time.monotonic() + within_s
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = _unreadable_open()
        if len(items) >= count:
            break
        time.sleep(1)
    if len(items) != count:
        raise AssertionError(f"{len(items)} unreadable items open, expected {count}: "
                             f"{[i['problem'] for i in items]}")
    _saw(f"{count} unreadable items set aside: {sorted({i['problem'][:40] for i in items})}")
    unread = _on_loop(_transfers_lunas_has_not_read(s.stack, made))
    while unread and time.monotonic() < deadline:
        time.sleep(1)
        unread = _on_loop(_transfers_lunas_has_not_read(s.stack, made))
    if unread:
        raise AssertionError(f"the feed stalled: {unread} of {len(made)} transfers not stored")
    _saw(f"the feed kept moving: all {len(made)} transfers made so far read or set aside")
    return f"{count} set aside"


def people_close_unreadable_items() -> str:
    """Finance deals with each item's money and closes it (audited)."""
    s = _s()
    items = _unreadable_open()
    for item in items:
        httpx.post(f"{s.stack.api_url}/v1/reconciliation/unreadable/{item['id']}/handled",
                   json={"note": "game day: a cash deposit, no order"},
                   headers={"Authorization": f"Bearer {s.stack.ops_token}"},
                   timeout=5).raise_for_status()
    _saw(f"{len(items)} unreadable items closed by a person")
    return f"closed {len(items)}"


async def _paid_by_feed(stack: Stack, count: int) -> list[tuple[str, int, str]]:
    """(account, amount, order id) of ``count`` credits from the Moota feed that paid an order."""
    import sqlalchemy as sa

    from orchestrator.store.tables import mutations

    assert stack.db is not None
    m = mutations.c
    async with stack.db.read() as conn:
        rows = await conn.execute(sa.select(m.account_number, m.amount, m.order_id).where(
            m.direction == "CR", m.match_state == "matched", m.source == "feed")
            .order_by(m.posted_at.desc()).limit(count))
        return [(r.account_number, int(r.amount), str(r.order_id)) for r in rows]


def bank_reverses_payments(count: int) -> str:
    """The bank takes back ``count`` transfers that paid orders: a debit of each one's amount on
    its account, as the Moota feed will list it (KOREKSI)."""
    s = _s()
    paid = _on_loop(_paid_by_feed(s.stack, count))
    if len(paid) < count:
        raise AssertionError(f"only {len(paid)} orders paid through the feed to reverse")
    stamp = s.stack.now().astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S")
    for account, amount, _ in paid:
        httpx.post(f"{s.stack.provider_control_url('moota')}/mutations", json={
            "account_number": account, "amount": amount, "type": "DB", "date": stamp,
            "description": f"KOREKSI TRSF CR {amount}.00"}, timeout=5).raise_for_status()
    s.reversed_orders = {order_id for _, _, order_id in paid}
    _fault(f"bank: reverses {count} transfers that paid orders")
    return f"{count} reversed"


async def _reversal_cases(stack: Stack, order_ids: set[str]) -> dict[str, tuple[str, str]]:
    """Per order: (its state, the state of its possible-reversal case's merchant event)."""
    import sqlalchemy as sa

    from orchestrator.store.tables import orders, outbox, review_cases

    assert stack.db is not None
    async with stack.db.read() as conn:
        cased = {r.order_id: r.state for r in await conn.execute(
            sa.select(review_cases.c.order_id, orders.c.state)
            .join(orders, orders.c.id == review_cases.c.order_id)
            .where(review_cases.c.reason == "possible_reversal",
                   review_cases.c.order_id.in_(sorted(order_ids))))}
        told = {r.aggregate_id: r.status for r in await conn.execute(
            sa.select(outbox.c.aggregate_id, outbox.c.status).where(
                outbox.c.event_type == "review_case.opened",
                outbox.c.aggregate_id.in_(sorted(order_ids))))}
    return {o: (state, told.get(o, "none")) for o, state in cased.items()}


def reversals_reach_people_and_merchants(within_s: float = 60) -> str:
    """Every reversed order has a possible-reversal case, still shows paid, and its merchant
    got ``review_case.opened`` (the outbox event delivered)."""
    s = _s()
    wanted = s.reversed_orders
    deadline = time.monotonic() + within_s
    seen: dict[str, tuple[str, str]] = {}
    while time.monotonic() < deadline:
        seen = _on_loop(_reversal_cases(s.stack, wanted))
        if set(seen) == wanted and all(told == "done" for _, told in seen.values()):
            break
        time.sleep(1)
    if set(seen) != wanted or any(told != "done" for _, told in seen.values()):
        raise AssertionError(f"reversed orders without a told case: {sorted(wanted - set(seen))}"
                             f"; seen {seen}")
    moved = {o: state for o, (state, _) in seen.items() if state != "paid"}
    if moved:
        raise AssertionError(f"a possible reversal moved orders: {moved}")
    _saw(f"{len(wanted)} possible reversals: a case each, orders still paid, merchants told")
    return "ok"


async def _paid_and_still_to_read(stack: Stack, provider: str, count: int
                                  ) -> list[tuple[str, str]]:
    """(attempt id, order id) of ``count`` attempts paid at ``provider`` whose first read after
    the payment (``attempt.settled_read``) is still to come and not being made right now (a
    read in flight would see the payment before Midtrans is told otherwise, and the next is a
    week away); the first due, so they are read first once the clock moves past them, ahead of
    the reads of every payment made since."""
    import sqlalchemy as sa

    from orchestrator.store.tables import outbox, payment_attempts

    assert stack.db is not None
    a, o = payment_attempts.c, outbox.c
    async with stack.db.read() as conn:
        rows = await conn.execute(
            sa.select(a.id, a.order_id).join(outbox, sa.and_(
                o.aggregate_id == a.id, o.event_type == "attempt.settled_read",
                o.status == "pending", o.lease_owner.is_(None)))
            .where(a.state == "paid", a.provider == provider)
            .group_by(a.id, a.order_id).order_by(sa.func.min(o.available_at), a.id)
            .limit(count))
        return [(str(r.id), str(r.order_id)) for r in rows]


def midtrans_contradicts_payments(count: int, transaction_status: str = "expire",
                                  status_code: str = "407") -> str:
    """Midtrans now answers the status of ``count`` payments it confirmed (settled, the orders
    paid) as ``transaction_status`` (``expire``: 407, as it answers an expired charge), and says
    nothing else: no notification. Only a read of the paid attempt can find it."""
    s = _s()
    paid = _on_loop(_paid_and_still_to_read(s.stack, "midtrans", count))
    if len(paid) < count:
        raise AssertionError(f"only {len(paid)} Midtrans payments with a read to come")
    for attempt_id, _ in paid:
        httpx.post(f"{s.stack.provider_control_url('midtrans')}/answer", json={
            "order_id": attempt_id, "fields": {"transaction_status": transaction_status,
                                               "status_code": status_code}},
                   timeout=5).raise_for_status()
    s.contradicted = dict(paid)
    _fault(f"midtrans: says {transaction_status} for {count} payments it confirmed")
    return f"{count} contradicted"


async def _settled_read_notes(stack: Stack) -> dict[str, tuple[str, str, str]]:
    """Per paid attempt a settled read noted as contradicting: (its note, its state, its
    order's state)."""
    import sqlalchemy as sa

    from orchestrator.store.tables import orders, payment_attempts

    assert stack.db is not None
    a = payment_attempts.c
    async with stack.db.read() as conn:
        rows = await conn.execute(sa.select(a.id, a.last_check, a.state, orders.c.state.label(
            "order_state")).join(orders, orders.c.id == a.order_id).where(
            a.last_check.like("settled read %for a paid attempt: nothing moved%")))
        return {str(r.id): (str(r.last_check), r.state, r.order_state) for r in rows}


async def _settled_reads_of(stack: Stack, attempt_ids: list[str]) -> dict[str, Any]:
    """What became of these attempts' reads: for a failed probe to say why."""
    import sqlalchemy as sa

    from orchestrator.store.tables import outbox, payment_attempts

    assert stack.db is not None
    o = outbox.c
    async with stack.db.read() as conn:
        jobs = (await conn.execute(sa.select(
            o.aggregate_id, o.status, o.available_at, o.attempts, o.last_error).where(
            o.aggregate_id.in_(attempt_ids), o.event_type == "attempt.settled_read"))).all()
        checks = dict((await conn.execute(sa.select(
            payment_attempts.c.id, payment_attempts.c.last_check).where(
            payment_attempts.c.id.in_(attempt_ids)))).all())
    return {i: {"last_check": checks.get(i), "jobs": [
        (j.status, str(j.available_at), j.attempts, j.last_error)
        for j in jobs if j.aggregate_id == i]} for i in attempt_ids}


async def _cases_of(stack: Stack, order_ids: set[str]) -> int:
    import sqlalchemy as sa

    from orchestrator.store.tables import review_cases

    assert stack.db is not None
    async with stack.db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(review_cases)
                                       .where(review_cases.c.order_id.in_(sorted(order_ids)))
                                       )).scalar_one())


def contradictions_noted_and_nothing_moved(within_s: float = 60) -> str:
    """Every contradicted payment's read noted it on the attempt, and nothing else did; each
    attempt and its order are still paid, and no case opened (nothing says money went back)."""
    s = _s()
    wanted = s.contradicted
    deadline = time.monotonic() + within_s
    seen: dict[str, tuple[str, str, str]] = {}
    while time.monotonic() < deadline:
        seen = _on_loop(_settled_read_notes(s.stack))
        if set(wanted) <= set(seen):
            break
        time.sleep(1)
    if set(seen) != set(wanted):
        missing = _on_loop(_settled_reads_of(s.stack, sorted(set(wanted) - set(seen))))
        raise AssertionError(f"contradicting reads: expected {sorted(wanted)}, noted {seen}; "
                             f"the others' reads: {missing}")
    moved = {i: (state, order) for i, (_, state, order) in seen.items()
             if (state, order) != ("paid", "paid")}
    if moved:
        raise AssertionError(f"a contradicting read moved attempts or orders: {moved}")
    cases = _on_loop(_cases_of(s.stack, set(wanted.values())))
    if cases:
        raise AssertionError(f"{cases} review cases opened for contradicted payments")
    _saw(f"{len(wanted)} payments Midtrans now denies: noted on each attempt, attempts and "
         "orders still paid, no case")
    return "ok"


def people_resolve_cases(reason: str, action: str) -> str:
    """Finance resolves every open case of ``reason`` through the API (audited)."""
    s = _s()
    headers = {"Authorization": f"Bearer {s.stack.ops_token}"}
    cases = httpx.get(f"{s.stack.api_url}/v1/reviews", params={"status": "open", "limit": 1000},
                      headers=headers, timeout=10).json()["data"]
    mine = [c for c in cases if c["reason"] == reason]
    for case in mine:
        httpx.post(f"{s.stack.api_url}/v1/reviews/{case['id']}/resolve", headers=headers,
                   json={"action": action, "note": f"game day: bank confirmed, {action}"},
                   timeout=10).raise_for_status()
    _saw(f"{len(mine)} {reason} cases resolved ({action})")
    return f"resolved {len(mine)}"


def clear_provider_faults(provider: str | None = None) -> str:
    names = [provider] if provider else ["midtrans", "xendit", "moota"]
    for name in names:
        httpx.delete(f"{_s().stack.provider_control_url(name)}/faults", timeout=5
                     ).raise_for_status()
    _fault(f"cleared faults of {', '.join(names)}")
    return "cleared"


def configure_midtrans(**config: Any) -> str:
    r = httpx.post(f"{_s().stack.provider_control_url('midtrans')}/config", json=config,
                   timeout=5)
    r.raise_for_status()
    _fault(f"midtrans config {json.dumps(config)}")
    return r.text


def flap_provider(provider: str, cycles: int, down_s: float, up_s: float) -> str:
    """The provider goes down and comes back ``cycles`` times."""
    for _ in range(cycles):
        provider_fault(provider, "down")
        time.sleep(down_s)
        clear_provider_faults(provider)
        time.sleep(up_s)
    return f"{provider} flapped {cycles} times"


def proxy_latency(provider: str, ms: float, jitter_ms: float = 0.0) -> str:
    proxy = _s().stack.proxies[provider]
    _s().loop.call_soon_threadsafe(proxy.latency, ms, jitter_ms)
    _fault(f"{provider} connection latency {ms} ms (+{jitter_ms} jitter)")
    return "latency set"


def clear_proxy_faults() -> str:
    for proxy in _s().stack.proxies.values():
        _s().loop.call_soon_threadsafe(proxy.clear)
    return "proxies clear"


# ----------------------------------------------------------------------------- ops overrides


def ops_breaker(route: str, action: str) -> str:
    """An SRE forces ``route``'s breaker (``force_open``, ``force_closed``) or releases it,
    through the ops API as a person would (audited, with a reason)."""
    s = _s()
    r = httpx.post(f"{s.stack.api_url}/v1/ops/routes/{route}/breaker",
                   json={"action": action, "reason": f"game day: {action}"},
                   headers={"Authorization": f"Bearer {s.stack.ops_token}"}, timeout=10)
    r.raise_for_status()
    _fault(f"ops: breaker of {route} {action}")
    return f"{route} {r.json()['breaker']}"


def ops_pause(route: str, paused: bool) -> str:
    """An SRE pauses ``route`` (or resumes it) through the ops API (audited, with a reason)."""
    s = _s()
    verb = "pause" if paused else "resume"
    httpx.post(f"{s.stack.api_url}/v1/ops/routes/{route}/{verb}",
               json={"reason": f"game day: {verb}"},
               headers={"Authorization": f"Bearer {s.stack.ops_token}"},
               timeout=10).raise_for_status()
    _fault(f"ops: {route} {verb}d")
    return f"{route} {verb}d"


def webhook_storm(duplicates: int = 3, forged: int = 20) -> str:
    """Every Midtrans payment's notification again ``duplicates`` times, a ``pending`` for each
    after its settlement (out of order), and ``forged`` settlements for unpaid orders with a wrong
    signature; all straight at Lunas's webhook endpoint, as a misbehaving provider would."""
    s = _s()

    async def storm() -> dict[str, int]:
        sim = s.stack.midtrans
        url = f"{s.stack.api_url}/v1/webhooks/midtrans"
        sent: dict[str, int] = {"duplicate": 0, "out_of_order": 0, "forged": 0}
        paid = list(s.load.paid_midtrans) if s.load else []
        async with httpx.AsyncClient(verify=default_trust(), timeout=5) as client:
            async def post(body: dict[str, Any], kind: str) -> None:
                try:
                    await client.post(url, json=body)
                    sent[kind] += 1
                except httpx.HTTPError:
                    pass

            for attempt_id in paid:
                txn = sim.transactions.get(attempt_id)
                if txn is None:
                    continue
                body = sim.status_body(txn, "midtrans payment notification")
                for _ in range(duplicates):
                    await post(body, "duplicate")
                stale = {**body, "transaction_status": "pending", "status_code": "201"}
                stale["signature_key"] = sign(body["order_id"], "201", body["gross_amount"],
                                              sim.server_key)
                await post(stale, "out_of_order")
            unpaid = [t for t in sim.transactions.values()
                      if t.transaction_status == "pending"][:forged]
            for txn in unpaid:
                body = sim.status_body(txn)
                body.update(transaction_status="settlement", status_code="200",
                            signature_key="0" * 128)
                await post(body, "forged")
        return sent

    sent = _on_loop(storm())
    _fault(f"webhook storm: {json.dumps(sent)}")
    return json.dumps(sent)


# --------------------------------------------------------------------------------- processes


def kill_worker(times: int, every_s: float) -> str:
    """SIGKILL the worker mid-batch ``times`` times, restarting it each time as systemd would."""
    s = _s()
    worker = s.stack.worker
    assert worker is not None
    for _ in range(times):
        time.sleep(every_s)
        _on_loop(worker.kill(signal.SIGKILL))
        _fault("worker SIGKILLed")
        time.sleep(0.5)
        _on_loop(worker.start())
    return f"worker killed {times} times"


def crash_api_after_commits(crashes: int, after: int) -> str:
    """Run the api so that it dies right after its ``after``-th committed capture and before the
    reply, ``crashes`` times (restarted each time); then normally again."""
    s = _s()
    api = s.stack.api
    assert api is not None
    done = 0
    for _ in range(crashes):
        _on_loop(api.stop())
        # Under load (the clients' retries queue up while it is down) the api can commit its
        # ``after`` orders and exit before its readiness is first polled (CI, 2026-12-01).
        _on_loop(api.start({"LUNAS_GAMEDAY_EXIT_AFTER_COMMIT": str(after)},
                           planned_exit=CRASH_EXIT_CODE))
        deadline = time.monotonic() + 60
        while api.running and time.monotonic() < deadline:
            time.sleep(0.1)
        if api.running:
            raise RuntimeError("the api did not crash after its commits: is there load?")
        done += 1
        _fault(f"api exited after commit #{after}, before the reply")
        _on_loop(api.start())
    return f"api crashed {done} times after a commit"


def restart_postgres(down_s: float) -> dict[str, Any]:
    """Stop PostgreSQL (fast shutdown) for ``down_s``, probing the api while it is down."""
    s = _s()
    _on_loop(s.stack.pg.stop("fast"))
    _fault(f"PostgreSQL stopped for {down_s} s")
    time.sleep(1)
    started = time.monotonic()
    r = httpx.post(f"{s.stack.api_url}/v1/orders", timeout=10,
                   headers={"Authorization": f"Bearer {s.stack.api_key}",
                            "Idempotency-Key": f"pg-down-{time.time()}"},
                   json={"merchant_order_id": f"PGDOWN-{int(time.time())}", "amount": 50_000,
                         "customer": {"name": "Andi Wijaya", "email": "andi@example.co.id",
                                      "phone": "+6281234567890"}})
    took = time.monotonic() - started
    seen = {"status": r.status_code, "retry_after": r.headers.get("Retry-After"),
            "seconds": round(took, 3)}
    _saw(f"capture while PostgreSQL is down: HTTP {r.status_code} in {took * 1000:.0f} ms, "
         f"Retry-After {seen['retry_after']}")
    time.sleep(max(0.0, down_s - 1 - took))
    _on_loop(s.stack.pg.start())
    _fault("PostgreSQL started again")
    if r.status_code != 503 or not seen["retry_after"] or took > 2.0:
        raise AssertionError(f"the api did not fail fast with 503 + Retry-After: {seen}")
    return seen


def stop_postgres() -> str:
    """Stop PostgreSQL (fast shutdown) and leave it down until ``start_postgres``."""
    _on_loop(_s().stack.pg.stop("fast"))
    _fault("PostgreSQL stopped, not restarted")
    return "postgres down"


def start_postgres() -> str:
    _on_loop(_s().stack.pg.start())
    _fault("PostgreSQL started again")
    return "postgres up"


def restart_redis(down_s: float) -> str:
    s = _s()
    _on_loop(s.stack.redis.stop())
    _fault(f"Redis stopped for {down_s} s (memory-only: it comes back empty)")
    time.sleep(down_s)
    _on_loop(s.stack.redis.start())
    _fault("Redis started again")
    return "redis restarted"


def advance_clock(seconds: float) -> str:
    _on_loop(_s().stack.advance_clock(seconds))
    _fault(f"game-day clock +{seconds:.0f} s")
    return f"clock offset {_s().stack.clock_offset:.0f} s"


# ------------------------------------------------------------------------------------- probes


def api_ready() -> bool:
    try:
        return httpx.get(f"{_s().stack.api_url}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def alert_fires(alert: str, within_s: float = 60) -> str:
    """Prometheus (scraping the api and worker, with the game day's rules) fires ``alert``."""
    log = _s().stack.prometheus.log
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        sighting = log.seen.get(alert)
        if sighting is not None and sighting.first_firing is not None:
            _saw(f"alert {alert} firing at t+{sighting.first_firing:.0f}s")
            return f"{alert} firing"
        time.sleep(0.5)
    raise AssertionError(f"alert {alert} did not fire within {within_s} s; "
                         f"seen: {sorted(log.seen)}")


def status_page_shows(statuses: list[str], component: str | None = None,
                      within_s: float = 30) -> str:
    """The public status page (Atlassian v2 JSON) shows a component (or any) in one of
    ``statuses``."""
    deadline = time.monotonic() + within_s
    last: list[str] = []
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{_s().stack.api_url}/status/api/v2/components.json",
                             timeout=5).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(1)
            continue
        last = [f"{c['name']}={c['status']}" for c in body.get("components", [])]
        for c in body.get("components", []):
            if c["status"] in statuses and (component is None or component in c["name"]):
                _saw(f"status page: {c['name']} {c['status']}")
                return f"{c['name']} {c['status']}"
        time.sleep(1)
    raise AssertionError(f"status page never showed {component or 'a component'} in {statuses}: "
                         f"{last}")


def settle(timeout_s: float = 120, clock_step_s: float = 3600) -> str:
    """The bad day is over: stop the load, clear every fault, and move the clock past every
    deadline and verification window until every acknowledged order has ended (terminal or with a
    person), or ``timeout_s`` passes."""
    s = _s()
    stop_load()
    clear_provider_faults()
    clear_proxy_faults()
    configure_midtrans(drop_notifications=False)
    acknowledged = s.load.report.acknowledged if s.load else set()
    assert s.stack.db is not None
    deadline = time.monotonic() + timeout_s
    advanced = 0.0
    report = _on_loop(check_rules_of_state(s.stack.db, acknowledged))
    unread = _on_loop(_transfers_lunas_has_not_read(s.stack))
    while (not report.ok or unread) and time.monotonic() < deadline:
        if advanced < 8 * clock_step_s:
            advance_clock(clock_step_s / 4)
            advanced += clock_step_s / 4
        time.sleep(2)
        report = _on_loop(check_rules_of_state(s.stack.db, acknowledged))
        unread = _on_loop(_transfers_lunas_has_not_read(s.stack))
    s.rules = report
    if unread:
        report.violations.append(f"{unread} transfers at the Moota feed never stored by Lunas")
    return f"settled: {json.dumps(report.by_state)}; violations: {report.violations}"


async def _transfers_lunas_has_not_read(stack: Stack, among: list[str] | None = None) -> int:
    """Transfers the customers made that are on the Moota feed but not yet in Lunas. Until there
    are none, an order may stand expired whose customer paid after its deadline: the feed poll
    that brings the payment (and moves the order to review) is still to come, a second away, so
    judging the rules of state then would blame Lunas for the harness's haste."""
    import sqlalchemy as sa

    from orchestrator.reconciliation.fingerprint import fingerprint_moota
    from orchestrator.store.tables import mutations

    assert stack.db is not None
    # A transfer the feed lists malformed is never stored: it waits for a person instead.
    ids = [m["mutation_id"] for m in list(stack.moota.mutations)] if among is None else among
    prints = {fingerprint_moota(i) for i in ids if i not in stack.moota.listed_as}
    if not prints:
        return 0
    async with stack.db.read() as conn:
        stored = (await conn.execute(sa.select(sa.func.count()).select_from(mutations).where(
            mutations.c.fingerprint.in_(sorted(prints))))).scalar_one()
    return len(prints) - int(stored)


def rules_of_state_hold() -> bool:
    """Rules 1, 2, 4, 5, 6 of ARCHITECTURE.md §3 for every order a client saw acknowledged, and
    no payment lost: every order a customer paid ended paid or with a person."""
    s = _s()
    acknowledged = s.load.report.acknowledged if s.load else set()
    assert s.stack.db is not None
    report = _on_loop(check_rules_of_state(s.stack.db, acknowledged))
    s.rules = report
    s.review_reasons = _on_loop(_review_reasons(s.stack))
    if s.load is not None:
        states = _on_loop(_states(s.stack, s.load.report.paid_orders))
        lost = sorted(i for i, state in states.items() if state not in ("paid", "needs_review"))
        if lost:
            report.violations.append(
                f"{len(lost)} orders the customer paid did not end paid or in review, e.g. "
                f"{[(i, states[i]) for i in lost[:3]]}")
        everyone = _on_loop(_states(s.stack, s.load.report.acknowledged))
        unpaid = sorted(i for i, state in everyone.items()
                        if state == "paid" and i not in s.load.report.customer_tried_to_pay)
        if unpaid:
            report.violations.append(
                f"{len(unpaid)} orders paid though their customer never paid (forged or "
                f"misapplied evidence), e.g. {unpaid[:3]}")
    if s.load is not None and s.load.report.refused_retries:
        report.violations.append(
            f"a retry with the same idempotency key after a lost reply was refused: "
            f"{s.load.report.refused_retries[:3]}")
    return report.ok


def pay_late(count: int) -> str:
    """Customers pay ``count`` Xendit QR codes that were never paid, after their orders ended:
    each must put its order in review (payment after expiry), never be lost or settle silently."""
    s = _s()
    assert s.stack.sims is not None
    sim = s.stack.sims.xendit
    codes = [q for q in list(sim.store.qrs.values()) if q["status"] == "ACTIVE"][:count]
    paid = 0
    for qr in codes:
        r = httpx.post(f"{sim.control_url}/pay", timeout=5, json={
            "kind": "qr", "external_id": qr["external_id"], "amount": qr["amount"],
            "force": True})
        paid += r.status_code < 300
    _fault(f"{paid} QR codes paid after their orders ended")
    return f"{paid} late payments"


def kill_worker_and_keep_it_down() -> str:
    worker = _s().stack.worker
    assert worker is not None
    _on_loop(worker.kill(signal.SIGKILL))
    _fault("worker SIGKILLed, not restarted")
    return "worker down"


def start_worker() -> str:
    worker = _s().stack.worker
    assert worker is not None
    _on_loop(worker.start())
    _fault("worker started")
    return "worker up"


def merchant_endpoint_fails(failing: bool) -> str:
    """The merchant's webhook endpoint answers 500 (``failing``) or 200 again."""
    _s().stack.merchant_endpoint_failing = failing
    _fault(f"merchant webhook endpoint {'answers 500' if failing else 'healthy again'}")
    return "ok"


def retries_after_lost_replies_got_their_order(at_least: int = 1, within_s: float = 60) -> str:
    """Clients whose reply was lost retried with the same key and got the order (never a second
    one: the rules of state count orders per acknowledged id, and refused retries are reported).
    Waits for the retries: a client backs off while the api restarts."""
    s = _s()
    report = s.load.report if s.load else None
    if report is None:
        raise AssertionError("no load ran")
    deadline = time.monotonic() + within_s
    while report.retries_after_lost_reply < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
    if report.retries_after_lost_reply < at_least:
        raise AssertionError(f"expected {at_least} retries after lost replies: {report.line()}")
    if report.refused_retries:
        raise AssertionError(f"retries refused: {report.refused_retries[:3]}")
    _saw(f"{report.retries_after_lost_reply} clients lost a reply, retried with the same "
         "idempotency key and got their order")
    return "ok"


def orders_wait_in(state: str, at_least: int = 1, within_s: float = 20) -> str:
    """At least ``at_least`` of the run's orders are in ``state`` (e.g. ``verifying``: past their
    deadline, waiting for a source of truth instead of expiring unchecked)."""
    s = _s()
    ids = s.load.report.acknowledged if s.load else set()
    deadline = time.monotonic() + within_s
    count = 0
    while time.monotonic() < deadline:
        states = _on_loop(_states(s.stack, set(ids)))
        count = sum(1 for v in states.values() if v == state)
        if count >= at_least:
            _saw(f"{count} orders waiting in {state}")
            return f"{count} in {state}"
        time.sleep(1)
    raise AssertionError(f"only {count} orders in {state} within {within_s} s")


def prometheus_shows(expr: str, within_s: float = 30) -> str:
    """The scraped metrics answer ``expr`` with a non-empty result within ``within_s`` (e.g. a
    breaker closed again, a fallback gauge back to 0)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = _on_loop(_s().stack.prometheus.query(expr))
        if result:
            _saw(f"prometheus: {expr}")
            return json.dumps(result)[:300]
        time.sleep(1)
    raise AssertionError(f"prometheus never showed {expr} within {within_s} s")


def captures_never_wait_past(seconds: float) -> str:
    """Every capture request answered within ``seconds`` (the capture budget plus the time to
    store the order): checkout never waits on a slow or dead provider."""
    s = _s()
    slowest = s.load.report.slowest_reply() if s.load else 0.0
    if slowest > seconds:
        raise AssertionError(f"a capture took {slowest:.2f} s, more than {seconds} s")
    _saw(f"slowest capture reply {slowest:.2f} s (limit {seconds} s)")
    return f"slowest {slowest:.2f} s"
