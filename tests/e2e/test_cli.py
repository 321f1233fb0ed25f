"""The ``lunas`` command as an operator uses it: credentials once (and as JSON for scripts),
statement import from a file, and a refused file that imports nothing."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

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

    token = json.loads(run(env, "ops-tokens", "create", "finance", "--json").stdout)
    assert token["token"].startswith("lunas_ops_") and "reconciliation" in token["scopes"]
    assert run(env, "ops-tokens", "create", "x", "--scope", "root").returncode == 2

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
