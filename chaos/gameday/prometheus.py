"""A real Prometheus for the game day: scrapes the api and the worker every second and evaluates
ops/alerts/ as game-day rules, so an experiment reports the alerts an SRE would have been paged by.

A game day compresses hours into minutes, so the rules are loaded with three changes, and nothing
else: ``for:`` is capped at ``FOR_CAP`` (an outage of a minute must be able to fire a rule that
waits ten), ``offset 1h`` becomes ``offset 1m`` (the review-queue growth rule compares with an hour
ago, which a five-minute run does not have), and ``time()`` becomes ``(time() + OFFSET)`` where
OFFSET is the game-day clock's (orchestrator/gameday.py), so a rule comparing a timestamp Lunas
exported on its clock with "now" sees the same now as Lunas. The alert expressions themselves are
the production ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from chaos.infra import dies_with_us, free_port
from orchestrator.tls import default_trust

FOR_CAP_S = 3
TARGET_DOWN = "LunasTargetDown"


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|d)", text):
        total += int(number) * units[unit]
    return total


def game_day_rules(source: dict[str, Any], clock_offset: float) -> dict[str, Any]:
    """The production rule groups with the game day's three changes (see the module doc)."""
    groups = []
    for group in source.get("groups", []):
        rules = []
        for rule in group.get("rules", []):
            rule = dict(rule)
            expr = str(rule["expr"])
            expr = re.sub(r"offset\s+1h\b", "offset 1m", expr)
            expr = expr.replace("time()", f"(time() + {clock_offset:.0f})")
            rule["expr"] = expr
            if "for" in rule and _seconds(str(rule["for"])) > FOR_CAP_S:
                rule["for"] = f"{FOR_CAP_S}s"
            rules.append(rule)
        groups.append({**group, "rules": rules})
    return {"groups": groups}


@dataclass
class AlertSighting:
    name: str
    labels: dict[str, str]
    first_pending: float | None = None
    first_firing: float | None = None


@dataclass
class AlertLog:
    """Every alert Prometheus reported while the experiment ran, with when it was first seen."""

    started: float = field(default_factory=time.monotonic)
    seen: dict[str, AlertSighting] = field(default_factory=dict)

    def record(self, alerts: list[dict[str, Any]]) -> None:
        now = time.monotonic() - self.started
        for a in alerts:
            name = a["labels"].get("alertname", "?")
            s = self.seen.setdefault(name, AlertSighting(name=name, labels=a["labels"]))
            if a.get("state") == "firing" and s.first_firing is None:
                s.first_firing = now
            if s.first_pending is None:
                s.first_pending = now

    def fired(self) -> list[str]:
        return sorted(n for n, s in self.seen.items() if s.first_firing is not None)


class Prometheus:
    def __init__(self, directory: Path, rules_dir: Path) -> None:
        self.directory = directory
        self.rules_dir = rules_dir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = AlertLog()
        self._watch: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_rules(self, clock_offset: float) -> None:
        for source in sorted(self.rules_dir.glob("*.rules.yml")):
            rules = game_day_rules(yaml.safe_load(source.read_text()), clock_offset)
            (self.directory / source.name).write_text(yaml.safe_dump(rules, sort_keys=False))

    async def start(self, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found: `make services` installs Debian's package")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_rules(0)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(p) for p in sorted(self.directory.glob("*.rules.yml"))],
            "scrape_configs": [{"job_name": "lunas",
                                "static_configs": [{"targets": targets}]}],
        }
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        with (self.directory / "prometheus.log").open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603, ASYNC220 - our own binaries, quick to spawn
                dies_with_us([binary, f"--config.file={self.directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                 "--log.level=warn"]), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(verify=default_trust(), timeout=1) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/-/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError("prometheus did not start")
            # Alerts count from the first scrape of every target: before it, `up` does not
            # exist and absent(up) would report a Lunas that is in fact running.
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    r = await client.get(f"{self.url}/api/v1/query",
                                         params={"query": "count(up == 1)"})
                    result = r.json()["data"]["result"]
                    if result and int(float(result[0]["value"][1])) == len(targets):
                        break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"prometheus never saw all of {targets} up")
            # ... and once the rules have been evaluated on it (the absent() of the first
            # evaluation, before any scrape, resolves on the next one).
            settle = time.monotonic() + 5
            while time.monotonic() < settle:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    r = await client.get(f"{self.url}/api/v1/alerts")
                    if not any(a["labels"].get("alertname") == TARGET_DOWN
                               for a in r.json()["data"]["alerts"]):
                        break
                await asyncio.sleep(0.2)
        self.log = AlertLog()
        self._watch = asyncio.create_task(self._watch_alerts())

    async def set_clock_offset(self, offset: float) -> None:
        if self.proc is None:
            return
        self._write_rules(offset)
        async with httpx.AsyncClient(verify=default_trust(), timeout=5) as client:
            (await client.post(f"{self.url}/-/reload")).raise_for_status()

    async def _watch_alerts(self) -> None:
        async with httpx.AsyncClient(verify=default_trust(), timeout=2) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    r = await client.get(f"{self.url}/api/v1/alerts")
                    self.log.record(r.json()["data"]["alerts"])
                await asyncio.sleep(0.5)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(verify=default_trust(), timeout=5) as client:
            r = await client.get(f"{self.url}/api/v1/query", params={"query": expr})
            r.raise_for_status()
            return list(r.json()["data"]["result"])

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
