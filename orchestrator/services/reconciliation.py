"""Reconciliation: bank mutations in (statement files, signed pushes), matched to orders, settled.

An import is one transaction: a file that fails to parse stores nothing, and a file that parses
is stored, deduplicated by fingerprint and matched together, so a crash leaves either all of it
or none. Re-importing an overlapping statement inserts nothing new (the fingerprint is unique),
so a transaction PostgreSQL ends to break a deadlock is simply run again (``_INGEST_ATTEMPTS``).

On PostgreSQL a statement is stored and matched as a batch (``_ingest_batch``): its lines are
copied once into a temporary table, the lines ``plan_batch``'s rules prove independent of each
other are decided (``decide``'s window, in SQL) and settled with a few set-based statements, and
the rest go through the line-by-line path (``_match``) in file order. Both paths write the same
rows. Imports of one account are serialised by an advisory lock, so the fingerprints a batch
finds free stay free until it commits; the unique constraint still refuses any duplicate (the
INSERT then fails and the whole import rolls back). Pushes, feeds and SQLite use the
line-by-line path.

A debit that may take back a payment is found from either side: a debit stored is judged
against the credits matched by then, a credit matched against the debits stored before it. Two
ingests of one account running at once would each miss the other's uncommitted rows, so every
judging on PostgreSQL is done under the account's lock, or again after it: a statement import
waits for the lock; a push or a poll, which must not wait a long import out, takes it only if
it is free, and otherwise queues its debits and matched credits, in its own transaction, to be
judged again by the outbox relay once the lock is free (``judge_again``); a credit a person
matches by hand is judged as a push's is (``_judge_matched_by_hand``). Of two ingests that
miss each other, one at least took no lock, and its judging again sees both: it starts after its
own commit, and the other, if it held the lock, had it before that commit (it would have seen
these rows otherwise), so the judging again waits for it to commit; if neither held it, the
judging again of the one that committed last comes after both.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.clock import WIB, Clock
from orchestrator.domain.errors import (
    AlreadyMatched,
    LikelyDuplicate,
    NotFound,
    NotTheMerchantsAccount,
    StatementRejected,
)
from orchestrator.domain.ids import new_id
from orchestrator.domain.order import (
    ORDER_EVENT_ON_ENTRY,
    AttemptState,
    OrderState,
    RecommendedAction,
    ReviewReason,
)
from orchestrator.outbox.relay import OutboxEvent
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import Rail
from orchestrator.reconciliation.batch import settle_rule
from orchestrator.reconciliation.bulk_ids import id_stream
from orchestrator.reconciliation.fingerprint import fingerprint_moota, iter_fingerprints
from orchestrator.reconciliation.matcher import (
    BANK_CLOCK_SKEW,
    DAY_DATED_SLACK,
    FOR_PEOPLE,
    LIKELY_DUPLICATE,
    ORDER_REFERENCE,
    REVERSAL,
    REVERSAL_WINDOW,
    Candidate,
    MatchKind,
    MutationFacts,
    decide,
    referenced_order_ids,
    reversal_window,
)
from orchestrator.reconciliation.moota import (
    MootaMutation,
    UnreadableItem,
    bank_of_type,
    parse_moota_push,
    unreadable_item,
)
from orchestrator.reconciliation.statements import StatementRows, read_statement
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import idr_sql, iso, iso_sql, wib, wib_sql
from orchestrator.services.reviews import close_cases_of_credit
from orchestrator.services.settlement import Payment, apply_payment, open_review_case
from orchestrator.services.unreadable_feed_items import MOOTA, UnreadableFeedItems
from orchestrator.store import keyset
from orchestrator.store.database import (
    DEADLOCK_DETECTED,
    SERIALIZATION_FAILURE,
    Database,
    rolled_back_by,
    upsert_insert,
)
from orchestrator.store.tables import (
    mutations,
    orders,
    payment_attempts,
    payout_accounts,
    review_cases,
    statements,
)
from orchestrator.telemetry.metrics import Metrics

_INGEST_ATTEMPTS = 3
"""Tries of an ingest's transaction (a push, a poll, a statement): a deadlock it meets twice in
a row is not chance."""
_DEADLOCK = frozenset({DEADLOCK_DETECTED})
_ROLLED_BACK = frozenset({DEADLOCK_DETECTED, SERIALIZATION_FAILURE})
"""Why PostgreSQL may end a statement import's transaction while the import itself is sound."""


class AccountBusy(Exception):
    """An ingest of the account holds its lock: the relay judges again later, on its back-off."""


@dataclass(kw_only=True)
class ImportReport:
    parsed: int = 0
    new: int = 0
    duplicate: int = 0
    matched: int = 0
    ambiguous: int = 0
    unmatched: int = 0
    ignored_debits: int = 0
    needs_review: int = 0
    skipped_pending: int = 0
    unreadable: int = 0
    """Moota items set aside for a person: not readable mutations, or on an account number at
    several banks without saying which."""
    possible_reversals: int = 0
    """Debits that may take back a credit that paid an order: a review case each."""
    statement_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Debit:
    """A debit an ingest stored, to be looked at as a possible reversal."""

    mutation_id: str
    bank: str
    account_number: str
    amount: int
    posted_at: datetime


@dataclass(frozen=True, kw_only=True)
class IncomingMutation:
    bank: str
    account_number: str
    posted_at: datetime
    amount: int
    direction: str
    description: str
    balance: int | None
    source: str
    fingerprint: str


class _Tally:
    """The mutation metrics of one try of an ingest's transaction, added once it commits: a try
    PostgreSQL rolls back (and Lunas runs again) stored nothing, so it must count nothing."""

    def __init__(self) -> None:
        self._ingested: dict[tuple[str, str], int] = {}
        self._matched: dict[tuple[str, str], int] = {}

    def ingested(self, source: str, result: str, n: int = 1) -> None:
        self._ingested[source, result] = self._ingested.get((source, result), 0) + n

    def matched(self, source: str, kind: MatchKind, n: int = 1) -> None:
        self._matched[source, kind.value] = self._matched.get((source, kind.value), 0) + n

    def add_to(self, metrics: Metrics) -> None:
        for labels, n in self._ingested.items():
            metrics.mutations_ingested.labels(*labels).inc(n)
        for labels, n in self._matched.items():
            metrics.mutations_matched.labels(*labels).inc(n)


