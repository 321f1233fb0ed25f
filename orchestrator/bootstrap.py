"""Composition root: builds every long-lived object from settings, once, and hands them out.

Nothing is constructed at import time. The api, the worker, the CLI and the tests all build their
objects here, so they run the same code paths with different settings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from orchestrator.api.auth import Authenticator
from orchestrator.domain.checkout import CheckoutRules
from orchestrator.domain.clock import Clock, SystemClock
from orchestrator.services.capture import CaptureService
from orchestrator.services.reconciliation import ReconciliationService
from orchestrator.services.route_controls import RouteControls
from orchestrator.settings import Settings
from orchestrator.store.database import Database
from orchestrator.store.engine import create_engine
from orchestrator.telemetry.metrics import Metrics


@dataclass(kw_only=True)
class Container:
    settings: Settings
    db: Database
    clock: Clock
    capture: CaptureService
    reconciliation: ReconciliationService
    auth: Authenticator
    metrics: Metrics
    route_controls: RouteControls
    rng: random.Random = field(default_factory=random.Random)

    async def close(self) -> None:
        await self.db.engine.dispose()


def checkout_rules(settings: Settings) -> CheckoutRules:
    c = settings.checkout
    return CheckoutRules(
        amount_limits=c.amount_limits, default_expires_in=c.default_expires_in,
        min_expires_in=c.min_expires_in, max_expires_in=c.max_expires_in,
        max_metadata_bytes=c.max_metadata_bytes,
    )


def build(settings: Settings, *, clock: Clock | None = None) -> Container:
    clock = clock or SystemClock()
    db = Database(create_engine(settings.database))
    rng = random.Random()
    metrics = Metrics()
    return Container(
        settings=settings,
        db=db,
        clock=clock,
        capture=CaptureService(db, rules=checkout_rules(settings), codes=settings.unique_codes,
                               clock=clock, metrics=metrics, rng=rng),
        reconciliation=ReconciliationService(db, clock=clock, metrics=metrics,
                                             quarantine=settings.unique_codes.quarantine),
        auth=Authenticator(db),
        metrics=metrics,
        route_controls=RouteControls(db, clock=clock, refresh=timedelta(seconds=2)),
        rng=rng,
    )
