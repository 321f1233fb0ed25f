"""Prometheus metrics, declared once per process in their own registry (built by bootstrap).

Names follow Prometheus conventions: ``lunas_`` prefix, base units, ``_total`` counters, and only
bounded label values (no order ids).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.orders_captured = Counter(
            "lunas_orders_captured_total",
            "Capture requests by outcome (created, replayed, refused) and rail.",
            ["outcome", "rail"], registry=self.registry,
        )
        self.unique_codes_exhausted = Counter(
            "lunas_unique_codes_exhausted_total",
            "Captures refused because every transfer amount in the code range was held.",
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