class ReconciliationService:
    def __init__(
        self, db: Database, *, clock: Clock, quarantine: timedelta, metrics: Metrics,
        batch_statements: bool = True, reversal_window: timedelta = REVERSAL_WINDOW,
    ) -> None:
        """``batch_statements=False`` imports statements line by line on PostgreSQL too: the
        reference the batch path is tested against. A zero ``reversal_window`` looks for no
        possible reversals."""
        self._db, self._clock, self._quarantine = db, clock, quarantine
        self._metrics = metrics
        self._batch = batch_statements
        self._reversal_window = reversal_window
        self._unreadable = UnreadableFeedItems(db)

    async def import_statement(
        self, *, bank: str, account_number: str, data: bytes, filename: str | None, actor: str,
        timings: dict[str, float] | None = None,
    ) -> ImportReport:
        """Parse, store and match one statement file in one transaction.

        ``timings``, when given, receives the seconds spent per phase: ``parse`` (bytes to
        fingerprinted lines), ``match`` (candidates, decisions, row locks and the line-by-line
        path), ``store`` (mutation rows, settlement writes, commit) and ``total``.
        """
        phases = _Phases()
        # Up to a second of CPU for a large file: in a thread, so captures and webhooks are
        # served meanwhile instead of waiting for the parse. Errors (StatementRejected) come
        # back through the await unchanged.
        parsed = await asyncio.to_thread(_parse_statement, bank.lower(), data, account_number)
        phases.lap("parse")
        for attempt in range(1, _INGEST_ATTEMPTS + 1):
            try:
                report = await self._import_once(parsed, data, filename=filename, actor=actor,
                                                 phases=phases)
            except Exception as exc:  # the batch path raises asyncpg's own errors
                if attempt == _INGEST_ATTEMPTS or not rolled_back_by(exc, _ROLLED_BACK):
                    raise
                self._metrics.mutation_ingests_retried.labels("statement").inc()
                continue
            if timings is not None:
                timings.update(phases.seconds, total=phases.total)
            return report
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _import_once(self, parsed: StatementRows, data: bytes, *, filename: str | None,
                           actor: str, phases: _Phases) -> ImportReport:
        """One try of a statement's transaction. PostgreSQL may end it to break a deadlock
        (40P01) or, under a stricter isolation than ours, a serialization failure (40001):
        then nothing of it was stored, and the caller runs it again, with a new statement id
        and the clock read again. Even if some of it had been, the fingerprints would make a
        repeat add nothing."""
        report = ImportReport(parsed=len(parsed.lines), skipped_pending=parsed.skipped_pending)
        now, tally = self._clock.now(), _Tally()
        async with self._db.transaction() as conn:
            report.statement_id = new_id("stm")
            await conn.execute(statements.insert().values(
                id=report.statement_id, bank=parsed.bank, account_number=parsed.account_number,
                filename=filename, sha256=hashlib.sha256(data).hexdigest(), uploaded_by=actor,
                counts={}, created_at=now,
            ))
            await _lock_account(conn, parsed.bank, parsed.account_number)
            if self._batch and conn.dialect.name == "postgresql":
                await self._ingest_batch(conn, parsed, report, statement_id=report.statement_id,
                                         now=now, phases=phases, tally=tally)
            else:
                await self._ingest(conn, _incoming(parsed), report,
                                   statement_id=report.statement_id, now=now, tally=tally)
                phases.lap("match")
            counts = {k: v for k, v in asdict(report).items() if k != "statement_id"}
            await conn.execute(statements.update().where(statements.c.id == report.statement_id)
                               .values(counts=counts))
            await record_audit(conn, actor=actor, action="statement.imported",
                               subject_type="statement", subject_id=report.statement_id,
                               details=counts, now=now)
        tally.add_to(self._metrics)
        phases.lap("store")
        return report

    async def ingest_push(self, raw_body: bytes) -> ImportReport:
        """Store and match a Moota-style push whose signature the caller has verified. Its
        unreadable items are set aside for a person, and a readable version of one set aside
        before closes it, as the feed poller does. Unlike a poll, a push has no limit on them:
        refused, it would be sent again as it is; kept, every item is in a person's list and
        the alert says so, however many there are."""
        pushed = parse_moota_push(raw_body)
        now = self._clock.now()
        await self._unreadable.keep(MOOTA, pushed.unreadable, now=now)
        report = await self._ingest_moota(pushed.mutations, source="push")
        report.unreadable += len(pushed.unreadable)
        await self._unreadable.close_read(MOOTA, now=now)
        return report

    async def ingest_feed(self, items: Sequence[MootaMutation]) -> ImportReport:
        """Store and match mutations read from the Moota feed (``GET /mutation``). Same store and
        fingerprint as the push, so a mutation seen by both is stored once."""
        return await self._ingest_moota(items, source="feed")

    async def _ingest_moota(self, items: Sequence[MootaMutation], *, source: str
                            ) -> ImportReport:
        """Book each item to its bank (``_moota_banks``), set aside those whose bank cannot be
        told, and store and match the rest (``_ingest_moota_stored``)."""
        banks = await self._moota_banks(items)
        readings = await self._numbers_read_as(items)
        booked: list[tuple[MootaMutation, str]] = []
        aside: list[UnreadableItem] = []
        for m in items:
            bank = banks[m.mutation_id]
            if m.account_sent_as_number and readings.get(m.account_number) != {m.account_number}:
                aside.append(_zeros_lost(m, readings.get(m.account_number, set())))
            elif isinstance(bank, str):
                booked.append((m, bank))
            else:
                aside.append(_bank_untold(m, bank))
        await self._unreadable.keep(MOOTA, aside, now=self._clock.now())
        report = await self._ingest_moota_stored(booked, source=source)
        report.parsed, report.unreadable = len(items), len(aside)
        return report

    async def _numbers_read_as(self, items: Sequence[MootaMutation]) -> dict[str, set[str]]:
        """Per account number Moota sent as a JSON number, the payout account numbers it may
        stand for: those that are the number once their leading zeros are dropped.

        A JSON number keeps no leading zero, so 123456789 may be account 0123456789. The
        number is read as it is only when it is exactly one payout account's number and no
        other's with zeros before it (BCA's numbers are all 10 digits, so no BCA account is
        both): then it names the same account a string would, and the bank is told as for a
        string. Anything else is set aside for a person: booked as it came, the money was
        stored under no payout account and matched nothing with nobody told; padded to a
        guessed length, it could pay an order with money on another account."""
        numbers = {m.account_number for m in items if m.account_sent_as_number}
        if not numbers:
            return {}
        p = payout_accounts.c
        short = sa.func.ltrim(p.account_number, "0")
        async with self._db.read() as conn:
            found = await conn.execute(sa.select(short, p.account_number).distinct().where(
                short.in_(sorted({n.lstrip("0") for n in numbers}))))
            accounts = [(str(s), str(n)) for s, n in found]
        return {number: {n for s, n in accounts if s == number.lstrip("0")}
                for number in numbers}

    async def _moota_banks(self, items: Sequence[MootaMutation]
                           ) -> dict[str, str | frozenset[str]]:
        """Per Moota mutation id, the bank to book it to, or the banks it may be at when the
        item does not say which and more than one has a payout account of its number.

        The bank the item names (``bank.bank_type``, ``bank_of_type``) is taken as it is, even
        where no payout account has the number: a transfer to a BSI account is not a transfer
        to the BCA account of the same number. Without one (or with a type Lunas does not
        know), the number's only bank is taken; a number no payout account has is booked to
        ``unknown`` (stored for finance, matching nothing). A number at two banks is never
        guessed between: the guess (the first bank found) once paid a BCA order with money on
        a BRI account of the same number."""
        p = payout_accounts.c
        named = {m.mutation_id: bank_of_type(m.bank_type) for m in items
                 if m.bank_type is not None}
        numbers = sorted({m.account_number for m in items if named.get(m.mutation_id) is None})
        registered: dict[str, set[str]] = {}
        if numbers:
            async with self._db.read() as conn:
                for number, bank in await conn.execute(sa.select(p.account_number, p.bank)
                                                       .where(p.account_number.in_(numbers))
                                                       .distinct()):
                    registered.setdefault(number, set()).add(bank)
        banks: dict[str, str | frozenset[str]] = {}
        for m in items:
            if (bank := named.get(m.mutation_id)) is not None:
                banks[m.mutation_id] = bank
                continue
            at = registered.get(m.account_number, set())
            banks[m.mutation_id] = (frozenset(at) if len(at) > 1
                                    else next(iter(at), "unknown"))
        return banks

    async def _ingest_moota_stored(self, items: Sequence[tuple[MootaMutation, str]], *,
                                   source: str) -> ImportReport:
        """Store and match Moota items in one transaction, run again if PostgreSQL ends it to
        break a deadlock: nothing of it was stored, and a push refused would be lost unless
        Moota sends it again (a poll would read it again, only later). Ingests and statement
        imports lock every order they may settle or flag in id order, in one statement, before
        any attempt (``_ingest``, ``_LOCK_ORDERS``), and the quarantine release passes by rows
        others hold; what is left is an order that came within reach after that statement: a
        credit another transaction matched meanwhile, which a debit then flags, or an amount
        an attempt began to hold meanwhile."""
        for attempt in range(1, _INGEST_ATTEMPTS + 1):
            try:
                return await self._ingest_moota_once(items, source=source)
            except DBAPIError as exc:
                if attempt == _INGEST_ATTEMPTS or not rolled_back_by(exc, _DEADLOCK):
                    raise
                self._metrics.mutation_ingests_retried.labels(source).inc()
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _ingest_moota_once(self, items: Sequence[tuple[MootaMutation, str]], *,
                                 source: str) -> ImportReport:
        now = self._clock.now()
        report = ImportReport(parsed=len(items))
        incoming = [
            IncomingMutation(
                bank=bank, account_number=m.account_number, posted_at=m.posted_at,
                amount=m.amount, direction=m.direction, description=m.description,
                balance=m.balance, source=source, fingerprint=fingerprint_moota(m.mutation_id),
            )
            for m, bank in items
        ]
        tally = _Tally()
        async with self._db.transaction() as conn:
            busy = await _accounts_busy(conn, incoming)
            judged = await self._ingest(conn, incoming, report, statement_id=None, now=now,
                                        tally=tally)
            await self._judge_later(conn, [(mutation_id, item) for mutation_id, item in judged
                                           if (item.bank, item.account_number) in busy], now=now)
        tally.add_to(self._metrics)
        return report

    async def _judge_later(self, conn: AsyncConnection,
                           judged: Sequence[tuple[str, IncomingMutation]], *, now: datetime
                           ) -> None:
        """Queue these debits and matched credits, judged without their account's lock, to be
        judged again under it (``judge_again``): one event per account, in this transaction,
        so it exists if and only if they were stored."""
        if not self._reversal_window or not judged:
            return
        by_account: dict[tuple[str, str], list[str]] = {}
        for mutation_id, item in judged:
            by_account.setdefault((item.bank, item.account_number), []).append(mutation_id)
        await add_events(conn, [PendingEvent(
            event_type=events.MUTATIONS_JUDGE_AGAIN, aggregate_id=ids[0], merchant_id=None,
            payload={"bank": bank, "account_number": account, "mutation_ids": ids},
        ) for (bank, account), ids in sorted(by_account.items())], now=now)

    def handlers(self) -> dict[str, Any]:
        return {events.MUTATIONS_JUDGE_AGAIN: self.judge_again}

    async def judge_again(self, event: OutboxEvent) -> None:
        """Judge a push's or a poll's debits and matched credits (or a credit matched by hand)
        again, under their account's lock, after they committed: what an ingest that held the
        lock meanwhile did not see (these rows, not yet committed), this sees (that ingest's,
        committed before the lock was free). A debit judged already (not ``ignored``) is left
        alone, and ``_flag_reversals`` opens no second case for an order taken back already,
        so a try run again (a worker died before recording it) opens nothing twice. While
        another ingest holds the lock, raises ``AccountBusy``: the relay tries again later."""
        bank, account = str(event.payload["bank"]), str(event.payload["account_number"])
        ids = [str(i) for i in event.payload["mutation_ids"]]
        now, report = self._clock.now(), ImportReport()
        async with self._db.transaction() as conn:
            if not await _lock_account(conn, bank, account, wait=False):
                raise AccountBusy(f"an ingest of {bank} account ending {account[-4:]} holds "
                                  "its lock; its mutations are judged again after it")
            m = mutations.c
            rows = (await conn.execute(sa.select(mutations).where(m.id.in_(ids))
                                       .order_by(m.posted_at, m.id))).all()
            debits = [Debit(mutation_id=r.id, bank=r.bank, account_number=r.account_number,
                            amount=r.amount, posted_at=r.posted_at) for r in rows
                      if r.direction == "DB" and r.match_state == MatchKind.IGNORED.value]
            credits = [_incoming_of(r) for r in rows
                       if r.direction == "CR" and r.match_state == MatchKind.MATCHED.value]
            earlier = await self._debits_stored_before(
                conn, credits, these={d.mutation_id for d in debits})
            await self._flag_reversals(conn, [*debits, *earlier], report, now=now)

    async def _ingest(
        self, conn: AsyncConnection, incoming: Sequence[IncomingMutation], report: ImportReport,
        *, statement_id: str | None, now: datetime, tally: _Tally,
    ) -> list[tuple[str, IncomingMutation]]:
        """Store every item, then match the new ones in the order given; the new debits and
        the credits matched, judged as possible reversals, by mutation id.

        Locks are taken in one global order, so ingests of the same credits (a push and a poll
        listing the same Moota mutations in different orders, a push beside a statement's
        batch) wait for each other instead of deadlocking: rows are inserted in fingerprint
        order (an insert waits for another ingest's uncommitted row of the same fingerprint),
        then every order a new item may settle or flag is locked in id order, as the batch path
        does, before any attempt is. Storing all rows before matching any decides each item as
        storing it just before matching it did: a match reads attempts, orders and the matched
        mutations of its order, never the unmatched rows this ingest is storing."""
        ids = [new_id("mut") for _ in incoming]  # numbered in item order, as they always were
        stored = await _store(conn, incoming, ids, statement_id=statement_id, now=now)
        new: list[tuple[str, IncomingMutation]] = []
        for mutation_id, item, fresh in zip(ids, incoming, stored, strict=True):
            outcome = "new" if fresh else "duplicate"
            tally.ingested(item.source, outcome)
            if fresh:
                new.append((mutation_id, item))
        report.new += len(new)
        report.duplicate += len(incoming) - len(new)
        await _lock_orders_in_reach(conn, [item for _, item in new],
                                    window=self._reversal_window)
        debits: list[Debit] = []
        credits: list[IncomingMutation] = []
        judged: list[tuple[str, IncomingMutation]] = []
        for mutation_id, item in new:
            kind = await self._match(conn, mutation_id, item, report, now=now)
            tally.matched(item.source, kind)
            if item.direction == "DB":
                debits.append(Debit(mutation_id=mutation_id, bank=item.bank,
                                    account_number=item.account_number, amount=item.amount,
                                    posted_at=item.posted_at))
            elif kind is MatchKind.MATCHED:
                credits.append(item)
            else:
                continue
            judged.append((mutation_id, item))
        earlier = await self._debits_stored_before(
            conn, credits, these={d.mutation_id for d in debits})
        await self._flag_reversals(conn, [*debits, *earlier], report, now=now)
        return judged

    async def _ingest_batch(
        self, conn: AsyncConnection, parsed: StatementRows, report: ImportReport, *,
        statement_id: str, now: datetime, phases: _Phases, tally: _Tally,
    ) -> None:
        """The rows ``_ingest`` would write, written set-based (module docstring).

        The lines are copied once into a temporary table; PostgreSQL drops those already
        stored, plans the rest by ``plan_batch``'s rules (``_PLAN``), locks the planned orders,
        pays each attempt whose match still holds under its own lock and settles an open order
        (``_SETTLE``), and writes every mutation, evidence row, state change and event with
        one statement each. Only the lines the plan cannot decide come back to
        Python, for ``_match`` in file order."""
        lines = parsed.lines
        if not lines:
            return
        pg = await _driver(conn)
        bank, account, source = parsed.bank, parsed.account_number, "statement"
        await pg.execute(_TUNE)
        await pg.execute(_CREATE_LINES)
        prints = iter_fingerprints(bank, account, lines)
        mutation_ids, event_ids = id_stream("mut"), id_stream("evt")
        await pg.copy_records_to_table("lunas_import_lines", columns=list(_LINE_COLUMNS),
                                       records=(
            (n, next(mutation_ids), next(event_ids) if direction == "CR" else None, print_,
             posted_at, amount, direction, description[:1000], balance,
             _references(description) if direction == "CR" else None)
            for n, ((_, posted_at, amount, direction, description, balance), print_)
            in enumerate(zip(lines, prints, strict=True))))
        duplicate = await pg.fetch(_DROP_DUPLICATES)
        await pg.execute("ANALYZE lunas_import_lines")  # a temporary table has no statistics
        phases.lap("store")
        new = len(lines) - len(duplicate)
        ignored = sum(1 for line in lines if line[3] != "CR") - sum(
            1 for r in duplicate if r["direction"] != "CR")
        counts: dict[str, int] = {}
        sequential: list[int] = []
        # Debits stored before this import that its credits may turn out to have been taken
        # back by (_debits_stored_before): asked before its own lines are stored, so only
        # earlier ones are found; none, on an account with no debit left unclaimed in its days.
        earlier: list[str] = await pg.fetchval(
            _EARLIER_DEBITS, bank, account, self._reversal_window, DAY_DATED_SLACK,
        ) if new and self._reversal_window else []
        if new:
            await pg.execute(_PLAN, bank, account, source)
            await pg.fetchval(_LOCK_ORDERS, bank, account, self._reversal_window,
                              DAY_DATED_SLACK)
            rule = settle_rule()
            await pg.execute(_SETTLE, bank, account, list(rule.from_pairs), rule.attempt_to,
                             rule.order_to, now, now + self._quarantine)
            for r in await pg.fetch(_OUTCOMES):
                counts[r["kind"]] = r["n"]
                if r["kind"] == "sequential":
                    sequential = list(r["lines"])
            phases.lap("match")
            await pg.execute(_INSERT_MUTATIONS, bank, account, source, statement_id,
                             MatchKind.IGNORED.value, MatchKind.MATCHED.value,
                             MatchKind.UNMATCHED.value, now)
            if counts.get("matched"):
                await self._settle_batch(conn, pg, counts["matched"], now=now)
            phases.lap("store")
        for r in await pg.fetch(_SEQUENTIAL_LINES, sequential) if sequential else []:
            _, posted_at, amount, direction, description, balance = lines[r["idx"]]
            item = IncomingMutation(
                bank=bank, account_number=account, posted_at=posted_at, amount=amount,
                direction=direction, description=description, balance=balance, source=source,
                fingerprint=r["fingerprint"])
            kind = await self._match(conn, r["id"], item, report, now=now)
            tally.matched(source, kind)
        # Debits stored as ignored above that may take back a matched credit: few, if any.
        suspects = await pg.fetch(_REVERSAL_SUSPECTS, bank, account, self._reversal_window,
                                  DAY_DATED_SLACK) if new and self._reversal_window else []
        if earlier:
            suspects += await pg.fetch(_EARLIER_SUSPECTS, bank, account, self._reversal_window,
                                       DAY_DATED_SLACK, earlier, statement_id)
        await self._flag_reversals(conn, [
            Debit(mutation_id=r["id"], bank=bank, account_number=account, amount=r["amount"],
                  posted_at=r["posted_at"]) for r in suspects], report, now=now)
        phases.lap("match")
        unmatched, matched = counts.get("unmatched", 0), counts.get("matched", 0)
        report.new += new
        report.duplicate += len(duplicate)
        report.ignored_debits += ignored
        report.unmatched += unmatched
        report.matched += matched
        for label, count in (("new", new), ("duplicate", len(duplicate))):
            tally.ingested(source, label, count)
        for kind, count in ((MatchKind.IGNORED, ignored), (MatchKind.UNMATCHED, unmatched),
                            (MatchKind.MATCHED, matched)):
            tally.matched(source, kind, count)

    async def _settle_batch(
        self, conn: AsyncConnection, pg: Any, settled: int, *, now: datetime
    ) -> None:
        """The rest of ``apply_payment`` for the attempts ``_SETTLE`` paid (each now holding its
        amount through the quarantine): evidence, order moved, its other attempts retired, and
        one event per order for the merchant."""
        written = await pg.execute(_INSERT_EVIDENCE, now)
        if written != f"INSERT 0 {settled}":
            raise RuntimeError(f"batch settlement wrote {written!r} for {settled} payments")
        held_until = now + self._quarantine
        await pg.execute(_MOVE_ORDERS, now)
        retired = await pg.fetch(_RETIRE_OTHERS, now, held_until)
        await pg.execute(_HOLD_CLOSED_OTHERS, now, held_until)
        await add_events(conn, [
            PendingEvent(event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=r["id"],
                         merchant_id=None, payload={"attempt_id": r["id"]})
            for r in retired if r["rail"] != Rail.MANUAL_TRANSFER.value
        ], now=now)
        await pg.execute(_INSERT_ORDER_EVENTS, now, ORDER_EVENT_ON_ENTRY[OrderState.PAID],
                         iso(now), wib(now))

    async def _match(
        self, conn: AsyncConnection, mutation_id: str, item: IncomingMutation,
        report: ImportReport, *, now: datetime,
    ) -> MatchKind:
        facts = MutationFacts(amount=item.amount, direction=item.direction,
                              posted_at=item.posted_at, description=item.description)
        candidates = await _candidates(conn, item) if item.direction == "CR" else []
        decision = decide(facts, candidates)
        if decision.kind is MatchKind.IGNORED:
            report.ignored_debits += 1
            await _set_match_state(conn, mutation_id, MatchKind.IGNORED.value)
        elif decision.kind is MatchKind.UNMATCHED:
            report.unmatched += 1
        elif decision.kind is MatchKind.AMBIGUOUS:
            report.ambiguous += 1
            await _set_match_state(conn, mutation_id, MatchKind.AMBIGUOUS.value)
        elif await self._seen_from_another_source(conn, mutation_id, decision.attempt_id,
                                                  item, now=now) is not None:
            report.ambiguous += 1
            report.needs_review += 1
            return MatchKind.AMBIGUOUS
        else:
            assert decision.attempt_id is not None
            result = await self._settle(conn, mutation_id, decision.attempt_id, item,
                                        actor="matcher", now=now)
            report.matched += 1
            report.needs_review += int(result.review_case_id is not None)
        return decision.kind

    async def _debits_stored_before(self, conn: AsyncConnection,
                                    credits: Sequence[IncomingMutation], *, these: set[str]
                                    ) -> list[Debit]:
        """Debits stored before these credits, by an earlier ingest, that may have taken one
        of them back, for ``_flag_reversals`` to decide as it decides a debit it stores.

        A debit is looked at when it is stored, against the credits matched by then. Stored
        before the credit it takes back (statements uploaded out of order, or the credit's
        push lost and the credit caught later by the poll or a statement, the debit pushed),
        it found none, and the order stayed paid for money that went back. So a credit
        matched now looks the other way: the debits of its amount on its account still
        unclaimed (``ignored``: not a reversal of another credit already) whose
        ``reversal_window`` holds it. ``these`` are this ingest's own debits, decided already.
        ``_flag_reversals`` then applies its own rules: the latest credit in the debit's
        window, a case only if that order was not taken back already."""
        if not self._reversal_window or not credits:
            return []
        m = mutations.c
        found: list[Debit] = []
        for (bank, account), matched in _by_account(credits).items():
            rows = await conn.execute(
                sa.select(m.id, m.amount, m.posted_at)
                .where(m.account_number == account, m.match_state == MatchKind.IGNORED.value,
                       m.direction == "DB", m.bank == bank,
                       m.posted_at >= min(c.posted_at for c in matched) - DAY_DATED_SLACK,
                       m.posted_at <= max(c.posted_at for c in matched) + self._reversal_window,
                       m.amount.in_(sorted({c.amount for c in matched})))
                .order_by(m.posted_at, m.id))
            for r in rows:
                start, end = reversal_window(r.posted_at, self._reversal_window)
                if r.id not in these and any(c.amount == r.amount and start <= c.posted_at <= end
                                             for c in matched):
                    found.append(Debit(mutation_id=r.id, bank=bank, account_number=account,
                                       amount=r.amount, posted_at=r.posted_at))
        return found

    async def _flag_reversals(self, conn: AsyncConnection, debits: Sequence[Debit],
                              report: ImportReport, *, now: datetime) -> list[str]:
        """Debits this ingest stored that may take back a payment, decided once every line of
        it is stored (on both paths, so they decide alike whatever the order of the lines).

        A debit of the amount of a credit that paid an order on the same bank account shortly
        before (``matcher.reversal_window``) may take the payment back: the bank correcting
        it, or the merchant refunding the customer by hand. The order keeps its state; the
        debit names it, a case is opened and the merchant told, so goods are not sent for money
        that left. Only the latest such credit is considered: if its order was taken back
        already, this debit is that reversal again (another source's copy of it, or a second
        debit of the same money) and names the order without a second case; an older credit of
        the same amount is never reached for. The orders are locked in id order, before any is
        decided, so two ingests flagging the same orders wait for each other.

        A debit is claimed only while still ``ignored``: two transactions that each saw a
        different latest credit (one judging it again, one matching a later credit meanwhile)
        would otherwise each flag it on their own order, two cases for one debit. The second
        waits for the first's row and then finds it claimed, and opens nothing.

        Returns the ids of the possible_reversal cases it opened."""
        if not self._reversal_window or not debits:
            return []
        m = mutations.c
        chosen: list[tuple[Debit, Any]] = []
        for debit in debits:
            start, end = reversal_window(debit.posted_at, self._reversal_window)
            credit = (await conn.execute(
                sa.select(m.id, m.order_id)
                .where(m.bank == debit.bank, m.account_number == debit.account_number,
                       m.amount == debit.amount, m.match_state == MatchKind.MATCHED.value,
                       m.direction == "CR", m.posted_at >= start, m.posted_at <= end)
                .order_by(m.posted_at.desc(), m.id.desc()).limit(1))).first()
            if credit is not None:
                chosen.append((debit, credit))
        if not chosen:
            return []
        locked = {o.id: o for o in await conn.execute(
            sa.select(orders).where(orders.c.id.in_(sorted({c.order_id for _, c in chosen})))
            .order_by(orders.c.id).with_for_update())}
        opened: list[str] = []
        for debit, credit in chosen:
            order = locked[credit.order_id]
            taken_back = (await conn.execute(sa.select(sa.exists().where(
                m.order_id == order.id, m.match_state == REVERSAL,
                m.amount == debit.amount)))).scalar_one()
            claimed = await conn.execute(mutations.update().where(
                m.id == debit.mutation_id, m.match_state == MatchKind.IGNORED.value).values(
                match_state=REVERSAL, order_id=order.id, matched_at=now, matched_by="matcher"))
            if taken_back or not claimed.rowcount:
                continue
            case_id = await open_review_case(conn, order, ReviewReason.POSSIBLE_REVERSAL.value,
                                             RecommendedAction.CHECK_WITH_BANK.value,
                                             debit.amount, debit.mutation_id, now=now)
            await add_events(conn, [PendingEvent(
                event_type=events.REVIEW_CASE_OPENED, aggregate_id=order.id,
                merchant_id=order.merchant_id,
                payload={"case_id": case_id, "order_id": order.id,
                         "merchant_order_id": order.merchant_order_id,
                         "reason": ReviewReason.POSSIBLE_REVERSAL.value,
                         "recommended_action": RecommendedAction.CHECK_WITH_BANK.value,
                         "amount": debit.amount, "debit_mutation_id": debit.mutation_id,
                         "credit_mutation_id": credit.id})], now=now)
            report.possible_reversals += 1
            report.needs_review += 1
            opened.append(case_id)
        return opened

    async def _seen_from_another_source(
        self, conn: AsyncConnection, mutation_id: str, attempt_id: str | None, item: Any, *,
        now: datetime,
    ) -> Any | None:
        """The same credit, already matched from the other source (a Moota push and then the
        bank's file, or the reverse), has its own fingerprint: same account, amount and WIB day.
        Settling it again would recommend refunding money paid once, so a person decides: this
        copy is marked a likely duplicate beside a case, and the other copy returned (None when
        there is none). ``item`` is an incoming mutation or a stored one (a manual match).

        The order is locked before its mutations are read (``apply_payment`` locks it again, a
        no-op): read unlocked, another source's copy settling the order meanwhile was not seen,
        and this copy, waiting for the lock, then found the order paid and counted a second
        payment. Under the lock, the other copy has committed (and is seen) or waits for this
        one (and then finds this copy)."""
        order = (await conn.execute(sa.select(orders).join(
            payment_attempts, payment_attempts.c.order_id == orders.c.id).where(
            payment_attempts.c.id == attempt_id).with_for_update(of=orders))).one()
        # Every mutation of the order, filtered here: an order has a handful, found through
        # ix_mutations_order_id. With the other conditions in SQL, statistics that lag a large
        # import (its own rows are not in them yet) once let the planner walk an index of every
        # mutation by match state instead: milliseconds per line, growing with the import.
        earlier = (await conn.execute(sa.select(
            mutations.c.id, mutations.c.posted_at, mutations.c.match_state, mutations.c.source,
            mutations.c.amount, mutations.c.account_number,
        ).where(mutations.c.order_id == order.id))).all()
        day = item.posted_at.astimezone(WIB).date()
        twin = next((m for m in earlier if m.match_state == MatchKind.MATCHED.value
                     and m.source != item.source and m.amount == item.amount
                     and m.account_number == item.account_number
                     and m.posted_at.astimezone(WIB).date() == day), None)
        if twin is None:
            return None
        await _set_match_state(conn, mutation_id, LIKELY_DUPLICATE)
        await open_review_case(conn, order, ReviewReason.POSSIBLE_DUPLICATE.value,
                               RecommendedAction.MATCH_MANUALLY.value, item.amount, mutation_id,
                               now=now)
        return twin

    async def _settle(
        self, conn: AsyncConnection, mutation_id: str, attempt_id: str, item: Any, *,
        actor: str, now: datetime,
    ) -> Any:
        result = await apply_payment(
            conn,
            Payment(attempt_id=attempt_id, amount=item.amount,
                    evidence_key=f"mutation:{mutation_id}", kind="mutation",
                    observed_at=item.posted_at,
                    details={"mutation_id": mutation_id, "matched_by": actor}),
            now=now, quarantine=self._quarantine, mutation_id=mutation_id,
        )
        await conn.execute(mutations.update().where(mutations.c.id == mutation_id).values(
            match_state=MatchKind.MATCHED.value, order_id=result.order_id, matched_at=now,
            matched_by=actor,
        ))
        return result

    async def unmatched(self, *, limit: int, account_number: str | None,
                        after: str | None = None) -> list[dict[str, Any]]:
        """Oldest first; ``after`` (a mutation id) continues after the page that ended there."""
        async with self._db.read() as conn:
            query = (sa.select(mutations)
                     .where(mutations.c.match_state.in_(FOR_PEOPLE))
                     .order_by(mutations.c.posted_at, mutations.c.id).limit(limit))
            if account_number:
                query = query.where(mutations.c.account_number == account_number)
            if after:
                query = query.where(await keyset.after(
                    conn, mutations.c.posted_at, mutations.c.id, after, "mutation"))
            return [_render_mutation(m) for m in await conn.execute(query)]

    async def manual_match(
        self, *, mutation_id: str, order_id: str, actor: str, reason: str
    ) -> dict[str, Any]:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            mutation = (await conn.execute(
                sa.select(mutations).where(mutations.c.id == mutation_id).with_for_update()
            )).first()
            if mutation is None:
                raise NotFound(f"no mutation {mutation_id}")
            if mutation.match_state not in FOR_PEOPLE:
                raise AlreadyMatched(
                    f"mutation {mutation_id} is {mutation.match_state}"
                    + (f" to order {mutation.order_id}" if mutation.order_id else "")
                )
            if mutation.direction != "CR":
                raise AlreadyMatched(f"mutation {mutation_id} is a debit; only credits pay orders")
            await _check_the_merchants_account(conn, mutation, order_id)
            a = payment_attempts.c
            # The bank credit landed on one of the merchant's payout accounts: prefer the
            # order's transfer attempt on that account (its expected amount includes the code),
            # then any instrument that was live; never one that never gave instructions.
            same_account = sa.and_(a.rail == "manual_transfer", a.payout_bank == mutation.bank,
                                   a.payout_account_number == mutation.account_number)
            attempt_id = (await conn.execute(
                sa.select(a.id).where(a.order_id == order_id, a.state.notin_(
                    [AttemptState.CREATING.value, AttemptState.UNKNOWN.value]))
                .order_by(sa.case((same_account, 0), else_=1), a.created_at.desc()).limit(1)
            )).scalar_one_or_none()
            if attempt_id is None:
                raise NotFound(f"no order {order_id} with a payment attempt")
            twin = None
            if not await _told_it_may_be_a_duplicate(conn, mutation_id, order_id):
                twin = await self._seen_from_another_source(conn, mutation_id, attempt_id,
                                                            mutation, now=now)
            if twin is not None:
                await record_audit(conn, actor=actor, action="mutation.likely_duplicate",
                                   subject_type="mutation", subject_id=mutation_id,
                                   reason=reason, details={"order_id": order_id,
                                                           "paid_by_mutation_id": twin.id},
                                   now=now)
            else:
                result = await self._settle(conn, mutation_id, attempt_id, mutation,
                                            actor=actor, now=now)
                await add_events(conn, await close_cases_of_credit(
                    conn, mutation_id, actor=actor, note=reason, now=now,
                    opened_by_match=result.review_case_id), now=now)
                reversal_cases = await self._judge_matched_by_hand(conn, mutation_id, mutation,
                                                                   now=now)
                await record_audit(conn, actor=actor, action="mutation.matched_manually",
                                   subject_type="mutation", subject_id=mutation_id,
                                   reason=reason, details={
                                       "order_id": order_id, "verdict": str(result.verdict),
                                       "order_state": result.order_state}, now=now)
        if twin is not None:  # raised once the likely duplicate and its case are committed
            raise LikelyDuplicate(
                f"order {order_id} is paid by mutation {twin.id} ({twin.source}), a credit of "
                f"the same amount on the same account and day: the same money seen by another "
                f"source, so mutation {mutation_id} is kept as a likely duplicate with a "
                f"possible_duplicate case on the order, not matched. If the bank's statement "
                f"shows two transfers, match it again: it becomes a second payment")
        return {"mutation_id": mutation_id, "order_id": order_id, "order_status":
                result.order_state, "verdict": str(result.verdict),
                "review_case_id": result.review_case_id,
                "possible_reversal_case_ids": reversal_cases, "matched_by": actor,
                "matched_at": iso(now)}

    async def _judge_matched_by_hand(self, conn: AsyncConnection, mutation_id: str,
                                     mutation: Any, *, now: datetime) -> list[str]:
        """A credit a person matched, judged against the debits stored before it, as an
        ingest judges the credits it matches: the bank's correction often comes before anyone
        has matched the transfer it takes back, and found nothing matched to flag then.

        Under the account's lock if it is free, as a push: a person is not kept waiting while a
        statement import holds it, and an ingest storing a debit meanwhile would miss this
        uncommitted credit (and this match its debit), so the credit is then judged again
        once the lock is free (``judge_again``, module docstring). Returns the
        possible_reversal cases opened now (not those a judging again may open later)."""
        credit = _incoming_of(mutation)
        held = await _lock_account(conn, credit.bank, credit.account_number, wait=False)
        earlier = await self._debits_stored_before(conn, [credit], these=set())
        opened = await self._flag_reversals(conn, earlier, ImportReport(), now=now)
        if not held:
            await self._judge_later(conn, [(mutation_id, credit)], now=now)
        return opened


