"""Gateway webhooks in: store every delivery, then apply it as evidence from the outbox.

Request path (``receive``): read the raw body, verify it in constant time (Midtrans
``signature_key``, a payment only under its signed status code 200, and a close never under
the pending code 201; Xendit
``x-callback-token``), and store the delivery with its verification
result and one ``provider.delivery`` outbox event in one transaction. Nothing else happens there,
so the provider gets its answer quickly.

Decisions:

- Every delivery is stored, verified or not, malformed or not (``raw_body`` as received).
- Only a verified first delivery claims its ``event_key`` (the provider's event identity); a
  forger therefore cannot pre-empt a genuine event's key. A verified repeat of a key is stored with
  ``event_key`` NULL and outcome ``duplicate`` and queues nothing.
- Answers: verified (new or duplicate) → 200; unverified → 401 (stored; the provider would retry a
  genuine one, e.g. after a key rotation, while the status read finds the truth); malformed JSON
  → 400 (stored, nothing queued: there is nothing to act on). The body is read as UTF-8 JSON text
  exactly as stored, so the worker reads what the request path acknowledged.
- Evidence key of a payment seen by a webhook is ``{provider}:status:{attempt_id}:paid``, the same
  key a status read uses for an instrument's first payment (``status_reads.paid_evidence_key``):
  one attempt (a Midtrans order_id, a single-use closed Xendit VA, a dynamic QR, a one-time
  e-wallet charge) is paid once, and a webhook plus a status read of the same payment must not
  count as two payments (rule 2). A Xendit VA or QR callback that finds that key taken asks for
  a read that lists every payment, each under a key of its own (``_settle``), so a second
  payment opens its case. The delivery's own identity stays in the evidence details and on the
  delivery row.
- A verified Xendit callback whose Xendit id or kind contradicts the attempt it names by
  reference moves nothing (``_contradiction``, ``_read_for_contradiction``).

Worker path (``on_delivery``): a verified delivery is mapped to a neutral status (one it cannot
be read as asks for the attempt's status read instead, ``_read_instead``). PAID →
``apply_payment`` (exactly once through the evidence key). A Midtrans payment is confirmed by a
status read first unless its attempt is already paid: Midtrans notifies ``cancel`` under status
code 200, as it does ``settlement``, and signs neither status, so a genuine cancel relabelled
``settlement`` verifies. For an attempt Lunas may have cancelled (superseded, expired, failed)
the read is the verifier's or a queued one (``_confirm_first``); for a live one (cancelled in
the Midtrans dashboard, outside Lunas, say) it is made at once (``_confirm_now``), so a genuine
payment settles as promptly as before, and a cancelled one closes the attempt instead. That read
runs in a relay slot and draws on Midtrans's shared status pace: it waits for a paced slot at
most ``confirm_wait`` (``LUNAS_CONFIRM_READ_WAIT``, 2 s). Under a burst of notifications (a
flash sale) reads waiting their turn would otherwise fill the relay's slots, and every other job
(merchant webhooks, cancels, Xendit deliveries) would wait behind them; settlement is capped at
the pace either way. A read whose slot is further off, like one that cannot run (breaker open,
429, failed), hands the attempt to the verifier, brought forward (``_ask_verifier``): the
payment settles when the verifier's read confirms it, never on the unsigned status alone.
``lunas_payment_confirmations_total{outcome}`` counts reads made, ``pace_busy`` and
``read_failed``; the delivery's outcome says which. The other reads the relay runs (a
reversal's confirmation, a closed attempt's read) are bounded the same way: no slot that soon
queues them again for when the pace has room.
EXPIRED / FAILED move the attempt only while it is live (active, superseded, unknown) — never
backwards, so a ``pending`` or an ``expire`` after ``settlement`` changes nothing; PENDING
changes nothing. REFUNDED / CHARGED_BACK (money that went back) is confirmed by a status read,
then opens a review case and leaves the order as it is (``services.reversals``). A Xendit
``refund.succeeded`` names the refunded payment by Xendit's id, not by our reference: a verified
one is matched to its attempt by ``provider_ref`` (``_refunded_attempt``), then confirmed the
same way; the read says how much went back in all.

An unverified delivery is never trusted, and never costs more than one status read per attempt
per ``ASKED_READ_SPACING``, however many arrive: attempt ids are not secret, and every read
draws from the provider's shared status pace (``StatusReads``), so a flood of forged deliveries
must not crowd out the reads that settle real payments. For a live attempt it brings the
verifier's own scheduled read (``next_check_at``) forward instead of queuing a read of its own:
to now, or to ``ASKED_READ_SPACING`` after the attempt's last read; a read already due sooner,
or claimed, or deferred on an open breaker, answers it. The verifier applies a payment only if
the provider says so; the delivery's outcome says when the read was asked for, the attempt's
``last_check`` what it found. For an attempt Lunas closed (expired, failed), which the verifier
reads no more, it queues one ``attempt.verify`` read, coalesced the same way, while the attempt
is within the code quarantine of its closing (a late payment whose webhook cannot be verified,
e.g. after a server-key rotation, is still found: rule 4); later, nothing is read. Such a read
that cannot be made now (the route's breaker open, a 429, an answer Lunas cannot read) is queued
again for when it can, never failed: the relay would dead-letter it after its tries, and the
payment it looks for would be lost. An
unverified body is stored up to ``MAX_UNTRUSTED_BODY``
characters (with its length and hash), since nobody but a person investigating reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.clock import Clock
from orchestrator.domain.ids import new_id
from orchestrator.domain.order import AttemptState, AttemptTrigger, next_attempt_state
from orchestrator.domain.text import unstorable
from orchestrator.domain.verification import VerificationSchedule, unreadable_gap
from orchestrator.outbox.relay import OutboxEvent, PermanentFailure
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails import midtrans, xendit
from orchestrator.rails.base import NeutralStatus, ProviderStatus, Rail
from orchestrator.rails.errors import RailError, Throttled, Unreadable
from orchestrator.rails.ratelimit import PaceBusy
from orchestrator.rails.router import RouteUnavailable
from orchestrator.services.order_view import iso
from orchestrator.services.payment_failed import lock_order_of, tell_if_nothing_left_to_pay
from orchestrator.services.reversals import REVERSALS, apply_reversal
from orchestrator.services.settlement import apply_read_payments
from orchestrator.services.status_reads import (
    CLOSED_UNPAID,
    LIVE,
    READ_QUEUED,
    StatusReads,
    queue_closed_read,
    route_of,
    wait_to_retry,
)
from orchestrator.store.database import Database, upsert_insert
from orchestrator.store.tables import orders, payment_attempts, provider_deliveries
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger("lunas.provider_webhooks")

MIDTRANS, XENDIT = "midtrans", "xendit"
KEPT_HEADERS = ("content-type", "content-length", "user-agent", "webhook-id", "x-forwarded-for",
                "x-real-ip")
"""Headers stored with a delivery; never a secret (``x-callback-token`` is left out)."""
_LIVE = (AttemptState.ACTIVE, AttemptState.SUPERSEDED, AttemptState.UNKNOWN)
_CLOSED = CLOSED_UNPAID
_CANCELLED_BY_LUNAS = (AttemptState.SUPERSEDED.value, *_CLOSED)
"""Midtrans attempts Lunas may have cancelled at the provider (a superseded instrument, an
expired one). Midtrans then notifies ``cancel`` under status code 200, signed; the signature
leaves ``transaction_status`` out, so that genuine body relabelled ``settlement`` verifies as a
payment. A payment notification for such an attempt is confirmed by a status read first."""
_READ_WHEN_ASKED = (*_CLOSED, AttemptState.PAID.value)
"""Attempts the verifier reads no more that an ``attempt.verify`` job reads when asked: a
closed one, and a paid one whose instrument a callback says took another payment."""
_PAID_MORE_THAN_ONCE = (Rail.VA.value, Rail.QRIS.value)
"""Xendit instruments a second payment can reach with a callback of its own (a payment id per
payment), should Xendit not close them after the first."""
_ASKED = "asked for by a delivery"
ASKED_READ_SPACING = timedelta(minutes=1)
"""The least time between two status reads of one attempt that deliveries Lunas cannot trust
ask for. A genuine delivery that failed verification (a rotated key) is retried by the provider
minutes later, and the attempt's schedule reads it anyway; a forger gets one read a minute per
attempt id, not one per request."""
UNREADABLE_GIVE_UP = 4
"""Unreadable answers in a row after which a closed attempt past its code quarantine is read
no more (its job dead-lettered with the reason): about 4 minutes of tries at the default 30 s
``retry_after_failure``, and never before the quarantine of its closing ends."""
REVERSAL_UNREADABLE_GIVE_UP = timedelta(days=1)
"""How long after a reversal notification came its confirming read may keep getting answers
Lunas cannot read before the delivery is dead-lettered for a person (``_confirm_reversal``)."""
MAX_UNTRUSTED_BODY = 16_384
"""Characters of an unverified or malformed body that are stored. A provider's notification is a
few kilobytes; a forger's megabyte is kept as its start, its length and its SHA-256."""


