"""Merchants, their API keys, payout accounts and the ops tokens of the people who run Lunas."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.ids import new_id
from orchestrator.services.credentials import (
    hash_secret,
    new_merchant_key,
    new_ops_token,
    new_webhook_secret,
)
from orchestrator.services.webhook_endpoints import valid_webhook_url
from orchestrator.store.tables import merchant_api_keys, merchants, ops_tokens, payout_accounts

OPS_SCOPES = ("reconciliation", "orders", "ops")


@dataclass(frozen=True, kw_only=True)
class Merchant:
    id: str
    name: str


@dataclass(frozen=True, kw_only=True)
class PayoutAccount:
    id: str
    bank: str
    account_number: str
    account_name: str


@dataclass(frozen=True, kw_only=True)
class NewMerchant:
    """What ``lunas merchants create`` prints once; only hashes of the key are stored."""

    merchant_id: str
    api_key: str
    webhook_secret: str
    accounts: tuple[PayoutAccount, ...]


@dataclass(frozen=True, kw_only=True)
class OpsPrincipal:
    token_id: str
    name: str
    scopes: frozenset[str]


async def create_merchant(
    conn: AsyncConnection,
    *,
    name: str,
    webhook_url: str | None,
    accounts: list[tuple[str, str, str]],
    now: datetime,
) -> NewMerchant:
    """``InvalidWebhookUrl`` for a URL no delivery could reach (``valid_webhook_url``)."""
    if webhook_url is not None:
        webhook_url = valid_webhook_url(webhook_url)
    merchant_id = new_id("mer")
    api_key, secret = new_merchant_key(), new_webhook_secret()
    await conn.execute(
        merchants.insert().values(
            id=merchant_id, name=name, webhook_url=webhook_url, webhook_secret=secret,
            created_at=now,
        )
    )
    await conn.execute(
        merchant_api_keys.insert().values(
            id=new_id("key"), merchant_id=merchant_id, key_hash=hash_secret(api_key),
            key_prefix=api_key[:12], created_at=now,
        )
    )
    created = []
    for priority, (bank, number, holder) in enumerate(accounts):
        account = PayoutAccount(
            id=new_id("acc"), bank=bank.lower(), account_number=number, account_name=holder
        )
        await conn.execute(
            payout_accounts.insert().values(
                id=account.id, merchant_id=merchant_id, bank=account.bank,
                account_number=number, account_name=holder, priority=priority, created_at=now,
            )
        )
        created.append(account)
    return NewMerchant(
        merchant_id=merchant_id, api_key=api_key, webhook_secret=secret, accounts=tuple(created)
    )


async def merchant_for_key(conn: AsyncConnection, api_key: str) -> Merchant | None:
    row = (
        await conn.execute(
            sa.select(merchants.c.id, merchants.c.name)
            .join(merchant_api_keys, merchant_api_keys.c.merchant_id == merchants.c.id)
            .where(
                merchant_api_keys.c.key_hash == hash_secret(api_key),
                merchant_api_keys.c.revoked_at.is_(None),
            )
        )
    ).first()
    return Merchant(id=row.id, name=row.name) if row else None


async def active_payout_accounts(conn: AsyncConnection, merchant_id: str) -> list[PayoutAccount]:
    rows = await conn.execute(
        sa.select(
            payout_accounts.c.id, payout_accounts.c.bank, payout_accounts.c.account_number,
            payout_accounts.c.account_name,
        )
        .where(payout_accounts.c.merchant_id == merchant_id, payout_accounts.c.active)
        .order_by(payout_accounts.c.priority, payout_accounts.c.id)
    )
    return [
        PayoutAccount(
            id=r.id, bank=r.bank, account_number=r.account_number, account_name=r.account_name
        )
        for r in rows
    ]


async def create_ops_token(
    conn: AsyncConnection, *, name: str, scopes: tuple[str, ...], now: datetime
) -> tuple[str, str]:
    """Returns (token id, token); the token itself is stored only as a hash."""
    unknown = set(scopes) - set(OPS_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(OPS_SCOPES)}")
    token, token_id = new_ops_token(), new_id("opt")
    await conn.execute(
        ops_tokens.insert().values(
            id=token_id, name=name, token_hash=hash_secret(token), scopes=",".join(scopes),
            created_at=now,
        )
    )
    return token_id, token


async def ops_principal_for_token(conn: AsyncConnection, token: str) -> OpsPrincipal | None:
    row = (
        await conn.execute(
            sa.select(ops_tokens.c.id, ops_tokens.c.name, ops_tokens.c.scopes).where(
                ops_tokens.c.token_hash == hash_secret(token), ops_tokens.c.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    return OpsPrincipal(token_id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")))
