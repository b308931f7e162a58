"""The Remarketing page inside Airflow's UI, in real headless Chromium.

A real api-server (scripts/celery_stack.py with only that service: PostgreSQL metadata, the
project's plugins folder, the simple auth manager) serves Airflow's UI and the page; the
remarketing DB is a PostgreSQL database holding a seeded day (tests/support/dashboard_seed.py, written
through the project's own writers). Playwright drives Debian's Chromium (/usr/bin/chromium, or
REMARKETING_CHROMIUM): it logs in through Airflow's login form, opens *Remarketing* from the nav
bar, and reads every market's numbers in the framed page against what was written. Screenshots
land in test-artifacts/ (REMARKETING_TEST_ARTIFACTS to change): the page inside the UI, and the
page in full.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.airflow_run, pytest.mark.postgres, pytest.mark.browser]
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
ARTIFACTS = Path(os.environ.get("REMARKETING_TEST_ARTIFACTS") or REPO / "test-artifacts")
IN_CI = os.environ.get("CI", "").lower() == "true"


def chromium_path() -> str:
    path = os.environ.get("REMARKETING_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = "Chromium is not installed (Debian: apt-get install chromium; `make test` installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def seeded():
    """A remarketing DB on PostgreSQL with today's seeded day (UTC)."""
    from dashboard_seed import seed_day
    from databases import fresh_postgres_database

    from remarketing.markets import load_markets
    from remarketing.platform import state

    day = datetime.now(UTC).date()
    with fresh_postgres_database("rmk_page") as url:
        engine = state.create_state_engine(url)
        state.upgrade(engine)
        seed_day(engine, load_markets(), day)
        engine.dispose()
        yield url, day


@pytest.fixture(scope="module")
def api_server(seeded, tmp_path_factory):
    from celery_stack import celery_stack

    from remarketing.platform.connections import airflow_conn_json

    url, _day = seeded
    logs = tmp_path_factory.mktemp("page-stack-logs")
    env = {"AIRFLOW_CONN_REMARKETING_DB": airflow_conn_json(url)}
    with celery_stack(env=env, services=("api-server",), logs=logs) as stack:
        yield stack


def _numbers(frame, code: str) -> dict:
    section = frame.locator(f'section[data-market="{code}"]')
    funnel = {
        row.get_attribute("data-stage"): int(row.get_attribute("data-value"))
        for row in section.locator("table.funnel tr").all()
    }
    revenue = section.locator('[data-testid="revenue"]')
    return {
        "funnel": funnel,
        "gate": section.get_attribute("data-gate"),
        "badge": section.locator('[data-testid="gate"]').inner_text(),
        "reasons": section.locator('[data-testid="gate-reasons"]').all_inner_texts(),
        "revenue": sum(Decimal(b.get_attribute("data-value")) for b in revenue.locator("b").all()),
        "orders": int(revenue.get_attribute("data-orders")),
        "rates": {
            g.get_attribute("data-rate"): g.get_attribute("data-level") for g in section.locator("[data-rate]").all()
        },
    }