class _Phases:
    """Wall-clock seconds per phase of one import, summed over the laps named after it."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self._start


async def _driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under ``conn``, inside the same transaction (for COPY)."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _incoming(parsed: StatementRows) -> list[IncomingMutation]:
    prints = iter_fingerprints(parsed.bank, parsed.account_number, parsed.lines)
    return [
        IncomingMutation(
            bank=parsed.bank, account_number=parsed.account_number, posted_at=posted_at,
            amount=amount, direction=direction, description=description, balance=balance,
            source="statement", fingerprint=print_,
        )
        for (_, posted_at, amount, direction, description, balance), print_
        in zip(parsed.lines, prints, strict=True)
    ]


def _references(description: str) -> list[str] | None:
    """The order ids a credit's description names (``referenced_order_ids``), None for none."""
    if ORDER_REFERENCE.search(description) is None:
        return None
    return sorted(referenced_order_ids(description)) or None


def _parse_statement(bank: str, data: bytes, account_number: str) -> StatementRows:
    """``read_statement`` for a worker thread, with the collector paused (a million small
    tuples; nothing to collect until done)."""
    with _collector_paused():
        return read_statement(bank, data, account_number=account_number)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a statement is parsed: parsing a large file
    allocates a million tuples that hold no cycles, and each allocation threshold crossed
    would otherwise walk every one of them again. The switch is process-wide, so the event
    loop's own garbage waits too, for the parse's second at most; it is collected as soon as
    the collector is back on. Overlapping parses end with it on: the parse that found it on
    turns it back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_LINE_COLUMNS = (
    "idx", "id", "event_id", "fingerprint", "posted_at", "amount", "direction", "description",
    "balance", "refs",
)
# Named SQL of the batch path. Temporary tables live until the import's transaction ends.
# Large joins: no JIT compilation (it costs more than it saves here), hash tables in memory.
_TUNE = "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"
_CREATE_LINES = """
CREATE TEMPORARY TABLE lunas_import_lines (
    idx integer NOT NULL, id text NOT NULL, event_id text, fingerprint text NOT NULL,
    posted_at timestamptz NOT NULL, amount bigint NOT NULL, direction text NOT NULL,
    description text NOT NULL, balance bigint, refs text[]
) ON COMMIT DROP"""
_DROP_DUPLICATES = """
DELETE FROM lunas_import_lines l USING mutations m WHERE m.fingerprint = l.fingerprint
RETURNING l.idx, l.direction"""
# matcher.window_opens: for a line dated by day only (00:00 WIB, UTC+7), from midnight WIB of the
# attempt's creation day, for a timed line from the attempt's creation, less the bank's clock
# skew either way; until the code stops being held when the attempt has closed.
_IN_WINDOW = f"""
l.posted_at >= CASE WHEN (l.posted_at AT TIME ZONE 'UTC' + interval '7 hours')::time = '00:00'
                    THEN (date_trunc('day', a.created_at AT TIME ZONE 'UTC' + interval '7 hours')
                          - interval '7 hours') AT TIME ZONE 'UTC'
                    ELSE a.created_at END
                - interval '{int(BANK_CLOCK_SKEW.total_seconds())} seconds'
AND (a.closed_at IS NULL OR a.code_held_until IS NULL OR l.posted_at <= a.code_held_until)"""
# plan_batch, for every new credit at once. A credit's candidate is the attempt holding its amount
# on the account (at most one: uq_payment_attempts_held_transfer_amount). "sequential": the credit
# names an order, or its candidate's order is reached by another line (another line's candidate,
# or named in any line's description); "unmatched": no candidate, or outside its window;
# "planned": decided by the batch, unless the same credit was already matched from another source
# (what _seen_from_another_source looks for; the day is left to it).
_PLAN = f"""
CREATE TEMPORARY TABLE lunas_import_plan ON COMMIT DROP AS
WITH credits AS (
    SELECT l.idx, l.amount, l.refs IS NOT NULL AS referencing, a.id AS attempt_id, a.order_id,
           {_IN_WINDOW} AS in_window
    FROM lunas_import_lines l
    LEFT JOIN payment_attempts a ON a.payout_bank = $1 AND a.payout_account_number = $2
         AND a.holds_code AND a.transfer_amount = l.amount
    WHERE l.direction = 'CR'
), referenced AS (
    SELECT DISTINCT unnest(refs) AS order_id FROM lunas_import_lines WHERE direction = 'CR'
)
SELECT c.idx, c.attempt_id, c.order_id,
       CASE WHEN c.referencing THEN 'sequential'
            WHEN c.attempt_id IS NULL THEN 'unmatched'
            WHEN count(*) OVER (PARTITION BY c.order_id) > 1
                 OR c.order_id IN (SELECT order_id FROM referenced) THEN 'sequential'
            WHEN NOT c.in_window THEN 'unmatched'
            WHEN EXISTS (SELECT FROM mutations m WHERE m.order_id = c.order_id
                         AND m.match_state = 'matched' AND m.account_number = $2
                         AND m.source <> $3 AND m.amount = c.amount) THEN 'sequential'
            ELSE 'planned' END AS kind
FROM credits c"""  # noqa: S608 - only the constant _IN_WINDOW is interpolated
# _flag_reversals' question for a debit line l: the credits of its amount matched on its account
# around its posting, up to a day after it (a superset of reversal_window, which _flag_reversals
# then applies). Asked for one line, ix_mutations_matched_credits (amount, posted_at) finds them
# and the account is checked on the few rows found. $1 bank, $2 account, $3 the reversal window,
# $4 DAY_DATED_SLACK.
_CREDIT_IT_MAY_TAKE_BACK = """
m.amount = l.amount AND m.match_state = 'matched' AND m.direction = 'CR'
AND m.posted_at >= l.posted_at - $3::interval AND m.posted_at <= l.posted_at + $4::interval
AND m.bank = $1 AND m.account_number = $2"""
# apply_payment's lock order: every order the import may settle or flag, in id order and in one
# statement, then their attempts (in _SETTLE, in the order the plan visits them). A push or poll
# locks every order it may reach the same way (_lock_orders_in_reach), so an order the import
# took later, out of that order, could close a cycle with one. Hence the orders of the lines
# left to _match are locked here (the attempt holding their amount, the orders they name: all
# _match may settle), and so are the orders its debits may flag (_flag_reversals), those paid
# by a credit of the debit's amount on the account. A credit this import matches pays a plan
# order, locked here whether _SETTLE or _match matches it; one matched before is found per
# debit line: ARRAY(...) is evaluated once a line, an index probe each (none with no reversal
# window), where a join let PostgreSQL hash every matched credit of every account instead
# (measured: 30,000 debits of a 1,000,000-line file add 0.13 s). Locked after the settle, such
# an order deadlocked with a push holding it and waiting for an order the import had settled,
# and PostgreSQL ended the import. Still locked late, by _flag_reversals: an order whose credit
# another transaction matched and committed after this statement ran, as on the push's path.
# The quarantine release (expiry.release_quarantined_codes) updates attempts without their
# orders but skips any row another transaction holds, so it never waits on an import and cannot
# close a cycle with one.
_LOCK_ORDERS = f"""
SELECT count(*) FROM (
    SELECT o.id FROM orders o
    WHERE o.id IN (SELECT order_id FROM lunas_import_plan WHERE kind <> 'unmatched'
                   UNION ALL
                   SELECT unnest(l.refs) FROM lunas_import_plan p
                   JOIN lunas_import_lines l ON l.idx = p.idx WHERE p.kind = 'sequential'
                   UNION ALL
                   SELECT unnest(ARRAY(SELECT m.order_id FROM mutations m
                                       WHERE {_CREDIT_IT_MAY_TAKE_BACK}))
                   FROM lunas_import_lines l
                   WHERE l.direction = 'DB' AND $3::interval > interval '0')
    ORDER BY o.id FOR UPDATE OF o) locked"""  # noqa: S608 - only a constant is interpolated
