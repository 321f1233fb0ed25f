"""The ``lunas`` command as an operator uses it: credentials once (and as JSON for scripts),
statement import from a file, and a refused file that imports nothing; a merchant's webhook URL
changed and its signing secret rotated, audited, and a URL no delivery could reach refused."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from orchestrator.store.tables import merchants
from orchestrator.tls import default_trust
from tests.conftest import create_database, drop_database
from tests.e2e.test_checkout_to_webhook import LUNAS
from tests.support import bca_statement


@pytest.fixture
async def env() -> AsyncIterator[dict[str, str]]:
    url = await create_database("lunas_cli")
    yield {**os.environ, "LUNAS_DATABASE_URL": url}
    await drop_database(url)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LUNAS, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def run_each(env: dict[str, str], *commands: tuple[str, ...]
             ) -> list[subprocess.CompletedProcess[str]]:
    """Invocations that depend on none of each other (refusals that change nothing), each its
    own ``lunas`` process as ``run`` makes it, side by side: most of one is starting Python."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run(env, *args), commands))


@pytest.fixture(scope="session")
async def migrated_by_the_cli() -> AsyncIterator[str]:
    """A database ``lunas migrate`` brought up from empty, once a session: the template of
    ``migrated_env``'s. (Migrating from empty costs a few seconds of subprocess a test; tests
    whose subject is ``migrate`` itself keep ``env``.)"""
    url = await create_database("lunas_cli_template")
    try:
        migrated = run({**os.environ, "LUNAS_DATABASE_URL": url}, "migrate")
        assert migrated.returncode == 0 and "schema is up to date" in migrated.stdout, (
            migrated.stderr)
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def migrated_env(migrated_by_the_cli: str) -> AsyncIterator[dict[str, str]]:
    """``env`` on a database holding Lunas's schema: a copy of one ``lunas migrate`` made."""
    url = await create_database("lunas_cli", template=migrated_by_the_cli.rsplit("/", 1)[1])
    yield {**os.environ, "LUNAS_DATABASE_URL": url}
    await drop_database(url)


