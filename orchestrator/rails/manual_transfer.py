"""Manual bank transfer with a unique-code amount: the last-resort rail that needs no gateway.

The customer transfers ``amount + code`` to one of the merchant's accounts; the code makes the
transfer amount unique among the attempts that hold a code on that account, so a bank mutation of
that exact amount identifies the order. Uniqueness is the partial unique index
``uq_payment_attempts_held_transfer_amount`` — Python only proposes a candidate; the database
decides, so two concurrent captures can never share an amount.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.errors import NoPayoutAccount, UniqueCodesExhausted
from orchestrator.domain.ids import new_id
from orchestrator.domain.money import UniqueCodeRange
from orchestrator.domain.order import AttemptState
from orchestrator.store.merchants import PayoutAccount
from orchestrator.store.tables import payment_attempts

RAIL = "manual_transfer"
PROVIDER = "bank"


@dataclass(frozen=True, kw_only=True)
class TransferInstrument:
    attempt_id: str
    bank: str
    account_number: str
    account_name: str
    unique_code: int
    transfer_amount: int
    expires_at: datetime


async def issue_transfer(
    conn: AsyncConnection,
    *,
    order_id: str,
    amount: int,
    accounts: list[PayoutAccount],
    codes: UniqueCodeRange,
    tries: int,
    expires_at: datetime,
    now: datetime,
    rng: random.Random,
) -> TransferInstrument:
    """Insert an ``active`` manual-transfer attempt holding a free transfer amount.

    Accounts are tried in priority order. For each, the amounts already held are read once and a
    random free one is proposed; a concurrent capture that took it first makes the insert a no-op
    (``ON CONFLICT DO NOTHING`` on the partial index) and another is proposed.
    """
    if not accounts:
        raise NoPayoutAccount(
            "the merchant has no active payout account for manual transfer; add one with "
            "`lunas merchants add-account`"
        )
    for account in accounts:
        taken = await _held_amounts(conn, account, codes.transfer_amounts(amount))
        free = [a for a in codes.transfer_amounts(amount) if a not in taken]
        for candidate in rng.sample(free, min(tries, len(free))):
            attempt_id = new_id("att")
            row = _attempt_row(attempt_id, order_id, account, candidate, candidate - amount,
                               expires_at, now)
            if await _insert_if_free(conn, row):
                return TransferInstrument(
                    attempt_id=attempt_id, bank=account.bank,
                    account_number=account.account_number, account_name=account.account_name,
                    unique_code=candidate - amount, transfer_amount=candidate,
                    expires_at=expires_at,
                )
    raise UniqueCodesExhausted(
        f"every transfer amount for {amount} rupiah (codes {codes.low}-{codes.high}) is held by "
        "another open order on every payout account; retry later or add a payout account"
    )


async def _held_amounts(
    conn: AsyncConnection, account: PayoutAccount, amounts: range
) -> set[int]:
    rows = await conn.execute(
        sa.select(payment_attempts.c.transfer_amount).where(
            payment_attempts.c.payout_bank == account.bank,
            payment_attempts.c.payout_account_number == account.account_number,
            payment_attempts.c.holds_code,
            payment_attempts.c.transfer_amount.between(amounts.start, amounts.stop - 1),
        )
    )
    return {r[0] for r in rows}


def _attempt_row(
    attempt_id: str, order_id: str, account: PayoutAccount, transfer_amount: int, code: int,
    expires_at: datetime, now: datetime,
) -> dict[str, Any]:
    return {
        "id": attempt_id, "order_id": order_id, "rail": RAIL, "provider": PROVIDER,
        "state": AttemptState.ACTIVE.value, "transfer_amount": transfer_amount,
        "unique_code": code, "payout_bank": account.bank,
        "payout_account_number": account.account_number,
        "payout_account_name": account.account_name, "holds_code": True,
        "created_at": now, "updated_at": now, "expires_at": expires_at,
    }


async def _insert_if_free(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(payment_attempts)
        .values(**row)
        .on_conflict_do_nothing(
            index_elements=["payout_bank", "payout_account_number", "transfer_amount"],
            index_where=payment_attempts.c.holds_code,
        )
        .returning(payment_attempts.c.id)
    )
    return (await conn.execute(statement)).first() is not None
