"""``lunas chaos run NAME | --all [--fast]``: run Chaos Toolkit experiments from chaos/experiments/
against a game-day stack of their own, print a short report each, exit non-zero if any failed.

Chaos Toolkit (chaoslib) runs on the main thread, as it expects; the stack, the simulators and the
load run on an asyncio loop in a second thread, which the activities (activities.py) call into.
An experiment passes when Chaos Toolkit completed it without deviation (its steady-state
hypothesis held before and after), every activity of its method succeeded (the probes for alerts,
status page and fast failure raise when they do not see what they expect), and the rules of state
held at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from chaos.gameday import activities
from chaos.gameday.stack import Stack

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
T = TypeVar("T")


@dataclass
class Outcome:
    name: str
    passed: bool
    seconds: float
    lines: list[str] = field(default_factory=list)


def experiment_names(*, fast_only: bool = False) -> list[str]:
    names = []
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        tags = yaml.safe_load(path.read_text()).get("tags", [])
        if not fast_only or "fast" in tags:
            names.append(path.stem)
    return names


def load_experiment(name: str) -> dict[str, Any]:
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"no experiment {name!r}; known: {', '.join(experiment_names())}")
    return dict(yaml.safe_load(path.read_text()))


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gameday-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _failed_activities(journal: dict[str, Any]) -> list[str]:
    failed = []
    for run in journal.get("run", []):
        if run.get("status") != "succeeded":
            failed.append(f"{run['activity']['name']}: {str(run.get('exception') or '')[-400:]}")
    for run in journal.get("rollbacks", []):
        if run.get("status") != "succeeded":
            failed.append(f"rollback {run['activity']['name']}")
    return failed


def run_one(name: str) -> Outcome:
    from chaoslib.experiment import run_experiment

    experiment = load_experiment(name)
    lunas_env = experiment.get("configuration", {}).get("lunas_env", {})
    began = time.monotonic()
    loop = _LoopThread()
    stack = Stack(lunas_env)
    lines = [f"== {name}: {experiment['title']}"]
    passed = False
    try:
        loop.run(stack.start(), timeout=180)
        session = activities.Session(loop=loop.loop, stack=stack)
        activities.bind(session)
        journal = run_experiment(experiment, settings={
            "runtime": {"rollbacks": {"strategy": "always"}}})
        failed = _failed_activities(journal)
        rules = session.rules
        load = session.load.report if session.load else None
        lines.append(f"   faults: {'; '.join(session.faults) or 'none'}")
        lines.append(f"   load: {load.line() if load else 'none'}")
        lines.append("   seen: " + ("; ".join(session.observations) or "nothing asked for"))
        fired = stack.prometheus.log.fired()
        lines.append(f"   alerts fired: {', '.join(fired) or 'none'}")
        if rules is not None:
            paid = len(load.paid_orders) if load else 0
            lines.append(f"   invariants: orders by state {json.dumps(rules.by_state)}; "
                         f"{paid} paid by customers checked for lost payments; "
                         + ("all rules of state hold" if rules.ok
                            else "BROKEN: " + " | ".join(rules.violations)))
        if session.review_reasons:
            lines.append(f"   in review, by reason: {json.dumps(session.review_reasons)}")
        status_ok = journal.get("status") == "completed" and not journal.get("deviated")
        passed = status_ok and not failed and rules is not None and rules.ok
        if not status_ok:
            lines.append(f"   chaostoolkit: status {journal.get('status')}, "
                         f"deviated {journal.get('deviated')}")
        for f in failed:
            lines.append(f"   FAILED {f}")
        if not passed:
            for proc in (stack.api, stack.worker):
                if proc is not None:
                    lines.append(f"   --- {proc.name} log tail:\n{proc.tail(1500)}")
    except Exception as exc:  # a broken stack is a failed experiment, reported
        lines.append(f"   ERROR {type(exc).__name__}: {exc}")
    finally:
        activities.bind(None)
        try:
            loop.run(stack.stop(), timeout=120)
        finally:
            loop.close()
    seconds = time.monotonic() - began
    lines[0] += f" ({seconds:.0f} s) {'PASS' if passed else 'FAIL'}"
    return Outcome(name=name, passed=passed, seconds=seconds, lines=lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lunas chaos run", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="experiments in chaos/experiments/ (file stems)")
    p.add_argument("--all", action="store_true", help="every experiment")
    p.add_argument("--fast", action="store_true", help="only those tagged fast (make test)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for n in experiment_names():
            print(n, "-", load_experiment(n)["title"])
        return 0
    names = experiment_names(fast_only=args.fast) if (args.all or args.fast) else args.names
    if not names:
        p.error("name an experiment, or --all / --fast")
    # `timeout`, CI cancelling or ^C: unwind through every `finally`, which stops the stack.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("chaostoolkit").setLevel(logging.WARNING)
    logging.getLogger("chaoslib").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    outcomes = []
    for name in names:
        outcome = run_one(name)
        print("\n".join(outcome.lines), flush=True)
        outcomes.append(outcome)
    failed = [o.name for o in outcomes if not o.passed]
    total = sum(o.seconds for o in outcomes)
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} experiments passed in {total:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
