"""The Remarketing page's numbers (remarketing.dashboard.queries), its HTML and its app, without a browser.

The seeded day (tests/support/dashboard_seed.py) is written through the project's own writers into
SQLite and PostgreSQL; tests/system/test_remarketing_page.py shows the same page inside Airflow's UI.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from dashboard_seed import SCENARIO, expected, seed_day
from databases import migrated_postgres_database, migrated_sqlite_engine
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from remarketing.dashboard.page import render_page
from remarketing.dashboard.queries import load_dashboard
from remarketing.delivery import ledger
from remarketing.delivery.ledger import ClaimContext
from remarketing.markets import load_markets
from remarketing.platform import state

DAY = date(2026, 11, 20)
NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def markets():
    return load_markets()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = migrated_sqlite_engine(tmp_path / "remarketing.db")
        yield engine
        engine.dispose()
        return
    with migrated_postgres_database("rmk_dash") as url:
        engine = state.create_state_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def seeded(engine, markets):
    seed_day(engine, markets, DAY)
    return engine


def test_each_market_shows_the_funnel_of_its_last_tries_the_fates_the_revenue_and_the_gate(seeded, markets):
    dashboard = load_dashboard(seeded, markets, DAY, now=NOW)
    assert [m.code for m in dashboard.markets] == markets.codes, "every configured market, in config order"
    by_code = {m.code: m for m in dashboard.markets}
    for code in SCENARIO:
        want, shown = expected(code), by_code[code]
        assert shown.funnel == want["funnel"], code
        assert shown.engagement["bounced"] == want["bounced"] and shown.engagement["complained"] == want["complained"]
        assert sum(shown.revenue.values(), Decimal("0")) == want["revenue"] and shown.recovered_orders == want["orders"]
        assert shown.gate.status == want["gate"], (code, shown.gate.reasons)
    assert dashboard.dry_runs == 1, "the dry run is counted apart, not in the funnel"
    # The retried cart_recovery run counts once, with its last try's numbers (failed 15 in try 1 is gone).
    de = by_code["DE"]
    assert de.outcomes.get("failed", 0) == 0 and de.outcomes["sent"] == 40 + 12
    assert [(f.flow, f.runs, f.audience) for f in de.flows] == [("cart_recovery", 1, 56), ("welcome_series", 1, 18)]
    assert by_code["FR"].flows[0].gate_status == "halted"
    # Rates against thresholds: FR over halt, GB's complaints over warn, US too small to judge.
    assert {r.name: r.level for r in by_code["FR"].rates}["bounce rate"] == "halt"
    assert {r.name: r.level for r in by_code["GB"].rates}["spam complaint rate"] == "warn"
    assert {r.level for r in by_code["US"].rates} == {"none"} and not by_code["US"].rates[0].judged
    assert dashboard.totals["eligible"] == sum(expected(c)["funnel"]["eligible"] for c in SCENARIO)
    # The trend has one point per day; days without stats are gaps, not zeros.
    us_trend = by_code["US"].trend
    assert len(us_trend) == 14 and us_trend[-1].bounce_rate == pytest.approx(5 / 37)
    assert all(t.bounce_rate is None for t in us_trend[:-1])


def test_other_days_show_their_own_runs_and_orders(seeded, markets):
    before = {m.code: m for m in load_dashboard(seeded, markets, DAY - timedelta(days=1), now=NOW).markets}
    assert before["DE"].funnel["sent"] == 77 and before["DE"].funnel["eligible"] == 77
    assert before["DE"].revenue == {"EUR": Decimal("999.00")}
    assert before["FR"].funnel["eligible"] == 0
    after = load_dashboard(seeded, markets, DAY + timedelta(days=1), now=NOW)
    assert after.totals["eligible"] == 0 and after.dry_runs == 0


def test_a_retry_recorded_the_next_day_moves_its_run_to_that_day(engine, markets):
    ctx1 = ClaimContext("scheduled__late", "DE", 1, "cart_recovery")
    ctx2 = ClaimContext("scheduled__late", "DE", 2, "cart_recovery")
    late = datetime(2026, 11, 20, 23, 50, tzinfo=UTC)
    ledger.record_send_run(engine, ctx1, {"unknown": 10}, batch_id=None, gate_status="open", dry_run=False, now=late)
    ledger.record_send_run(
        engine, ctx2, {"sent": 10}, batch_id=None, gate_status="open", dry_run=False, now=late + timedelta(minutes=20)
    )
    first = {m.code: m for m in load_dashboard(engine, markets, DAY, now=NOW).markets}
    second = {m.code: m for m in load_dashboard(engine, markets, DAY + timedelta(days=1), now=NOW).markets}
    assert first["DE"].funnel["eligible"] == 0, "the run is counted once, on the day of its last try"
    assert second["DE"].funnel["sent"] == 10 and second["DE"].funnel["not_sendable"] == 0


def test_the_html_has_every_number_as_data_and_no_script(seeded, markets):
    html = render_page(load_dashboard(seeded, markets, DAY, now=NOW), base="/remarketing")
    assert "<script" not in html.lower(), "Airflow frames plugin views without allow-scripts"
    want = expected("DE")["funnel"]
    for stage, value in want.items():
        assert f'<tr data-stage="{stage}" data-value="{value}"' in html
    assert 'href="/remarketing/?day=2026-11-19"' in html and 'href="/remarketing/?day=2026-11-21"' in html
    assert "€123.45" in html and "£15.00" in html
    assert not re.search(r"[\w.+-]+@[\w-]+\.\w", html), "no address on the page"


def _plugin_module():
    spec = importlib.util.spec_from_file_location(
        "remarketing_dashboard_plugin", REPO / "plugins/remarketing_dashboard.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_app_serves_html_and_json_to_allowed_users_only(seeded, markets):
    plugin = _plugin_module()
    views = plugin.RemarketingDashboardPlugin.external_views
    assert views[0]["url_route"] == "remarketing" and views[0]["href"] == plugin.URL_PREFIX + "/"
    assert plugin.RemarketingDashboardPlugin.fastapi_apps[0]["url_prefix"] == plugin.URL_PREFIX

    allowed = {"yes": True}

    async def authorize(request: Request):
        if not allowed["yes"]:
            raise HTTPException(status_code=401, detail="Not authenticated")

    app = plugin.create_app(
        engine_factory=lambda: seeded, markets_loader=lambda: markets, authorize=authorize, clock=lambda: NOW
    )
    with TestClient(app) as client:
        page = client.get("/", params={"day": DAY.isoformat()})
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert 'data-market="FR" data-gate="halted"' in page.text
        today = client.get("/api/day")  # no day: today by the app's clock
        assert today.status_code == 200 and today.json()["day"] == NOW.date().isoformat()
        numbers = client.get("/api/day", params={"day": DAY.isoformat()}).json()
        assert {m["code"]: m["funnel"] for m in numbers["markets"]}["GB"] == expected("GB")["funnel"]
        assert client.get("/api/day", params={"day": "yesterday"}).status_code == 422
        allowed["yes"] = False
        refused = client.get("/", headers={"Accept": "text/html"})
        assert refused.status_code == 401 and "Log in to Airflow" in refused.text
        assert client.get("/api/day").json() == {"detail": "Not authenticated"}
        assert client.get("/icon.svg").headers["content-type"].startswith("image/svg+xml")
