"""Demo store generator: generation time and SQLite load time for ``size`` customers.

Why: the generator must scale to 1M customers in well under two minutes, and tests and demos load
it into SQLite often. PostgreSQL/MariaDB loading is measured by the extraction benchmark.
"""

from __future__ import annotations

import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.run import entry
from demo_shop.generator import generate_store, write_store

AS_OF = datetime(2026, 11, 22, 14, tzinfo=UTC)


def run(size: int) -> list[dict]:
    started = time.perf_counter()
    frames = generate_store(size, seed=7, as_of=AS_OF)
    generated = time.perf_counter() - started
    rows = sum(len(frame) for frame in frames.values())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_store(frames, f"sqlite:///{Path(tmp) / 'store.db'}")
        written = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return [
        entry("demo_store_generate", generated, "s", size),
        entry("demo_store_generate_rows_per_s", rows / generated, "rows/s", size),
        entry("demo_store_write_sqlite", written, "s", size),
        entry("demo_store_write_sqlite_rows_per_s", rows / written, "rows/s", size),
        entry("demo_store_total_rows", rows, "rows", size),
        entry("demo_store_peak_rss", peak_mb, "MiB", size),
    ]