# still_matches and settle_rule, checked by the UPDATE that pays the attempt: the order is
# locked already (_LOCK_ORDERS), the attempt is this statement's target, so under READ COMMITTED
# PostgreSQL locks it and re-evaluates these conditions on its latest version before writing
# (an attempt that no longer matches is not paid, and its line goes to _match). The
# attempt still holds the amount on the account for the same order, the line is still in its
# window, and the pair of states settles. Paying the attempt here, rather than locking it in one
# statement and writing it in another, visits each attempt once.
_SETTLE = f"""
CREATE TEMPORARY TABLE lunas_import_settle ON COMMIT DROP AS
WITH paid AS (
    UPDATE payment_attempts a
    SET state = $4, updated_at = $6, closed_at = $6, code_held_until = $7
    FROM lunas_import_plan p
    JOIN lunas_import_lines l ON l.idx = p.idx
    JOIN orders o ON o.id = p.order_id
    WHERE p.kind = 'planned' AND a.id = p.attempt_id AND o.state || '/' || a.state = ANY($3)
          AND a.holds_code AND a.order_id = o.id AND a.payout_bank = $1
          AND a.payout_account_number = $2 AND a.transfer_amount = l.amount AND {_IN_WINDOW}
    RETURNING p.idx, l.id AS mutation_id, l.event_id, a.id AS attempt_id, o.id AS order_id,
              l.amount, l.posted_at AS observed_at, $5::text AS order_state, o.merchant_id,
              o.merchant_order_id, o.amount AS order_amount, o.currency, o.trace_context,
              o.expires_at
)
SELECT * FROM paid"""  # noqa: S608 - only the constant _IN_WINDOW is interpolated
# Per outcome, the number of new credits; a planned line that did not settle goes to _match.
_OUTCOMES = """
SELECT kind, count(*) AS n, array_agg(idx ORDER BY idx) FILTER (WHERE kind = 'sequential') AS lines
FROM (SELECT p.idx, CASE WHEN p.kind <> 'planned' THEN p.kind
                         WHEN s.idx IS NULL THEN 'sequential' ELSE 'matched' END AS kind
      FROM lunas_import_plan p LEFT JOIN lunas_import_settle s ON s.idx = p.idx) outcomes
GROUP BY kind"""
_INSERT_MUTATIONS = """
INSERT INTO mutations (id, bank, account_number, posted_at, amount, direction, description,
                       balance, source, fingerprint, statement_id, match_state, order_id,
                       matched_at, matched_by, created_at)
SELECT l.id, $1, $2, l.posted_at, l.amount, l.direction, l.description, l.balance, $3,
       l.fingerprint, $4,
       CASE WHEN l.direction <> 'CR' THEN $5 WHEN s.idx IS NOT NULL THEN $6 ELSE $7 END,
       s.order_id, CASE WHEN s.idx IS NOT NULL THEN $8::timestamptz END,
       CASE WHEN s.idx IS NOT NULL THEN 'matcher' END, $8
FROM lunas_import_lines l LEFT JOIN lunas_import_settle s ON s.idx = l.idx
ORDER BY l.idx"""
# _flag_reversals' question (_CREDIT_IT_MAY_TAKE_BACK) for every debit of the import at once,
# asked again now that its own credits are matched; the lines it returns are then decided by
# _flag_reversals itself, as on the line-by-line path. A scalar subquery, as in _LOCK_ORDERS, so
# it is one index probe per debit: as EXISTS, PostgreSQL may hash every matched credit ever
# stored (55 ms at 94,000 of them, growing with the history).
_REVERSAL_SUSPECTS = f"""
SELECT l.id, l.amount, l.posted_at FROM lunas_import_lines l
WHERE l.direction = 'DB'
      AND (SELECT true FROM mutations m WHERE {_CREDIT_IT_MAY_TAKE_BACK} LIMIT 1)
ORDER BY l.idx"""  # noqa: S608 - only a constant is interpolated
# _debits_stored_before for a batch, in two steps. Before the import's lines are stored: the
# debits of the account still unclaimed, posted from a day before its first credit (a debit dated
# by day reaches to the end of its day) to the reversal window after its last. Through
# ix_mutations_unflagged_debits; the span, a pass over the lines (0.1 s a million), is read only
# if the account has an unclaimed debit at all (an InitPlan is evaluated when first needed). None
# found, the import asks nothing more. $1 bank, $2 account, $3 the reversal window,
# $4 DAY_DATED_SLACK.
_EARLIER_DEBITS = """
SELECT CASE WHEN EXISTS (SELECT FROM mutations d WHERE d.account_number = $2
                         AND d.match_state = 'ignored' AND d.direction = 'DB' AND d.bank = $1)
THEN (SELECT coalesce(array_agg(d.id ORDER BY d.posted_at, d.id), '{}')
      FROM (SELECT min(posted_at) AS first, max(posted_at) AS last
            FROM lunas_import_lines WHERE direction = 'CR') span
      JOIN mutations d ON d.account_number = $2 AND d.match_state = 'ignored'
           AND d.direction = 'DB' AND d.posted_at >= span.first - $4::interval
           AND d.posted_at <= span.last + $3::interval
      WHERE d.bank = $1)
ELSE '{}' END"""
# Then, once every credit of the import is matched: those of them (l, a stored debit here) a
# credit this statement matched may have been taken back by (_CREDIT_IT_MAY_TAKE_BACK), still
# unclaimed. $5 the debits found before, $6 the statement.
_EARLIER_SUSPECTS = f"""
SELECT l.id, l.amount, l.posted_at FROM mutations l
WHERE l.id = ANY($5::text[]) AND l.match_state = 'ignored'
      AND (SELECT true FROM mutations m WHERE {_CREDIT_IT_MAY_TAKE_BACK}
           AND m.statement_id = $6 LIMIT 1)
ORDER BY l.posted_at, l.id"""  # noqa: S608 - only a constant is interpolated
_SEQUENTIAL_LINES = """
SELECT idx, id, fingerprint FROM lunas_import_lines WHERE idx = ANY($1::integer[]) ORDER BY idx"""
# The evidence keys are new mutation ids: a conflict is impossible, and would fail the import.
_INSERT_EVIDENCE = """
INSERT INTO evidence (unique_key, kind, order_id, attempt_id, amount, verdict, observed_at,
                      recorded_at, details)
SELECT 'mutation:' || mutation_id, 'mutation', order_id, attempt_id, amount, 'settle',
       observed_at, $1, jsonb_build_object('mutation_id', mutation_id, 'matched_by', 'matcher')
FROM lunas_import_settle ORDER BY idx"""
_MOVE_ORDERS = """
UPDATE orders o SET state = s.order_state, updated_at = $1, paid_at = $1
FROM lunas_import_settle s WHERE o.id = s.order_id"""
# _retire_others: the order's other live instruments are superseded, then every other attempt
# still holding a code starts the quarantine.
_RETIRE_OTHERS = """
UPDATE payment_attempts a
SET state = 'superseded', updated_at = $1, closed_at = $1,
    code_held_until = CASE WHEN a.holds_code THEN $2::timestamptz END
FROM lunas_import_settle s
WHERE a.order_id = s.order_id AND a.id <> s.attempt_id AND a.state IN ('active', 'superseded')
RETURNING a.id, a.rail"""
_HOLD_CLOSED_OTHERS = """
UPDATE payment_attempts a
SET closed_at = coalesce(a.closed_at, $1), code_held_until = $2
FROM lunas_import_settle s
WHERE a.order_id = s.order_id AND a.id <> s.attempt_id AND a.holds_code
      AND a.code_held_until IS NULL"""
