"""Running the suites with Great Expectations: one ephemeral context, suites built from checks.

GX validates each table's frame (result_format COMPLETE) and its results are read back into one
Outcome per check: which rows failed and with which (derived) values, so the GX results stay the
single record of what failed and why.

Plain Python; Great Expectations is imported inside functions only.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from remarketing.store.validation.rules import ROW, Check


class _Runtime:
    """One ephemeral GX context per process: a pandas data source, one whole-frame batch per table."""

    def __init__(self):
        _quiet_gx()
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _quiet_gx()  # some GX modules set their own logger to INFO on import
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_pandas("store")
        self.batches: dict[str, Any] = {}
        self.suites: dict[tuple, Any] = {}

    def batch_definition(self, name: str):
        if name not in self.batches:
            asset = self.source.add_dataframe_asset(name=name)
            self.batches[name] = asset.add_batch_definition_whole_dataframe("whole")
        return self.batches[name]


_RUNTIME: _Runtime | None = None


def _quiet_gx() -> None:
    """GX logs a lot at INFO on import and while validating; the task log should show our table."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        # child loggers that set a level of their own; one module names its logger by file path
        if ("great_expectations" in name) and isinstance(logger, logging.Logger) and logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def runtime() -> _Runtime:
    global _RUNTIME
    if _RUNTIME is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation warnings from GX's own imports
            _RUNTIME = _Runtime()
    return _RUNTIME


def build_suite(name: str, checks: list[Check]):
    """An ExpectationSuite from checks; each expectation carries its check name in ``meta``.

    Suites are cached by content: building GX expectations costs more than running them on a
    small table, and a process validates the same suites run after run.
    """
    rt = runtime()
    import great_expectations.expectations as gxe

    signature = (name, tuple((c.name, c.expectation, repr(sorted(c.kwargs.items()))) for c in checks))
    suite = rt.suites.get(signature)
    if suite is None:
        seen: dict[str, str] = {}
        for check in checks:  # GX merges identical expectations: two checks must never share one
            config = f"{check.expectation}{sorted(check.kwargs.items())}"
            if config in seen:
                raise ValueError(f"suite {name}: checks {seen[config]} and {check.name} are the same expectation")
            seen[config] = check.name
        suite = rt.gx.ExpectationSuite(name=name)
        for check in checks:
            suite.add_expectation(getattr(gxe, check.expectation)(**check.kwargs, meta={"check": check.name}))
        rt.suites[signature] = suite
    return suite


@dataclass
class Outcome:
    """What one expectation found, read from the GX validation result."""

    check: Check
    success: bool
    unexpected: int
    rows: np.ndarray  # __row of the failing rows (empty for table-level expectations)
    values: list[Any]  # the failing values, aligned with rows (derived reasons; never rendered otherwise)
    observed: Any = None


def run_suite(table: str, frame: pd.DataFrame, suite_name: str, checks: list[Check], *, key: str) -> list[Outcome]:
    """Validate ``frame`` with GX (result_format COMPLETE) and return one Outcome per check, in check order."""
    rt = runtime()
    suite = build_suite(suite_name, checks)
    batch = rt.batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
    index_columns = [ROW, key] if key in frame.columns and ROW in frame.columns else []
    result_format: dict[str, Any] = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
    if index_columns:
        result_format["unexpected_index_column_names"] = index_columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validation = batch.validate(suite, result_format=result_format)
    by_name = {check.name: check for check in checks}
    outcomes: dict[str, Outcome] = {}
    for result in validation.results:
        check = by_name[result.expectation_config.meta["check"]]
        info = result.exception_info or {}
        if info.get("raised_exception"):
            message = str(info.get("exception_message") or "").splitlines()[0:1]
            raise RuntimeError(f"table {table}: GX could not evaluate {check.label}: {message[0] if message else ''}")
        body = result.result or {}
        listed = body.get("unexpected_index_list") or []
        rows = np.array([entry[ROW] for entry in listed], dtype=np.int64) if listed else np.empty(0, dtype=np.int64)
        values = [entry.get(check.gx_column) for entry in listed] if listed else []
        count = int(body.get("unexpected_count") or 0)
        if count != len(rows) and index_columns and check.gx_column:
            raise RuntimeError(f"table {table}: GX listed {len(rows)} of {count} failing rows for {check.label}")
        outcomes[check.name] = Outcome(
            check, bool(result.success), count, rows, values, observed=body.get("observed_value")
        )
    missing = [name for name in by_name if name not in outcomes]
    if missing:
        raise RuntimeError(f"table {table}: GX returned no result for {', '.join(missing)}")
    return [outcomes[check.name] for check in checks]


def reasons_of(outcome: Outcome) -> list[str]:
    """The reason for each failing row of a row-level outcome."""
    check = outcome.check
    if check.reason is not None:
        return [check.reason] * len(outcome.rows)
    return [str(value) for value in outcome.values]


def columns_of(outcome: Outcome) -> list[str]:
    """The canonical column each failing row is about (extract issues name theirs)."""
    if outcome.check.column is not None:
        return [outcome.check.column] * len(outcome.rows)
    if outcome.check.name == "extract_issues":  # "quantity: not a valid int; unit_price: ..."
        return [", ".join(part.split(":")[0].strip() for part in str(v).split(";")) for v in outcome.values]
    if outcome.check.name == "length":  # "last_name longer than 200 characters; ..."
        return [", ".join(part.strip().split(" ")[0] for part in str(v).split(";")) for v in outcome.values]
    return [""] * len(outcome.rows)
