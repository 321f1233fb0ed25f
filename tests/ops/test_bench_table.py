"""The README's performance table is what bench/results/*.json say, written by bench/table.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_table_matches_the_result_files() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, "README table differs from bench/results: run `make bench` " \
                                "or `python bench/table.py`" + run.stderr
