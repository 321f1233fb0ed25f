"""The system of record: every table Lunas owns (SQLAlchemy Core, shared by PostgreSQL and SQLite).

Uniqueness that money depends on is declared here, not checked in Python (STYLE rule 7):
idempotency keys, merchant order ids, evidence keys, mutation fingerprints, and the transfer
amount of every attempt that still holds a unique code on a payout account.
"""

from __future__ import annotations

import sqlalchemy as sa

from orchestrator.reconciliation.matcher import FOR_PEOPLE
from orchestrator.store.types import BigId, JSONDoc, UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

merchants = sa.Table(
    "merchants",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("webhook_url", sa.String(2000)),
    # Kept readable: Lunas must sign every outbound webhook with it. Protect the database.
    sa.Column("webhook_secret", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Per-merchant route preferences ({"priorities": {rail: [provider, ...]}, "fallback": [rail,
    # ...]}); NULL means the deployment's defaults (RoutingSettings).
    sa.Column("routing", JSONDoc),
    sa.Column("allow_fallback", sa.Boolean, nullable=False, server_default=sa.true()),
    # The secret the last rotation replaced, still signed with (a second v1) until its expiry,
    # so the merchant may switch at any moment of the overlap (notify/delivery.py). Both NULL,
    # or both set; a past expiry means the overlap is over and only webhook_secret signs.
    sa.Column("previous_webhook_secret", sa.String(128)),
    sa.Column("previous_webhook_secret_expires_at", UTCDateTime),
)

merchant_api_keys = sa.Table(
    "merchant_api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("merchant_id", sa.String(32), sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

ops_tokens = sa.Table(
    "ops_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.String(500), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

payout_accounts = sa.Table(
    "payout_accounts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("merchant_id", sa.String(32), sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("bank", sa.String(32), nullable=False),
    sa.Column("account_number", sa.String(40), nullable=False),
    sa.Column("account_name", sa.String(200), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("merchant_id", "bank", "account_number"),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("merchant_id", sa.String(32), sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("merchant_order_id", sa.String(100), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False, server_default="IDR"),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("rail", sa.String(32), nullable=False),
    sa.Column("channel", sa.String(32)),
    sa.Column("customer_name", sa.String(200), nullable=False),
    sa.Column("customer_email", sa.String(320), nullable=False),
    sa.Column("customer_phone", sa.String(32), nullable=False),
    sa.Column("metadata", JSONDoc),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("paid_at", UTCDateTime),
    sa.Column("review_reason", sa.String(48)),
    # When the deadline sweep first put the order in ``verifying``: its verification window runs
    # from here, not from ``expires_at``, so an order a sweep first sees long after its deadline
    # (a worker back from its own outage) is still read before a person is asked. NULL for an
    # order that never waited there.
    sa.Column("verifying_since", UTCDateTime),
    # The capture's trace context (W3C traceparent), so evidence that arrives on its own (a
    # webhook, a status read, a mutation) joins the order's trace; NULL when captured untraced.
    sa.Column("trace_context", JSONDoc),
    sa.UniqueConstraint("merchant_id", "merchant_order_id"),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
)
# Sweeps ask "which orders in state S are past their deadline?" and the metrics count orders by
# state; with the state first, both read only that state's entries, however long the history.
sa.Index("ix_orders_state_deadline", orders.c.state, orders.c.expires_at)
# The sweep asks "which orders in verifying have waited out their window?"; the entries are only
# the orders waiting there now.
_VERIFYING = orders.c.state == "verifying"
sa.Index("ix_orders_verifying_since", orders.c.verifying_since,
         postgresql_where=_VERIFYING, sqlite_where=_VERIFYING)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("merchant_id", sa.String(32), sa.ForeignKey("merchants.id"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("order_id", sa.String(32)),
    sa.Column("response_status", sa.Integer, nullable=False),
    sa.Column("response_body", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
# Retention deletes keys by age (services/retention.py). Keys are written in time order, so a
# BRIN index (a few pages for millions of rows) finds the old ones at next to no cost per capture.
sa.Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at,
         postgresql_using="brin")

payment_attempts = sa.Table(
    "payment_attempts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.id"), nullable=False),
    sa.Column("rail", sa.String(32), nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("channel", sa.String(32)),
    sa.Column("state", sa.String(16), nullable=False),
    # What the customer is asked to pay on this instrument (for manual transfer: amount + code).
    sa.Column("transfer_amount", sa.BigInteger, nullable=False),
    sa.Column("unique_code", sa.Integer),
    sa.Column("payout_bank", sa.String(32)),
    sa.Column("payout_account_number", sa.String(40)),
    sa.Column("payout_account_name", sa.String(200)),
    # True while the transfer amount is reserved on the payout account: open, and for a quarantine
    # after closing so a late transfer of an old amount cannot land on a new order.
    sa.Column("holds_code", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("code_held_until", UTCDateTime),
    sa.Column("provider_ref", sa.String(128)),
    sa.Column("instructions", JSONDoc),
    # Why the attempt failed or is unknown, in Lunas's words (never the provider's raw body).
    sa.Column("failure_reason", sa.String(500)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("closed_at", UTCDateTime),
    # Verification (services/verification.py): when the provider's status is next read; NULL when
    # nothing is scheduled (terminal, manual transfer, or deferred). ``deferred_on`` names the
    # route whose open breaker refused the last read; when it closes, the read is due at once.
    sa.Column("next_check_at", UTCDateTime),
    sa.Column("deferred_on", sa.String(100)),
    sa.Column("checks", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_checked_at", UTCDateTime),
    sa.Column("last_check", sa.String(200)),
    # An order's attempts (order_id first), and the key evidence refers to: an observation names
    # an attempt of the order it is recorded against, proven by one foreign key.
    sa.UniqueConstraint("order_id", "id"),
)
sa.Index(
    "uq_payment_attempts_held_transfer_amount",
    payment_attempts.c.payout_bank,
    payment_attempts.c.payout_account_number,
    payment_attempts.c.transfer_amount,
    unique=True,
    postgresql_where=payment_attempts.c.holds_code,
    sqlite_where=payment_attempts.c.holds_code,
)
sa.Index(
    "ix_payment_attempts_code_release",
    payment_attempts.c.code_held_until,
    postgresql_where=payment_attempts.c.holds_code,
    sqlite_where=payment_attempts.c.holds_code,
)
sa.Index(
    "ix_payment_attempts_next_check_at",
    payment_attempts.c.next_check_at,
    postgresql_where=payment_attempts.c.next_check_at.is_not(None),
    sqlite_where=payment_attempts.c.next_check_at.is_not(None),
)
# The verifier's claims, one provider at a time (services/verification.py).
sa.Index(
    "ix_payment_attempts_due_by_provider",
    payment_attempts.c.provider,
    payment_attempts.c.next_check_at,
    postgresql_where=sa.and_(payment_attempts.c.next_check_at.is_not(None),
                             payment_attempts.c.deferred_on.is_(None)),
    sqlite_where=sa.and_(payment_attempts.c.next_check_at.is_not(None),
                         payment_attempts.c.deferred_on.is_(None)),
)
# A refund callback names the payment by the provider's id, not by ours (rails/xendit.py).
sa.Index(
    "ix_payment_attempts_provider_ref",
    payment_attempts.c.provider,
    payment_attempts.c.provider_ref,
    postgresql_where=payment_attempts.c.provider_ref.is_not(None),
    sqlite_where=payment_attempts.c.provider_ref.is_not(None),
)
sa.Index(
    "ix_payment_attempts_deferred_on",
    payment_attempts.c.deferred_on,
    postgresql_where=payment_attempts.c.deferred_on.is_not(None),
    sqlite_where=payment_attempts.c.deferred_on.is_not(None),
)

evidence = sa.Table(
    "evidence",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # Provider event id, "mutation:<id>", "manual:<uuid>": one row per observation, ever.
    sa.Column("unique_key", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("order_id", sa.String(32), nullable=False, index=True),
    sa.Column("attempt_id", sa.String(32), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("verdict", sa.String(24), nullable=False),
    sa.Column("observed_at", UTCDateTime, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("details", JSONDoc),
    # The attempt, of this order (and so the order, through the attempt's own foreign key): one
    # check per row where two separate keys made two, and a row can no longer pair an order with
    # another order's attempt.
    sa.ForeignKeyConstraint(["order_id", "attempt_id"],
                            ["payment_attempts.order_id", "payment_attempts.id"]),
)

statements = sa.Table(
    "statements",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("bank", sa.String(32), nullable=False),
    sa.Column("account_number", sa.String(40), nullable=False),
    sa.Column("filename", sa.String(300)),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("uploaded_by", sa.String(200), nullable=False),
    sa.Column("counts", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

mutations = sa.Table(
    "mutations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("bank", sa.String(32), nullable=False),
    sa.Column("account_number", sa.String(40), nullable=False),
    sa.Column("posted_at", UTCDateTime, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("direction", sa.String(2), nullable=False),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("balance", sa.BigInteger),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("statement_id", sa.String(32), sa.ForeignKey("statements.id")),
    sa.Column("match_state", sa.String(16), nullable=False),
    # One column, so a mutation can be matched to at most one order (rule 2).
    sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.id")),
    sa.Column("matched_at", UTCDateTime),
    sa.Column("matched_by", sa.String(200)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("direction IN ('CR', 'DB')", name="direction"),
)
# The list finance works through (unmatched, ambiguous, likely duplicates), in posting order. Only
# those few per cent of mutations are in it: an import writes no entry for the lines it matches
# or ignores.
sa.Index("ix_mutations_for_people", mutations.c.posted_at, mutations.c.id,
         postgresql_where=mutations.c.match_state.in_(FOR_PEOPLE),
         sqlite_where=mutations.c.match_state.in_(FOR_PEOPLE))
# Settlement asks "is another mutation already matched to this order?" (possible duplicates, a
# second payment): without this index every such question scans every mutation ever stored.
sa.Index("ix_mutations_order_id", mutations.c.order_id,
         postgresql_where=mutations.c.order_id.is_not(None),
         sqlite_where=mutations.c.order_id.is_not(None))
# A debit asks "which credit of this amount paid an order on this account in the last days?" (a
# possible reversal): only matched credits are in it. The account is checked on the few rows an
# amount and a few days find; leaving it out of the key spares every matched credit of an
# import a text comparison per index level (1.7 against 1.0 µs a row, measured).
_MATCHED_CREDIT = sa.and_(mutations.c.match_state == "matched", mutations.c.direction == "CR")
sa.Index("ix_mutations_matched_credits", mutations.c.amount, mutations.c.posted_at,
         postgresql_where=_MATCHED_CREDIT, sqlite_where=_MATCHED_CREDIT)
# A credit asks the reverse: "which debit of this amount, stored before me, may have taken me
# back?" (a debit uploaded in an earlier statement, or pushed while the credit's push was lost).
# Only debits no credit has claimed yet are in it; an import first asks whether its account has
# any in the import's days at all, hence the account and the day leading the key.
_UNFLAGGED_DEBIT = sa.and_(mutations.c.match_state == "ignored", mutations.c.direction == "DB")
sa.Index("ix_mutations_unflagged_debits", mutations.c.account_number, mutations.c.posted_at,
         postgresql_where=_UNFLAGGED_DEBIT, sqlite_where=_UNFLAGGED_DEBIT)

# Items of the Moota feed Lunas could not read (no id, an amount that is not one, a date in no
# known form): kept as received, once each (item_key is a hash of the item), so the feed moves
# on instead of retrying one page forever, and a person sees every one. state: open, read (the
# feed later listed a readable version of the same mutation), handled (a person closed it).
unreadable_feed_items = sa.Table(
    "unreadable_feed_items",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("feed", sa.String(32), nullable=False),
    sa.Column("item_key", sa.String(64), nullable=False, unique=True),
    # The item's own mutation id, when it has one: how a later readable version closes it.
    sa.Column("mutation_ref", sa.String(200)),
    sa.Column("raw_item", sa.Text, nullable=False),
    sa.Column("problem", sa.String(500), nullable=False),
    sa.Column("first_seen_at", UTCDateTime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("closed_by", sa.String(200)),
    sa.Column("note", sa.String(2000)),
)
sa.Index("ix_unreadable_feed_items_state", unreadable_feed_items.c.state,
         unreadable_feed_items.c.first_seen_at)
# One item per mutation, whatever text it came in (unreadable_feed_items.keep).
sa.Index("uq_unreadable_feed_items_feed_mutation_ref", unreadable_feed_items.c.feed,
         unreadable_feed_items.c.mutation_ref, unique=True,
         postgresql_where=unreadable_feed_items.c.mutation_ref.is_not(None),
         sqlite_where=unreadable_feed_items.c.mutation_ref.is_not(None))

review_cases = sa.Table(
    "review_cases",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.id"), index=True),
    sa.Column("mutation_id", sa.String(32), sa.ForeignKey("mutations.id")),
    sa.Column("reason", sa.String(48), nullable=False),
    sa.Column("recommended_action", sa.String(24), nullable=False),
    sa.Column("amount", sa.BigInteger),
    # What ``amount`` counts (ISO 4217): IDR but for a payment a provider reported in another
    # currency. NULL only on a currency_mismatch case opened before 0016 recorded it.
    sa.Column("currency", sa.String(16)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime),
    sa.Column("resolved_by", sa.String(200)),
    sa.Column("resolution", sa.String(24)),
    sa.Column("note", sa.String(2000)),
)
# Open cases by reason, for the gauges an alert reads at every scrape (telemetry/state.py).
sa.Index("ix_review_cases_open_reason", review_cases.c.reason,
         postgresql_where=review_cases.c.state == "open",
         sqlite_where=review_cases.c.state == "open")

# Every webhook a gateway (or anyone) sent us, verified or not, as received. ``event_key`` is the
# provider's event identity ("midtrans:<transaction_id>:<transaction_status>:<status_code>:
# <fraud_status>", "xendit:va:<payment_id>", "xendit:qr:<payment id>",
# "xendit:ewallet:<charge id>:<status>"); only verified first deliveries carry it, so a forger can
# never claim a genuine event's key, and a duplicate is stored with NULL and outcome "duplicate".
provider_deliveries = sa.Table(
    "provider_deliveries",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("raw_body", sa.Text, nullable=False),
    # A subset without secrets (never x-callback-token).
    sa.Column("headers", JSONDoc, nullable=False),
    sa.Column("verified", sa.Boolean, nullable=False),
    sa.Column("event_key", sa.String(200), unique=True),
    # Our attempt the delivery names (Midtrans order_id, Xendit external_id / reference_id), as
    # claimed: not a foreign key, a forged delivery may name anything.
    sa.Column("attempt_id", sa.String(64)),
    # What became of it, in Lunas's words; NULL until the worker has handled it.
    sa.Column("outcome", sa.String(500)),
)
sa.Index("ix_provider_deliveries_received_at", provider_deliveries.c.received_at,
         postgresql_using="brin")

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(40), nullable=False, unique=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("aggregate_id", sa.String(32)),
    sa.Column("merchant_id", sa.String(32)),
    sa.Column("payload", JSONDoc, nullable=False),
    sa.Column("trace_context", JSONDoc),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("available_at", UTCDateTime, nullable=False),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("last_error", sa.String(2000)),
    sa.Column("processed_at", UTCDateTime),
)
# Counting pending and dead events (metrics) without reading every event ever written.
sa.Index("ix_outbox_status_created", outbox.c.status, outbox.c.created_at)
sa.Index(
    "ix_outbox_pending",
    outbox.c.available_at,
    outbox.c.id,
    postgresql_where=outbox.c.status == "pending",
    sqlite_where=outbox.c.status == "pending",
)
# An order's pending webhooks in outbox order: the claim holds each back while an earlier one is
# undelivered (outbox/queries.py), one probe per candidate.
sa.Index(
    "ix_outbox_order_queue",
    outbox.c.aggregate_id,
    outbox.c.id,
    postgresql_where=outbox.c.status == "pending",
    sqlite_where=outbox.c.status == "pending",
)
# Each merchant's pending events per type, due first: the PostgreSQL claim walks these queues
# (outbox/queries.py), so a full lane's backlog costs a probe instead of a read of all of it.
sa.Index(
    "ix_outbox_merchant_queues",
    outbox.c.merchant_id,
    outbox.c.event_type,
    outbox.c.available_at,
    outbox.c.id,
    postgresql_where=outbox.c.status == "pending",
    sqlite_where=outbox.c.status == "pending",
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject_type", sa.String(32), nullable=False),
    sa.Column("subject_id", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(2000)),
    sa.Column("details", JSONDoc),
)

# What people did about one thing (a case, a bank line): an order's payment record reads the
# entries of its cases and bank lines (services/order_record.py).
sa.Index("ix_audit_log_subject", audit_log.c.subject_type, audit_log.c.subject_id)

route_controls = sa.Table(
    "route_controls",
    metadata,
    sa.Column("route_key", sa.String(100), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(500)),
    sa.Column("changed_by", sa.String(200), nullable=False),
    sa.Column("changed_at", UTCDateTime, nullable=False),
)

maintenance_windows = sa.Table(
    "maintenance_windows",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    # A route key ("va:xendit:bca") or a prefix pattern with "*" ("va:xendit:*", "*:midtrans:*").
    sa.Column("route_pattern", sa.String(100), nullable=False),
    sa.Column("starts_at", UTCDateTime, nullable=False),
    sa.Column("ends_at", UTCDateTime, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("cancelled_at", UTCDateTime),
    sa.CheckConstraint("ends_at > starts_at", name="window_order"),
)
sa.Index("ix_maintenance_windows_ends_at", maintenance_windows.c.ends_at)

# The public status page (statuspage/). One row per component with the status customers see and
# the candidate status that must hold for a dwell time before it is shown (hysteresis).
status_components = sa.Table(
    "status_components",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("candidate", sa.String(24)),
    sa.Column("candidate_since", UTCDateTime),
    # Why the last evaluation said what it said (machine words, shown to ops only).
    sa.Column("observed", JSONDoc),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Every published status a component has held, for the 90-day uptime bars: a period per row,
# the current one open (ended_at NULL).
status_history = sa.Table(
    "status_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("component_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
)
sa.Index("ix_status_history_component_started", status_history.c.component_id,
         status_history.c.started_at)

status_incidents = sa.Table(
    "status_incidents",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("name_en", sa.String(300)),
    # investigating, identified, monitoring, resolved (Atlassian Statuspage's words).
    sa.Column("status", sa.String(16), nullable=False),
    # none, minor, major, critical: the worst component status the incident has seen.
    sa.Column("impact", sa.String(16), nullable=False),
    # Opened by the status recorder (resolved by it too), or by a person through the ops API.
    sa.Column("automatic", sa.Boolean, nullable=False),
    sa.Column("components", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("monitoring_at", UTCDateTime),
    sa.Column("resolved_at", UTCDateTime),
)
sa.Index("ix_status_incidents_created_at", status_incidents.c.created_at)

status_incident_updates = sa.Table(
    "status_incident_updates",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("incident_id", sa.String(32), sa.ForeignKey("status_incidents.id"), nullable=False,
              index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("body_en", sa.Text),
    sa.Column("author", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
