"""Write the README's performance table from bench/results/*.json (run last by ``make bench``).

Every figure comes from a result file one of the benchmarks wrote; the table says when and at which
commit each was measured, and on what machine. Nothing here measures anything.

    python bench/table.py [--readme README.md] [--check]

``--check`` exits 1 if the README's table differs from what the result files say (CI-friendly).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
START = "<!-- bench-table:start (written by bench/table.py; do not edit) -->"
END = "<!-- bench-table:end -->"


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def capture(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    pg = d["pgbench"]["tps"]
    for run in d["lunas"]:
        ok = run["orders_per_s"] >= 1500 and run["p99_ms"] < 50
        rows.append((
            f"capture, {run['processes']} api process{'es' if run['processes'] > 1 else ''}, "
            f"{run['client']} client",
            f"{_n(run['orders_per_s'])} orders/s, p50 {run['p50_ms']:.0f} ms, "
            f"p99 {run['p99_ms']:.0f} ms; {run['ratio_to_pgbench']:.2f}× pgbench "
            f"({_n(pg)} tps, same transaction)",
            f"≥ 1,500 orders/s, p99 < 50 ms: {_met(ok)}"))
    return rows


def failover(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The target (issue 3) is on requests served while the breaker is open."""
    rows = []
    for p in d["phases"]:
        if p["phase"] == "healthy":
            rows.append(("failover, healthy primary",
                         f"{p['valid_pct']:.1f} % valid instructions, p99 {p['p99_ms']:.0f} ms",
                         "the baseline"))
            continue
        opened = p.get("breaker_open") or {}
        ratio = opened.get("p99_vs_healthy", p.get("p99_vs_healthy", float("nan")))
        ok = p["valid_pct"] == 100.0 and ratio <= 1.2
        rows.append((f"failover, primary {p['phase'].replace('_', ' ')}",
                     f"{p['valid_pct']:.1f} % valid instructions; breaker open: p99 "
                     f"{opened.get('p99_ms', p['p99_ms']):.0f} ms ({ratio:.2f}× healthy)",
                     f"100 %, ≤ 1.2×: {_met(ok)}"))
    return rows


def recovery(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    p = d["phases"]
    ok = p["ratio_to_ideal"] <= 1.2 and p["peak_requests_in_1s"] <= p["limit_per_s"]
    return [(f"recovery drain, {_n(p['captured'])} orders, pace {p['limit_per_s']:.0f}/s",
             f"all paid {p['recovery_to_all_paid_s']:.0f} s after recovery: "
             f"{p['ratio_to_ideal']:.2f}× N ÷ rate; busiest second {p['peak_requests_in_1s']} "
             f"requests (limit {p['limit_per_s']:.0f})",
             f"≤ 1.2×, never above the limit: {_met(ok)}")]


def reconcile(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    imp, s = d["import"], d["import"]["seconds"]
    ok = s["total"] < 30 and imp["peak_rss_mib"] < 1024
    how = d["settings"].get("files_imported", "one after the other")
    # Together, the files' phases overlap: summed, they exceed the wall-clock total.
    phases = "phases summed over the files: " if how == "together" else ""
    return [(f"statement import, {_n(d['settings']['lines'])} lines (BCA + Mandiri, {how})",
             f"{s['total']:.0f} s ({phases}parse {s['parse']:.0f}, match {s['match']:.0f}, "
             f"store {s['store']:.0f}), {_n(imp['lines_per_s']['total'])} lines/s; "
             f"{d['ratio_import_to_copy']:.1f}× PostgreSQL COPY ({d['copy']['seconds']:.1f} s); "
             f"peak RSS {imp['peak_rss_mib']:.0f} MiB",
             f"< 30 s, < 1 GiB: {_met(ok)}")]


def reconcile_floor(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    designs = d["designs"]
    measured = ", ".join(f"{name} {designs[name]['wall_seconds']:.0f} s"
                         for name in ("schema", "lean", "bare") if name in designs)
    return [(f"statement import's writes alone, {_n(d['lines'])} lines, both accounts at once",
             f"{measured} (PROFILE.md: what each design writes)",
             "the least any import of that design can take; < 30 s is the import's target")]


def statuspage(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    c = d["comparison"]
    return [("status page under capture load, 200 req/s",
             f"p99 {c['status_p99_ms_under_capture']:.1f} ms "
             f"({c['status_p99_vs_status_only']:.2f}× "
             f"status-only); capture {c['capture_orders_per_s_vs_capture_only']:.2f}× its "
             "capture-only rate",
             f"p99 ≤ {c['status_p99_target_ms']:.0f} ms: {_met(bool(c['status_p99_target_met']))}")]


BENCHES: dict[str, Callable[[dict[str, Any]], list[tuple[str, str, str]]]] = {
    "capture": capture, "failover": failover, "recovery": recovery, "reconcile": reconcile,
    "reconcile-together": reconcile, "reconcile-floor": reconcile_floor,
    "statuspage": statuspage,
}


def table(results: Path = RESULTS) -> str:
    lines = ["| benchmark | measured (UTC date, CPU) | commit | result | target |",
             "|---|---|---|---|---|"]
    machines = set()
    for name, rows_of in BENCHES.items():
        path = results / f"{name}.json"
        if not path.exists():
            script = {"reconcile-together": "reconcile.py --together",
                      "reconcile-floor": "reconcile_floor.py"}.get(name, f"{name}.py")
            lines.append(f"| {name} | not run | | `python bench/{script}` | |")
            continue
        data = json.loads(path.read_text())
        m = data["machine"]
        machines.add(f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
                     f"PostgreSQL {m['postgresql']}, Python {m['python']}")
        for bench, result, target in rows_of(data):
            lines.append(f"| {bench} | {m['date'][:10]}, {m['cpu_model']} | `{m['commit']}` | "
                         f"{result} | {target} |")
    machine = "; ".join(sorted(machines)) or "unknown"
    return "\n".join([START, "", f"Machine: {machine}.", "", *lines, "", END])


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"{args.readme} has no bench-table markers", file=sys.stderr)
        return 2
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    new = before + table() + after
    if args.check:
        return 0 if new == text else 1
    args.readme.write_text(new)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
