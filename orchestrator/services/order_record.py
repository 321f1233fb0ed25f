"""An order's payment record, for the people who run Lunas: everything Lunas holds about where
its money stands, in one read.

The merchant's view (``order_view``) shows the instrument to pay and the state; a person looking
into an alert, a review case or a customer's complaint needs what lies behind it: every
instrument issued (and what its provider said when last read, and when it is read next), every
observation recorded as evidence, every bank line matched or tied to the order or named by one
of its cases, the review cases and what people did about them (the audit log). Runbooks point
here instead of at SQL.

Read-only, one snapshot (one transaction), each part found through an index: attempts and
evidence by ``order_id``, bank lines by ``ix_mutations_order_id`` and their ids, cases by
their order, the audit entries of those cases and bank lines by ``ix_audit_log_subject``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from orchestrator.domain.errors import NotFound
from orchestrator.services.order_view import iso
from orchestrator.services.orders import view_order
from orchestrator.services.reviews import allowed_actions, render_case
from orchestrator.store.database import Database
from orchestrator.store.tables import (
    audit_log,
    evidence,
    mutations,
    orders,
    payment_attempts,
    review_cases,
)


async def order_record(db: Database, *, order_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        order = (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).first()
        if order is None:
            raise NotFound(f"no order {order_id}")
        a, e, m, c = payment_attempts.c, evidence.c, mutations.c, review_cases.c
        attempts = (await conn.execute(sa.select(payment_attempts).where(a.order_id == order_id)
                                       .order_by(a.created_at, a.id))).all()
        observed = (await conn.execute(sa.select(evidence).where(e.order_id == order_id)
                                       .order_by(e.recorded_at, e.id))).all()
        cases = (await conn.execute(sa.select(review_cases).where(c.order_id == order_id)
                                    .order_by(c.created_at, c.id))).all()
        # Its cases' bank lines too: a likely duplicate waits for a person with no order yet.
        named = [case.mutation_id for case in cases if case.mutation_id is not None]
        tied = m.order_id == order_id
        lines = (await conn.execute(sa.select(mutations).where(
            sa.or_(tied, m.id.in_(named)) if named else tied)
            .order_by(m.posted_at, m.id))).all()
        au = audit_log.c
        subjects = [sa.and_(au.subject_type == kind, au.subject_id.in_(ids))
                    for kind, ids in (("review_case", [case.id for case in cases]),
                                      ("mutation", [line.id for line in lines])) if ids]
        audited = [] if not subjects else (await conn.execute(
            sa.select(audit_log).where(sa.or_(*subjects)).order_by(au.at, au.id))).all()
        shown = await view_order(conn, order)
    return {
        "order": {**shown, "merchant_id": order.merchant_id,
                  "review_reason": order.review_reason, "updated_at": iso(order.updated_at),
                  # When Lunas put it in ``verifying``: its verification window counts from here.
                  "verifying_since": iso(order.verifying_since)},
        "attempts": [_attempt(r) for r in attempts],
        "evidence": [_evidence(r) for r in observed],
        "mutations": [_mutation(r) for r in lines],
        "review_cases": [render_case(r, allowed=allowed_actions(r, order.state,
                                                                order.review_reason))
                         for r in cases],
        "audit": [_audit(r) for r in audited],
    }


def _attempt(r: Any) -> dict[str, Any]:
    payout = None if r.payout_account_number is None else {
        "bank": r.payout_bank, "account_number": r.payout_account_number,
        "account_name": r.payout_account_name}
    return {
        "id": r.id, "rail": r.rail, "provider": r.provider, "channel": r.channel,
        "state": r.state, "transfer_amount": r.transfer_amount, "unique_code": r.unique_code,
        "payout_account": payout, "provider_ref": r.provider_ref,
        "failure_reason": r.failure_reason,
        "created_at": iso(r.created_at), "expires_at": iso(r.expires_at),
        "closed_at": iso(r.closed_at),
        "code_held": r.holds_code, "code_held_until": iso(r.code_held_until),
        # What the verifier last learnt, and when it asks again (null: nothing scheduled;
        # ``deferred_on``: waiting for that route's breaker to let a read through).
        "verification": {"checks": r.checks, "last_checked_at": iso(r.last_checked_at),
                         "last_check": r.last_check, "next_check_at": iso(r.next_check_at),
                         "deferred_on": r.deferred_on},
    }


def _evidence(r: Any) -> dict[str, Any]:
    return {"id": r.id, "key": r.unique_key, "kind": r.kind, "attempt_id": r.attempt_id,
            "amount": r.amount, "verdict": r.verdict, "observed_at": iso(r.observed_at),
            "recorded_at": iso(r.recorded_at), "details": r.details}


def _mutation(r: Any) -> dict[str, Any]:
    return {"id": r.id, "bank": r.bank, "account_number": r.account_number,
            "posted_at": iso(r.posted_at), "amount": r.amount, "direction": r.direction,
            "description": r.description, "source": r.source, "statement_id": r.statement_id,
            "match_state": r.match_state, "matched_at": iso(r.matched_at),
            "matched_by": r.matched_by}


def _audit(r: Any) -> dict[str, Any]:
    return {"at": iso(r.at), "actor": r.actor, "action": r.action,
            "subject_type": r.subject_type, "subject_id": r.subject_id, "reason": r.reason,
            "details": r.details}
