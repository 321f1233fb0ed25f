"""Every alert has a runbook, every runbook names the game-day experiment that exercises it, and
that experiment expects the alert to fire (an ``alert_fires`` probe in its method)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from orchestrator.api.schemas import (
    BreakerActionIn,
    DiscardIn,
    HandledIn,
    MaintenanceIn,
    ManualMatchIn,
    RedeliverIn,
    ResolveCaseIn,
    RouteChangeIn,
)
from orchestrator.cli import _parser

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


# -- the commands runbooks show must be accepted as written -------------------------------------

_BODIES: list[tuple[re.Pattern[str], type[msgspec.Struct]]] = [
    (re.compile(r"/v1/ops/routes/[^/\s]+/breaker"), BreakerActionIn),
    (re.compile(r"/v1/ops/routes/[^/\s]+/(?:pause|resume)"), RouteChangeIn),
    (re.compile(r"/v1/ops/maintenance"), MaintenanceIn),
    (re.compile(r"/v1/reviews/[^/\s]+/resolve"), ResolveCaseIn),
    (re.compile(r"/v1/reconciliation/unreadable/[^/\s]+/handled"), HandledIn),
    (re.compile(r"/v1/reconciliation/matches"), ManualMatchIn),
    (re.compile(r"/v1/ops/outbox/dead/redeliver"), RedeliverIn),
    (re.compile(r"/v1/ops/outbox/dead/[^/\s]+/discard"), DiscardIn),
]


def _runbook_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((ROOT / "ops" / "runbooks").glob("*.md"))}


def _posted(text: str) -> list[tuple[str, str]]:
    """(path, body) of every POST a runbook shows with a JSON body: inline `POST path {...}` and
    curl commands (``-X POST ".../path" ... -d '{...}'``), across line breaks."""
    flat = re.sub(r"\s+", " ", text.replace("\\\n", " "))
    found = re.findall(r"POST (/v1/[^\s`\"']+) (\{[^}]*\})", flat)
    found += re.findall(r"-X POST \"?\S*?(/v1/[^\s\"']+)\"? .*?-d '(\{[^}]*\})'", flat)
    return found


def test_every_request_body_a_runbook_shows_has_the_fields_the_api_requires() -> None:
    """A body without a required field (the audit ``reason``) is answered 400 in an incident."""
    checked = 0
    for name, text in _runbook_texts().items():
        for path, body in _posted(text):
            schema = next((s for pattern, s in _BODIES if pattern.fullmatch(path)), None)
            assert schema is not None, f"{name}: POST {path} is not a known ops endpoint"
            required = [f.encode_name for f in msgspec.structs.fields(schema) if f.required]
            missing = [f for f in required if f'"{f}"' not in body]
            assert not missing, f"{name}: POST {path} {body} lacks {missing}"
            checked += 1
    assert checked >= 5


def _subcommand(words: list[str]) -> argparse.ArgumentParser | None:
    """The (sub)parser ``lunas WORDS`` reaches, or None when the first word is no command."""
    parser, depth = _parser(), 0
    for word in words:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            break
        parser, depth = subparsers[0].choices[word], depth + 1
    return parser if depth else None


def test_every_lunas_command_a_runbook_shows_exists_with_its_required_options() -> None:
    checked = 0
    for name, text in _runbook_texts().items():
        for command in re.findall(r"`(lunas [^`]+)`", re.sub(r"\s+", " ", text)):
            words = command.split()[1:]
            if words[:2] == ["chaos", "run"]:
                continue
            parser = _subcommand(words)
            assert parser is not None, f"{name}: `{command}` is no lunas command"
            required = [a.option_strings[0] for a in parser._actions
                        if a.required and a.option_strings]
            missing = [o for o in required if o not in words]
            assert not missing, f"{name}: `{command}` lacks {missing}"
            checked += 1
    assert checked >= 5