@dataclass(frozen=True, kw_only=True)
class _ClosedRead:
    """One ``attempt.verify`` job, as ``status_reads.queue_closed_read`` wrote it (jobs an
    older version queued carry only the attempt and the delivery)."""

    attempt_id: str
    delivery_id: str | None
    watch_until: datetime | None
    watch_reads: int
    unreadable: int

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> _ClosedRead:
        delivery, until = payload.get("delivery_id"), payload.get("watch_until")
        return cls(attempt_id=str(payload["attempt_id"]),
                   delivery_id=str(delivery) if delivery is not None else None,
                   watch_until=datetime.fromisoformat(until) if until else None,
                   watch_reads=int(payload.get("watch_reads") or 0),
                   unreadable=int(payload.get("unreadable") or 0))

    @property
    def kind(self) -> str:
        return ("status read for a delivery" if self.delivery_id is not None
                else "watch read" if self.watch_until is not None else "status read")


@dataclass(frozen=True, kw_only=True)
class Receipt:
    delivery_id: str
    verified: bool
    malformed: bool = False
    duplicate: bool = False
    problem: str | None = None
    """What is wrong with a malformed body (``not a JSON object``, ``order_id contains a NUL
    character``), as stored in its outcome."""


# -- pure: identities ---------------------------------------------------------------------------


def _bounded(key: str) -> str:
    return key if len(key) <= 200 else f"{key[:120]}#{hashlib.sha256(key.encode()).hexdigest()}"


def midtrans_event_key(body: Mapping[str, Any]) -> str | None:
    """One Midtrans notification: a transaction in one status (a retry repeats it exactly).
    A refund or chargeback notification also carries ``refund_amount``, the total gone back so
    far: a second partial chargeback (or refund) of one transaction differs from the first only
    there, and is a second fact, not a repeat."""
    parts = [body.get(k) for k in ("transaction_id", "transaction_status", "status_code")]
    if not all(isinstance(p, str) and p for p in parts):
        return None
    fraud = body.get("fraud_status")
    parts.append(fraud if isinstance(fraud, str) else "")
    refunded = body.get("refund_amount")
    if isinstance(refunded, str) and refunded:
        parts.append(refunded)
    return _bounded("midtrans:" + ":".join(str(p) for p in parts))


def xendit_event_key(body: Mapping[str, Any]) -> str | None:
    """One Xendit callback: a VA payment, a QR payment, an e-wallet charge in one status (and
    with one ``refunded_amount`` so far: a charge refunded twice in part differs from the
    first only there, and is a second fact, not a repeat), or one refund in one status."""
    data = body.get("data")
    if body.get("event") in xendit.CHARGE_EVENTS and isinstance(data, dict):
        ident, status = data.get("id"), data.get("status")
        refunded = data.get("refunded_amount")
        key = (f"xendit:ewallet:{ident}:{status}" + (f":{refunded}" if refunded else "")
               if ident and status else None)
    elif body.get("event") in ("refund.succeeded", "refund.failed"):
        try:
            refund = xendit.refund_object(body)
        except (KeyError, ValueError):
            return None
        ident, status = refund.get("id"), refund.get("status")
        key = f"xendit:refund:{ident}:{status}" if ident and status else None
    elif body.get("event") == "qr.payment":
        ident = data.get("id") if isinstance(data, dict) else body.get("id")
        key = f"xendit:qr:{ident}" if ident else None
    elif body.get("payment_id"):
        key = f"xendit:va:{body['payment_id']}"
    else:
        key = None
    return _bounded(key) if key else None


def _voided_after_payment(provider: str, attempt: Any, status: ProviderStatus) -> bool:
    """A Xendit charge voided after Lunas saw it paid: Xendit voids only a charge that
    succeeded, for all of it (``xendit.voided_payment``), so the money went back. Confirmed by
    a read like any reversal; a void of a charge Lunas never saw paid closes it as failed."""
    return (provider == XENDIT and status.raw_status == "VOIDED"
            and attempt.state == AttemptState.PAID.value)


def _stale_capture(provider: str, attempt: Any, body: Mapping[str, Any]) -> bool:
    """A Xendit e-wallet capture on an attempt Lunas closed (failed, expired). The charge may
    have been voided since (all of it back): Xendit's retries can deliver the ``ewallet.void``
    first, which failed the attempt Lunas had not seen paid, and the capture that follows
    says SUCCEEDED of money already back with the customer. Confirmed by a read of the charge
    first (``_confirm_first``), as a Midtrans payment on a closed attempt is: a genuine late
    payment settles as before, one read later; a voided one pays nothing."""
    return (provider == XENDIT and body.get("event") in xendit.CHARGE_EVENTS
            and attempt.state in _CLOSED)


