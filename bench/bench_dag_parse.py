"""Parse time of each DAG file beyond importing Airflow (the scheduler parses them constantly).

Each file is parsed in a fresh interpreter that has already imported airflow.sdk; the figure is
the median of several parses of the file alone. Goal: under 0.5 s per file.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.run import entry

REPO = Path(__file__).resolve().parents[1]
REPEATS = 5

PROBE = """
import json, runpy, sys, time
import airflow.sdk
from airflow.sdk import Asset, Param, dag, task
started = time.perf_counter()
runpy.run_path(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def parse_seconds(dag_file: Path) -> float:
    times = []
    for _ in range(REPEATS):
        out = subprocess.run([sys.executable, "-c", PROBE, str(dag_file)], capture_output=True, text=True, check=True)
        times.append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    return statistics.median(times)


def run(size: int) -> list[dict]:
    entries = []
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        entries.append(entry(f"dag_parse_seconds[{dag_file.stem}]", parse_seconds(dag_file), "s", 0))
    return entries
