"""Recording a validation in the remarketing DB: one row per table and run, the quarantined rows.

The tables themselves (validation_runs, quarantine) are defined in results.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from remarketing.store.validation.results import StoreValidation, quarantine, validation_runs


def record_validation(
    engine: sa.Engine, validation: StoreValidation, quarantined_rows: Mapping[str, pd.DataFrame]
) -> None:
    """One validation_runs row per table and the quarantined rows of the tables that passed.

    Idempotent per (run_id, table): a re-validation replaces that run's rows. A broken table's
    rows are not copied into the DB (its quarantine Parquet, when written, has them).
    """
    finished = datetime.now(UTC)
    tables = list(validation.tables)
    with engine.begin() as connection:
        for target in (quarantine, validation_runs):
            connection.execute(
                sa.delete(target).where(target.c.run_id == validation.run_id, target.c.table_name.in_(tables))
            )
        for name, result in validation.tables.items():
            connection.execute(
                sa.insert(validation_runs).values(
                    run_id=validation.run_id,
                    table_name=name,
                    extracted=result.extracted,
                    clean=result.clean,
                    quarantined=result.quarantined,
                    status=result.status,
                    failed_expectation=result.failure.expectation if result.failure else None,
                    message=str(result.failure) if result.failure else None,
                    seconds=result.seconds,
                    finished_at=finished,
                )
            )
        for name, rows in quarantined_rows.items():
            if rows.empty:
                continue
            records = [
                {
                    "run_id": validation.run_id,
                    "table_name": name,
                    "row_key": key,
                    "row_number": int(number),
                    "expectation": expectation,
                    "column_name": column,
                    "reason": reason,
                    "row_json": row_json,
                    "quarantined_at": finished,
                }
                for key, number, expectation, column, reason, row_json in zip(
                    rows["row_key"],
                    rows["row_number"],
                    rows["expectation"],
                    rows["column_name"],
                    rows["reason"],
                    rows["row_json"],
                    strict=True,
                )
            ]
            connection.execute(sa.insert(quarantine), records)