def _contradiction(provider: str, attempt: Any, status: ProviderStatus,
                   body: Mapping[str, Any]) -> str | None:
    """Why a verified Xendit callback, matched to ``attempt`` by our reference only, is not
    about the instrument Lunas holds for it: a kind of another rail (a QR payment for an
    e-wallet attempt), or a Xendit id (VA, QR, charge) other than the attempt's
    ``provider_ref`` when both are known. Our reference repeats across Xendit resources: a
    recreated attempt (``gateway_jobs._recreate``) sends its reference again, and where Xendit
    does not honour the idempotency key (e-wallet charges, RAILS.md §2.1 [?]) or no longer
    remembers it, the old charge and the new one share it; the old one's FAILED callback
    closed the live one. A refund callback is matched by Xendit's id already
    (``_refunded_attempt``). None: nothing contradicts it."""
    if provider != XENDIT or body.get("event") in ("refund.succeeded", "refund.failed"):
        return None
    rail = xendit.callback_rail(body)
    if rail is not None and rail.value != attempt.rail:
        return f"a {rail.value} callback for a {attempt.rail} attempt"
    if (attempt.provider_ref and status.provider_ref
            and status.provider_ref != attempt.provider_ref):
        return (f"the callback is about {status.provider_ref[:64]}, the attempt's instrument "
                f"is {attempt.provider_ref}")
    return None


class _ByReference:
    """An attempt read as if Xendit's id of it were unknown: by our reference, so the read
    lists every payment made under it, on whichever Xendit resource (``XenditProvider
    ._status_by_reference``)."""

    provider_ref = None

    def __init__(self, attempt: Any) -> None:
        self._attempt = attempt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attempt, name)


class _AttemptMoved(Exception):
    """The attempt a delivery was closing moved meanwhile; nothing was written."""


def claimed_attempt(provider: str, body: Mapping[str, Any]) -> str | None:
    """The attempt id a delivery names (as claimed; nothing is trusted yet)."""
    if provider == MIDTRANS:
        ref: object = body.get("order_id")
    else:
        try:
            ref = xendit.callback_reference(body)
        except ValueError:
            return None
    return ref[:64] if isinstance(ref, str) and ref else None


def delivery_status(provider: str, body: Mapping[str, Any]) -> ProviderStatus:
    """Raises ``ValueError`` when the body cannot be read."""
    if provider == MIDTRANS:
        return midtrans.notification_status(body)
    return xendit.callback_status(body)


def _raw_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


def untrusted_text(raw_text: str, raw: bytes) -> str:
    """What is stored of a body Lunas does not trust: all of it up to ``MAX_UNTRUSTED_BODY``
    characters, else its start and a note of what was received."""
    if len(raw_text) <= MAX_UNTRUSTED_BODY:
        return raw_text
    return (f"{raw_text[:MAX_UNTRUSTED_BODY]}\n[stored truncated: {len(raw)} bytes received, "
            f"sha256 {hashlib.sha256(raw).hexdigest()}]")


# -- the service -----------------------------------------------------------------------------------