async def test_operator_creates_credentials_and_imports_a_statement(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run(env, "migrate").returncode == 0
    created = run(env, "merchants", "create", "Toko Kopi", "--json",
                  "--account", "bca:0123456789:TOKO KOPI", "--account", "bri:1234567890:KOPI")
    assert created.returncode == 0, created.stderr
    shop = json.loads(created.stdout)
    assert shop["merchant_id"].startswith("mer_") and shop["api_key"].startswith("lunas_sk_")
    assert shop["webhook_secret"].startswith("whsec_")
    assert [(a["bank"], a["account_number"]) for a in shop["accounts"]] == [
        ("bca", "0123456789"), ("bri", "1234567890")]
    human = run(env, "merchants", "create", "Toko Teh")
    assert "API key:" in human.stdout and "shown once" in human.stdout
    unknown = run(env, "orders", "show", "ord_nobody")
    assert (unknown.returncode, unknown.stderr) == (1, "lunas: no order ord_nobody\n")

    token = json.loads(run(env, "ops-tokens", "create", "finance", "--actor", "budi",
                           "--json").stdout)
    assert token["token"].startswith("lunas_ops_") and "reconciliation" in token["scopes"]
    assert run(env, "ops-tokens", "create", "x", "--scope", "root",
               "--actor", "budi").returncode == 2

    good = tmp_path / "mutasi.csv"
    good.write_bytes(bca_statement("0123456789", [(datetime.now(UTC), "SETORAN", 5_000, "CR")]))
    imported = run(env, "reconcile", "import", str(good), "--bank", "bca",
                   "--account", "0123456789", "--json")
    assert imported.returncode == 0, imported.stderr
    assert {k: json.loads(imported.stdout)[k] for k in ("parsed", "new", "unmatched")} == {
        "parsed": 1, "new": 1, "unmatched": 1}

    bad = tmp_path / "bad.csv"
    bad.write_bytes(good.read_bytes()[:-40])
    refused = run(env, "reconcile", "import", str(bad), "--bank", "bca", "--account",
                  "0123456789")
    assert refused.returncode == 1
    assert "nothing imported" in refused.stderr
    again = run(env, "reconcile", "import", str(good), "--bank", "bca", "--account",
                "0123456789", "--json")
    assert json.loads(again.stdout)["duplicate"] == 1


async def test_bad_account_syntax_is_refused_before_anything_is_written(
    env: dict[str, str]
) -> None:
    r = run(env, "merchants", "create", "X", "--account", "bca-0123")
    assert r.returncode == 2 and "BANK:NUMBER:HOLDER" in r.stderr


async def test_payout_accounts_are_at_banks_lunas_reads_and_each_is_added_once(
    migrated_env: dict[str, str]
) -> None:
    """A BSI account was accepted though no statement import or feed mapping reads BSI: its
    orders could never be matched. ``01234`` is no bank's account number. Adding an account
    twice printed a 100-line IntegrityError traceback."""
    env = migrated_env  # `lunas migrate` made its template
    bsi, short, twice = run_each(
        env, ("merchants", "create", "X", "--account", "bsi:0123456789:X"),
        ("merchants", "create", "X", "--account", "bca:01234:X"),
        ("merchants", "create", "X", "--account", "bca:1111111111:X",
         "--account", "BCA:1111111111:X"))
    for refused, named in ((bsi, "'bsi'"), (short, "'01234'")):
        assert refused.returncode == 2 and named in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert "bca, mandiri, bri" in bsi.stderr
    assert twice.returncode == 1 and "twice" in twice.stderr and "Traceback" not in twice.stderr

    shop = json.loads(run(env, "merchants", "create", "Toko Kopi", "--json",
                          "--account", "bca:0123456789:TOKO KOPI").stdout)
    added = run(env, "merchants", "add-account", shop["merchant_id"], "bri:123456789012345:KOPI",
                "--actor", "sari")
    assert added.returncode == 0, added.stderr
    again = run(env, "merchants", "add-account", shop["merchant_id"], "bri:123456789012345:KOPI",
                "--actor", "sari")
    assert again.returncode == 1 and "already" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    assert run(env, "merchants", "add-account", shop["merchant_id"],
               "bsi:0123456789:KOPI", "--actor", "sari").returncode == 2
    # One account may be several merchants' (a company's shops): see test_reconciliation.py.
    assert run(env, "merchants", "create", "Toko Teh", "--account",
               "bca:0123456789:TOKO TEH").returncode == 0


async def test_finance_lists_and_closes_an_unreadable_feed_item(
    migrated_env: dict[str, str],
) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from orchestrator.store.tables import unreadable_feed_items

    env = migrated_env  # `lunas migrate` made its template
    engine = create_async_engine(env["LUNAS_DATABASE_URL"])
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(unreadable_feed_items).values(
                id="ufi_1", feed="moota", item_key="k" * 64, mutation_ref="mt1",
                raw_item='{"amount": "1.500,00 IDR", "mutation_id": "mt1"}',
                problem="amount '1.500,00 IDR' is not an amount", state="open",
                first_seen_at=datetime.now(UTC)))
    finally:
        await engine.dispose()

    listed = run(env, "reconcile", "unreadable")
    assert listed.returncode == 0 and "ufi_1" in listed.stdout and "1.500,00 IDR" in listed.stdout
    closed = run(env, "reconcile", "handled", "ufi_1", "--note", "a cash deposit, no order",
                 "--actor", "sari", "--json")
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["closed_by"] == "cli:sari"
    again = run(env, "reconcile", "handled", "ufi_1", "--note", "again", "--actor", "sari")
    assert again.returncode == 1 and "already handled" in again.stderr
    assert json.loads(run(env, "reconcile", "unreadable", "--json").stdout) == []
    assert run(env, "reconcile", "unreadable", "--state", "bogus").returncode == 1


