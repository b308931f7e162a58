"""Run every clock test (``pytest -m clock``) once per instant of tests/support/clock.py's SPREAD.

Each instant gets its own pytest process with ``REMARKETING_TEST_INSTANT`` set, so the shop's
clock, the flows' ``as_of`` and module-level instants all move together, and nothing a run leaves
in a process (parsed DAGs, a plugin's app) carries over to the next instant. Two processes at a
time. Prints one line per instant and exits non-zero if any instant failed, with that run's tail.

    .venv/bin/python tests/support/clock_spread.py [--jobs 2] [--only eu-dst-spring,mon-00h30] [-- pytest args]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
REPO = SUPPORT.parents[1]
sys.path.insert(0, str(SUPPORT))

from clock import ENV, SPREAD  # noqa: E402 - tests/ is not a package

SUMMARY = re.compile(r"^=*\s*(.*\d+ (passed|failed|error).*?)\s*=*$")


def run_one(name: str, instant: str, logs: Path, extra: list[str]) -> tuple[str, int, str, float, Path]:
    log = logs / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-m", "clock", "-q", "-p", "no:cacheprovider", *extra],
            cwd=REPO,
            env={**os.environ, ENV: instant},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    lines = [SUMMARY.match(line.strip()) for line in log.read_text(errors="replace").splitlines()]
    summary = next((m.group(1) for m in reversed(lines) if m), f"no summary (exit {code})")
    return name, code, summary, time.perf_counter() - started, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="comma-separated instant names")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    chosen = {k: v for k, v in SPREAD.items() if not args.only or k in args.only.split(",")}
    if not chosen:
        parser.error(f"no instant named {args.only!r}; known: {', '.join(SPREAD)}")
    logs = Path(tempfile.mkdtemp(prefix="rmk-clock-spread-"))
    print(f"clock tests at {len(chosen)} instants, {args.jobs} at a time; logs in {logs}", flush=True)
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, name, at.isoformat(), logs, args.pytest_args) for name, at in chosen.items()]
        for future in futures:
            name, code, summary, seconds, log = future.result()
            verdict = "ok" if code == 0 else "FAILED"
            print(f"  {name:<14} {chosen[name].isoformat():<26} {verdict:<6} {summary} ({seconds:.0f} s)", flush=True)
            if code != 0:
                failed.append((name, log))
    for name, log in failed:
        print(f"\n--- {name}: {ENV}={chosen[name].isoformat()} ---\n" + "\n".join(log.read_text().splitlines()[-60:]))
    print(f"clock spread: {len(chosen) - len(failed)} instants passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
