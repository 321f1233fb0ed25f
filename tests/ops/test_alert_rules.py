"""Alert rules are valid Prometheus rules, behave as their unit tests say, and every one links to
a runbook that exists and says what exercises it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "ops" / "alerts").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "ops" / "alerts" / "tests").glob("*.yml"))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:  # make test installs it (scripts/ensure-services.sh); say how if not
        pytest.fail("promtool not found: run `make test` or `apt-get install prometheus`")
    return found


def alerts() -> list[dict[str, Any]]:
    found = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [r for r in group["rules"] if "alert" in r]
    return found


def test_rule_files_pass_promtool_check() -> None:
    assert RULES
    run = subprocess.run([promtool(), "check", "rules", *map(str, RULES)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_rule_unit_tests_pass_promtool_test() -> None:
    assert RULE_TESTS
    run = subprocess.run([promtool(), "test", "rules", *map(str, RULE_TESTS)],
                         capture_output=True, text=True, check=False, cwd=RULE_TESTS[0].parent)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_severity_a_summary_and_a_runbook_that_exists() -> None:
    assert alerts()
    for rule in alerts():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        runbook = ROOT / notes["runbook_url"]
        assert runbook.is_file(), f"{rule['alert']}: {notes['runbook_url']} does not exist"


def test_every_alert_is_unit_tested() -> None:
    tested = set(re.findall(r"alertname: (\w+)",
                            "".join(p.read_text() for p in RULE_TESTS)))
    assert {r["alert"] for r in alerts()} <= tested


def test_every_runbook_names_what_exercises_it_and_it_exists() -> None:
    for rule in alerts():
        text = (ROOT / rule["annotations"]["runbook_url"]).read_text()
        assert "**Exercised by.**" in text, rule["alert"]
        named = re.findall(r"`((?:tests|bench)/[\w/.]+\.py)(?:::\w+)?`", text)
        assert named, f"{rule['alert']}: its runbook names no test or benchmark"
        for path in named:
            assert (ROOT / path).is_file(), f"{rule['alert']}: {path} does not exist"


def test_recording_rules_are_grouped_apart_from_alerts_and_every_alert_is_indexed() -> None:
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            kinds = {"alert" if "alert" in r else "record" for r in group["rules"]}
            assert len(kinds) == 1, f"{group['name']} mixes recording rules and alerts"
    index = (ROOT / "ops" / "runbooks" / "README.md").read_text()
    for rule in alerts():
        assert f"| {rule['alert']} |" in index, f"{rule['alert']} missing from the runbook index"
