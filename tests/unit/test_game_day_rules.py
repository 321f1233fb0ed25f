"""The game day loads the production alert rules with three documented changes and no others."""

from __future__ import annotations

from pathlib import Path

import yaml

from chaos.gameday.prometheus import FOR_CAP_S, game_day_rules

RULES = Path(__file__).resolve().parents[2] / "ops" / "alerts" / "lunas.rules.yml"


def test_for_is_capped_and_shorter_waits_are_kept() -> None:
    got = game_day_rules({"groups": [{"name": "g", "rules": [
        {"alert": "A", "expr": "x > 1", "for": "10m"},
        {"alert": "B", "expr": "x > 1", "for": "2s"},
        {"record": "r", "expr": "sum(x)"}]}]}, 0)
    rules = got["groups"][0]["rules"]
    assert rules[0]["for"] == f"{FOR_CAP_S}s" and rules[1]["for"] == "2s"
    assert "for" not in rules[2]


def test_time_follows_the_game_day_clock_and_hour_offsets_shrink() -> None:
    got = game_day_rules({"groups": [{"name": "g", "rules": [
        {"alert": "A", "expr": "time() - max(t) > 1200"},
        {"alert": "B", "expr": "sum(q) - sum(q offset 1h) > 20"}]}]}, 1500.4)
    a, b = (r["expr"] for r in got["groups"][0]["rules"])
    assert a == "(time() + 1500) - max(t) > 1200"
    assert b == "sum(q) - sum(q offset 1m) > 20"


def test_every_production_rule_keeps_its_name_labels_and_annotations() -> None:
    source = yaml.safe_load(RULES.read_text())
    got = game_day_rules(source, 0)
    for group, changed in zip(source["groups"], got["groups"], strict=True):
        for rule, new in zip(group["rules"], changed["rules"], strict=True):
            assert {k: v for k, v in new.items() if k not in ("expr", "for")} == \
                   {k: v for k, v in rule.items() if k not in ("expr", "for")}
            if "offset 1h" not in rule["expr"] and "time()" not in rule["expr"]:
                assert new["expr"] == rule["expr"]