async def _merchant_row(url: str, merchant_id: str) -> tuple[Any, list[Any]]:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from orchestrator.store.tables import audit_log, merchants

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(merchants)
                                      .where(merchants.c.id == merchant_id))).one()
            audit = (await conn.execute(sa.select(audit_log).where(
                audit_log.c.subject_id == merchant_id).order_by(audit_log.c.id))).all()
    finally:
        await engine.dispose()
    return row, list(audit)


async def _audit_of(url: str, subject_id: str) -> list[Any]:
    from orchestrator.store.tables import audit_log

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(sa.select(audit_log).where(
                audit_log.c.subject_id == subject_id).order_by(audit_log.c.id)))
    finally:
        await engine.dispose()


async def test_an_operator_moves_a_merchants_webhooks_and_rotates_their_secret(
    migrated_env: dict[str, str],
) -> None:
    env = migrated_env  # `lunas migrate` made its template
    shop = json.loads(run(env, "merchants", "create", "Toko Kopi", "--json", "--webhook-url",
                          "https://kopi.example.co.id/lunas").stdout)

    moved = run(env, "merchants", "set-webhook", shop["merchant_id"],
                "https://hooks.kopi.example.co.id:8443/lunas?token=s3cret", "--actor", "sari",
                "--reason", "merchant changed hosting", "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["webhook_url"] == (
        "https://hooks.kopi.example.co.id:8443/lunas?token=s3cret")

    rotated = run(env, "merchants", "rotate-secret", shop["merchant_id"], "--actor", "sari",
                  "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    assert new["webhook_secret"].startswith("whsec_")
    assert new["webhook_secret"] != shop["webhook_secret"]
    until = datetime.fromisoformat(new["previous_valid_until"])
    expected = datetime.now(UTC) + timedelta(days=1)  # LUNAS_WEBHOOK_SECRET_OVERLAP's default
    assert abs((until - expected).total_seconds()) < 60

    row, audit = await _merchant_row(env["LUNAS_DATABASE_URL"], shop["merchant_id"])
    assert row.webhook_url == "https://hooks.kopi.example.co.id:8443/lunas?token=s3cret"
    assert (row.webhook_secret, row.previous_webhook_secret) == (
        new["webhook_secret"], shop["webhook_secret"])
    assert row.previous_webhook_secret_expires_at == until
    assert [(a.actor, a.action, a.reason, a.details) for a in audit] == [
        ("cli:sari", "merchant.webhook_url_set", "merchant changed hosting",
         {"from": "https://kopi.example.co.id", "to": "https://hooks.kopi.example.co.id:8443"}),
        ("cli:sari", "merchant.webhook_secret_rotated", None,
         {"previous_valid_until": new["previous_valid_until"]}),
    ]

    leaked = run(env, "merchants", "rotate-secret", shop["merchant_id"], "--actor", "sari",
                 "--reason", "secret pasted in a public ticket", "--overlap", "0")
    assert leaked.returncode == 0, leaked.stderr
    assert "(shown once)" in leaked.stdout and "no longer signs" in leaked.stdout
    row, _ = await _merchant_row(env["LUNAS_DATABASE_URL"], shop["merchant_id"])
    assert row.webhook_secret in leaked.stdout
    assert (row.previous_webhook_secret, row.previous_webhook_secret_expires_at) == (None, None)

    *nobodies, unaudited = run_each(
        env, ("merchants", "rotate-secret", "mer_nobody", "--actor", "sari"),
        ("merchants", "set-webhook", "mer_nobody", "https://x.example/h", "--actor", "sari"),
        ("merchants", "rotate-secret", shop["merchant_id"]))
    for nobody in nobodies:
        assert nobody.returncode == 1 and "no merchant mer_nobody" in nobody.stderr
    assert unaudited.returncode == 2 and "--actor" in unaudited.stderr


async def test_a_payout_account_added_and_an_ops_token_made_are_audited(
    migrated_env: dict[str, str],
) -> None:
    """Adding a payout account changes where customers are told to send money, and an ops token
    can pause routes and redeliver webhooks: both were written with no audit row, so nobody
    could say who added an account or issued a token, or why. The audit keeps the account's
    last digits only, never a token."""
    env = migrated_env  # `lunas migrate` made its template
    shop = json.loads(run(env, "merchants", "create", "Toko Kopi", "--json",
                          "--account", "bca:0123456789:TOKO KOPI").stdout)
    added = run(env, "merchants", "add-account", shop["merchant_id"], "bri:123456789012345:KOPI",
                "--actor", "sari", "--reason", "BCA account nearly out of unique codes")
    assert added.returncode == 0, added.stderr
    _, audit = await _merchant_row(env["LUNAS_DATABASE_URL"], shop["merchant_id"])
    assert [(a.actor, a.action, a.reason, a.details) for a in audit] == [
        ("cli:sari", "merchant.payout_account_added", "BCA account nearly out of unique codes",
         {"bank": "bri", "account_number": "…2345", "account_name": "KOPI"})]
    unaudited = run(env, "merchants", "add-account", shop["merchant_id"], "bca:9999999999:X")
    assert unaudited.returncode == 2 and "--actor" in unaudited.stderr

    made = run(env, "ops-tokens", "create", "finance-sari", "--scope", "reconciliation",
               "--actor", "budi", "--reason", "Sari joins finance", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    audit = await _audit_of(env["LUNAS_DATABASE_URL"], token["token_id"])
    assert [(a.actor, a.action, a.subject_type, a.reason, a.details) for a in audit] == [
        ("cli:budi", "ops_token.created", "ops_token", "Sari joins finance",
         {"name": "finance-sari", "scopes": ["reconciliation"]})]
    assert token["token"] not in json.dumps([tuple(a) for a in audit], default=str)
    unaudited = run(env, "ops-tokens", "create", "anyone")
    assert unaudited.returncode == 2 and "--actor" in unaudited.stderr


async def test_a_webhook_url_no_delivery_could_reach_is_refused_and_nothing_changes(
    migrated_env: dict[str, str],
) -> None:
    """Before, ``merchants create`` stored any text as the URL, and each event then failed for a
    day before anyone saw it. What is refused is specified in tests/unit/test_webhook_url.py."""
    env = migrated_env  # `lunas migrate` made its template
    created = run(env, "merchants", "create", "Toko Teh", "--webhook-url", "kopi.example.co.id")
    assert created.returncode == 2 and "must start with https:// or http://" in created.stderr
    shop = json.loads(run(env, "merchants", "create", "Toko Teh", "--json").stdout)
    refused = run(env, "merchants", "set-webhook", shop["merchant_id"], "https:///lunas",
                  "--actor", "sari")
    assert refused.returncode == 2 and "names no host" in refused.stderr
    row, audit = await _merchant_row(env["LUNAS_DATABASE_URL"], shop["merchant_id"])
    assert (row.webhook_url, audit) == (None, [])

async def test_an_operator_sets_a_merchants_provider_order_and_fallback(
    migrated_env: dict[str, str],
) -> None:
    env = migrated_env  # `lunas migrate` made its template
    shop = json.loads(run(env, "merchants", "create", "Toko Kopi", "--json").stdout)
    mid = shop["merchant_id"]

    shown = run(env, "merchants", "routing", mid)
    assert shown.returncode == 0, shown.stderr
    assert "va       xendit, midtrans" in shown.stdout and "fallback allowed: yes" in shown.stdout

    changed = run(env, "merchants", "set-routing", mid, "--priority", "va=midtrans,xendit",
                  "--fallback", "ewallet=manual_transfer", "--no-allow-fallback",
                  "--actor", "sari", "--reason", "merchant's Xendit VA contract ended",
                  "--json")
    assert changed.returncode == 0, changed.stderr
    routing = json.loads(changed.stdout)
    assert routing["overrides"] == {"priorities": {"va": ["midtrans", "xendit"]},
                                    "fallback": {"ewallet": ["manual_transfer"]}}
    assert routing["priorities"]["qris"] == ["midtrans", "xendit"]  # untouched: the default
    assert routing["allow_fallback"] is False
    assert json.loads(run(env, "merchants", "routing", mid, "--json").stdout) == routing

    row, audit = await _merchant_row(env["LUNAS_DATABASE_URL"], mid)
    assert (row.routing, row.allow_fallback) == (routing["overrides"], False)
    assert [(a.actor, a.action, a.reason) for a in audit] == [
        ("cli:sari", "merchant.routing_set", "merchant's Xendit VA contract ended")]

    # One refusal of each kind; every message routing_problem gives is in test_route_plan.py.
    refusals = [
        (("--priority", "va=doku"), "unknown provider 'doku' for va; known: midtrans, xendit"),
        (("--fallback", "qris=va"), "qris cannot fall back to va"),
        ((), "nothing to change"),
    ]
    *refused_all, malformed, unaudited, nobody = run_each(
        env, *[("merchants", "set-routing", mid, *args, "--allow-fallback", "--actor", "sari")
               if args else ("merchants", "set-routing", mid, "--actor", "sari")
               for args, _ in refusals],
        ("merchants", "set-routing", mid, "--priority", "va", "--actor", "sari"),
        ("merchants", "set-routing", mid, "--reset"),
        ("merchants", "set-routing", "mer_nobody", "--reset", "--actor", "sari"))
    for (args, says), refused in zip(refusals, refused_all, strict=True):
        assert refused.returncode == 1, (args, refused.stderr)
        assert says in refused.stderr and "nothing changed" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert malformed.returncode == 2 and "RAIL=NAME" in malformed.stderr
    assert unaudited.returncode == 2 and "--actor" in unaudited.stderr
    assert nobody.returncode == 1 and "no merchant mer_nobody" in nobody.stderr
    row, audit = await _merchant_row(env["LUNAS_DATABASE_URL"], mid)
    assert (row.routing, row.allow_fallback, len(audit)) == (routing["overrides"], False, 1)

    back = run(env, "merchants", "set-routing", mid, "--reset", "--allow-fallback",
               "--actor", "sari")
    assert back.returncode == 0, back.stderr
    row, _ = await _merchant_row(env["LUNAS_DATABASE_URL"], mid)
    assert (row.routing, row.allow_fallback) == (None, True)


def _command_groups() -> list[str]:
    """Every ``lunas GROUP ACTION`` group, read from the parser itself so a new one is covered."""
    import argparse

    from orchestrator.cli import _parser

    top = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [name for name, parser in top.choices.items()
            if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)]


def test_every_command_has_a_handler_and_every_group_needs_an_action() -> None:
    import argparse

    from orchestrator.cli import _COMMANDS, _parser

    top = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in _command_groups():
        group = next(a for a in top.choices[name]._actions
                     if isinstance(a, argparse._SubParsersAction))
        assert group.required, name
        for action in group.choices:
            assert (name, action) in _COMMANDS or (name, action) == ("chaos", "run"), action
    assert "chaos" in _command_groups()


# chaos by name too: its missing action was a KeyError traceback (review finding).
@pytest.mark.parametrize("group", sorted({*_command_groups(), "chaos"}))
def test_a_command_group_without_its_action_prints_usage_not_a_traceback(
    group: str, tmp_path: Path
) -> None:
    r = run({**os.environ, "LUNAS_DATABASE_URL": f"sqlite:///{tmp_path}/lunas.db"}, group)
    assert r.returncode == 2, r.stderr
    assert f"usage: lunas {group}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://x", "LUNAS_DATABASE_URL names mysql, which Lunas cannot use; write postgresql://"),
    ("notaurl", "LUNAS_DATABASE_URL is not a database URL"),
    ("postgresql://postgres@127.0.0.1:{free}/lunas",
     "cannot reach the database at 127.0.0.1:{free} (connection refused); is it running?"),
    ("postgresql://postgres@127.0.0.1:5432/lunas_no_such_db",
     'database "lunas_no_such_db" does not exist'),
    ("sqlite:////nonexistent-dir/lunas.db", "cannot use the SQLite database /nonexistent-dir"),
])
def test_a_database_lunas_cannot_use_is_one_line_naming_it(url: str, says: str) -> None:
    free = _free_port()
    r = run({**os.environ, "LUNAS_DATABASE_URL": url.format(free=free)}, "migrate")
    assert r.returncode in (1, 2)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("lunas: "), r.stderr
    assert says.format(free=free) in r.stderr


