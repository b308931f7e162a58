"""What validation decided, per expectation, table and run: the results the report and the log show.

Also the policy (thresholds) and the two failures that stop a run: a broken feed, a broken count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation import rules

TABLE_ORDER = rules.TABLE_ORDER
MAX_EXAMPLE_KEYS = 5


@dataclass(frozen=True)
class ValidationPolicy:
    """Thresholds of validation. Defaults suit the demo shop; ``per_table`` overrides any of the
    row-level fields for one table, e.g. ``{"cart_items": {"max_bad_share": 0.2}}``.

    - max_bad_share: a table with more than this share of rows quarantined is a broken feed.
    - future_skew: a timestamp later than ``now`` by more than this is quarantined (clock skew).
    - min_timestamp: a timestamp before this (aware) is quarantined: 1970-01-01 or year 1 are
      placeholders of an export, not events of a shop.
    - expect_rows: tables whose empty extract breaks the feed (a shop always has these).
    - max_amount: upper bound of money columns, in the row's currency (10M covers JPY totals).
    - max_quantity: upper bound of line quantities (lower bound is 1).
    - text_max_length: characters allowed in unbounded text columns (product names JSON).
    """

    max_bad_share: float = 0.05
    future_skew: timedelta = timedelta(minutes=10)
    min_timestamp: datetime = rules.MIN_TIMESTAMP
    expect_rows: frozenset[str] = frozenset({"customers", "products"})
    max_amount: float = 10_000_000.0
    max_quantity: int = 1_000
    text_max_length: int = 20_000
    per_table: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    _TABLE_FIELDS = ("max_bad_share", "future_skew", "min_timestamp", "max_amount", "max_quantity", "text_max_length")

    def __post_init__(self):
        unknown = sorted(set(self.expect_rows) - set(CANONICAL_TABLES))
        if unknown:
            raise ValueError(f"ValidationPolicy.expect_rows: unknown tables {unknown}")
        if not 0 <= self.max_bad_share <= 1:
            raise ValueError(f"ValidationPolicy.max_bad_share must be within [0, 1], got {self.max_bad_share}")
        for table, overrides in self.per_table.items():
            if table not in CANONICAL_TABLES:
                raise ValueError(f"ValidationPolicy.per_table: unknown table {table!r}")
            bad = sorted(set(overrides) - set(self._TABLE_FIELDS))
            if bad:
                raise ValueError(f"ValidationPolicy.per_table[{table!r}]: cannot override {bad}")
            _check_min_timestamp(overrides.get("min_timestamp", self.min_timestamp), f"per_table[{table!r}].")
        _check_min_timestamp(self.min_timestamp, "")

    def for_table(self, table: str) -> ValidationPolicy:
        """This policy with ``table``'s overrides applied."""
        return replace(self, per_table={}, **dict(self.per_table.get(table, {})))

    def __hash__(self) -> int:  # per_table is a mapping; hash what identifies the policy
        return hash(tuple(getattr(self, f.name) for f in fields(self) if f.name != "per_table"))


def _check_min_timestamp(value: object, where: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"ValidationPolicy.{where}min_timestamp must be timezone-aware, got {value!r}")


class FeedBroken(ValueError):
    """A table-level failure: the feed cannot be trusted, nothing may be sent from this run.

    ``expectation`` names what failed (a GX expectation with its column, or ``read_parquet`` /
    ``expect_column_values_to_be_of_type`` for failures found before GX can run); the message
    names the table and at most five example row keys, never personal data. ``validation`` is
    the StoreValidation of the whole run (report written) when the failure came from
    validate_store.
    """

    def __init__(self, table: str, expectation: str, example_keys: list, message: str):
        self.table = table
        self.expectation = expectation
        self.example_keys = list(example_keys)[:MAX_EXAMPLE_KEYS]
        self.validation: StoreValidation | None = None
        keys = f"; example keys: {', '.join(str(k) for k in self.example_keys)}" if self.example_keys else ""
        super().__init__(f"table {table}: {expectation} failed: {message}{keys}")


class ConservationError(RuntimeError):
    """Rows extracted != rows clean + rows quarantined: a bug in validation, never the feed's fault."""


@dataclass
class ExpectationResult:
    """One expectation of a table, for the report and the summary (no values, only keys and reasons)."""

    name: str
    label: str  # GX expectation type with its column
    column: str | None
    action: str  # quarantine | note | table
    success: bool
    unexpected: int
    example_keys: list
    reasons: dict[str, int]  # reason -> rows (derived reasons only; empty for value expectations)


