"""Prometheus metrics, declared once per process in their own registry (built by bootstrap).

Names follow Prometheus conventions: ``lunas_`` prefix, base units, ``_total`` counters, and only
bounded label values (no order ids).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from orchestrator.domain.checkout import SUPPORTED_RAILS

CAPTURE_OUTCOMES = ("created", "deferred", "replayed", "refused", "unavailable", "error")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.state_registry = CollectorRegistry()
        """Gauges sampled from the database (telemetry/state.py): exposed by the api only, so a
        worker's own metrics endpoint never reports a stale copy of them."""
        self.orders_captured = Counter(
            "lunas_orders_captured_total",
            "Capture requests by outcome and rail: created (instructions given), deferred "
            "(stored, instructions later), replayed, refused (the request is wrong or conflicts), "
            "unavailable (no capacity, e.g. no unique code free) and error (Lunas failed, e.g. "
            "its database is down). Rail is unknown when the request failed before it was read.",
            ["outcome", "rail"], registry=self.registry,
        )
        # Every series exists from the start: a rate over the first error ever is then not lost,
        # and the payment-success SLI (ops/alerts) has a denominator before any failure.
        for outcome in CAPTURE_OUTCOMES:
            for rail in (*SUPPORTED_RAILS, "unknown"):
                self.orders_captured.labels(outcome, rail)
        self.unique_codes_exhausted = Counter(
            "lunas_unique_codes_exhausted_total",
            "Captures that found every transfer amount in the code range held, by the "
            "capture's rail: refused (manual transfer, 503), or deferred (a gateway order "
            "whose routes were all down, falling back to manual transfer; 202), counted "
            "again at each retry of its issuance by the worker that finds them held still.",
            ["rail"], registry=self.registry,
        )
        self.mutations_ingested = Counter(
            "lunas_mutations_ingested_total",
            "Bank mutations received, by source and result (new, duplicate).",
            ["source", "result"], registry=self.registry,
        )
        self.mutations_matched = Counter(
            "lunas_mutations_matched_total",
            "New mutations by match outcome (matched, ambiguous, unmatched, ignored).",
            ["source", "outcome"], registry=self.registry,
        )
        self.mutation_ingests_retried = Counter(
            "lunas_mutation_ingests_retried_total",
            "Pushes, feed polls and statement imports PostgreSQL rolled back to break a "
            "deadlock (a statement: or a serialization failure), run again, by source. "
            "Ingests lock in one order, so this stays near zero; a rising rate means a "
            "writer locks out of that order.",
            ["source"], registry=self.registry,
        )
        # Route breakers (orchestrator/rails/breaker.py). Route keys are configured, so bounded.
        self.breaker_state = Gauge(
            "lunas_breaker_state",
            "1 for the state each route's breaker is in (closed, open, half_open, forced_open, "
            "forced_closed), 0 for the others.",
            ["route", "state"], registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "lunas_breaker_transitions_total",
            "Breaker state changes by route, from state and to state.",
            ["route", "from_state", "to_state"], registry=self.registry,
        )
        self.breaker_calls = Counter(
            "lunas_breaker_calls_total",
            "Calls through route breakers by outcome (success, slow_success, failure, "
            "slow_failure, neutral, rejected, late: reported after the state moved on).",
            ["route", "outcome"], registry=self.registry,
        )
        self.breaker_redis_fallback = Gauge(
            "lunas_breaker_redis_fallback",
            "1 while this process cannot reach Redis and runs its breakers on local state alone.",
            registry=self.registry,
        )
        self.redis_pauses = Counter(
            "lunas_redis_pauses_total",
            "Times a Redis failure made a user of it fall back to this process's own state for "
            "a few seconds: request_pacing (status reads may then exceed a provider's limit "
            "across processes), status_page_lookups (each replica then counts lookups alone).",
            ["user"], registry=self.registry,
        )
        for user in ("request_pacing", "status_page_lookups"):
            self.redis_pauses.labels(user)

        self.provider_call_seconds = Histogram(
            "lunas_provider_call_seconds",
            "HTTP calls to payment providers by provider, operation (create, status, cancel) "
            "and outcome (answered: any HTTP status; no_answer: transport error or timeout).",
            ["provider", "operation", "outcome"], registry=self.registry,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
        )
        self.webhook_receive_lag = Histogram(
            "lunas_webhook_receive_lag_seconds",
            "Receive time of a verified, first gateway delivery minus the event time the provider "
            "stamped on it (clamped at 0), by provider.",
            ["provider"], registry=self.registry,
            buckets=(1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0),
        )
        self.payment_attempts = Counter(
            "lunas_payment_attempts_total",
            "Instruments asked of a route, by how the create ended (served, failed, unknown).",
            ["route", "outcome"], registry=self.registry,
        )
        # Deferred verification (orchestrator/services/verification.py).
        self.verification_reads = Counter(
            "lunas_verification_reads_total",
            "Scheduled status reads by provider and outcome (paid, pending, expired, failed, "
            "resolved for an unknown create, deferred: breaker open, read_failed, throttled: "
            "429, retried at Retry-After, unreadable: answered but not understood).",
            ["provider", "outcome"], registry=self.registry,
        )
        self.payment_confirmations = Counter(
            "lunas_payment_confirmations_total",
            "Signed payment notifications on a live attempt, by provider and how the status read "
            "confirming them went: read (the provider answered at once), pace_busy (no slot of "
            "the provider's status pace within LUNAS_CONFIRM_READ_WAIT: handed to the verifier, "
            "brought forward), read_failed (breaker open, 429, error: handed to the verifier).",
            ["provider", "outcome"], registry=self.registry,
        )
        for outcome in ("read", "pace_busy", "read_failed"):
            self.payment_confirmations.labels("midtrans", outcome)
        self.settled_reads = Counter(
            "lunas_settled_reads_total",
            "Reads of paid attempts, for a reversal whose notification was lost "
            "(services/settled_reads.py), by provider and outcome: no_change, reversal (a "
            "review case opened), reversal_known (recorded before), contradicts (the provider "
            "no longer says paid; nothing moved), deferred (breaker open), pace_busy (no free "
            "slot of the status pace: unpaid orders' reads come first), throttled, read_failed, "
            "unreadable, given_up (dead-lettered).",
            ["provider", "outcome"], registry=self.registry,
        )
        # There at 0 from the start: LunasSettledReadContradicts takes the increase, and a
        # series first scraped at 1 (a process's first contradiction) shows none.
        for provider in ("midtrans", "xendit"):
            self.settled_reads.labels(provider, "contradicts")
        self.verification_released = Counter(
            "lunas_verification_released_total",
            "Deferred status reads made due again because the route's breaker let calls through.",
            ["route"], registry=self.registry,
        )
        # Sampled from the database at scrape time (telemetry/state.py): the same in every replica.
        self.verification_backlog = Gauge(
            "lunas_verification_backlog",
            "Live gateway attempts whose status read is due or deferred, by route.",
            ["route"], registry=self.state_registry,
        )
        self.verification_deferred = Gauge(
            "lunas_verification_deferred",
            "Status reads parked until the route's breaker lets calls through, by route.",
            ["route"], registry=self.state_registry,
        )
        self.verification_oldest_age = Gauge(
            "lunas_verification_oldest_age_seconds",
            "How long the oldest due or deferred status read of each route has waited.",
            ["route"], registry=self.state_registry,
        )
        self.outbox_backlog = Gauge(
            "lunas_outbox_backlog", "Outbox events due and not yet handled (waiting or leased).",
            registry=self.state_registry,
        )
        self.outbox_scheduled = Gauge(
            "lunas_outbox_scheduled",
            "Outbox events not due yet: retries backing off and jobs queued ahead (the reads "
            "of paid attempts a day and a week after their payment).",
            registry=self.state_registry,
        )
        self.outbox_oldest_age = Gauge(
            "lunas_outbox_oldest_age_seconds",
            "How long the oldest claimable outbox event (due, not leased, not a webhook waiting "
            "for an earlier one of its order) has waited for a worker since it became due "
            "(available_at), not since it was created.",
            registry=self.state_registry,
        )
        self.outbox_dead_letters = Gauge(
            "lunas_outbox_dead_letters", "Outbox events dead-lettered after their last try.",
            registry=self.state_registry,
        )
        self.orders_needs_review = Gauge(
            "lunas_orders_needs_review", "Orders waiting for a person, by review reason.",
            ["reason"], registry=self.state_registry,
        )
        self.review_cases_open = Gauge(
            "lunas_review_cases_open",
            "Review cases waiting for a person, by reason (on orders in review or settled).",
            ["reason"], registry=self.state_registry,
        )
        self.review_cases_oldest_age = Gauge(
            "lunas_review_cases_oldest_age_seconds",
            "Age of the oldest open review case, by reason (0 with none open): money a customer "
            "paid that nobody has decided about yet.",
            ["reason"], registry=self.state_registry,
        )
        self.orders_verifying = Gauge(
            "lunas_orders_verifying",
            "Orders past their deadline being verified before they may expire.",
            registry=self.state_registry,
        )
        self.route_blocked = Gauge(
            "lunas_route_blocked",
            "1 while ops keep a route out of routing, by route and reason (paused, maintenance: "
            "inside a scheduled window), 0 otherwise.",
            ["route", "reason"], registry=self.state_registry,
        )
        # Accounts are labelled by their configured payout-account id, never by account number.
        self.unique_code_pool_used = Gauge(
            "lunas_unique_code_pool_used_ratio",
            "Share of the unique-code range held on each payout account for its busiest order "
            "amount (the densest run of held transfer amounts one code range wide); at 1 a "
            "capture of that amount is refused.",
            ["account"], registry=self.state_registry,
        )
        self.unique_codes_held = Gauge(
            "lunas_unique_codes_held",
            "Transfer amounts held (open or in quarantine) on each payout account.",
            ["account"], registry=self.state_registry,
        )
        self.state_sampled = Gauge(
            "lunas_state_sampled_timestamp_seconds",
            "Unix time (this process's clock) of the last successful sample of the gauges above. "
            "/metrics still answers when sampling fails, with those gauges frozen: this says how "
            "old they are (0: never sampled).",
            registry=self.state_registry,
        )
        self.feed_items_unreadable = Gauge(
            "lunas_feed_items_unreadable",
            "Items a mutation feed listed that Lunas could not read, waiting for a person.",
            ["feed"], registry=self.state_registry,
        )

        # The outbox relay's slots (orchestrator/outbox/relay.py): this worker's own, not sampled.
        self.outbox_in_flight = Gauge(
            "lunas_outbox_in_flight",
            "Outbox handlers this worker's relay runs now: its slots in use, of "
            "LUNAS_OUTBOX_CONCURRENCY.",
            registry=self.registry,
        )
        self.outbox_merchants_at_cap = Gauge(
            "lunas_outbox_merchants_at_cap",
            "Merchants whose webhooks hold every slot one merchant may in this worker's relay "
            "(LUNAS_OUTBOX_MERCHANT_CONCURRENCY): their endpoint is slow or down, and their "
            "other due webhooks wait while everyone else's go out.",
            registry=self.registry,
        )

        self.rows_pruned = Counter(
            "lunas_retention_pruned_rows_total",
            "Rows deleted by retention, by table (services/retention.py).",
            ["table"], registry=self.registry,
        )

        self.feed_last_success = Gauge(
            "lunas_feed_last_success_timestamp_seconds",
            "Unix time of the last successful poll of each mutation feed; before the worker's "
            "first success, the watermark it loaded or else when it started (what its "
            "staleness check counts from), so a feed broken across a restart still goes stale.",
            ["feed"], registry=self.registry,
        )

    def exposition(self) -> bytes:
        """What the api's ``/metrics`` serves: this process's metrics and the sampled state."""
        return generate_latest(self.registry) + generate_latest(self.state_registry)