def test_a_bad_redis_url_is_one_line_naming_it() -> None:
    r = run({**os.environ, "LUNAS_REDIS_URL": "notaurl"}, "migrate")
    assert r.returncode == 2 and r.stderr.startswith("lunas: LUNAS_REDIS_URL: "), r.stderr
    assert "Traceback" not in r.stderr


async def test_plain_postgresql_and_sqlite_urls_run_on_the_async_drivers(
    env: dict[str, str], tmp_path: Path
) -> None:
    plain = env["LUNAS_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    r = run({**env, "LUNAS_DATABASE_URL": plain}, "migrate")
    assert r.returncode == 0 and "schema is up to date" in r.stdout, r.stderr
    r = run({**env, "LUNAS_DATABASE_URL": f"sqlite:///{tmp_path}/shop.db"}, "migrate")
    assert r.returncode == 0 and (tmp_path / "shop.db").exists(), r.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process is listening on."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def test_a_second_lunas_run_on_a_taken_port_starts_nothing_and_says_which_variable_moves_it(
    taken_port: int, tmp_path: Path
) -> None:
    r = run({**os.environ, "LUNAS_PORT": str(taken_port),
             "LUNAS_DATABASE_URL": f"sqlite:///{tmp_path}/lunas.db"}, "run")
    assert r.returncode == 1
    assert r.stderr == (f"lunas: cannot listen on 127.0.0.1:{taken_port}: the port is in use (is "
                        f"another lunas running?); choose another port with LUNAS_PORT or "
                        f"--port\n")
    assert r.stdout == "" and not (tmp_path / "lunas.db").exists()  # no banner, no migration