class ProviderWebhooks:
    def __init__(self, db: Database, reads: StatusReads, clock: Clock, *,
                 midtrans_server_key: str, xendit_callback_token: str,
                 quarantine: timedelta, claim_lease: timedelta = timedelta(seconds=60),
                 schedule: VerificationSchedule | None = None,
                 confirm_wait: timedelta = timedelta(seconds=2),
                 metrics: Metrics | None = None) -> None:
        self._db, self._reads, self._clock = db, reads, clock
        self._schedule = schedule or VerificationSchedule()
        self._server_key, self._callback_token = midtrans_server_key, xendit_callback_token
        # The verifier's claim lease: a read due within it may be in flight already.
        self._quarantine, self._claim_lease = quarantine, claim_lease
        self._confirm_wait = confirm_wait
        self._confirmations = (metrics or Metrics()).payment_confirmations

    def handlers(self) -> dict[str, Any]:
        return {events.PROVIDER_DELIVERY: self.on_delivery,
                events.ATTEMPT_VERIFY: self.on_attempt_verify}

    # -- request path -----------------------------------------------------------------------

    async def receive(self, provider: str, raw: bytes, headers: Mapping[str, str]) -> Receipt:
        """Verify and store one delivery with its outbox event; nothing else."""
        raw_text = _raw_text(raw)
        try:
            # The stored text, not the bytes: the worker parses ``raw_body`` again, and a body
            # only ``json.loads(bytes)`` reads (a UTF-8 byte-order mark, UTF-16) would be
            # acknowledged here and then fail there on every try.
            parsed = json.loads(raw_text)
        except (ValueError, RecursionError):
            parsed = None
        body: dict[str, Any] | None = parsed if isinstance(parsed, dict) else None
        # A NUL or a lone surrogate in a field would reach the claimed attempt id or the event
        # key, which PostgreSQL cannot store; no provider sends either. Kept, never read.
        problem = unstorable(body) if body is not None else "not a JSON object"
        if problem is not None:
            body = None
        if body is None:
            verified = False
        elif provider == MIDTRANS:
            verified = midtrans.verify_notification(body, self._server_key)
        else:
            verified = xendit.verify_callback_token(self._callback_token,
                                                    headers.get("x-callback-token"))
        key = None
        if verified and body is not None:
            key = midtrans_event_key(body) if provider == MIDTRANS else xendit_event_key(body)
        attempt_id = claimed_attempt(provider, body) if body is not None else None
        if attempt_id is None and verified and body is not None and provider == XENDIT:
            attempt_id = await self._refunded_attempt(body)
        row: dict[str, Any] = {
            "provider": provider, "received_at": self._clock.now(),
            "raw_body": raw_text if verified else untrusted_text(raw_text, raw),
            "headers": {h: headers[h] for h in KEPT_HEADERS if h in headers},
            "verified": verified,
            "attempt_id": attempt_id,
            "outcome": None if problem is None else f"malformed: {problem}"[:500],
        }
        now = row["received_at"]
        origin = await self._order_trace(provider, row["attempt_id"])
        with tracing.flow_span("provider_webhook.receive", origin, attributes=tracing.
                               order_attributes(attempt_id=row["attempt_id"],
                                                provider=provider, verified=verified)) as span:
            receipt = await self._store(row, key, body, now, problem)
            span.set_attributes({"lunas.delivery_id": receipt.delivery_id,
                                 "lunas.duplicate": receipt.duplicate})
            return receipt

    async def _refunded_attempt(self, body: Mapping[str, Any]) -> str | None:
        """The attempt a verified Xendit refund callback is about, found by the payment's
        Xendit id (``provider_ref``, ``ix_payment_attempts_provider_ref``): the refund names no
        reference of ours. Only a verified callback looks, and what it finds only asks for a
        status read."""
        refs = xendit.refunded_payment_refs(body)
        if not refs:
            return None
        async with self._db.read() as conn:
            found = (await conn.execute(
                sa.select(payment_attempts.c.id)
                .where(payment_attempts.c.provider == XENDIT,
                       payment_attempts.c.provider_ref.in_(refs))
                .order_by(payment_attempts.c.created_at).limit(1))).scalar_one_or_none()
        return str(found) if found is not None else None

    async def _order_trace(self, provider: str, attempt_id: str | None) -> Any:
        """The trace context of the order a delivery names, so its receipt joins the order's
        trace (only looked up when tracing is on). A forged claim at worst files a forged
        delivery under that order's trace, where it belongs for whoever investigates it."""
        if attempt_id is None or not tracing.enabled():
            return None
        async with self._db.read() as conn:
            return (await conn.execute(
                sa.select(orders.c.trace_context)
                .select_from(payment_attempts.join(orders,
                                                   orders.c.id == payment_attempts.c.order_id))
                .where(payment_attempts.c.id == attempt_id,
                       payment_attempts.c.provider == provider))).scalar_one_or_none()

    async def _store(self, row: dict[str, Any], key: str | None, body: dict[str, Any] | None,
                     now: datetime, problem: str | None) -> Receipt:
        verified = bool(row["verified"])
        async with self._db.transaction() as conn:
            delivery_id = new_id("dlv")
            duplicate = False
            if key is not None:
                stored = await conn.execute(
                    upsert_insert(conn.dialect.name)(provider_deliveries)
                    .values(id=delivery_id, event_key=key, **row)
                    .on_conflict_do_nothing(index_elements=["event_key"])
                    .returning(provider_deliveries.c.id))
                duplicate = stored.first() is None
                if duplicate:
                    await conn.execute(provider_deliveries.insert().values(
                        id=delivery_id, event_key=None,
                        **{**row, "outcome": f"duplicate of {key}"}))
            else:
                await conn.execute(provider_deliveries.insert().values(
                    id=delivery_id, event_key=None, **row))
            if body is not None and not duplicate:
                await add_events(conn, [PendingEvent(
                    event_type=events.PROVIDER_DELIVERY, aggregate_id=row["attempt_id"]
                    if row["attempt_id"] and len(row["attempt_id"]) <= 32 else None,
                    merchant_id=None, payload={"delivery_id": delivery_id})], now=now)
        return Receipt(delivery_id=delivery_id, verified=verified, malformed=body is None,
                       duplicate=duplicate, problem=problem)

    # -- worker path ------------------------------------------------------------------------

    async def on_delivery(self, event: OutboxEvent) -> None:
        with tracing.span("provider_webhook.process", attributes=tracing.order_attributes(
                attempt_id=event.aggregate_id, delivery_id=str(event.payload["delivery_id"]))):
            try:
                await self._process(event)
            except _AttemptMoved:
                # Applied again, to the attempt as it is now. Every move of an attempt holds
                # its order's lock, which the close waited for: the move is committed, and a
                # state only moves forward. Moved once more meanwhile: the relay retries.
                await self._process(event)

    async def _process(self, event: OutboxEvent) -> None:
        delivery_id = str(event.payload["delivery_id"])
        async with self._db.read() as conn:
            delivery = (await conn.execute(sa.select(provider_deliveries).where(
                provider_deliveries.c.id == delivery_id))).one()
            attempt = None
            if delivery.attempt_id is not None:
                attempt = (await conn.execute(sa.select(payment_attempts).where(
                    payment_attempts.c.id == delivery.attempt_id,
                    payment_attempts.c.provider == delivery.provider))).first()
        if delivery.outcome is not None:
            return  # handled already (a relay retry after the outcome committed)
        if attempt is None:
            await self._record(delivery_id, "ignored: names no attempt of ours at this provider")
            return
        if not delivery.verified:
            await self._verify_later(delivery_id, attempt)
            return
        body = (xendit.parse_body(delivery.raw_body) if delivery.provider == XENDIT
                else json.loads(delivery.raw_body))
        try:
            status = delivery_status(delivery.provider, body)
        except xendit.NothingMoved as exc:
            await self._record(delivery_id, f"no change: {exc}")
            return
        except ValueError as exc:
            await self._read_instead(delivery_id, attempt, f"unreadable: {exc}")
            return
        contradiction = _contradiction(delivery.provider, attempt, status, body)
        if contradiction is not None:
            await self._read_for_contradiction(delivery_id, attempt, status, contradiction)
            return
        if status.status is NeutralStatus.PAID and (
                (delivery.provider == MIDTRANS and attempt.state in _CANCELLED_BY_LUNAS)
                or _stale_capture(delivery.provider, attempt, body)):
            await self._confirm_first(delivery_id, attempt)
        elif status.status is NeutralStatus.PAID and (
                delivery.provider == MIDTRANS and attempt.state != AttemptState.PAID.value):
            await self._confirm_now(delivery_id, attempt, delivery.event_key)
        elif status.status is NeutralStatus.PAID:
            await self._settle(attempt, status, delivery_id=delivery_id,
                               details={"delivery_id": delivery_id,
                                        "event_key": delivery.event_key,
                                        "raw_status": status.raw_status,
                                        "provider_ref": status.provider_ref},
                               kind="provider_webhook")
        elif status.status in REVERSALS or _voided_after_payment(delivery.provider, attempt,
                                                                  status):
            await self._confirm_reversal(
                delivery_id, attempt, received_at=delivery.received_at,
                tries=int(event.payload.get("confirm_tries") or 0),
                unreadable=int(event.payload.get("unreadable_tries") or 0))
        elif status.status in (NeutralStatus.EXPIRED, NeutralStatus.FAILED):
            await self._close(delivery_id, attempt, status.status)
        else:
            await self._record(delivery_id, f"no change: provider says {status.raw_status}")

    async def on_attempt_verify(self, event: OutboxEvent) -> None:
        """A status read of an attempt Lunas closed (expired, failed), which the verifier no
        longer reads: asked for by a delivery (``_ask_read_of_closed``), the one read after an
        expired instrument's cancel, or one of the reads that watch an instrument its provider
        would not cancel (``watch_until``; both ``gateway_jobs.on_cancel_requested``). A payment
        found settles the order or opens a review case, as any late payment (rule 4). A read
        that cannot be made now is queued again for when it can (``_read_again``): the relay
        would otherwise retry it into an open breaker or a provider's pause and dead-letter it.
        A live attempt is the verifier's (a job an older version queued for one is coalesced
        into its schedule, ``_ask_verifier``)."""
        job = _ClosedRead.of(event.payload)
        async with self._db.read() as conn:
            attempt = (await conn.execute(sa.select(payment_attempts).where(
                payment_attempts.c.id == job.attempt_id))).one()
        if event.payload.get("by_reference"):
            await self._read_reference(event, attempt)
            return
        if attempt.state in LIVE:
            if job.delivery_id is not None:
                await self._ask_verifier(job.delivery_id, attempt.id, "unverified: never trusted")
            return
        if attempt.state not in _CLOSED and not (
                attempt.state == AttemptState.PAID.value and job.delivery_id is not None):
            if job.delivery_id is not None:
                await self._record(job.delivery_id,
                                   f"status read skipped: attempt already {attempt.state}")
            return
        # From here on a delivery may arrive after this read's request left: it asks for a read
        # of its own instead of counting on this one (``_ask_read_of_closed``).
        await self._note_closed_read(attempt.id, f"{job.kind}: running")
        try:
            # Bounded like a confirming read: this handler holds a relay slot other jobs need.
            status = await self._reads.read(attempt, within=self._confirm_wait.total_seconds())
        except (PaceBusy, RouteUnavailable, Throttled) as exc:  # no answer: read again later
            key = route_of(attempt).key
            wait = wait_to_retry(exc, base=self._schedule.retry_after_failure, tries=0,
                                 retry_at=self._reads.retry_at(key), now=self._clock.now())
            why = (f"pace busy: no {attempt.provider} status slot within "
                   f"{self._confirm_wait.total_seconds():g} s" if isinstance(exc, PaceBusy)
                   else f"deferred: {key} unavailable" if isinstance(exc, RouteUnavailable)
                   else "throttled (429)")
            await self._read_again(job, attempt, wait, why)
            return
        except Unreadable as exc:
            in_a_row = job.unreadable + 1
            await self._give_up_if_hopeless(job, attempt, in_a_row, exc)
            wait = unreadable_gap(self._schedule.retry_after_failure, in_a_row)
            log.warning("status answer for closed %s unreadable (%d in a row), next read in "
                        "%.0f s: %s", attempt.id, in_a_row, wait.total_seconds(), exc.detail,
                        extra={"attempt_id": attempt.id, "order_id": attempt.order_id})
            await self._read_again(replace(job, unreadable=in_a_row), attempt, wait,
                                   f"unreadable answer ({in_a_row} in a row): {exc.detail}")
            return
        await self._note_closed_read(
            attempt.id, f"{job.kind}: {status.raw_status or status.status}")
        if status.status is NeutralStatus.PAID:
            await self._settle(attempt, status, delivery_id=job.delivery_id,
                               details={"raw_status": status.raw_status,
                                        "asked_by_delivery": job.delivery_id},
                               kind="provider_status", prefix="status read: ")
            return
        if status.status in REVERSALS:  # paid after Lunas closed it, then reversed: both facts
            await self._reversed(job.delivery_id, attempt, status)
            return
        if status.status is NeutralStatus.PENDING:
            await self._watch_on(job, attempt)
        if job.delivery_id is not None:
            await self._record(job.delivery_id,
                               f"status read: provider says {status.raw_status}; no change")

    async def _give_up_if_hopeless(self, job: _ClosedRead, attempt: Any, in_a_row: int,
                                   exc: Unreadable) -> None:
        """Stop reading a closed attempt whose answers Lunas cannot read once the code
        quarantine of its closing is over and ``UNREADABLE_GIVE_UP`` answers in a row were
        unreadable: read every 30 minutes for ever, it only logged warnings nobody acts on. The
        job is dead-lettered (counted and alerted on as every dead letter), its error and the
        attempt's ``last_check`` saying why; fixing the adapter and redelivering the job reads
        it again. Before the quarantine ends a late payment is likely, so it is read on."""
        closed_at = attempt.closed_at or attempt.updated_at
        if in_a_row < UNREADABLE_GIVE_UP or closed_at + self._quarantine > self._clock.now():
            return
        why = (f"status answer for closed attempt {attempt.id} unreadable {in_a_row} times in "
               f"a row, past its code quarantine (closed {iso(closed_at)}): {exc.detail}; read "
               f"it at {attempt.provider} and fix the adapter, then redeliver this job")
        log.error("status read of closed %s given up: %s", attempt.id, why,
                  extra={"attempt_id": attempt.id, "order_id": attempt.order_id})
        async with self._db.transaction() as conn:
            await conn.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt.id).values(
                    last_check=f"status read given up: unreadable {in_a_row} times in a row, "
                               f"past its quarantine: {exc.detail}"[:200]))
            if job.delivery_id is not None:
                await _set_outcome(conn, job.delivery_id, f"status read given up: {why}")
        raise PermanentFailure(why) from exc

    async def _read_again(self, job: _ClosedRead, attempt: Any, wait: timedelta,
                          why: str) -> None:
        """Queue this read again ``wait`` from now, carrying its delivery and its watch: a
        read Lunas could not make is not an answer, so nothing else changes. A read a delivery
        queued meanwhile (since this one started) answers this delivery too, unless this read
        also keeps a watch: then both stay, so the chains never multiply beyond the deliveries
        that could not be coalesced."""
        now = self._clock.now()
        a = payment_attempts.c
        async with self._db.transaction() as conn:
            row = (await conn.execute(sa.select(a.last_check, a.last_checked_at).where(
                a.id == attempt.id).with_for_update())).one()
            queued = ((row.last_check or "").startswith(READ_QUEUED)
                      and row.last_checked_at is not None and row.last_checked_at > now)
            if queued and job.watch_until is None:
                if job.delivery_id is not None:
                    await _set_outcome(conn, job.delivery_id, f"status read: {why}; answered "
                                       f"by the read queued for {iso(row.last_checked_at)}")
                return
            await queue_closed_read(
                conn, attempt.id, due=now + wait, now=now,
                why=f"{why}, again in {wait.total_seconds():.0f} s",
                delivery_id=job.delivery_id, watch_until=job.watch_until,
                watch_reads=job.watch_reads, unreadable=job.unreadable)

    async def _watch_on(self, job: _ClosedRead, attempt: Any) -> None:
        """A pending instrument its provider would not cancel can still take money: read it
        again, at growing gaps (``VerificationSchedule.next_watch``), until the watch ends, the
        last read at its end."""
        now = self._clock.now()
        if job.watch_until is None or job.watch_until <= now:
            return
        nxt = self._schedule.next_watch(Rail(attempt.rail), reads_done=job.watch_reads,
                                        last=now)
        due = min(nxt or job.watch_until, job.watch_until)
        async with self._db.transaction() as conn:
            await queue_closed_read(
                conn, attempt.id, due=due, now=now, why="watching an instrument the provider "
                f"would not cancel, until {iso(job.watch_until)}",
                watch_until=job.watch_until, watch_reads=job.watch_reads + 1)

    async def _settle(self, attempt: Any, status: ProviderStatus, *, delivery_id: object,
                      details: dict[str, Any], kind: str, prefix: str = "") -> None:
        """Apply a payment a delivery or a read reports, each payment a read lists on its own
        (``settlement.apply_read_payments``). A Xendit VA or QR payment callback Lunas finds
        recorded already is one of two things: the payment a status read applied first, or
        another payment on the same instrument (a VA Xendit let be paid twice; its
        ``payment_id`` has no counterpart a read could name). Recorded "already applied", the
        second payment reached nobody (rule 4): a read of the attempt lists them all and tells.
        An e-wallet charge is captured once: its callback says SUCCEEDED of that capture, and
        a repeat of it is a duplicate delivery already."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            result = await apply_read_payments(
                conn, attempt, status, kind=kind, details=details, now=now,
                quarantine=self._quarantine, rereads=self._schedule)
            outcome = (f"{prefix}payment applied: {result.verdict}, order {result.order_state}"
                       if result.applied else f"{prefix}payment already applied")
            recount = (not result.applied and delivery_id is not None
                       and attempt.provider == XENDIT and kind == "provider_webhook"
                       and attempt.rail in _PAID_MORE_THAN_ONCE)
            if delivery_id is not None and not recount:
                await _set_outcome(conn, str(delivery_id), outcome)
        if recount:
            await self._ask_read_of_closed(
                str(delivery_id), attempt.id, "a payment is recorded on this attempt already: "
                "a status read lists its payments", within_watch=False, paid_too=True)
        log.info("payment evidence %s", "applied" if result.applied else "already applied",
                 extra={"order_id": result.order_id, "attempt_id": attempt.id,
                        "delivery_id": delivery_id, "evidence": kind,
                        "order_state": result.order_state})

    async def _confirm_now(self, delivery_id: str, attempt: Any, event_key: str | None) -> None:
        """A signed Midtrans payment notification for a live attempt: it may be a genuine
        ``cancel`` (sent under status code 200 too) relabelled, e.g. of an instrument cancelled
        in the Midtrans dashboard, outside Lunas, whose own cancel notification has not been
        applied yet. So the provider's status answers, read now: paid settles exactly as the
        notification would have (same evidence key, the amount Midtrans reports); cancelled or
        expired closes the attempt as its own notification would. A read that cannot run now
        (breaker open, throttled, failed), or whose paced slot is more than ``confirm_wait``
        away (it would hold this relay slot while it waits), leaves it to the verifier, brought
        forward: the payment waits for Midtrans's word, never settles on the unsigned status
        alone."""
        unconfirmed = "signed payment on a live attempt: not applied"
        try:
            status = await self._reads.read(attempt,
                                            within=self._confirm_wait.total_seconds())
        except PaceBusy as exc:
            self._confirmations.labels(attempt.provider, "pace_busy").inc()
            await self._ask_verifier(delivery_id, attempt.id, (
                f"{unconfirmed}, no slot of the {attempt.provider} status pace within "
                f"{self._confirm_wait.total_seconds():g} s (next in {exc.wait:.1f} s): "
                f"the verifier confirms it"))
            return
        except (RouteUnavailable, RailError) as exc:
            self._confirmations.labels(attempt.provider, "read_failed").inc()
            await self._ask_verifier(delivery_id, attempt.id, (
                f"{unconfirmed}, the status read confirming it failed ({type(exc).__name__})"))
            return
        self._confirmations.labels(attempt.provider, "read").inc()
        if status.status is NeutralStatus.PAID:
            await self._settle(attempt, status, delivery_id=delivery_id,
                               details={"delivery_id": delivery_id, "event_key": event_key,
                                        "raw_status": status.raw_status,
                                        "provider_ref": status.provider_ref,
                                        "confirmed_by": "status read"},
                               kind="provider_webhook")
        elif status.status in (NeutralStatus.EXPIRED, NeutralStatus.FAILED):
            await self._close(delivery_id, attempt, status.status,
                              prefix="signed payment not confirmed: ")
        elif status.status in REVERSALS:
            await self._reversed(delivery_id, attempt, status)
        else:
            await self._record(delivery_id, f"signed payment not confirmed: provider says "
                                            f"{status.raw_status or status.status}; no change")

    async def _confirm_reversal(self, delivery_id: str, attempt: Any, *, received_at: datetime,
                                tries: int, unreadable: int) -> None:
        """A notification that a payment went back (chargeback, refund): the provider's status
        says whether it did, since a Midtrans signature leaves the status out and a signed
        settlement relabelled ``chargeback`` would verify. One read per such notification, which
        only the provider can sign. A read that cannot run now (breaker open, 429, provider
        down, an answer Lunas cannot read) is not an answer: the delivery is queued again for
        when it can (``_confirm_reversal_later``). Left to the relay's backoff, it was retried
        into the outage and dead-lettered, and the case never opened (a paid attempt has no
        verifier schedule to fall back on). Answers Lunas cannot read, ``UNREADABLE_GIVE_UP`` in
        a row and ``REVERSAL_UNREADABLE_GIVE_UP`` after the notification came, are not waited
        for any longer: that is an adapter to fix, not an outage to wait out, and read every
        30 minutes for ever the chargeback reached nobody. The delivery is dead-lettered with
        the reason (counted and alerted on as every dead letter).

        A Xendit callback is authenticated whole (its token), status included: a refund it
        reports happened. A charge that does not show it is not an answer either (the charge
        may lag the refund, or be an object the refund does not touch): it is read again and
        given up the same way, so a person hears of it. Before, it was recorded as "no
        reversal", and the refund reached nobody."""
        try:
            status = await self._reads.read(attempt, within=self._confirm_wait.total_seconds())
            if status.status not in REVERSALS and attempt.provider == XENDIT:
                raise Unreadable(f"Xendit notified a refund, its charge says "
                                 f"{status.raw_status or status.status} with nothing refunded",
                                 provider=XENDIT, operation="status")
        except Unreadable as exc:
            in_a_row = unreadable + 1
            if (in_a_row >= UNREADABLE_GIVE_UP
                    and received_at + REVERSAL_UNREADABLE_GIVE_UP <= self._clock.now()):
                why = (f"{attempt.provider} notified a reversal of {attempt.id} received "
                       f"{iso(received_at)}; its status answer did not confirm it {in_a_row} "
                       f"times in a row (unreadable: {exc.detail}); check the payment at "
                       f"{attempt.provider}, fix the adapter if it misreads the answer, then "
                       "redeliver this job")
                log.error("reversal confirmation for %s given up: %s", attempt.id, why,
                          extra={"attempt_id": attempt.id, "order_id": attempt.order_id,
                                 "delivery_id": delivery_id})
                # No outcome on the delivery: redelivering the job after the fix processes it.
                raise PermanentFailure(why) from exc
            await self._confirm_reversal_later(delivery_id, attempt, tries + 1, exc,
                                               unreadable=in_a_row)
            return
        except (RouteUnavailable, RailError, PaceBusy) as exc:
            # Not an answer: the unreadable ones before it are still in a row (a busy pace or
            # an outage between them must not restart the count, or it never gives up).
            await self._confirm_reversal_later(delivery_id, attempt, tries + 1, exc,
                                               unreadable=unreadable)
            return
        if status.status not in REVERSALS:
            await self._record(delivery_id, f"status read: provider says "
                                            f"{status.raw_status or status.status}; no reversal")
            return
        await self._reversed(delivery_id, attempt, status)

    async def _confirm_reversal_later(self, delivery_id: str, attempt: Any, tries: int,
                                      exc: Exception, *, unreadable: int = 0) -> None:
        """Queue the delivery again (its outcome stays unset, so it is processed afresh) after
        the breaker's retry time, the 429's pause, or gaps doubling up to
        ``UNREADABLE_MAX_GAP``. The job's id is fixed per delivery and try, so a handler run
        twice does not fork the chain."""
        now = self._clock.now()
        wait = wait_to_retry(exc, base=self._schedule.retry_after_failure, tries=tries,
                             retry_at=self._reads.retry_at(route_of(attempt).key), now=now)
        log.warning("reversal for %s not confirmed yet (%s, try %d), read again in %.0f s",
                    attempt.id, type(exc).__name__, tries, wait.total_seconds(),
                    extra={"attempt_id": attempt.id, "order_id": attempt.order_id,
                           "delivery_id": delivery_id})
        async with self._db.transaction() as conn:
            await add_events(conn, [PendingEvent(
                event_type=events.PROVIDER_DELIVERY, aggregate_id=attempt.id, merchant_id=None,
                payload={"delivery_id": delivery_id, "confirm_tries": tries,
                         "unreadable_tries": unreadable},
                available_at=now + wait, event_id=f"rv{tries}_{delivery_id}"[:40])], now=now)

    async def _reversed(self, delivery_id: str | None, attempt: Any,
                        status: ProviderStatus) -> None:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            case_id = await apply_reversal(
                conn, attempt, status, kind="provider_status",
                details={"asked_by_delivery": delivery_id}, now=now,
                quarantine=self._quarantine, rereads=self._schedule)
            if delivery_id is not None:
                await _set_outcome(conn, delivery_id, (
                    f"status read: provider says {status.raw_status}; review case {case_id} "
                    "opened" if case_id else f"status read: provider says {status.raw_status}; "
                                             "reversal already recorded"))
        log.warning("payment reversed at provider (%s)", status.raw_status,
                    extra={"attempt_id": attempt.id, "order_id": attempt.order_id,
                           "delivery_id": delivery_id, "review_case_id": case_id})

    async def _close(self, delivery_id: str, attempt: Any, status: NeutralStatus, *,
                     prefix: str = "") -> None:
        """Expired / failed at the provider: moves a live attempt only, never backwards."""
        state = AttemptState(attempt.state)
        if state not in _LIVE:
            await self._record(delivery_id, f"{prefix}no change: provider says {status.value}, "
                                            f"attempt already {state.value}")
            return
        trigger = (AttemptTrigger.EXPIRED if status is NeutralStatus.EXPIRED
                   else AttemptTrigger.VERIFIED_ABSENT if state is AttemptState.UNKNOWN
                   else AttemptTrigger.CANCELLED)
        new_state = next_attempt_state(state, trigger)
        now = self._clock.now()
        async with self._db.transaction() as conn:
            order = await lock_order_of(conn, attempt.id)
            moved = await conn.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt.id, payment_attempts.c.state == state.value,
            ).values(state=new_state.value, updated_at=now, closed_at=now,
                     failure_reason=f"{status.value} at provider"))
            if not moved.rowcount:
                # A payment or another close got there first (the attempt read before its
                # order's lock is stale): what this delivery means depends on the new state
                # (a void of what is now a paid charge is a reversal), so it is applied again.
                raise _AttemptMoved(f"attempt {attempt.id} moved from {state.value} while "
                                    f"{status.value} at the provider was applied")
            await _set_outcome(conn, delivery_id,
                               f"{prefix}attempt {state.value} -> {new_state.value}")
            await tell_if_nothing_left_to_pay(conn, order, attempt_id=attempt.id,
                                              reason=f"{status.value} at provider", now=now)

    async def _verify_later(self, delivery_id: str, attempt: Any) -> None:
        if attempt.state == AttemptState.PAID.value:
            await self._record(delivery_id, "unverified: attempt already paid; nothing to check")
        elif attempt.state in LIVE:
            await self._ask_verifier(delivery_id, attempt.id, "unverified: never trusted")
        elif attempt.state in _CLOSED:
            await self._ask_read_of_closed(delivery_id, attempt.id, "unverified: never trusted",
                                           within_watch=True)
        else:
            await self._record(delivery_id, f"unverified: never trusted; attempt "
                                            f"{attempt.state}, not read")

    async def _read_instead(self, delivery_id: str, attempt: Any, why: str) -> None:
        """A verified delivery Lunas cannot read (a shape or a field it does not know: Xendit's
        legacy callbacks are known only from third parties, RAILS.md §7) is still the
        provider's word that this attempt moved, perhaps a payment. The status read answers
        instead: the verifier's, brought forward, for a live attempt; one queued read for a
        closed one, which the verifier reads no more, whenever it closed (the delivery is
        genuine, unlike an unverified one). Recorded as unreadable and left there, a late
        payment on a closed attempt reached nobody (rule 4)."""
        if attempt.state in LIVE:
            await self._ask_verifier(delivery_id, attempt.id, why)
        elif attempt.state in _CLOSED:
            await self._ask_read_of_closed(delivery_id, attempt.id, why, within_watch=False)
        else:
            await self._record(delivery_id, why)

    async def _read_for_contradiction(self, delivery_id: str, attempt: Any,
                                      status: ProviderStatus, why: str) -> None:
        """A verified callback about another Xendit resource than the attempt's
        (``_contradiction``) moves nothing: Lunas cannot tell from it what happened to the
        instrument it holds, so it is evidence nobody can verify. A close (FAILED, expired) asks
        for the attempt's status read (``_read_instead``). A payment is money Xendit says came
        in under our reference, whatever resource took it: a read of the attempt's own
        instrument would not see it, so one read by our reference (``_read_reference``) lists
        every payment made under it, and each reaches the order or a case (rule 4)."""
        why = f"unverifiable: {why}; not applied"
        if status.status is not NeutralStatus.PAID:
            await self._read_instead(delivery_id, attempt, why)
            return
        now = self._clock.now()
        async with self._db.transaction() as conn:
            await self._queue_reference_read(conn, delivery_id, attempt.id, due=now, now=now)
            await _set_outcome(conn, delivery_id, f"{why}; a status read by our reference "
                                                  "lists the payments made under it")

    async def _queue_reference_read(self, conn: AsyncConnection, delivery_id: str,
                                    attempt_id: str, *, due: datetime, now: datetime,
                                    tries: int = 0, unreadable: int = 0) -> None:
        """One ``attempt.verify`` job reading ``attempt_id`` by our reference; its id is fixed
        per delivery and try, so a handler run twice does not fork the chain."""
        await add_events(conn, [PendingEvent(
            event_type=events.ATTEMPT_VERIFY, aggregate_id=attempt_id, merchant_id=None,
            payload={"attempt_id": attempt_id, "delivery_id": delivery_id,
                     "by_reference": True, "tries": tries, "unreadable": unreadable},
            available_at=due,
            event_id=f"ref{tries}_{delivery_id.removeprefix('dlv_')}"[:40])], now=now)

    async def _read_reference(self, event: OutboxEvent, attempt: Any) -> None:
        """The read ``_read_for_contradiction`` queued, in any state of the attempt: a
        payment it lists settles the order or opens a case as any payment (the first one seen
        before is not applied again: ``paid_evidence_key``); none leaves the attempt as it is.
        A read that cannot be made now is queued again; answers Lunas cannot read,
        ``UNREADABLE_GIVE_UP`` in a row, are dead-lettered for a person."""
        delivery_id = str(event.payload["delivery_id"])
        tries = int(event.payload.get("tries") or 0)
        unreadable = int(event.payload.get("unreadable") or 0)
        try:
            status = await self._reads.read(_ByReference(attempt),
                                            within=self._confirm_wait.total_seconds())
        except (PaceBusy, RouteUnavailable, RailError) as exc:
            if isinstance(exc, Unreadable):
                unreadable += 1
                if unreadable >= UNREADABLE_GIVE_UP:
                    why = (f"status read by reference of {attempt.id} unreadable {unreadable} "
                           f"times in a row: {exc.detail}; look its payments up at "
                           f"{attempt.provider}, fix the adapter, then redeliver this job")
                    await self._record(delivery_id, f"status read given up: {why}")
                    raise PermanentFailure(why) from exc
            now = self._clock.now()
            wait = wait_to_retry(exc, base=self._schedule.retry_after_failure, tries=tries + 1,
                                 retry_at=self._reads.retry_at(route_of(attempt).key), now=now)
            async with self._db.transaction() as conn:
                await self._queue_reference_read(conn, delivery_id, attempt.id, due=now + wait,
                                                 now=now, tries=tries + 1, unreadable=unreadable)
            return
        if status.status is NeutralStatus.PAID:
            await self._settle(attempt, status, delivery_id=delivery_id,
                               details={"raw_status": status.raw_status, "read": "by reference",
                                        "asked_by_delivery": delivery_id},
                               kind="provider_status", prefix="status read by reference: ")
            return
        await self._record(delivery_id, f"status read by reference: no payment under it "
                                        f"({status.raw_status or status.status.value}); "
                                        f"attempt {attempt.state} unchanged")

    async def _confirm_first(self, delivery_id: str, attempt: Any) -> None:
        """A signed Midtrans payment notification for an attempt Lunas may have cancelled: it
        may be a genuine ``cancel`` relabelled, so the provider's status answers instead (and a
        Xendit capture on a closed attempt, whose charge may have been voided since:
        ``_stale_capture``). The
        normal path (a live, active attempt) settles at once as before; this one waits for one
        paced read, which settles exactly as the notification would have (same evidence key)."""
        asked = (f"signed payment on a {attempt.state} attempt: not applied, a status read "
                 f"confirms it")
        if attempt.state == AttemptState.SUPERSEDED.value:
            await self._ask_verifier(delivery_id, attempt.id, asked)
        else:
            await self._ask_read_of_closed(delivery_id, attempt.id, asked, within_watch=False)

    async def _ask_verifier(self, delivery_id: str, attempt_id: str, asked: str) -> None:
        """Have the verifier read a live attempt soon, at most once per ``ASKED_READ_SPACING``
        for all the deliveries that ask: its scheduled read is brought forward, never back, and
        never into a claim lease (a claimed read may be in flight; moving it would have a second
        worker read it again)."""
        now = self._clock.now()
        a = payment_attempts.c
        async with self._db.transaction() as conn:
            row = (await conn.execute(
                sa.select(a.state, a.next_check_at, a.last_checked_at, a.deferred_on)
                .where(a.id == attempt_id).with_for_update())).one()
            due = (now if row.last_checked_at is None
                   else max(now, row.last_checked_at + ASKED_READ_SPACING))
            if row.state not in LIVE:
                outcome = f"{asked}; attempt {row.state} meanwhile, not read"
            elif row.deferred_on is not None:
                outcome = f"{asked}; status read waits for {row.deferred_on} to recover"
            elif (row.next_check_at is not None
                  and row.next_check_at <= max(due, now + self._claim_lease)):
                outcome = f"{asked}; status read already due by {iso(row.next_check_at)}"
            else:
                await conn.execute(payment_attempts.update().where(a.id == attempt_id)
                                   .values(next_check_at=due))
                outcome = f"{asked}; status read brought forward to {iso(due)}"
            await _set_outcome(conn, delivery_id, outcome)

    async def _ask_read_of_closed(self, delivery_id: str, attempt_id: str, asked: str, *,
                                  within_watch: bool, paid_too: bool = False) -> None:
        """Queue one status read of an attempt Lunas closed (expired, failed), at most one per
        ``ASKED_READ_SPACING`` for all the deliveries that ask. The verifier no longer reads such
        an attempt, so its ``last_checked_at`` / ``last_check`` are free to say when its latest
        asked-for read is due and whether it has started: a read not started yet answers every
        delivery that arrives before it does (unless it has waited a spacing already, e.g.
        behind an open breaker; then one more is queued, so a job that never runs cannot answer
        for ever). ``within_watch``: only while the attempt is within the code quarantine of
        its closing (a delivery nobody can verify is worth one paced read while a late payment
        is likely, e.g. after a server-key rotation; it proves nothing). ``paid_too``: a paid
        attempt is read too, at once (a verified payment callback Lunas found recorded already:
        ``_settle``; its delivery's key is Xendit's payment, so no flood repeats it)."""
        now = self._clock.now()
        a = payment_attempts.c
        async with self._db.transaction() as conn:
            row = (await conn.execute(
                sa.select(a.state, a.closed_at, a.updated_at, a.last_checked_at, a.last_check)
                .where(a.id == attempt_id).with_for_update())).one()
            closed_at = row.closed_at or row.updated_at
            due = (now if row.last_checked_at is None or paid_too
                   else max(now, row.last_checked_at + ASKED_READ_SPACING))
            if row.state not in (_READ_WHEN_ASKED if paid_too else _CLOSED):
                outcome = f"{asked}; attempt {row.state} meanwhile, not read"
            elif within_watch and closed_at + self._quarantine <= now:
                outcome = (f"{asked}; attempt {row.state} since {iso(closed_at)}, past its "
                           f"watch, not read")
            elif ((row.last_check or "").startswith(READ_QUEUED)
                  and row.last_checked_at is not None
                  and row.last_checked_at + ASKED_READ_SPACING > now):
                outcome = f"{asked}; status read already queued for {iso(row.last_checked_at)}"
            else:
                await queue_closed_read(conn, attempt_id, due=due, now=now, why=_ASKED,
                                        delivery_id=delivery_id)
                outcome = f"{asked}; status read of the {row.state} attempt queued for {iso(due)}"
            await _set_outcome(conn, delivery_id, outcome)

    async def _note_closed_read(self, attempt_id: str, note: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt_id,
                payment_attempts.c.state.in_(_READ_WHEN_ASKED)).values(last_check=note[:200]))

    async def _record(self, delivery_id: str, outcome: str) -> None:
        async with self._db.transaction() as conn:
            await _set_outcome(conn, delivery_id, outcome)


async def _set_outcome(conn: AsyncConnection, delivery_id: str, outcome: str) -> None:
    await conn.execute(provider_deliveries.update().where(
        provider_deliveries.c.id == delivery_id).values(outcome=outcome[:500]))