@dataclass
class TableValidation:
    table: str
    extracted: int
    clean: int = 0
    quarantined: int = 0
    clean_path: str | None = None
    quarantine_path: str | None = None
    seconds: float = 0.0
    status: str = "ok"  # ok | failed
    failed_expectations: dict[str, int] = field(default_factory=dict)  # label -> rows quarantined by it
    notes: dict[str, int] = field(default_factory=dict)  # label -> rows noted (kept)
    normalised: dict[str, int] = field(default_factory=dict)  # column -> values changed
    # reason -> clean rows no market serves (kept, profiled, never mailed; not bad, not quarantined)
    out_of_scope: dict[str, int] = field(default_factory=dict)
    converted_currency: dict[str, int] = field(default_factory=dict)  # currency -> clean rows not in their market's
    expectations: list[ExpectationResult] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    failure: FeedBroken | None = None

    def to_xcom(self) -> dict[str, Any]:
        return {
            "extracted": self.extracted,
            "clean": self.clean,
            "quarantined": self.quarantined,
            "clean_path": self.clean_path,
            "quarantine_path": self.quarantine_path,
            "seconds": self.seconds,
            "status": self.status,
            "failed_expectations": dict(self.failed_expectations),
            "out_of_scope": sum(self.out_of_scope.values()),
            "failure": str(self.failure) if self.failure else None,
        }


@dataclass
class StoreValidation:
    run_id: str
    tables: dict[str, TableValidation]
    report_path: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return all(t.status == "ok" for t in self.tables.values())

    def to_xcom(self) -> dict[str, Any]:
        """Paths and counts only (JSON-serialisable): what downstream tasks read."""
        return {
            "run_id": self.run_id,
            "report_path": self.report_path,
            "seconds": self.seconds,
            "tables": {name: t.to_xcom() for name, t in self.tables.items()},
        }

    def summary_table(self) -> str:
        """A short fixed-width table for the task log: counts, status and the top failure per table."""
        header = (
            f"{'table':<12} {'extracted':>10} {'clean':>10} {'of which out of scope':>21} {'quarantined':>11} "
            f"{'seconds':>8}  status"
        )
        lines = [header, "-" * len(header)]
        for name, t in self.tables.items():
            top = max(t.failed_expectations.items(), key=lambda kv: kv[1], default=None)
            detail = f"  top: {top[0]} x{top[1]}" if top else ""
            if t.failure is not None:
                detail = f"  {t.failure.expectation}"
            outside = sum(t.out_of_scope.values())
            lines.append(
                f"{name:<12} {t.extracted:>10} {t.clean:>10} {outside:>21} {t.quarantined:>11} {t.seconds:>8.2f}  "
                f"{t.status}{detail}"
            )
        bad = {(name, label): n for name, t in self.tables.items() for label, n in t.failed_expectations.items()}
        outside = {(name, reason): n for name, t in self.tables.items() for reason, n in t.out_of_scope.items()}
        converted = {
            (name, f"in {code}, converted into the market's currency"): n
            for name, t in self.tables.items()
            for code, n in t.converted_currency.items()
        }
        for title, counts in (
            ("bad rows (quarantined), per reason", bad),
            ("out of scope (kept, never mailed)", outside),
            ("converted currency", converted),
        ):
            if counts:
                lines.append(title)
                ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                lines.extend(f"  {table:<12} {n:>10}  {what}" for (table, what), n in ranked[:15])
                if len(ranked) > 15:
                    lines.append(f"  ... and {len(ranked) - 15} more (see the report)")
        if self.report_path:
            lines.append(f"report: {self.report_path}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- remarketing DB tables

validation_metadata = sa.MetaData()
_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")
validation_runs = sa.Table(
    "validation_runs",
    validation_metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("table_name", sa.String(64), nullable=False),
    sa.Column("extracted", sa.BigInteger, nullable=False),
    sa.Column("clean", sa.BigInteger, nullable=False),
    sa.Column("quarantined", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("failed_expectation", sa.String(250)),
    sa.Column("message", sa.Text),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("run_id", "table_name", name="uq_validation_runs_run_table"),
)
quarantine = sa.Table(
    "quarantine",
    validation_metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("table_name", sa.String(64), nullable=False),
    sa.Column("row_key", sa.String(64)),  # null when the key itself is missing
    sa.Column("row_number", sa.BigInteger, nullable=False),  # position in the snapshot
    sa.Column("expectation", sa.String(250), nullable=False),
    sa.Column("column_name", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("row_json", sa.Text, nullable=False),
    sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_quarantine_run_table", "run_id", "table_name"),
)


# --------------------------------------------------------------------------- entry point
