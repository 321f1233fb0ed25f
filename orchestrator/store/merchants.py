"""Merchants, their API keys, payout accounts and the ops tokens of the people who run Lunas."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.ids import new_id
from orchestrator.notify.egress import OPEN, EgressPolicy
from orchestrator.reconciliation.statements import SUPPORTED_BANKS
from orchestrator.services.credentials import (
    hash_secret,
    new_merchant_key,
    new_ops_token,
    new_webhook_secret,
)
from orchestrator.services.webhook_endpoints import valid_webhook_url
from orchestrator.store.database import upsert_insert
from orchestrator.store.tables import merchant_api_keys, merchants, ops_tokens, payout_accounts

OPS_SCOPES = ("reconciliation", "ops")
"""What an ops token may do: ``reconciliation`` (statements, matches, reviews) and ``ops`` (routes,
maintenance, breakers, dead letters, status incidents). An ``orders`` scope was offered once and
checked by nothing; a token that still carries it gains nothing from it."""
PAYOUT_BANKS = SUPPORTED_BANKS
"""Banks a payout account may be at: those whose statements Lunas imports and whose Moota bank
types it maps (``moota.bank_of_type``). A transfer to an account at any other bank could never
be matched, so its orders would only ever expire."""
ACCOUNT_NUMBER = re.compile(r"[0-9]{10,16}")
"""A bank account number: BCA's have 10 digits, Mandiri's 13, BRI's 15."""


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


def payout_account_problem(bank: str, number: str) -> str | None:
    """Why (bank, number) cannot be a payout account, or None. ``bank`` in lower case.

    One (bank, number) may be the payout account of several merchants (a company's shops on
    the company's account): the amount a transfer attempt holds is unique on the account
    whichever merchant's it is, and a reference names one order, so a credit on it still
    finds the order it pays."""
    if bank not in PAYOUT_BANKS:
        return (f"bank {bank!r} is not one whose statements Lunas reads; payout accounts are at "
                f"{', '.join(PAYOUT_BANKS)}")
    if not ACCOUNT_NUMBER.fullmatch(number):
        return f"account number {number!r} is not 10 to 16 digits"
    return None


async def create_merchant(
    conn: AsyncConnection,
    *,
    name: str,
    webhook_url: str | None,
    accounts: list[tuple[str, str, str]],
    now: datetime,
    egress: EgressPolicy = OPEN,
) -> NewMerchant:
    """Raises ``ValueError`` for an account Lunas cannot read, or one given twice, and
    ``InvalidWebhookUrl`` for a URL no delivery could reach or ``egress`` does not allow
    (``valid_webhook_url``; the CLI passes the settings' ``webhook_egress``)."""
    seen: set[tuple[str, str]] = set()
    for bank, number, _ in accounts:
        if problem := payout_account_problem(bank.lower(), number):
            raise ValueError(problem)
        if (bank.lower(), number) in seen:
            raise ValueError(f"{bank.upper()} {number} is given twice")
        seen.add((bank.lower(), number))
    if webhook_url is not None:
        webhook_url = valid_webhook_url(webhook_url, egress)
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


async def add_payout_account(
    conn: AsyncConnection, *, merchant_id: str, bank: str, number: str, holder: str,
    now: datetime,
) -> PayoutAccount | None:
    """Add an account after the merchant's others; None if the merchant has it already (the
    unique constraint decides). Raises ``ValueError`` for an account Lunas cannot read."""
    bank = bank.lower()
    if problem := payout_account_problem(bank, number):
        raise ValueError(problem)
    account = PayoutAccount(id=new_id("acc"), bank=bank, account_number=number,
                            account_name=holder)
    added = await conn.execute(
        upsert_insert(conn.dialect.name)(payout_accounts).values(
            id=account.id, merchant_id=merchant_id, bank=bank, account_number=number,
            account_name=holder, priority=100, created_at=now,
        ).on_conflict_do_nothing(index_elements=["merchant_id", "bank", "account_number"])
        .returning(payout_accounts.c.id))
    return account if added.first() is not None else None


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
