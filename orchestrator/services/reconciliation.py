"""Reconciliation: bank mutations in (statement files, signed pushes), matched to orders, settled.

An import is one transaction: a file that fails to parse stores nothing, and a file that parses
is stored, deduplicated by fingerprint and matched together, so a crash leaves either all of it
or none. Re-importing an overlapping statement inserts nothing new (the fingerprint is unique).

On PostgreSQL a statement is stored and matched as a batch (``_ingest_batch``): its lines are
copied in, the lines ``plan_batch`` proves independent of each other are decided by ``decide``
and settled with a few set-based statements, and the rest go through the line-by-line path
(``_match``) in file order. Both paths write the same rows. Imports of one account are
serialised by an advisory lock, so the fingerprints a batch finds free stay free until it
commits; the unique constraint still refuses any duplicate (the COPY then fails and the whole
import rolls back). Pushes, feeds and SQLite use the line-by-line path.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.clock import WIB, Clock
from orchestrator.domain.errors import (
    AlreadyMatched,
    NotFound,
    StatementRejected,
    TransitionRefused,
)
from orchestrator.domain.ids import new_id
from orchestrator.domain.order import (
    ORDER_EVENT_ON_ENTRY,
    AttemptState,
    AttemptTrigger,
    OrderState,
    PaymentVerdict,
    RecommendedAction,
    ReviewReason,
    judge_payment,
    next_attempt_state,
    next_order_state,
)
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import Rail
from orchestrator.reconciliation.batch import BatchPlan, plan_batch, still_matches
from orchestrator.reconciliation.fingerprint import fingerprint_moota, fingerprint_statement_lines
from orchestrator.reconciliation.matcher import (
    Candidate,
    MatchKind,
    MutationFacts,
    decide,
    referenced_order_ids,
)
from orchestrator.reconciliation.moota import MootaMutation, parse_moota_push
from orchestrator.reconciliation.statements import parse_statement
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import event_payload, iso
from orchestrator.services.settlement import Payment, apply_payment, open_review_case
from orchestrator.store.database import Database, upsert_insert
from orchestrator.store.tables import (
    mutations,
    orders,
    payment_attempts,
    payout_accounts,
    statements,
)
from orchestrator.telemetry.metrics import Metrics


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
    statement_id: str | None = None


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


LIKELY_DUPLICATE = "likely_duplicate"  # fits mutations.match_state (16)
_FOR_PEOPLE = (MatchKind.UNMATCHED.value, MatchKind.AMBIGUOUS.value, LIKELY_DUPLICATE)
"""Mutation states a person resolves: listed as unmatched, and open to a manual match."""


class ReconciliationService:
    def __init__(
        self, db: Database, *, clock: Clock, quarantine: timedelta, metrics: Metrics,
        batch_statements: bool = True,
    ) -> None:
        """``batch_statements=False`` imports statements line by line on PostgreSQL too: the
        reference the batch path is tested against."""
        self._db, self._clock, self._quarantine = db, clock, quarantine
        self._metrics = metrics
        self._batch = batch_statements

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
        parsed = parse_statement(bank.lower(), data, account_number=account_number)
        prints = fingerprint_statement_lines(parsed.bank, parsed.account_number, parsed.lines)
        incoming = [
            IncomingMutation(
                bank=parsed.bank, account_number=parsed.account_number, posted_at=line.posted_at,
                amount=line.amount, direction=line.direction, description=line.description,
                balance=line.balance, source="statement", fingerprint=fp,
            )
            for line, fp in zip(parsed.lines, prints, strict=True)
        ]
        del prints
        report = ImportReport(parsed=len(incoming), skipped_pending=parsed.skipped_pending)
        phases.lap("parse")
        now = self._clock.now()
        async with self._db.transaction() as conn:
            report.statement_id = new_id("stm")
            await conn.execute(statements.insert().values(
                id=report.statement_id, bank=parsed.bank, account_number=parsed.account_number,
                filename=filename, sha256=hashlib.sha256(data).hexdigest(), uploaded_by=actor,
                counts={}, created_at=now,
            ))
            if self._batch and conn.dialect.name == "postgresql":
                await self._ingest_batch(conn, incoming, report, statement_id=report.statement_id,
                                         now=now, phases=phases)
            else:
                await self._ingest(conn, incoming, report, statement_id=report.statement_id,
                                   now=now)
                phases.lap("match")
            counts = {k: v for k, v in asdict(report).items() if k != "statement_id"}
            await conn.execute(statements.update().where(statements.c.id == report.statement_id)
                               .values(counts=counts))
            await record_audit(conn, actor=actor, action="statement.imported",
                               subject_type="statement", subject_id=report.statement_id,
                               details=counts, now=now)
        phases.lap("store")
        if timings is not None:
            timings.update(phases.seconds, total=phases.total)
        return report

    async def ingest_push(self, raw_body: bytes) -> ImportReport:
        """Store and match a Moota-style push whose signature the caller has verified."""
        return await self._ingest_moota(parse_moota_push(raw_body), source="push")

    async def ingest_feed(self, items: Sequence[MootaMutation]) -> ImportReport:
        """Store and match mutations read from the Moota feed (``GET /mutation``). Same store and
        fingerprint as the push, so a mutation seen by both is stored once."""
        return await self._ingest_moota(items, source="feed")

    async def _ingest_moota(self, items: Sequence[MootaMutation], *, source: str
                            ) -> ImportReport:
        now = self._clock.now()
        report = ImportReport(parsed=len(items))
        async with self._db.transaction() as conn:
            incoming = [
                IncomingMutation(
                    bank=await _bank_of(conn, m.account_number), account_number=m.account_number,
                    posted_at=m.posted_at, amount=m.amount, direction=m.direction,
                    description=m.description, balance=m.balance, source=source,
                    fingerprint=fingerprint_moota(m.mutation_id),
                )
                for m in items
            ]
            await self._ingest(conn, incoming, report, statement_id=None, now=now)
        return report

    async def _ingest(
        self, conn: AsyncConnection, incoming: Sequence[IncomingMutation], report: ImportReport,
        *, statement_id: str | None, now: datetime,
    ) -> None:
        for item in incoming:
            mutation_id = new_id("mut")
            inserted = await conn.execute(
                upsert_insert(conn.dialect.name)(mutations).values(
                    id=mutation_id, bank=item.bank, account_number=item.account_number,
                    posted_at=item.posted_at, amount=item.amount, direction=item.direction,
                    description=item.description[:1000], balance=item.balance,
                    source=item.source, fingerprint=item.fingerprint, statement_id=statement_id,
                    match_state=MatchKind.UNMATCHED.value, created_at=now,
                ).on_conflict_do_nothing(index_elements=["fingerprint"])
                .returning(mutations.c.id)
            )
            if inserted.first() is None:
                report.duplicate += 1
                self._metrics.mutations_ingested.labels(item.source, "duplicate").inc()
                continue
            report.new += 1
            self._metrics.mutations_ingested.labels(item.source, "new").inc()
            kind = await self._match(conn, mutation_id, item, report, now=now)
            self._metrics.mutations_matched.labels(item.source, kind.value).inc()

    async def _ingest_batch(
        self, conn: AsyncConnection, incoming: Sequence[IncomingMutation], report: ImportReport,
        *, statement_id: str, now: datetime, phases: _Phases,
    ) -> None:
        """The rows ``_ingest`` would write, written set-based (module docstring)."""
        if not incoming:
            return
        pg = await _driver(conn)
        bank, account, source = incoming[0].bank, incoming[0].account_number, "statement"
        await pg.execute(_LOCK_ACCOUNT, f"lunas:statement:{bank}:{account}")
        await pg.execute(_CREATE_LINES)
        await pg.copy_records_to_table(
            "lunas_import_lines", columns=["idx", "fingerprint", "amount", "direction"],
            records=((n, m.fingerprint, m.amount, m.direction) for n, m in enumerate(incoming)))
        await pg.execute("ANALYZE lunas_import_lines")  # a temporary table has no statistics
        phases.lap("store")
        duplicate = {r[0] for r in await pg.fetch(_DUPLICATES)}
        facts = {n: MutationFacts(amount=m.amount, direction=m.direction, posted_at=m.posted_at,
                                  description=m.description)
                 for n, m in enumerate(incoming) if n not in duplicate}
        candidates = {r["idx"]: _candidate(r)
                      for r in await pg.fetch(_BATCH_CANDIDATES, bank, account)
                      if r["idx"] in facts}
        plan = plan_batch(facts, candidates)
        del candidates
        twins = {(r["order_id"], r["amount"])
                 for r in await pg.fetch(_MATCHED_ELSEWHERE, account, source)}
        settlements = await self._lock_and_judge(pg, plan, facts, twins, bank=bank,
                                                 account=account)
        phases.lap("match")
        ids = {n: new_id("mut") for n in facts}
        states = {**dict.fromkeys(plan.ignored, MatchKind.IGNORED.value),
                  **dict.fromkeys(settlements, MatchKind.MATCHED.value)}
        order_of = {n: s.order["id"] for n, s in settlements.items()}
        await pg.copy_records_to_table("mutations", columns=list(_MUTATION_COLUMNS), records=(
            (ids[n], m.bank, m.account_number, m.posted_at, m.amount, m.direction,
             m.description[:1000], m.balance, m.source, m.fingerprint, statement_id,
             states.get(n, MatchKind.UNMATCHED.value), order_of.get(n),
             now if n in order_of else None, "matcher" if n in order_of else None, now)
            for n, m in enumerate(incoming) if n in ids))
        await self._settle_batch(conn, pg, settlements, ids, incoming, now=now)
        phases.lap("store")
        for n in plan.sequential:
            kind = await self._match(conn, ids[n], incoming[n], report, now=now)
            self._metrics.mutations_matched.labels(source, kind.value).inc()
        phases.lap("match")
        report.new += len(facts)
        report.duplicate += len(duplicate)
        report.ignored_debits += len(plan.ignored)
        report.unmatched += len(plan.unmatched)
        report.matched += len(settlements)
        for label, count in (("new", len(facts)), ("duplicate", len(duplicate))):
            self._metrics.mutations_ingested.labels(source, label).inc(count)
        for kind, count in ((MatchKind.IGNORED, len(plan.ignored)),
                            (MatchKind.UNMATCHED, len(plan.unmatched)),
                            (MatchKind.MATCHED, len(settlements))):
            self._metrics.mutations_matched.labels(source, kind.value).inc(count)

    async def _lock_and_judge(
        self, pg: Any, plan: BatchPlan, facts: dict[int, MutationFacts],
        twins: set[tuple[str, int]], *, bank: str, account: str,
    ) -> dict[int, _Settlement]:
        """Lock the planned orders, then their attempts (``apply_payment``'s order), and keep
        the matches that still hold and simply settle an open order. Any other line moves to
        ``plan.sequential``, where ``_match`` decides it exactly as it always has: a possible
        cross-source twin, a decision the locked rows changed, or any verdict but ``settle``."""
        planned = {n: c for n, c in plan.matched.items()
                   if (c.order_id, facts[n].amount) not in twins}
        order_rows = {r["id"]: r for r in await pg.fetch(
            _LOCK_ORDERS, sorted({c.order_id for c in planned.values()}))}
        attempt_rows = {r["id"]: r for r in await pg.fetch(
            _LOCK_ATTEMPTS, sorted(c.attempt_id for c in planned.values()))}
        settlements: dict[int, _Settlement] = {}
        for n, planned_candidate in planned.items():
            a = attempt_rows.get(planned_candidate.attempt_id)
            order = order_rows.get(planned_candidate.order_id)
            holds = (a is not None and order is not None and a["holds_code"]
                     and a["order_id"] == order["id"] and a["payout_bank"] == bank
                     and a["payout_account_number"] == account
                     and a["transfer_amount"] == facts[n].amount)
            if not holds or not still_matches(facts[n], _candidate(a), planned_candidate):
                continue
            assert a is not None and order is not None
            settled = _settlement(order, a, facts[n].amount)
            if settled is not None:
                settlements[n] = settled
        plan.sequential.extend(n for n in plan.matched if n not in settlements)
        plan.sequential.sort()
        return settlements

    async def _settle_batch(
        self, conn: AsyncConnection, pg: Any, settlements: dict[int, _Settlement],
        ids: dict[int, str], incoming: Sequence[IncomingMutation], *, now: datetime,
    ) -> None:
        """``apply_payment`` for many ``settle`` verdicts at once: evidence, attempt paid and
        holding its amount through the quarantine, order moved, its other attempts retired,
        and one event per order for the merchant."""
        if not settlements:
            return
        await pg.execute(_CREATE_SETTLE)
        await pg.copy_records_to_table("lunas_import_settle", columns=list(_SETTLE_COLUMNS),
                                       records=(
            (ids[n], s.attempt_id, s.order["id"], incoming[n].amount, incoming[n].posted_at,
             s.attempt_state, s.order_state, json.dumps(
                 {"mutation_id": ids[n], "matched_by": "matcher"}),
             new_id("evt"), ORDER_EVENT_ON_ENTRY[OrderState(s.order_state)],
             s.order["merchant_id"], json.dumps(event_payload(
                 _OrderView(s.order, s.order_state), paid_amount=incoming[n].amount,
                 evidence="mutation")))
            for n, s in settlements.items()))
        await pg.execute("ANALYZE lunas_import_settle")
        written = await pg.execute(_INSERT_EVIDENCE, now)
        if written != f"INSERT 0 {len(settlements)}":
            raise RuntimeError(f"batch settlement wrote {written!r} for {len(settlements)} "
                               "payments; a mutation's evidence already existed")
        held_until = now + self._quarantine
        await pg.execute(_PAY_ATTEMPTS, now, held_until)
        await pg.execute(_MOVE_ORDERS, now)
        retired = await pg.fetch(_RETIRE_OTHERS, now, held_until)
        await pg.execute(_HOLD_CLOSED_OTHERS, now, held_until)
        await add_events(conn, [
            PendingEvent(event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=r["id"],
                         merchant_id=None, payload={"attempt_id": r["id"]})
            for r in retired if r["rail"] != Rail.MANUAL_TRANSFER.value
        ], now=now)
        await pg.execute(_INSERT_ORDER_EVENTS, now)

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
                                                  item, now=now):
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

    async def _seen_from_another_source(
        self, conn: AsyncConnection, mutation_id: str, attempt_id: str | None,
        item: IncomingMutation, *, now: datetime,
    ) -> bool:
        """The same credit, already matched from the other source (a Moota push and then the
        bank's file, or the reverse), has its own fingerprint: same account, amount and WIB day.
        Settling it again would recommend refunding money paid once, so a person decides."""
        order = (await conn.execute(sa.select(orders).join(
            payment_attempts, payment_attempts.c.order_id == orders.c.id).where(
            payment_attempts.c.id == attempt_id))).one()
        earlier = (await conn.execute(sa.select(mutations.c.id, mutations.c.posted_at).where(
            mutations.c.order_id == order.id, mutations.c.match_state == MatchKind.MATCHED.value,
            mutations.c.source != item.source, mutations.c.amount == item.amount,
            mutations.c.account_number == item.account_number))).all()
        day = item.posted_at.astimezone(WIB).date()
        twin = next((m for m in earlier if m.posted_at.astimezone(WIB).date() == day), None)
        if twin is None:
            return False
        await _set_match_state(conn, mutation_id, LIKELY_DUPLICATE)
        await open_review_case(conn, order, ReviewReason.POSSIBLE_DUPLICATE.value,
                               RecommendedAction.MATCH_MANUALLY.value, item.amount, mutation_id,
                               now=now)
        return True

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

    async def unmatched(self, *, limit: int, account_number: str | None) -> list[dict[str, Any]]:
        async with self._db.read() as conn:
            query = (sa.select(mutations)
                     .where(mutations.c.match_state.in_(_FOR_PEOPLE))
                     .order_by(mutations.c.posted_at, mutations.c.id).limit(limit))
            if account_number:
                query = query.where(mutations.c.account_number == account_number)
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
            if mutation.match_state not in _FOR_PEOPLE:
                raise AlreadyMatched(
                    f"mutation {mutation_id} is {mutation.match_state}"
                    + (f" to order {mutation.order_id}" if mutation.order_id else "")
                )
            if mutation.direction != "CR":
                raise AlreadyMatched(f"mutation {mutation_id} is a debit; only credits pay orders")
            a = payment_attempts.c
            # The bank credit landed on a payout account: prefer the order's transfer attempt on
            # that account (its expected amount includes the code), then any instrument that
            # was live; never one that never gave instructions.
            same_account = sa.and_(a.rail == "manual_transfer",
                                   a.payout_account_number == mutation.account_number)
            attempt_id = (await conn.execute(
                sa.select(a.id).where(a.order_id == order_id, a.state.notin_(
                    [AttemptState.CREATING.value, AttemptState.UNKNOWN.value]))
                .order_by(sa.case((same_account, 0), else_=1), a.created_at.desc()).limit(1)
            )).scalar_one_or_none()
            if attempt_id is None:
                raise NotFound(f"no order {order_id} with a payment attempt")
            result = await self._settle(conn, mutation_id, attempt_id, mutation, actor=actor,
                                        now=now)
            await record_audit(conn, actor=actor, action="mutation.matched_manually",
                               subject_type="mutation", subject_id=mutation_id, reason=reason,
                               details={"order_id": order_id, "verdict": str(result.verdict),
                                        "order_state": result.order_state}, now=now)
        return {"mutation_id": mutation_id, "order_id": order_id, "order_status":
                result.order_state, "verdict": str(result.verdict),
                "review_case_id": result.review_case_id, "matched_by": actor,
                "matched_at": iso(now)}


@dataclass(frozen=True, kw_only=True)
class _Settlement:
    """One batch line whose payment settles an open order (verdict ``settle``)."""

    attempt_id: str
    attempt_state: str
    order: Any
    order_state: str


def _settlement(order: Any, attempt: Any, amount: int) -> _Settlement | None:
    """``apply_payment``'s decision for a locked order and attempt, when it is the plain one
    the batch writes: ``settle``, on an attempt not yet paid. None sends the line to ``_match``
    (which also raises, as it always has, for a transition the state machines refuse)."""
    decision = judge_payment(order_state=OrderState(order["state"]),
                             expected=attempt["transfer_amount"], received=amount)
    if decision.verdict is not PaymentVerdict.SETTLE or decision.order_trigger is None:
        return None
    try:
        attempt_state = next_attempt_state(AttemptState(attempt["state"]), AttemptTrigger.PAID)
        order_state = next_order_state(OrderState(order["state"]), decision.order_trigger)
    except TransitionRefused:
        return None
    if attempt["state"] == AttemptState.PAID.value or order_state is not OrderState.PAID:
        return None
    return _Settlement(attempt_id=attempt["id"], attempt_state=attempt_state.value, order=order,
                       order_state=order_state.value)


class _OrderView:
    """The attributes ``event_payload`` reads, from a locked order row and its new state."""

    def __init__(self, row: Any, state: str) -> None:
        self.id, self.merchant_order_id = row["id"], row["merchant_order_id"]
        self.amount, self.currency, self.state = row["amount"], row["currency"], state


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


def _candidate(r: Any) -> Candidate:
    return Candidate(attempt_id=r["id"], order_id=r["order_id"],
                     transfer_amount=r["transfer_amount"], created_at=r["created_at"],
                     held_until=r["code_held_until"] if r["closed_at"] is not None else None)


_MUTATION_COLUMNS = (
    "id", "bank", "account_number", "posted_at", "amount", "direction", "description",
    "balance", "source", "fingerprint", "statement_id", "match_state", "order_id", "matched_at",
    "matched_by", "created_at",
)
_SETTLE_COLUMNS = (
    "mutation_id", "attempt_id", "order_id", "amount", "observed_at", "attempt_state",
    "order_state", "details", "event_id", "event_type", "merchant_id", "payload",
)
# Named SQL of the batch path. Temporary tables live until the import's transaction ends.
_LOCK_ACCOUNT = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
_CREATE_LINES = """
CREATE TEMPORARY TABLE lunas_import_lines (
    idx integer PRIMARY KEY, fingerprint text NOT NULL, amount bigint NOT NULL,
    direction text NOT NULL
) ON COMMIT DROP"""
_DUPLICATES = """
SELECT l.idx FROM lunas_import_lines l JOIN mutations m ON m.fingerprint = l.fingerprint"""
# _candidates, for every credit at once: the attempt holding the line's amount on the account.
_BATCH_CANDIDATES = """
SELECT l.idx, a.id, a.order_id, a.transfer_amount, a.created_at, a.code_held_until, a.closed_at
FROM lunas_import_lines l
JOIN payment_attempts a ON a.payout_bank = $1 AND a.payout_account_number = $2
     AND a.holds_code AND a.transfer_amount = l.amount
JOIN orders o ON o.id = a.order_id
WHERE l.direction = 'CR'"""
# What _seen_from_another_source looks for, per (order, amount); the day is left to it.
_MATCHED_ELSEWHERE = """
SELECT DISTINCT order_id, amount FROM mutations
WHERE match_state = 'matched' AND account_number = $1 AND source <> $2"""
_LOCK_ORDERS = """
SELECT id, merchant_id, merchant_order_id, amount, currency, state FROM orders
WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"""
_LOCK_ATTEMPTS = """
SELECT id, order_id, state, transfer_amount, holds_code, created_at, code_held_until, closed_at,
       payout_bank, payout_account_number
FROM payment_attempts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"""
_CREATE_SETTLE = """
CREATE TEMPORARY TABLE lunas_import_settle (
    mutation_id text NOT NULL, attempt_id text NOT NULL, order_id text NOT NULL,
    amount bigint NOT NULL, observed_at timestamptz NOT NULL, attempt_state text NOT NULL,
    order_state text NOT NULL, details text NOT NULL, event_id text NOT NULL,
    event_type text NOT NULL, merchant_id text NOT NULL, payload text NOT NULL
) ON COMMIT DROP"""
_INSERT_EVIDENCE = """
INSERT INTO evidence (unique_key, kind, order_id, attempt_id, amount, verdict, observed_at,
                      recorded_at, details)
SELECT 'mutation:' || mutation_id, 'mutation', order_id, attempt_id, amount, 'settle',
       observed_at, $1, details::jsonb
FROM lunas_import_settle
ON CONFLICT (unique_key) DO NOTHING"""
_PAY_ATTEMPTS = """
UPDATE payment_attempts a
SET state = s.attempt_state, updated_at = $1, closed_at = $1,
    code_held_until = CASE WHEN a.holds_code THEN $2::timestamptz END
FROM lunas_import_settle s WHERE a.id = s.attempt_id"""
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
_INSERT_ORDER_EVENTS = """
INSERT INTO outbox (event_id, event_type, aggregate_id, merchant_id, payload, status, attempts,
                    created_at, available_at)
SELECT event_id, event_type, order_id, merchant_id, payload::jsonb, 'pending', 0, $1, $1
FROM lunas_import_settle"""


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


async def _set_match_state(conn: AsyncConnection, mutation_id: str, state: str) -> None:
    await conn.execute(mutations.update().where(mutations.c.id == mutation_id)
                       .values(match_state=state))


async def _bank_of(conn: AsyncConnection, account_number: str) -> str:
    bank = (await conn.execute(
        sa.select(payout_accounts.c.bank).where(payout_accounts.c.account_number == account_number)
        .limit(1)
    )).scalar_one_or_none()
    return bank or "unknown"


def _render_mutation(m: Any) -> dict[str, Any]:
    return {
        "id": m.id, "bank": m.bank, "account_number": m.account_number,
        "posted_at": iso(m.posted_at), "amount": m.amount, "direction": m.direction,
        "description": m.description, "balance": m.balance, "source": m.source,
        "match_state": m.match_state, "statement_id": m.statement_id,
    }


__all__ = ["ImportReport", "ReconciliationService", "StatementRejected"]
