"""Refresh one table of the store mirror: extract the delta, merge, publish.

Order of effects is what makes a crash harmless: files are written under this run's own
folder first, and only then does one DB transaction move the watermark and point the table at
the new snapshot. A run that dies half-way leaves the watermark where it was, and its retry
extracts the same window again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from remarketing.platform import state
from remarketing.platform.clock import utcnow
from remarketing.platform.storage import read_table, run_folder_name, write_table
from remarketing.store import extract
from remarketing.store.schema import TableSpec


@dataclass(frozen=True)
class TableSnapshot:
    """What a refresh hands downstream (through XCom): paths and counts, never rows."""

    table: str
    snapshot_path: str
    snapshot_rows: int
    delta_path: str
    delta_rows: int
    watermark: str | None
    full_refresh: bool
    seconds: float

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def refresh_table(
    *,
    store_conn: Any,
    store_name: str,
    table: str,
    state_engine,
    base_path: Any,
    run_id: str,
    full_refresh: bool = False,
    now: datetime | None = None,
    settle: timedelta = timedelta(seconds=0),
    path_factory=None,
) -> TableSnapshot:
    """Bring the mirror of ``table`` up to date from ``store_conn`` (a DB-API connection).

    ``base_path`` is a pathlib.Path or ObjectStoragePath; ``path_factory`` turns a stored path
    string back into such an object (defaults to the type of ``base_path``).
    """
    started = time.perf_counter()
    spec = extract.table_spec(table)
    path_factory = path_factory or type(base_path)
    previous = state.get_watermark(state_engine, table)
    lower = None if full_refresh else previous.watermark
    now = now or utcnow()

    run_dir = base_path / "store" / table / run_folder_name(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    delta_path = run_dir / "delta.parquet"
    snapshot_path = run_dir / "snapshot.parquet"

    window, delta = _extract(store_conn, store_name, spec, lower, now=now, settle=settle, delta_path=delta_path)
    published_path, snapshot_rows = _publish(
        previous, delta.rows, delta_path, snapshot_path, spec.key, full_refresh=full_refresh, path_factory=path_factory
    )
    new_watermark = _next_watermark(window.upper, lower)
    seconds = round(time.perf_counter() - started, 3)
    state.advance_watermark(
        state_engine,
        expected=previous,
        watermark=new_watermark,
        snapshot_path=published_path,
        snapshot_rows=snapshot_rows,
        run={
            "run_id": run_id,
            "table_name": table,
            "full_refresh": full_refresh,
            "lower_bound": lower,
            "upper_bound": window.upper,
            "delta_rows": delta.rows,
            "snapshot_rows": snapshot_rows,
            "delta_path": str(delta_path),
            "snapshot_path": published_path,
            "seconds": seconds,
        },
    )
    return TableSnapshot(
        table=table,
        snapshot_path=published_path,
        snapshot_rows=snapshot_rows,
        delta_path=str(delta_path),
        delta_rows=delta.rows,
        watermark=new_watermark.isoformat() if new_watermark else None,
        full_refresh=full_refresh,
        seconds=seconds,
    )


def _extract(
    store_conn: Any, store_name: str, spec: TableSpec, lower, *, now: datetime, settle: timedelta, delta_path: Any
):
    """Extract the rows changed since ``lower`` into ``delta_path``; returns (window, delta).

    Every failure becomes a StoreExtractError naming the connection and table, permanent or not,
    so the task knows whether a retry can help.
    """
    table = spec.name
    try:
        sql = extract.mapping_sql(table)
        window = extract.plan_window(store_conn, table, lower, now=now, settle=settle, sql=sql)
        delta = extract.extract_delta(store_conn, spec, window, lambda: delta_path.open("wb"), sql=sql)
    except extract.StoreExtractError as exc:
        raise extract.StoreExtractError(
            f"connection {store_name!r}, table {table}: {exc}", permanent=exc.permanent
        ) from exc
    except Exception as exc:  # noqa: BLE001 - every driver has its own error classes
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise extract.StoreExtractError(
            f"connection {store_name!r}, table {table}: extraction failed: {type(exc).__name__}: {detail}",
            permanent=extract.is_permanent_db_error(exc),
        ) from exc
    return window, delta


def _publish(
    previous, delta_rows: int, delta_path: Any, snapshot_path: Any, key: str, *, full_refresh: bool, path_factory
) -> tuple[str, int]:
    """The snapshot to publish: the previous one (nothing changed), the delta itself, or both merged."""
    if previous.snapshot_path and not full_refresh and delta_rows == 0:
        published_path, snapshot_rows = previous.snapshot_path, previous.snapshot_rows  # nothing changed
    elif full_refresh or not previous.snapshot_path:
        published_path, snapshot_rows = str(delta_path), delta_rows  # nothing to merge: the delta is the mirror
    else:
        base = read_table(path_factory(previous.snapshot_path))
        merged = extract.merge_snapshot(base, read_table(delta_path), key)
        write_table(merged, snapshot_path)
        published_path, snapshot_rows = str(snapshot_path), merged.num_rows
    return published_path, snapshot_rows


def _next_watermark(upper, lower):
    """The window's upper bound, or ``lower`` when the window was empty; never before ``lower``."""
    new_watermark = upper if upper is not None else lower
    if lower is not None and new_watermark is not None and new_watermark < lower:
        new_watermark = lower  # a window never moves backwards
    return new_watermark


def summary_table(snapshots: list[dict]) -> str:
    """A short fixed-width table for the task log (counts and watermarks, no personal data)."""
    header = f"{'table':<12} {'read':>10} {'snapshot':>10} {'seconds':>8}  watermark"
    lines = [header, "-" * len(header)]
    for snap in sorted(snapshots, key=lambda s: s["table"]):
        lines.append(
            f"{snap['table']:<12} {snap['delta_rows']:>10} {snap['snapshot_rows']:>10} "
            f"{snap['seconds']:>8.2f}  {snap['watermark'] or '-'}"
            + ("  (full refresh)" if snap["full_refresh"] else "")
        )
    return "\n".join(lines)