# event_payload(order, paid_amount=..., evidence="mutation"), built by PostgreSQL: the same keys
# and, through order_view's SQL renderings, the same bytes. paid_at is the import's own time
# (_MOVE_ORDERS), the same for every order: rendered once in Python and passed as $3 and $4.
# Each event carries its order's own trace context (the capture's), so the merchant delivery
# joins the order's trace as it does on the line-by-line path (there through a settlement span;
# a span per line would cost more than the import's own writes).
_INSERT_ORDER_EVENTS = f"""
INSERT INTO outbox (event_id, event_type, aggregate_id, merchant_id, payload, trace_context,
                    status, attempts, created_at, available_at)
SELECT event_id, $2, order_id, merchant_id,
       jsonb_build_object('order_id', order_id, 'merchant_order_id', merchant_order_id,
                          'status', order_state, 'amount', order_amount, 'currency', currency,
                          'expires_at', {iso_sql("expires_at")}, 'paid_at', $3::text,
                          'display', jsonb_build_object(
                              'amount', {idr_sql("order_amount")},
                              'expires_at', {wib_sql("expires_at")}, 'paid_at', $4::text),
                          'paid_amount', amount, 'evidence', 'mutation'),
       trace_context, 'pending', 0, $1, $1
FROM lunas_import_settle ORDER BY idx"""  # noqa: S608 - only order_view's constant SQL

