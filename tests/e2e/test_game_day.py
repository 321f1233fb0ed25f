"""The fast game-day subset (experiments tagged ``fast``) passes on this machine, run exactly as an
SRE runs it: ``lunas chaos run --fast``, each experiment on a stack of its own (throwaway
PostgreSQL and Redis, simulators behind fault proxies, ``lunas api`` and ``lunas worker``
processes, a real Prometheus). The whole set is ``lunas chaos run --all``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.gameday.runner import experiment_names

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_fast_experiments_pass_and_report_what_an_sre_would_see() -> None:
    fast = experiment_names(fast_only=True)
    assert "api-crash-after-commit" in fast  # only a real process killed can show it
    run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "chaos", "run", "--fast"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    report = [line for line in run.stdout.splitlines() if line.startswith(("==", "   "))]
    assert run.returncode == 0, "\n".join(report[-80:]) + run.stderr[-3000:]
    for name in fast:
        assert any(line.startswith(f"== {name}:") and line.endswith("PASS") for line in report)
    assert sum("all rules of state hold" in line for line in report) == len(fast)
    assert f"{len(fast)}/{len(fast)} experiments passed" in run.stdout