async def test_lunas_api_port_is_chosen_with_port(
    migrated_env: dict[str, str], taken_port: int
) -> None:
    env = migrated_env  # `lunas migrate` made its template
    refused = run({**env, "LUNAS_PORT": str(taken_port)}, "api")
    assert refused.returncode == 1 and "LUNAS_PORT or --port" in refused.stderr
    assert run(env, "api", "--port", "0").returncode == 2  # a port, not "any"

    port = _free_port()
    proc = subprocess.Popen([LUNAS, "api", "--port", str(port)],
                            env={**env, "LUNAS_PORT": str(taken_port)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"lunas api listening on http://127.0.0.1:{port}"
        async with httpx.AsyncClient(verify=default_trust(), timeout=30) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


async def test_a_worker_whose_metrics_port_is_taken_says_so_in_one_line(
    migrated_env: dict[str, str], taken_port: int
) -> None:
    env = migrated_env  # `lunas migrate` made its template
    r = run({**env, "LUNAS_WORKER_METRICS_PORT": str(taken_port)}, "worker")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "choose another port with LUNAS_WORKER_METRICS_PORT" in r.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["", "--account", "bca:0123456789:X"], "a merchant needs a name"),
    (["   "], "a merchant needs a name"),
    (["x" * 201], "kept to 200 characters"),
    # the review's other finding; the rule is valid_webhook_url's (tests/unit/test_webhook_url.py)
    (["Toko", "--webhook-url", "ftp://x"], "the webhook URL must start with https:// or http://"),
])
def test_a_merchant_without_a_name_or_with_a_url_lunas_cannot_post_to_is_refused(
    args: list[str], says: str, tmp_path: Path
) -> None:
    r = run({**os.environ, "LUNAS_DATABASE_URL": f"sqlite:///{tmp_path}/lunas.db"},
            "merchants", "create", *args)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