# An account's ingest lock (_lock_account), held until the transaction ends. Named for the
# statement imports that first took it: a process of the version before still takes this name.
_LOCK_ACCOUNT = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_LOCK_ACCOUNT_IF_FREE = sa.text("SELECT pg_try_advisory_xact_lock(hashtextextended(:key, 0))")


async def _lock_account(conn: AsyncConnection, bank: str, account: str, *, wait: bool = True
                        ) -> bool:
    """Take the account's ingest lock for this transaction, waiting for it, or with
    ``wait=False`` only if it is free; whether it is held. On SQLite the writer lock serialises
    ingests instead: always held."""
    if conn.dialect.name != "postgresql":
        return True
    lock = _LOCK_ACCOUNT if wait else _LOCK_ACCOUNT_IF_FREE
    taken = (await conn.execute(lock, {"key": f"lunas:statement:{bank}:{account}"})).scalar()
    return wait or bool(taken)


async def _accounts_busy(conn: AsyncConnection, incoming: Sequence[IncomingMutation]
                         ) -> set[tuple[str, str]]:
    """The accounts of these items whose ingest lock another transaction holds, the others
    now locked for this one. Never waits: a push is answered at once."""
    busy: set[tuple[str, str]] = set()
    for bank, account in sorted({(i.bank, i.account_number) for i in incoming}):
        if not await _lock_account(conn, bank, account, wait=False):
            busy.add((bank, account))
    return busy


