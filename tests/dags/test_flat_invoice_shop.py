"""A real shop's export, under the default policy: one flat table of invoice lines, through real Airflow.

The shop (include/demo_shop/flat_invoices.py) has what real exports have: 38 countries given by
name, a quarter of the lines from guests, credit notes, float customer ids, London wall time
without an offset, one currency for every market, postage and adjustment lines. It is mapped
with include/sql/store/examples/flat_invoice_lines/ and run through lifecycle_segments on
SQLite, PostgreSQL and MariaDB. Every profile's recency, frequency and net monetary is checked
against a computation written here in pandas, from the raw lines, without the project's code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import sqlite_conn_env
from databases import fresh_mariadb_database, fresh_postgres_database

from demo_shop.flat_invoices import generate, write_invoice_lines
from remarketing.platform.connections import airflow_conn_json

pytestmark = pytest.mark.airflow_run
REPO = Path(__file__).resolve().parents[2]
MAPPING = REPO / "include" / "sql" / "store" / "examples" / "flat_invoice_lines"
AS_OF = datetime(2011, 12, 10, tzinfo=UTC)
ZONE = "Europe/London"
# The countries our markets serve (include/markets.yaml), as this export names them.
SERVED = {
    "United Kingdom": "GB", "EIRE": "GB", "Germany": "DE", "Austria": "DE", "Switzerland": "DE",
    "France": "FR", "Belgium": "FR", "Japan": "JP", "USA": "US", "Brazil": "BR",
}  # fmt: skip
CURRENCY = {"GB": "GBP", "DE": "EUR", "FR": "EUR", "JP": "JPY", "US": "USD", "BR": "BRL"}


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    return generate(invoices=1200, seed=11)


@pytest.fixture
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "lifecycle_segments.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("lifecycle_segments")


def _rates() -> pd.DataFrame:
    rates = pd.read_csv(REPO / "include" / "fx_rates.csv", parse_dates=["date"])
    eur = pd.DataFrame({"date": [pd.Timestamp("2000-01-01")], "currency": ["EUR"], "per_eur": [1.0]})
    return pd.concat([rates, eur], ignore_index=True).sort_values("date")


def _per_eur(currency: pd.Series, when: pd.Series) -> np.ndarray:
    """Units of ``currency`` per EUR on the latest date on or before ``when`` (UTC calendar day)."""
    rates = _rates()
    query = pd.DataFrame({"currency": currency.to_numpy(), "date": when.dt.tz_localize(None).dt.normalize()})
    query["row"] = np.arange(len(query))
    joined = pd.merge_asof(query.sort_values("date"), rates, on="date", by="currency", direction="backward")
    return joined.sort_values("row")["per_eur"].to_numpy()


def expected_profiles(lines: pd.DataFrame) -> pd.DataFrame:
    """Recency, frequency and net monetary per customer a market serves, from the raw lines."""
    lines = lines.assign(amount=lines["quantity"] * lines["unit_price"])
    at = pd.to_datetime(lines["invoice_date"]).dt.tz_localize(ZONE, ambiguous=True, nonexistent="shift_forward")
    lines["at"] = at.dt.tz_convert("UTC")
    invoices = lines.groupby("invoice_no").agg(
        customer=("customer_id", "first"), total=("amount", "sum"), at=("at", "min"), country=("country", "first")
    )
    invoices["total"] = invoices["total"].round(2)
    invoices = invoices[invoices["customer"].notna()].reset_index()
    invoices["customer"] = invoices["customer"].astype("int64")
    invoices["credit"] = invoices["invoice_no"].str.startswith("C")
    newest = lines[lines["customer_id"].notna()].sort_values(["invoice_date", "invoice_no", "country"])
    newest = newest.assign(customer=newest["customer_id"].astype("int64")).groupby("customer")["country"].last()
    market = newest.map(SERVED).dropna()

    # Credit notes net the customer's latest earlier invoice of exactly their amount, else the total.
    invoices = invoices[invoices["customer"].isin(market.index)].sort_values("at").reset_index(drop=True)
    net = invoices["total"].copy()
    refunded = pd.Series(False, index=invoices.index)
    unmatched = pd.Series(False, index=invoices.index)
    for i in invoices.index[invoices["credit"]]:
        note = invoices.loc[i]
        earlier = invoices[
            (invoices["customer"] == note["customer"]) & ~invoices["credit"] & (invoices["at"] <= note["at"])
            & ((invoices["total"] + note["total"]).abs() < 0.005) & ~refunded & (net > 0.005)
        ]  # fmt: skip
        if len(earlier):
            target = earlier.index[-1]
            net[target] = 0.0
            refunded[target] = True
        else:
            unmatched[i] = True
    target_currency = invoices["customer"].map(market).map(CURRENCY)
    rate = _per_eur(target_currency, invoices["at"]) / _per_eur(pd.Series("GBP", index=invoices.index), invoices["at"])
    invoices["value"] = np.where(target_currency == "GBP", net, net * rate)
    purchases = invoices[~invoices["credit"] & ~refunded]
    money_back = invoices[unmatched].groupby("customer")["value"].sum()
    out = pd.DataFrame({"market": market})
    out["frequency"] = purchases.groupby("customer").size().reindex(out.index, fill_value=0)
    out["monetary"] = purchases.groupby("customer")["value"].sum().reindex(out.index, fill_value=0.0)
    out["monetary"] += money_back.reindex(out.index, fill_value=0.0)
    no_buyer = (
        (out["frequency"] > 0)
        & (out["monetary"] <= 0.005)
        & out.index.isin(invoices.loc[invoices["credit"], "customer"])
    )
    out.loc[no_buyer, "frequency"] = 0
    out.loc[out["frequency"] == 0, "monetary"] = 0.0
    last = purchases.groupby("customer")["at"].max().reindex(out.index)
    out["recency_days"] = np.where(
        out["frequency"] > 0, (pd.Timestamp(AS_OF) - last).dt.total_seconds() / 86400, np.nan
    )
    return out.sort_index()


def _store_url(kind: str, tmp_path: Path):
    if kind == "sqlite":
        from contextlib import nullcontext

        return nullcontext(f"sqlite:///{tmp_path / 'shop.db'}")
    return (fresh_postgres_database if kind == "postgresql" else fresh_mariadb_database)("rmk_flat")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_the_flat_invoice_shop_runs_clean_under_the_default_policy(
    kind, lines, airflow_metadata, run_data, tmp_path, monkeypatch, dag
):
    with _store_url(kind, tmp_path) as url:
        engine = sa.create_engine(url)
        write_invoice_lines(engine, lines)
        engine.dispose()
        conn = sqlite_conn_env(tmp_path / "shop.db") if kind == "sqlite" else airflow_conn_json(url)
        monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", conn)
        monkeypatch.setenv("REMARKETING_STORE_SQL_DIR", str(MAPPING))
        monkeypatch.setenv("REMARKETING_STORE_TIME_ZONE", ZONE)
        run = dag.test(run_conf={"as_of": AS_OF.isoformat()})
    assert run.state == "success", "the default policy accepts a real shop's export"

    state = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with state.connect() as db:
        stored = pd.read_sql(sa.text("SELECT * FROM customer_profiles"), db).set_index("customer_id").sort_index()
        quarantined = db.execute(sa.text("SELECT COUNT(*) FROM quarantine")).scalar()
    state.dispose()
    assert quarantined == 0, "nothing in this export is bad data: out of scope is not bad"

    expected = expected_profiles(lines)
    assert list(stored.index) == list(expected.index), "every customer a market serves, and only those"
    assert (stored["market"] == expected["market"]).all(), "each customer in the market serving their country"
    pd.testing.assert_series_equal(stored["frequency"].astype("int64"), expected["frequency"], check_names=False)
    assert np.allclose(stored["monetary"].fillna(0.0), expected["monetary"], atol=0.01)
    assert np.allclose(stored["recency_days"], expected["recency_days"], equal_nan=True, atol=1e-6)
    refunded = expected.index[(expected["frequency"] == 0)]
    assert len(refunded), "the shop has customers whose purchases all came back"
    assert set(stored.loc[refunded, "stage"]) == {"prospect"}, "a fully refunded customer is no buyer"
