"""SREs list, re-deliver and discard dead-lettered outbox events over the ops API and the CLI.
(The relay side, a re-delivered event actually sent and a discarded one never, is specified in
test_outbox_relay.py.)"""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.domain.events import ORDER_PAID
from orchestrator.domain.ids import new_id
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.store.tables import audit_log, outbox
from tests.e2e.test_checkout_to_webhook import LUNAS
from tests.e2e.test_cli import run_each
from tests.support import new_merchant, new_ops_token


async def dead_events(container: Container, merchant_id: str, n: int) -> list[str]:
    """Events of one merchant that used up their retries (the relay's doing, written here)."""
    now = container.clock.now()
    async with container.db.transaction() as conn:
        await add_events(conn, [PendingEvent(
            event_type=ORDER_PAID, aggregate_id=new_id("ord"), merchant_id=merchant_id,
            payload={"n": i}) for i in range(n)], now=now)
        ids = (await conn.execute(outbox.update().where(
            outbox.c.merchant_id == merchant_id).values(
            status="dead", attempts=8, processed_at=now,
            last_error="WebhookDeliveryError: merchant endpoint answered HTTP 502")
            .returning(outbox.c.id, outbox.c.event_id))).all()
    return [r.event_id for r in sorted(ids)]


async def test_ops_list_redeliver_and_discard_dead_letters(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    ids = await dead_events(container, m.merchant_id, 3)
    ops = {"Authorization": f"Bearer {await new_ops_token(container)}"}
    base = "/v1/ops/outbox/dead"
    assert (await client.get(base)).status_code == 401
    listed = (await client.get(base, params={"merchant_id": m.merchant_id}, headers=ops)).json()
    assert [e["event_id"] for e in listed["data"]] == ids
    assert listed["data"][0]["attempts"] == 8

    r = await client.post(f"{base}/{ids[0]}/discard", headers=ops, json={"reason": " "})
    assert (r.status_code, r.json()["field"]) == (422, "reason")
    r = await client.post(f"{base}/evt_nope/discard", headers=ops, json={"reason": "x"})
    assert r.status_code == 404
    r = await client.post(f"{base}/{ids[0]}/discard", headers=ops,
                          json={"reason": "merchant closed the shop"})
    assert (r.status_code, r.json()["status"]) == (200, "discarded")

    r = await client.post(f"{base}/redeliver", headers=ops, json={"reason": "x"})
    assert (r.status_code, r.json()["detail"]) == (422, (  # neither events nor a merchant named
        "name the events to send again ('event_ids') or a merchant ('merchant_id')"))
    r = await client.post(f"{base}/redeliver", headers=ops, json={
        "reason": "x", "event_ids": [ids[1]], "merchant_id": m.merchant_id})
    assert (r.status_code, r.json()["detail"]) == (422, (
        "name the events ('event_ids') or a merchant ('merchant_id'), not both"))
    r = await client.post(f"{base}/redeliver", headers=ops,
                          json={"reason": "x", "merchant_id": "mer_nope"})
    assert (r.status_code, r.json()["detail"]) == (404, "no merchant mer_nope")  # not 200, 0 sent
    r = await client.post(f"{base}/redeliver", headers=ops,
                          json={"reason": "x", "event_ids": [ids[0]]})
    assert (r.status_code, r.json()["code"]) == (409, "not_dead_lettered")  # discarded
    r = await client.post(f"{base}/redeliver", headers=ops,
                          json={"reason": "endpoint fixed", "merchant_id": m.merchant_id})
    assert r.status_code == 200, r.text
    assert (r.json()["redelivered"], r.json()["event_ids"]) == (2, ids[1:])
    async with container.db.read() as conn:
        rows = {e.event_id: e for e in await conn.execute(
            sa.select(outbox).where(outbox.c.event_id.in_(ids)))}
        audit = (await conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.subject_id.in_([ids[0], m.merchant_id])))).scalars().all()
    assert rows[ids[0]].status == "discarded"
    assert {rows[i].attempts for i in ids[1:]} <= {0, 1}  # fresh schedules (a worker may run)
    assert sorted(audit) == ["outbox.discard", "outbox.redeliver"]


async def test_the_dead_letters_read_to_their_end_page_by_page(
    client: httpx.AsyncClient, container: Container
) -> None:
    """More dead events than one page (after a long endpoint outage): each page continues after
    the last event of the one before, oldest first, none skipped or shown twice."""
    m = await new_merchant(container)
    ids = await dead_events(container, m.merchant_id, 5)
    ops = {"Authorization": f"Bearer {await new_ops_token(container)}"}
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"merchant_id": m.merchant_id, "limit": "2", **({"after": after} if after else {})}
        r = await client.get("/v1/ops/outbox/dead", headers=ops, params=params)
        assert r.status_code == 200, r.text
        page = [e["event_id"] for e in r.json()["data"]]
        assert not set(page) & set(seen)  # a cursor ignored would loop for ever: fail instead
        seen += page
        after = r.json()["next_after"]
        if after is None:
            break
    assert seen == ids
    for bad, status in (({"after": "evt_nope"}, 404), ({"limit": "0"}, 400)):
        r = await client.get("/v1/ops/outbox/dead", headers=ops, params=bad)
        assert r.status_code == status, r.text


async def test_cli_lists_and_redelivers_dead_letters(container: Container, pg_url: str) -> None:
    m = await new_merchant(container)
    ids = await dead_events(container, m.merchant_id, 2)
    env = {**os.environ, "LUNAS_DATABASE_URL": pg_url}

    def lunas(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LUNAS, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    # Listings and refusals change nothing: side by side, each its own `lunas` process.
    listed, rest, unknown, neither, both, nobody = run_each(
        env, ("outbox", "dead", "--merchant", m.merchant_id, "--json"),
        ("outbox", "dead", "--merchant", m.merchant_id, "--after", ids[0], "--json"),
        ("outbox", "dead", "--after", "evt_nope"),
        ("outbox", "redeliver", "--reason", "r", "--actor", "me"),
        ("outbox", "redeliver", ids[1], "--merchant", m.merchant_id, "--reason", "r",
         "--actor", "me"),
        ("outbox", "redeliver", "--merchant", "mer_nope", "--reason", "r", "--actor", "me"))
    assert listed.returncode == 0, listed.stderr
    assert [e["event_id"] for e in json.loads(listed.stdout)] == ids
    assert [e["event_id"] for e in json.loads(rest.stdout)] == ids[1:], rest.stderr
    assert unknown.returncode == 1 and "no event evt_nope" in unknown.stderr
    assert (neither.returncode, neither.stderr) == (2, (
        "lunas: name the events to send again (EVENT_ID ...) or a merchant (--merchant ID)\n"))
    assert both.returncode == 2 and both.stderr.endswith(", not both\n"), both.stderr
    assert (nobody.returncode, nobody.stderr) == (1, "lunas: no merchant mer_nope\n")
    sent = lunas("outbox", "redeliver", ids[1], "--reason", "fixed", "--actor", "budi")
    assert (sent.returncode, sent.stdout.strip()) == (0, "1 events pending again"), sent.stderr
    gone = lunas("outbox", "discard", ids[1], "--reason", "x", "--actor", "budi")
    assert gone.returncode == 1 and "not dead-lettered" in gone.stderr