def _incoming_of(row: Any) -> IncomingMutation:
    """A stored mutation as the ingest that stored it had it."""
    return IncomingMutation(bank=row.bank, account_number=row.account_number,
                            posted_at=row.posted_at, amount=row.amount,
                            direction=row.direction, description=row.description,
                            balance=row.balance, source=row.source, fingerprint=row.fingerprint)


async def _store(
    conn: AsyncConnection, incoming: Sequence[IncomingMutation], ids: Sequence[str], *,
    statement_id: str | None, now: datetime,
) -> list[bool]:
    """Insert each item unless its fingerprint is stored already, in fingerprint order (see
    ``_ingest``); per item, in the order given, whether it was new."""
    fresh = [False] * len(incoming)
    for n in sorted(range(len(incoming)), key=lambda n: incoming[n].fingerprint):
        item = incoming[n]
        inserted = await conn.execute(
            upsert_insert(conn.dialect.name)(mutations).values(
                id=ids[n], bank=item.bank, account_number=item.account_number,
                posted_at=item.posted_at, amount=item.amount, direction=item.direction,
                description=item.description[:1000], balance=item.balance,
                source=item.source, fingerprint=item.fingerprint, statement_id=statement_id,
                match_state=MatchKind.UNMATCHED.value, created_at=now,
            ).on_conflict_do_nothing(index_elements=["fingerprint"])
            .returning(mutations.c.id)
        )
        fresh[n] = inserted.first() is not None
    return fresh


