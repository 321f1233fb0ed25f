"""Every alert has a runbook, every runbook names the game-day experiment that exercises it, and
that experiment expects the alert to fire (an ``alert_fires`` probe in its method)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "ops" / "alerts").glob("*.rules.yml"))
EXPERIMENTS = ROOT / "chaos" / "experiments"


def _alerts() -> list[dict[str, Any]]:
    return [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def _expected_alerts(experiment: str) -> set[str]:
    body = yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())
    return {a["provider"]["arguments"]["alert"] for a in body["method"]
            if a["provider"].get("func") == "alert_fires"}


ALERTS = _alerts()


def test_there_are_alerts_and_experiments() -> None:
    assert len(ALERTS) >= 11 and len(list(EXPERIMENTS.glob("*.yaml"))) >= 10


@pytest.mark.parametrize("rule", ALERTS, ids=[r["alert"] for r in ALERTS])
def test_an_alert_has_a_runbook_naming_an_experiment_that_fires_it(rule: dict[str, Any]) -> None:
    url = rule["annotations"].get("runbook_url", "")
    runbook = ROOT / url
    assert url.startswith("ops/runbooks/") and runbook.is_file(), f"{rule['alert']}: no runbook"
    named = re.findall(r"lunas chaos run ([a-z0-9-]+)", runbook.read_text())
    assert named, f"{url} names no game-day experiment (`lunas chaos run NAME`)"
    for name in named:
        assert (EXPERIMENTS / f"{name}.yaml").is_file(), f"{url} names a missing experiment {name}"
    firing = [n for n in named if rule["alert"] in _expected_alerts(n)]
    assert firing, f"none of {named} (named in {url}) expects {rule['alert']} to fire"


def test_the_provider_outage_playbook_names_its_experiments() -> None:
    text = (ROOT / "ops" / "runbooks" / "provider-outage.md").read_text()
    named = re.findall(r"lunas chaos run ([a-z0-9-]+)", text)
    assert named and all((EXPERIMENTS / f"{n}.yaml").is_file() for n in named)
