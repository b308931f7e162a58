"""Run data: where it lives, the run folders, and Parquet in and out.

Paths are ``pathlib.Path`` or Airflow's ``ObjectStoragePath`` (``file://``, ``s3://``...); a
string is either. XCom carries these paths and counts, never rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


def run_folder_name(run_id: str) -> str:
    """A path-safe folder name for an Airflow run id (which holds ':' and '+')."""
    return "run=" + re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def as_path(value: Any):
    """A pathlib.Path or ObjectStoragePath for a path or URL string (``file://``, ``s3://``...)."""
    if isinstance(value, str) and "://" in value:
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(value)
    if isinstance(value, (str, os.PathLike)) and not hasattr(value, "open"):
        return Path(value)
    return value


def data_base_path():
    """Where run data (Parquet) lives: ``REMARKETING_DATA_BASE`` or $AIRFLOW_HOME/data."""
    from airflow.sdk import ObjectStoragePath

    from remarketing.platform.settings import data_base_url

    return ObjectStoragePath(data_base_url())


def run_folder(*parts: str, run_id: str):
    """``$REMARKETING_DATA_BASE/<parts...>/run=<run id>/``, created."""
    folder = data_base_path().joinpath(*parts, run_folder_name(run_id))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_table(path: Any):
    """A Parquet file as an Arrow table."""
    import pyarrow.parquet as pq

    with as_path(path).open("rb") as handle:
        return pq.read_table(handle)


def write_table(table, path: Any) -> None:
    """An Arrow table as a zstd Parquet file; the folder is created."""
    import pyarrow.parquet as pq

    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pq.write_table(table, handle, compression="zstd")


def read_frame(path: Any, columns: list[str] | None = None):
    """A Parquet file as a DataFrame."""
    import pyarrow.parquet as pq

    with as_path(path).open("rb") as handle:
        return pq.read_table(handle, columns=columns).to_pandas()


def write_frame(frame, path: Any) -> None:
    """A DataFrame (without its index) as a zstd Parquet file."""
    import pyarrow as pa

    write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def read_clean(validated: dict, table: str, columns: list[str] | None = None):
    """A validated (clean) table of this run as a DataFrame, from the validate task's XCom."""
    return read_frame(validated["tables"][table]["clean_path"], columns)