async def _lock_orders_in_reach(
    conn: AsyncConnection, new: Sequence[IncomingMutation], *, window: timedelta,
) -> None:
    """Lock, in id order, every order these new mutations may settle or flag: a superset of
    what ``_match`` and ``_flag_reversals`` lock one by one. A credit reaches the orders whose
    attempts hold its amount on its account or that its description names (``_candidates``); a
    debit, the orders paid by a credit of its amount on its account around its posting
    (``_flag_reversals``, its window widened to span every debit of the account here).

    On SQLite the writer lock serialises ingests instead."""
    if conn.dialect.name != "postgresql" or not new:
        return
    a, m = payment_attempts.c, mutations.c
    reached: list[Any] = []
    for (bank, account), items in _by_account(new).items():
        credits = [i for i in items if i.direction == "CR"]
        referenced = set().union(*(referenced_order_ids(i.description) for i in credits))
        reaches = [sa.and_(a.holds_code, a.transfer_amount.in_({i.amount for i in credits}))]
        if referenced:
            reaches.append(a.order_id.in_(sorted(referenced)))
        if credits:
            reached.append(sa.select(a.order_id).where(
                a.payout_bank == bank, a.payout_account_number == account, sa.or_(*reaches)))
        debits = [i for i in items if i.direction == "DB"]
        if debits and window:
            windows = [reversal_window(i.posted_at, window) for i in debits]
            reached.append(sa.select(m.order_id).where(
                m.bank == bank, m.account_number == account, m.direction == "CR",
                m.match_state == MatchKind.MATCHED.value, m.amount.in_({i.amount for i in debits}),
                m.posted_at >= min(w[0] for w in windows),
                m.posted_at <= max(w[1] for w in windows)))
    if reached:
        await conn.execute(sa.select(orders.c.id)
                           .where(sa.or_(*(orders.c.id.in_(r) for r in reached)))
                           .order_by(orders.c.id).with_for_update())


def _by_account(items: Sequence[IncomingMutation]) -> dict[tuple[str, str], list[IncomingMutation]]:
    grouped: dict[tuple[str, str], list[IncomingMutation]] = {}
    for item in items:
        grouped.setdefault((item.bank, item.account_number), []).append(item)
    return grouped


async def _candidates(conn: AsyncConnection, item: IncomingMutation) -> list[Candidate]:
    a = payment_attempts.c
    on_account = sa.and_(a.payout_bank == item.bank, a.payout_account_number == item.account_number)
    by_amount = sa.and_(a.holds_code, a.transfer_amount == item.amount)
    referenced = referenced_order_ids(item.description)
    where = sa.or_(by_amount, a.order_id.in_(referenced)) if referenced else by_amount
    rows = await conn.execute(
        sa.select(a.id, a.order_id, a.transfer_amount, a.created_at, a.code_held_until,
                  a.closed_at)
        .join(orders, orders.c.id == a.order_id)
        .where(on_account, where)
    )
    return [
        Candidate(attempt_id=r.id, order_id=r.order_id, transfer_amount=r.transfer_amount,
                  created_at=r.created_at,
                  held_until=r.code_held_until if r.closed_at is not None else None)
        for r in rows
    ]


async def _check_the_merchants_account(conn: AsyncConnection, mutation: Any, order_id: str
                                       ) -> None:
    """Refuse a manual match of a credit on an account the order's merchant does not own (now
    or before: an account it stopped using still receives its customers' late transfers)."""
    merchant_id = (await conn.execute(sa.select(orders.c.merchant_id).where(
        orders.c.id == order_id))).scalar_one_or_none()
    if merchant_id is None:
        raise NotFound(f"no order {order_id}")
    p = payout_accounts.c
    owned = (await conn.execute(sa.select(sa.exists().where(
        p.merchant_id == merchant_id, p.bank == mutation.bank,
        p.account_number == mutation.account_number)))).scalar_one()
    if not owned:
        raise NotTheMerchantsAccount(
            f"mutation {mutation.id} is a credit on {mutation.bank.upper()} "
            f"{mutation.account_number}, which is not a payout account of the merchant of order "
            f"{order_id}; money on another account cannot pay this order")


async def _told_it_may_be_a_duplicate(conn: AsyncConnection, mutation_id: str, order_id: str
                                      ) -> bool:
    """Whether this credit was found, and shown to people, as a likely duplicate of a payment
    of this order: a person matching it then has seen the other copy and means a second
    payment."""
    r = review_cases.c
    return bool((await conn.execute(sa.select(sa.exists().where(
        r.order_id == order_id, r.mutation_id == mutation_id,
        r.reason == ReviewReason.POSSIBLE_DUPLICATE.value)))).scalar_one())


async def _set_match_state(conn: AsyncConnection, mutation_id: str, state: str) -> None:
    await conn.execute(mutations.update().where(mutations.c.id == mutation_id)
                       .values(match_state=state))


def _as_received(m: MootaMutation) -> dict[str, object]:
    """A Moota item as kept for a person: its fields as Moota names them."""
    return {"mutation_id": m.mutation_id, "bank_id": m.bank_id,
            "account_number": int(m.account_number) if m.account_sent_as_number
            else m.account_number,
            "date": m.posted_at.astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S"),
            "amount": str(m.amount), "type": m.direction, "description": m.description,
            "balance": None if m.balance is None else str(m.balance)}


def _zeros_lost(m: MootaMutation, accounts: set[str]) -> UnreadableItem:
    """A Moota item whose account number came as a JSON number that names no one payout
    account (``_numbers_read_as``), as kept for a person; not stored, as ``_bank_untold``."""
    why = (f"{len(accounts)} payout account numbers read as it" if len(accounts) > 1 else
           "no payout account has exactly this number")
    return unreadable_item(_as_received(m), (
        f"account_number came as a JSON number, which keeps no leading zero (ending "
        f"{m.account_number[-4:]}), and {why}; set aside rather than guessed: find the "
        "transfer on the statement of the account it reached"))


def _bank_untold(m: MootaMutation, banks: frozenset[str]) -> UnreadableItem:
    """A Moota item whose account number is a payout account at several ``banks`` and that
    does not say which, as kept for a person. Not stored as a mutation: its Moota id would then
    make a later listing that names the bank a duplicate, never matched; kept aside, that
    listing is stored and matched as usual and closes the item."""
    fields = _as_received(m)
    named = " and ".join(b.upper() for b in sorted(banks))
    return unreadable_item(fields, (
        f"account number ending {m.account_number[-4:]} is a payout account at {named}, and "
        "the item does not say which bank (no bank.bank_type); set aside rather than guessed: "
        "find the transfer on those banks' statements"))


def _render_mutation(m: Any) -> dict[str, Any]:
    return {
        "id": m.id, "bank": m.bank, "account_number": m.account_number,
        "posted_at": iso(m.posted_at), "amount": m.amount, "direction": m.direction,
        "description": m.description, "balance": m.balance, "source": m.source,
        "match_state": m.match_state, "statement_id": m.statement_id,
    }


__all__ = ["ImportReport", "ReconciliationService", "StatementRejected"]