async def test_a_merchant_name_is_stored_without_the_spaces_around_it(
    migrated_env: dict[str, str]
) -> None:
    env = migrated_env  # `lunas migrate` made its template
    r = run(env, "merchants", "create", "  Toko Kopi ", "--webhook-url",
            "https://shop.example/lunas/hook?t=1", "--json")
    assert r.returncode == 0, r.stderr
    engine = create_async_engine(env["LUNAS_DATABASE_URL"])
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(merchants.c.name, merchants.c.webhook_url).where(
                merchants.c.id == json.loads(r.stdout)["merchant_id"]))).one()
    finally:
        await engine.dispose()
    assert tuple(row) == ("Toko Kopi", "https://shop.example/lunas/hook?t=1")


@pytest.mark.parametrize(("args", "says"), [
    (["ops-tokens", "create", " "], "a token needs a name"),
    (["reconcile", "import", "/nonexistent/mutasi.csv", "--bank", "bca", "--account", "1"],
     "lunas: cannot read /nonexistent/mutasi.csv: No such file or directory\n"),
    (["reconcile", "import", "/", "--bank", "bca", "--account", "1"],
     "lunas: cannot read /: Is a directory\n"),
])
def test_a_token_without_a_name_or_a_statement_that_cannot_be_read_is_one_line(
    args: list[str], says: str, tmp_path: Path
) -> None:
    r = run({**os.environ, "LUNAS_DATABASE_URL": f"sqlite:///{tmp_path}/lunas.db"}, *args)
    assert r.returncode in (1, 2) and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "lunas.db").exists()  # refused before anything was opened


