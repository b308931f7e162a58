"""Run every benchmark in bench/ and write bench/results.json.

Each bench/bench_*.py module exposes ``run(size: int) -> list[dict]``; each dict is an entry
built with ``bench.run.entry``. Usage: ``python -m bench.run --size 100000 [--only NAME]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"


def entry(name: str, value: float, unit: str, size: int, baseline_value: float | None = None) -> dict:
    """One figure; ``ratio`` is baseline/value for times (how many times faster) when a baseline is given."""
    ratio = None
    if baseline_value is not None and value:
        ratio = round(baseline_value / value, 2)
    return {
        "name": name,
        "value": round(value, 4),
        "unit": unit,
        "size": size,
        "baseline_value": None if baseline_value is None else round(baseline_value, 4),
        "ratio": ratio,
    }


def print_table(entries: list[dict]) -> None:
    header = ("name", "value", "unit", "size", "baseline_value", "ratio")
    rows = [[str(e.get(col) if e.get(col) is not None else "") for col in header] for e in entries]
    widths = [max(len(col), *(len(r[i]) for r in rows)) if rows else len(col) for i, col in enumerate(header)]
    print("  ".join(col.ljust(w) for col, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="customers (or rows) per benchmark")
    parser.add_argument("--only", action="append", default=[], help="run only bench_NAME (repeatable)")
    args = parser.parse_args(argv)

    modules = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    if args.only:
        modules = [m for m in modules if m.removeprefix("bench_") in args.only or m in args.only]
    entries: list[dict] = []
    for name in modules:
        started = time.perf_counter()
        print(f"== {name} (size {args.size})", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        entries.extend(module.run(args.size))
        print(f"   done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)

    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    ran = {(e["name"], e["size"]) for e in entries}
    merged = [e for e in previous if (e["name"], e["size"]) not in ran] + entries
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print_table(entries)
    print(f"\nwritten to {RESULTS.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
