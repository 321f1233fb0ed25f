"""Reconciliation: bank mutations in (statement files, signed pushes), matched to orders, settled.

An import is one transaction: a file that fails to parse stores nothing, and a file that parses
is stored, deduplicated by fingerprint and matched together, so a crash leaves either all of it
or none. Re-importing an overlapping statement inserts nothing new (the fingerprint is unique).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.clock import WIB, Clock
from orchestrator.domain.errors import AlreadyMatched, NotFound, StatementRejected
from orchestrator.domain.ids import new_id
from orchestrator.domain.order import AttemptState, RecommendedAction, ReviewReason
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
from orchestrator.services.order_view import iso
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
        self, db: Database, *, clock: Clock, quarantine: timedelta, metrics: Metrics
    ) -> None:
        self._db, self._clock, self._quarantine = db, clock, quarantine
        self._metrics = metrics

    async def import_statement(
        self, *, bank: str, account_number: str, data: bytes, filename: str | None, actor: str
    ) -> ImportReport:
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
        report = ImportReport(parsed=len(incoming), skipped_pending=parsed.skipped_pending)
        now = self._clock.now()
        async with self._db.transaction() as conn:
            report.statement_id = new_id("stm")
            await conn.execute(statements.insert().values(
                id=report.statement_id, bank=parsed.bank, account_number=parsed.account_number,
                filename=filename, sha256=hashlib.sha256(data).hexdigest(), uploaded_by=actor,
                counts={}, created_at=now,
            ))
            await self._ingest(conn, incoming, report, statement_id=report.statement_id, now=now)
            counts = {k: v for k, v in asdict(report).items() if k != "statement_id"}
            await conn.execute(statements.update().where(statements.c.id == report.statement_id)
                               .values(counts=counts))
            await record_audit(conn, actor=actor, action="statement.imported",
                               subject_type="statement", subject_id=report.statement_id,
                               details=counts, now=now)
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