def test_the_page_refuses_anyone_not_logged_in_to_airflow(api_server):
    page = requests.get(f"{api_server.url}/remarketing/", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 401 and "Log in to Airflow" in page.text
    assert requests.get(f"{api_server.url}/remarketing/api/day", timeout=30).status_code == 401
    forged = requests.get(f"{api_server.url}/remarketing/api/day", cookies={"_token": "forged"}, timeout=30)
    assert forged.status_code in (401, 403)
    # The icon is public (the nav bar loads it); it carries no data.
    assert requests.get(f"{api_server.url}/remarketing/icon.svg", timeout=30).status_code == 200


def test_the_json_numbers_are_the_seeded_ones(api_server, seeded):
    from dashboard_seed import SCENARIO, expected

    _url, day = seeded
    response = requests.get(
        f"{api_server.url}/remarketing/api/day",
        params={"day": day.isoformat()},
        headers={"Authorization": f"Bearer {api_server.token()}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["day"] == day.isoformat() and data["dry_runs"] == 1
    by_code = {m["code"]: m for m in data["markets"]}
    for code in SCENARIO:
        want = expected(code)
        assert by_code[code]["funnel"] == want["funnel"], code
        assert by_code[code]["gate"]["status"] == want["gate"], code
        assert sum(Decimal(v) for v in by_code[code]["revenue"].values()) == want["revenue"], code
    assert not re.search(r"[\w.+-]+@[\w-]+\.\w", response.text), "no address leaves the page's API"


def test_the_page_inside_the_airflow_ui_shows_the_numbers_in_the_db(api_server, seeded):
    from dashboard_seed import SCENARIO, expected
    from playwright.sync_api import sync_playwright

    from remarketing.markets import load_markets

    _url, day = seeded
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1100})
            page = context.new_page()
            # Airflow's own login form, as a user would.
            page.goto(f"{api_server.url}/")
            page.wait_for_url("**/auth/login**")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", api_server.admin_password)
            page.keyboard.press("Enter")
            page.get_by_text("Welcome").wait_for(timeout=60_000)

            # The nav bar has the Remarketing entry; it opens the page framed in the UI.
            page.get_by_role("link", name="Remarketing").click()
            page.wait_for_url("**/plugin/remarketing**")
            frame_element = page.locator('iframe[title="Remarketing"]')
            frame_element.wait_for()
            frame = page.frame_locator('iframe[title="Remarketing"]')
            frame.locator('[data-testid="day"]').wait_for(timeout=60_000)
            if frame.locator('[data-testid="day"]').inner_text() != day.isoformat():  # the test crossed midnight
                frame.locator('input[name="day"]').fill(day.isoformat())
                frame.get_by_role("button", name="Show").click()
                frame.locator(f'[data-testid="day"]:text-is("{day.isoformat()}")').wait_for()

            codes = load_markets().codes
            assert frame.locator("section[data-market]").count() == len(codes), "one card per configured market"
            for code in SCENARIO:
                shown, want = _numbers(frame, code), expected(code)
                assert shown["funnel"] == want["funnel"], code
                assert shown["gate"] == want["gate"], code
                assert shown["revenue"] == want["revenue"] and shown["orders"] == want["orders"], code
            fr, gb, us = (_numbers(frame, c) for c in ("FR", "GB", "US"))
            assert (
                fr["badge"] == "gate halted"
                and "bounce rate" in fr["reasons"][0]
                and "halt threshold" in fr["reasons"][0]
            )
            assert fr["rates"]["bounce rate"] == "halt"
            assert gb["badge"] == "gate warning" and gb["rates"]["spam complaint rate"] == "warn"
            assert us["rates"] == {"bounce rate": "none", "spam complaint rate": "none"}, "too few mails to judge"
            assert "rates not judged" in us["reasons"][0]
            de_flows = frame.locator('section[data-market="DE"] [data-flow]').all_inner_texts()
            assert [line.split()[0] for line in de_flows] == ["cart_recovery", "welcome_series"]
            totals = {
                li.get_attribute("data-stage"): int(li.get_attribute("data-value"))
                for li in frame.locator('[data-testid="totals"] li').all()
            }
            assert totals["eligible"] == sum(expected(c)["funnel"]["eligible"] for c in SCENARIO)
            inside_ui = ARTIFACTS / "remarketing_page.png"
            page.screenshot(path=str(inside_ui))

            # The day before, through the page's own link inside the sandboxed frame: its one run.
            frame.locator('[data-testid="previous-day"]').click()
            previous = (day - timedelta(days=1)).isoformat()
            frame.locator(f'[data-testid="day"]:text-is("{previous}")').wait_for(timeout=30_000)
            assert (
                int(frame.locator('section[data-market="DE"] tr[data-stage="sent"]').get_attribute("data-value")) == 77
            )

            # The page in full (the frame's document on its own, same session).
            full = context.new_page()
            full.goto(f"{api_server.url}/remarketing/?day={day.isoformat()}")
            full.screenshot(path=str(ARTIFACTS / "remarketing_page_full.png"), full_page=True)
        finally:
            browser.close()
    assert inside_ui.stat().st_size > 20_000
    print(f"screenshots: {inside_ui} and {ARTIFACTS / 'remarketing_page_full.png'}")
