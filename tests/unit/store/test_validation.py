"""validate_store: outputs, conservation, the remarketing DB record, paths, policy and GX's noise.

Bad inputs and their outcomes are the corpus's job (test_bad_input_corpus.py); this file tests
the machinery around them on the valid demo store and a few hand-made changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from bad_input.cases import NOW, Store
from databases import fresh_postgres_database

from remarketing.markets import load_markets
from remarketing.platform import state
from remarketing.store.extract import ISSUES_COLUMN, arrow_schema
from remarketing.store.fx import load_fx_rates
from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation import rules as validation_rules
from remarketing.store.validation.conform import prepare
from remarketing.store.validation.derived import derive
from remarketing.store.validation.references import ParentRows
from remarketing.store.validation.results import (
    ConservationError,
    FeedBroken,
    ValidationPolicy,
    quarantine,
    validation_runs,
)
from remarketing.store.validation.run import validate_store


def _validate(store: Store, folder, tables=None, **kwargs):
    kwargs.setdefault("markets", load_markets())
    kwargs.setdefault("run_id", "test-run")
    kwargs.setdefault("now", NOW)
    return validate_store(store.write(folder / "snapshots", tables), out_dir=folder / "out", **kwargs)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    store = Store()
    return store, _validate(store, folder), folder


def test_valid_store_passes_whole_and_unchanged(clean_run):
    """A valid store comes out clean, in the canonical schema, value for value."""
    store, result, _ = clean_run
    assert result.ok and list(result.tables) == list(validation_rules.TABLE_ORDER)
    for name, table in result.tables.items():
        spec = CANONICAL_TABLES[name]
        assert (table.extracted, table.clean, table.quarantined) == (store.tables[name].num_rows, table.extracted, 0)
        clean = pq.read_table(table.clean_path)
        expected_schema = pa.schema([f for f in arrow_schema(spec) if f.name != ISSUES_COLUMN])
        assert clean.schema.equals(expected_schema), name
        assert clean.to_pylist() == store.tables[name].select(spec.column_names).to_pylist(), name
        assert pq.read_table(table.quarantine_path).num_rows == 0
        assert not table.failed_expectations and not table.notes, name


def test_snapshots_from_the_real_extraction_validate_clean(tmp_path):
    """Demo store -> SQLite -> extract.py snapshots -> validation: nothing quarantined, nothing lost."""
    import sqlite3

    from demo_shop.generator import write_store
    from remarketing.store import snapshots

    store = Store()
    frames = {name: table.to_pandas() for name, table in store.tables.items()}
    write_store(
        {name: frame.drop(columns=[ISSUES_COLUMN]) for name, frame in frames.items()}, f"sqlite:///{tmp_path}/s.db"
    )
    engine = state.create_state_engine(f"sqlite:///{tmp_path / 'remarketing.db'}")
    state.upgrade(engine)
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        paths = {
            table: snapshots.refresh_table(
                store_conn=conn,
                store_name="store_db",
                table=table,
                state_engine=engine,
                base_path=tmp_path / "data",
                run_id="r1",
                now=NOW,
            ).snapshot_path
            for table in validation_rules.TABLE_ORDER
        }
    finally:
        conn.close()
    result = validate_store(paths, markets=load_markets(), out_dir=tmp_path / "out", run_id="r1", now=NOW)
    for name, table in result.tables.items():
        assert table.quarantined == 0 and table.clean == store.tables[name].num_rows, (name, table.failed_expectations)


def test_xcom_and_summary_carry_paths_and_counts_only(clean_run):
    _, result, folder = clean_run
    xcom = json.loads(json.dumps(result.to_xcom()))
    assert xcom["report_path"] == str(folder / "out" / "report.html")
    cart_items = xcom["tables"]["cart_items"]
    assert set(cart_items) == {
        "extracted",
        "clean",
        "quarantined",
        "clean_path",
        "quarantine_path",
        "seconds",
        "status",
        "failed_expectations",
        "out_of_scope",
        "failure",
    }
    assert cart_items["clean_path"] == str(folder / "out" / "clean" / "cart_items.parquet")
    lines = result.summary_table().splitlines()
    assert lines[0].split() == [
        "table", "extracted", "clean", "of", "which", "out", "of", "scope", "quarantined", "seconds", "status"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[2:8]] == list(validation_rules.TABLE_ORDER)
    assert lines[-1] == f"report: {folder / 'out' / 'report.html'}"


def test_quarantine_keeps_the_original_values_with_reason(tmp_path):
    store = Store()
    bad = store.add("customers", email="a@@b", first_name="J\x00o")
    text = [None if v is None else v.isoformat() for v in store.tables["customers"].column("updated_at").to_pylist()]
    text[0] = "2026-03-01T09:00:00"  # naive: quarantined with its text as it came
    store.set_column("customers", "updated_at", pa.array(text, pa.string()))
    result = _validate(store, tmp_path, tables=("customers",))
    rows = {r["customer_id"]: r for r in pq.read_table(result.tables["customers"].quarantine_path).to_pylist()}
    first = store.rows("customers")[0]["customer_id"]
    assert set(rows) == {first, bad}
    assert rows[first]["updated_at"] == "2026-03-01T09:00:00"
    assert rows[bad]["email"] == "a@@b" and rows[bad]["first_name"] == "J\x00o"  # as read, not normalised
    assert rows[bad]["reason"] == "email is not a valid address"
    assert rows[bad]["expectation"] == "expect_column_values_to_be_in_set(__check__email)"
    assert rows[bad]["column"] == "email" and rows[bad]["row_number"] == store.tables["customers"].num_rows - 1
    clean = pq.read_table(result.tables["customers"].clean_path)
    assert clean.schema.field("updated_at").type == pa.timestamp("us", tz="UTC")


def test_a_row_failing_several_expectations_lists_every_reason(tmp_path):
    store = Store()
    key = store.add("cart_items", quantity=0, unit_price=-1.0, currency="ABC")
    result = _validate(store, tmp_path, tables=("cart_items",))
    (row,) = pq.read_table(result.tables["cart_items"].quarantine_path).to_pylist()
    assert row["cart_item_id"] == key
    assert (
        row["reason"]
        == "currency is not an ISO 4217 code; unit_price not within [0, 1e+07]; quantity not within [1, 1000]"
    )
    assert row["expectation"] == "expect_column_values_to_be_in_set(__check__currency)"  # the first in suite order


def test_cart_lines_without_their_carts_are_judged_against_the_cart_majority(tmp_path):
    store = Store()
    keys = [store.add("cart_items", cart_id=77_777_777, currency=c) for c in ("EUR", "EUR", "USD")]
    result = _validate(store, tmp_path, tables=("cart_items",))
    (row,) = pq.read_table(result.tables["cart_items"].quarantine_path).to_pylist()
    assert row["cart_item_id"] == keys[2] and row["reason"] == "currency differs from its cart's (EUR)"


def test_a_broken_parent_fails_the_feed_and_its_children_are_still_checked(tmp_path, caplog):
    store = Store()
    store.drop_column("orders", "currency")
    store.tables["products"] = store.tables["products"].slice(0, 0)
    with pytest.raises(FeedBroken) as caught:
        _validate(store, tmp_path, tables=("products", "orders", "order_items"))
    broken = caught.value
    assert isinstance(broken, ValueError)
    assert broken.table == "products" and "also broken: orders" in str(broken)  # the first in dependency order
    items = broken.validation.tables["order_items"]
    assert items.status == "ok" and items.clean == items.extracted
    skipped = {e.label for e in items.expectations if e.label.startswith("not checked")}
    assert skipped == {"not checked: table orders is broken", "not checked: table products is broken"}
    assert "store validation failed" in caplog.text and "order_items" in caplog.text  # summary in the task log
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "BROKEN FEED" in report and "not checked: table orders is broken" in report


def test_conservation_is_checked_in_code(tmp_path, monkeypatch):
    """A bug that loses a row between the verdict and the files must stop the run."""
    from remarketing.store.validation import run as validation

    real = validation._clean_arrow
    monkeypatch.setattr(validation, "_clean_arrow", lambda frame, table: real(frame, table).slice(1))
    with pytest.raises(ConservationError, match="table products: wrote 199 clean"):
        _validate(Store(), tmp_path, tables=("products",))


def test_policy_overrides_per_table_and_rejects_unknown_names():
    policy = ValidationPolicy(per_table={"orders": {"max_bad_share": 0.5, "future_skew": timedelta(hours=1)}})
    assert policy.for_table("orders").max_bad_share == 0.5
    assert policy.for_table("orders").future_skew == timedelta(hours=1)
    assert policy.for_table("carts") == ValidationPolicy(per_table={"orders": {"max_bad_share": 0.5}}).for_table(
        "carts"
    )
    with pytest.raises(ValueError, match="unknown table 'order'"):
        ValidationPolicy(per_table={"order": {"max_bad_share": 0.5}})
    with pytest.raises(ValueError, match="cannot override \\['expect_rows'\\]"):
        ValidationPolicy(per_table={"orders": {"expect_rows": frozenset()}})
    with pytest.raises(ValueError, match="max_bad_share"):
        ValidationPolicy(max_bad_share=1.5)


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown store tables \\['order'\\]"):
        validate_store({"order": tmp_path}, markets=load_markets(), out_dir=tmp_path, run_id="r", now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_store({}, markets=load_markets(), out_dir=tmp_path, run_id="r", now=NOW.replace(tzinfo=None))


def test_every_derived_column_is_asserted_by_an_expectation(clean_run):
    """A derived check column without its expectation would be a check nobody records."""
    store, _, _ = clean_run
    markets = load_markets()
    parents = set(validation_rules.TABLE_ORDER)
    for table in validation_rules.TABLE_ORDER:
        prepared = prepare(store.tables[table], table)
        frame, _ = derive(
            prepared,
            table,
            markets=markets,
            now=NOW,
            future_skew=timedelta(minutes=10),
            text_max_length=20_000,
            parents={p: ParentRows(store.tables[p].to_pandas(), _all(store, p)) for p in parents},
            fx=load_fx_rates(),
        )
        checks = validation_rules.row_checks(table, markets=markets, parents=parents, max_amount=1e7, max_quantity=9)
        derived = {c for c in frame.columns if c.startswith("__check__") or c.startswith("__ref__")}
        asserted = {c.gx_column for c in checks if c.gx_column.startswith("__")}
        assert derived == asserted, table


def _all(store: Store, table: str):
    import numpy as np

    return np.ones(store.tables[table].num_rows, dtype=bool)


def test_object_storage_paths_and_url_strings(tmp_path):
    """In a task, snapshots arrive as URL strings and out_dir is an ObjectStoragePath."""
    from airflow.sdk import ObjectStoragePath

    store = Store()
    paths = store.write(tmp_path / "snapshots", ("customers", "products"))
    result = validate_store(
        {name: f"file://{path}" for name, path in paths.items()},
        markets=load_markets(),
        out_dir=ObjectStoragePath(f"file://{tmp_path}/out"),
        run_id="r",
        now=NOW,
    )
    assert result.report_path.startswith("file://") and (tmp_path / "out" / "report.html").exists()
    assert result.tables["customers"].clean_path == f"file://{tmp_path}/out/clean/customers.parquet"
    assert pq.read_table(tmp_path / "out" / "clean" / "products.parquet").num_rows == store.tables["products"].num_rows


# --------------------------------------------------------------------------- remarketing DB


@contextmanager
def _sqlite(tmp_path):
    yield f"sqlite:///{tmp_path / 'remarketing.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_engine(request, tmp_path):
    factory = _sqlite(tmp_path) if request.param == "sqlite" else fresh_postgres_database("rmk_validation")
    with factory as url:
        engine = state.create_state_engine(url)
        state.upgrade(engine)
        yield engine
        engine.dispose()


def _runs(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {r.table_name: r._asdict() for r in conn.execute(sa.select(validation_runs))}


def _quarantined(engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            r._asdict()
            for r in conn.execute(sa.select(quarantine).order_by(quarantine.c.table_name, quarantine.c.row_number))
        ]


def test_runs_and_quarantined_rows_are_recorded_and_replaced_on_revalidation(state_engine, tmp_path):
    store = Store()
    bad = store.add("customers", email="a@@b", first_name="Zoë\x00")
    store.add("orders", customer_id=bad, discount_amount=float("nan"))  # follows its customer
    before = datetime.now(UTC)
    for attempt in range(2):  # a task retry validates the same run again
        _validate(store, tmp_path / str(attempt), tables=("customers", "orders"), state_engine=state_engine)
    runs = _runs(state_engine)
    assert set(runs) == {"customers", "orders"}
    assert runs["customers"]["extracted"] == runs["customers"]["clean"] + runs["customers"]["quarantined"]
    assert runs["customers"]["quarantined"] == 1 and runs["orders"]["quarantined"] == 1
    assert runs["orders"]["status"] == "ok" and runs["orders"]["failed_expectation"] is None
    assert state.utc(runs["orders"]["finished_at"]) >= before
    rows = _quarantined(state_engine)
    assert [(r["table_name"], r["row_key"]) for r in rows] == [("customers", str(bad)), ("orders", "10000001")]
    customer = rows[0]
    assert customer["expectation"] == "expect_column_values_to_be_in_set(__check__email)"
    assert customer["column_name"] == "email" and customer["reason"] == "email is not a valid address"
    original = json.loads(customer["row_json"])
    assert original["email"] == "a@@b" and original["first_name"] == "Zoë\x00"  # NUL survives as \\u0000
    assert rows[1]["reason"] == "discount_amount is not a number; customer_id: parent customer quarantined"
    assert json.loads(rows[1]["row_json"])["discount_amount"] == "nan"  # strict JSON: NaN as text


def test_a_broken_feed_is_recorded_as_failed(state_engine, tmp_path):
    store = Store()
    store.tables["customers"] = store.tables["customers"].slice(0, 0)
    with pytest.raises(FeedBroken):
        _validate(store, tmp_path, tables=("customers", "products"), state_engine=state_engine)
    runs = _runs(state_engine)
    assert runs["customers"]["status"] == "failed"
    assert runs["customers"]["failed_expectation"] == "expect_table_row_count_to_be_between"
    assert "empty extract" in runs["customers"]["message"]
    assert runs["products"]["status"] == "ok"


def test_migration_downgrades_cleanly(state_engine):
    from alembic import command

    with state_engine.begin() as connection:
        command.downgrade(state._alembic_config(connection), "0001")
    assert not {"validation_runs", "quarantine"} & set(sa.inspect(state_engine).get_table_names())
    state.upgrade(state_engine)
    assert {"validation_runs", "quarantine"} <= set(sa.inspect(state_engine).get_table_names())


# --------------------------------------------------------------------------- the task log


def test_great_expectations_stays_quiet_in_the_task_log(tmp_path):
    """Under a logger at INFO (as in a task), GX prints nothing: the log shows our summary table."""
    store = Store()
    paths = store.write(tmp_path / "snapshots", ("products",))
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        from datetime import datetime
        from remarketing.markets import load_markets
        from remarketing.store.validation.run import validate_store
        result = validate_store({{"products": {str(paths["products"])!r}}}, markets=load_markets(),
                                out_dir={str(tmp_path / "out")!r}, run_id="r", now=datetime.fromisoformat({NOW.isoformat()!r}))
        print(result.summary_table())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GX_ANALYTICS_ENABLED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "", done.stderr[:2000]
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout  # header, rule, products, report: nothing else
    assert lines[0].split()[:2] == ["table", "extracted"] and lines[2].split()[:2] == ["products", "200"]


def test_out_of_scope_is_not_bad_it_is_kept_counted_apart_and_never_breaks_the_feed(tmp_path):
    """A fifth of the customers live where no market serves: far over max_bad_share, yet the feed passes."""
    store = Store()
    size = store.tables["customers"].num_rows
    outside = [store.add("customers", market=None, country="Netherlands") for _ in range(size // 4)]
    unspecified = store.add("customers", market=None, country="Unspecified")
    store.add("customers", market=None, country="Atlantis")  # a bad value: quarantined
    result = _validate(store, tmp_path, tables=("customers",))
    customers = result.tables["customers"]
    assert customers.status == "ok" and customers.quarantined == 1
    assert customers.out_of_scope == {
        "country NL is served by no market": len(outside),
        "country given as 'Unspecified': no country": 1,
    }
    assert customers.extracted == customers.clean + customers.quarantined, "conservation, out of scope included"
    clean = pq.read_table(customers.clean_path).to_pandas().set_index("customer_id")
    assert clean.loc[outside, "market"].isna().all() and (clean.loc[outside, "country"] == "NL").all()
    assert pd.isna(clean.loc[unspecified, "market"]) and pd.isna(clean.loc[unspecified, "country"])
    summary = result.summary_table()
    assert "out of scope (kept, never mailed)" in summary and "country NL is served by no market" in summary
    assert summary.index("bad rows (quarantined)") < summary.index("out of scope (kept")
    report = Path(result.report_path).read_text()
    assert "out of scope (kept in the clean data" in report and "country NL is served by no market" in report
    assert result.to_xcom()["tables"]["customers"]["out_of_scope"] == len(outside) + 1


# --------------------------------------------------------------------------- lower bound of timestamps, URLs


def test_policy_has_a_lower_bound_for_timestamps():
    assert ValidationPolicy().min_timestamp == datetime(2000, 1, 1, tzinfo=UTC)
    policy = ValidationPolicy(per_table={"orders": {"min_timestamp": datetime(1990, 1, 1, tzinfo=UTC)}})
    assert policy.for_table("orders").min_timestamp == datetime(1990, 1, 1, tzinfo=UTC)
    assert policy.for_table("customers").min_timestamp == datetime(2000, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="min_timestamp must be timezone-aware"):
        ValidationPolicy(min_timestamp=datetime(2000, 1, 1))
    with pytest.raises(ValueError, match="min_timestamp must be timezone-aware"):
        ValidationPolicy(per_table={"orders": {"min_timestamp": datetime(2000, 1, 1)}})


def test_timestamps_before_the_lower_bound_name_their_column():
    """Each timestamp column gets its own reason; null stays null, the bound itself is valid, the future wins."""
    from remarketing.store.validation.column_checks import timestamp_checks

    store = Store()
    base = store.rows("orders")[0]
    keys = [
        store.add("orders", base, placed_at=datetime(1970, 1, 1, tzinfo=UTC)),
        store.add("orders", base, updated_at=datetime(1, 1, 1, tzinfo=UTC)),
        store.add("orders", base, placed_at=datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        store.add("orders", base, placed_at=datetime(2000, 1, 1, tzinfo=UTC)),
    ]
    prepared = prepare(store.tables["orders"], "orders")
    order_ids = prepared.frame["order_id"].tolist()
    at = [order_ids.index(k) for k in keys]

    def statuses(**kwargs):
        checks = timestamp_checks(prepared, "orders", now=NOW, future_skew=timedelta(minutes=10), **kwargs)
        return [(checks["__check__timestamp_placed_at"][i], checks["__check__timestamp_updated_at"][i]) for i in at]

    assert statuses() == [
        ("placed_at is before 2000-01-01", "ok"),
        ("ok", "updated_at is before 2000-01-01"),
        ("placed_at is before 2000-01-01", "ok"),
        ("ok", "ok"),
    ]
    lower = statuses(min_timestamp=datetime(1960, 6, 1, 12, tzinfo=UTC))
    assert lower == [("ok", "ok"), ("ok", "updated_at is before 1960-06-01 12:00 UTC"), ("ok", "ok"), ("ok", "ok")]


def test_product_urls_must_be_https():
    from remarketing.store.validation.column_checks import format_checks

    urls = [
        "https://cdn.shop.example.com/img/a.jpg",
        " https://shop.example.com/p/a ",  # the renderer strips it too
        "HTTPS://shop.example.com/p/a",
        None,
        "",  # blank: read as no URL, as the renderer does
        "http://shop.example.com/p/a",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "//shop.example.com/p/a",
        "https://",
        "https:///p/a",
        "https://shop.example.com/p/a b",
        "https://shop.example.com/p/\x01a",
        "ftp://shop.example.com/a.jpg",
        "/p/a",
    ]
    frame = pd.DataFrame({"image_url": urls, "product_url": list(reversed(urls)), "names": None, "currency": "EUR"})
    for name in CANONICAL_TABLES["products"].columns:
        if name not in frame:
            frame[name] = None
    checks = format_checks(frame, "products", text_max_length=20_000)
    expected = ["ok"] * 5 + ["image_url is not an https URL"] * 10
    assert checks["__check__image_url"].tolist() == expected
    assert checks["__check__product_url"].tolist() == [
        r.replace("image_url", "product_url") for r in reversed(expected)
    ]


def test_policy_min_timestamp_reaches_the_checks(tmp_path):
    """The bound is the policy's, per table too: 1995 passes where the bound is 1990, not under the default."""
    store = Store()
    base = store.rows("orders")[0]
    old = store.add("orders", base, placed_at=datetime(1995, 6, 1, tzinfo=UTC))
    older = store.add("orders", base, placed_at=datetime(1985, 6, 1, tzinfo=UTC))
    store.add("customers", registered_at=datetime(1995, 6, 1, tzinfo=UTC))
    policy = ValidationPolicy(
        max_bad_share=1.0, per_table={"orders": {"min_timestamp": datetime(1990, 1, 1, tzinfo=UTC)}}
    )
    result = _validate(store, tmp_path, tables=("customers", "orders"), policy=policy)
    orders = pq.read_table(result.tables["orders"].quarantine_path).to_pylist()
    assert [(r["order_id"], r["reason"]) for r in orders] == [(older, "placed_at is before 1990-01-01")]
    assert old not in [r["order_id"] for r in orders]
    (customer,) = pq.read_table(result.tables["customers"].quarantine_path).to_pylist()
    assert customer["reason"] == "registered_at is before 2000-01-01"