async def test_a_database_never_migrated_is_one_line_saying_to_migrate(
    env: dict[str, str]
) -> None:
    commands = [("merchants", "create", "Toko"), ("reviews", "list"), ("worker",)]
    for command, r in zip(commands, run_each(env, *commands), strict=True):
        assert (r.returncode, r.stderr) == (1, (
            "lunas: the database has no Lunas schema yet: run `lunas migrate` first "
            "(LUNAS_DATABASE_URL)\n")), (command, r.stderr)
    assert run(env, "migrate").returncode == 0
    assert run(env, "reviews", "list").returncode == 0


async def test_production_refuses_a_webhook_url_in_clear_or_at_a_private_address_when_set(
    migrated_env: dict[str, str],
) -> None:
    """In production a webhook URL over plain http (signed order data in clear) or naming a
    loopback, private or link-local address is refused when ops set it, with the reason, not
    left to fail every try for a day; ``LUNAS_WEBHOOK_ALLOW_HTTP`` / ``_ALLOW_PRIVATE`` let
    them, for merchants reached over a private network. Every refusal is in
    tests/unit/test_webhook_url.py."""
    env = migrated_env  # `lunas migrate` made its template
    shop = json.loads(run(env, "merchants", "create", "Toko Kopi", "--json").stdout)
    production = {**env, "LUNAS_ENV": "production", "LUNAS_MUTATION_PUSH_SECRET": "s3cret-push"}
    refusals = [("http://kopi.example.co.id/lunas", "must use https://"),
                ("https://169.254.169.254/latest", "169.254.169.254, not a public address")]
    *refused_all, created = run_each(
        production, *[("merchants", "set-webhook", shop["merchant_id"], url, "--actor", "sari")
                      for url, _ in refusals],
        ("merchants", "create", "Toko Teh", "--webhook-url", "https://10.1.2.3/lunas"))
    for (url, why), refused in zip(refusals, refused_all, strict=True):
        assert (refused.returncode, why in refused.stderr) == (1, True), (url, refused.stderr)
    assert created.returncode == 1 and "10.1.2.3, not a public address" in created.stderr
    row, audit = await _merchant_row(env["LUNAS_DATABASE_URL"], shop["merchant_id"])
    assert (row.webhook_url, audit) == (None, [])

    allowed = {**production, "LUNAS_WEBHOOK_ALLOW_HTTP": "1", "LUNAS_WEBHOOK_ALLOW_PRIVATE": "1"}
    for settings, url in [(production, "https://kopi.example.co.id/lunas"),
                          (allowed, "http://10.1.2.3:8080/lunas")]:
        moved = run(settings, "merchants", "set-webhook", shop["merchant_id"], url,
                    "--actor", "sari")
        assert moved.returncode == 0, moved.stderr
