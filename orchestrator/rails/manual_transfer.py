"""Manual bank transfer with a unique-code amount: the last-resort rail that needs no gateway.

The customer transfers ``amount + code`` to one of the merchant's accounts; the code makes the
transfer amount unique among the attempts that hold a code on that account, so a bank mutation of
that exact amount identifies the order. Uniqueness is the partial unique index
``uq_payment_attempts_held_transfer_amount`` — Python only proposes a candidate; the database
decides, so two concurrent captures can never share an amount.
"""

from __future__ import annotations

import functools
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
    blind_first: bool = True,
) -> TransferInstrument:
    """Insert an ``active`` manual-transfer attempt holding a free transfer amount.

    Accounts are tried in priority order. The first proposal on the first account is a random
    amount of the whole range, inserted straight away: while the range is mostly free it is
    accepted and the capture needs no read. If it is held, the amounts already held on each
    account are read once and a random free one is proposed; a concurrent capture that took it
    first makes the insert a no-op (``ON CONFLICT DO NOTHING`` on the partial index) and another
    is proposed. Either way the amount is uniform over the free amounts of the first account that
    has one, and exhaustion is only declared after reading every account. ``blind_first=False``
    skips the blind proposal, for a caller that made it already (``services/capture_statement``).
    """
    if not accounts:
        raise NoPayoutAccount(
            "the merchant has no active payout account for manual transfer; add one with "
            "`lunas merchants add-account`"
        )
    amounts = codes.transfer_amounts(amount)

    async def attempt(account: PayoutAccount, candidate: int) -> TransferInstrument | None:
        row, instrument = proposal(order_id=order_id, amount=amount, account=account,
                                   transfer_amount=candidate, expires_at=expires_at, now=now)
        return instrument if await _insert_if_free(conn, row) else None

    if tries > 0 and blind_first:
        row, instrument = first_proposal(order_id=order_id, amount=amount, accounts=accounts,
                                         codes=codes, expires_at=expires_at, now=now, rng=rng)
        if await _insert_if_free(conn, row):
            return instrument
    for account in accounts:
        taken = await _held_amounts(conn, account, amounts)
        free = [a for a in amounts if a not in taken] if taken else list(amounts)
        for candidate in rng.sample(free, min(tries, len(free))):
            if found := await attempt(account, candidate):
                return found
    raise UniqueCodesExhausted(
        f"every transfer amount for {amount} rupiah (codes {codes.low}-{codes.high}) is held by "
        "another open order on every payout account; retry later or add a payout account"
    )


def first_proposal(*, order_id: str, amount: int, accounts: list[PayoutAccount],
                   codes: UniqueCodeRange, expires_at: datetime, now: datetime,
                   rng: random.Random) -> tuple[dict[str, Any], TransferInstrument]:
    """``issue_transfer``'s blind first proposal (a random amount of the whole range on the
    first account), for a caller that inserts it itself."""
    return proposal(order_id=order_id, amount=amount, account=accounts[0],
                    transfer_amount=rng.choice(codes.transfer_amounts(amount)),
                    expires_at=expires_at, now=now)


def proposal(*, order_id: str, amount: int, account: PayoutAccount, transfer_amount: int,
             expires_at: datetime, now: datetime) -> tuple[dict[str, Any], TransferInstrument]:
    """The attempt row that would hold ``transfer_amount`` on ``account``, and the instructions
    it stands for."""
    attempt_id = new_id("att")
    code = transfer_amount - amount
    row = _attempt_row(attempt_id, order_id, account, transfer_amount, code, expires_at, now)
    return row, TransferInstrument(
        attempt_id=attempt_id, bank=account.bank, account_number=account.account_number,
        account_name=account.account_name, unique_code=code, transfer_amount=transfer_amount,
        expires_at=expires_at,
    )


# Statements are built once (per dialect) and executed with parameters: building and hashing a
# new statement per capture cost more CPU than the database spent running it.
_HELD_AMOUNTS = sa.select(payment_attempts.c.transfer_amount).where(
    payment_attempts.c.payout_bank == sa.bindparam("bank"),
    payment_attempts.c.payout_account_number == sa.bindparam("account_number"),
    payment_attempts.c.holds_code,
    payment_attempts.c.transfer_amount.between(sa.bindparam("low"), sa.bindparam("high")),
)


async def _held_amounts(
    conn: AsyncConnection, account: PayoutAccount, amounts: range
) -> set[int]:
    rows = await conn.execute(_HELD_AMOUNTS, {
        "bank": account.bank, "account_number": account.account_number,
        "low": amounts.start, "high": amounts.stop - 1,
    })
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


@functools.cache
def _insert_attempt(dialect_name: str) -> Any:
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    return (
        insert(payment_attempts)
        .on_conflict_do_nothing(
            index_elements=["payout_bank", "payout_account_number", "transfer_amount"],
            index_where=payment_attempts.c.holds_code,
        )
        .returning(payment_attempts.c.id)
    )


async def _insert_if_free(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    statement = _insert_attempt(conn.dialect.name)
    return (await conn.execute(statement, row)).first() is not None
