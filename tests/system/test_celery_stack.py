"""The production topology for real: CeleryExecutor on Redis, PostgreSQL metadata, REST API.

scripts/celery_stack.py starts the api-server, scheduler, dag-processor and a Celery worker as
processes; this test triggers cart_recovery and lifecycle_segments through Airflow's REST API
with the official client (apache-airflow-client), waits for both to succeed, checks what the
local SendGrid server accepted against the send ledger, and that the stack left nothing behind.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import requests
import sqlalchemy as sa

from demo_shop.generator import generate_store, write_store
from remarketing.markets import load_markets

pytestmark = [pytest.mark.airflow_run, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
SECRET = "test-link-secret-0123456789"
RUN_TIMEOUT = 240  # seconds for both runs together
HALTED = "FR"  # its SendGrid stats show 9% bounces: the gate halts it and Slack hears about it


def _client(stack):
    import airflow_client.client as client

    return client.ApiClient(client.Configuration(host=stack.url, access_token=stack.token()))


def _wait_for_dag(api, dag_id: str, timeout: float = 90):
    """The dag-processor must have parsed and serialized the DAG before it can be triggered."""
    from airflow_client.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return api.get_dag(dag_id)
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(1)


class _Slack(ThreadingHTTPServer):
    """A Slack incoming webhook on loopback: records what the alert notifier posts."""

    def __init__(self):
        self.texts: list[str] = []
        super().__init__(("127.0.0.1", 0), _SlackHandler)


class _SlackHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        self.server.texts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def _log_text(tis, dag_id: str, run_id: str, task) -> str:
    """The task's log as the Airflow UI shows it, through the REST API."""
    response = tis.get_log(dag_id, run_id, task.task_id, task.try_number, map_index=task.map_index, full_content=True)
    lines = response.content.actual_instance or []  # structured lines, or plain strings from older logs
    return "\n".join(str(getattr(line, "event", line)) for line in lines)


def _wait_for_runs(runs_api, runs: dict[str, str], stack, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        stack.check_alive()
        states = {dag_id: str(runs_api.get_dag_run(dag_id, run_id).state.value) for dag_id, run_id in runs.items()}
        if all(state in ("success", "failed") for state in states.values()):
            return states
        time.sleep(2)
    return states


def test_cart_recovery_and_lifecycle_segments_run_on_celery_through_the_rest_api(tmp_path):
    from airflow_client.client import DAGApi, DAGPatchBody, DagRunApi, TaskInstanceApi, TriggerDAGRunPostBody
    from celery_stack import celery_stack, database_exists, processes_of
    from databases import fresh_postgres_database
    from fake_sendgrid import FakeSendGrid
    from market_fixtures import write_open_markets

    from remarketing.platform.connections import airflow_conn_json

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    frames = generate_store(customers=300, seed=5, as_of=now)
    logs = tmp_path / "stack-logs"
    slack = _Slack()
    threading.Thread(target=slack.serve_forever, daemon=True).start()
    with (
        fresh_postgres_database("rmk_store") as store_url,
        fresh_postgres_database("rmk_state") as state_url,
        FakeSendGrid() as sendgrid,
    ):
        write_store(frames, store_url)
        sendgrid.set_stats(now.date(), {"delivered": 1000, "bounces": 100}, category=f"market:{HALTED}")
        connections = {"store_db": airflow_conn_json(store_url), "remarketing_db": airflow_conn_json(state_url)}
        env = {
            "AIRFLOW_CONN_SENDGRID_DEFAULT": json.dumps(
                {"conn_type": "sendgrid", "password": sendgrid.api_key, "extra": {"host": sendgrid.url}}
            ),
            "REMARKETING_TRANSPORT": "sendgrid",
            "REMARKETING_LINK_SECRET": SECRET,
            "REMARKETING_DATA_BASE": f"file://{tmp_path / 'data'}",
            "REMARKETING_RETRY_DELAY_SECONDS": "1",
            # Every hour open: the runs use the wall clock, and some market must be sending whenever they do.
            "REMARKETING_MARKETS_FILE": write_open_markets(tmp_path / "markets.yaml"),
            "AIRFLOW_CONN_REMARKETING_SLACK": json.dumps(
                {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{slack.server_port}", "password": "T0/B0/x"}
            ),
        }
        started = time.perf_counter()
        with celery_stack(connections=connections, env=env, logs=logs) as stack:
            print(f"stack up in {stack.startup_seconds:.1f}s at {stack.url}")
            with _client(stack) as api_client:
                dags, runs_api, tis = DAGApi(api_client), DagRunApi(api_client), TaskInstanceApi(api_client)
                runs = {}
                for dag_id in ("cart_recovery", "lifecycle_segments"):
                    _wait_for_dag(dags, dag_id)
                    dags.patch_dag(dag_id, DAGPatchBody(is_paused=False))
                    run = runs_api.trigger_dag_run(dag_id, TriggerDAGRunPostBody(logical_date=None, conf={}))
                    runs[dag_id] = run.dag_run_id
                states = _wait_for_runs(runs_api, runs, stack, RUN_TIMEOUT)
                print(f"runs finished in {time.perf_counter() - started - stack.startup_seconds:.1f}s: {states}")
                instances = {
                    dag_id: tis.get_task_instances(dag_id, run_id, limit=100).task_instances
                    for dag_id, run_id in runs.items()
                }
                failed = {d: [(t.task_id, t.rendered_map_index, t.state) for t in ti] for d, ti in instances.items()}
                assert states == {"cart_recovery": "success", "lifecycle_segments": "success"}, (
                    f"{states}; task states {failed}; logs in {logs}"
                )
                sends = [t for t in instances["cart_recovery"] if t.task_id == "send_market"]
                assert {t.rendered_map_index for t in sends} == set(load_markets().codes), "map index names the market"
                assert all(t.executor == "CeleryExecutor" or t.queue == stack.queue for t in sends)
                assert {t.queue for t in instances["cart_recovery"]} == {stack.queue}, "every task went to our queue"
                assert all(t.pool == "remarketing_sends" for t in sends)
                # Each market's log ends with its outcome table, readable in the UI; the halted one says why.
                by_market = {t.rendered_map_index: t for t in sends}
                open_market = next(code for code in by_market if code != HALTED)
                text = _log_text(tis, "cart_recovery", runs["cart_recovery"], by_market[open_market])
                assert f"cart_recovery / {open_market}: gate open, audience" in text, text[-2000:]
                assert "recovered revenue" in text
                text = _log_text(tis, "cart_recovery", runs["cart_recovery"], by_market[HALTED])
                assert f"cart_recovery / {HALTED}: gate halted" in text and "bounce rate 9.09%" in text, text[-2000:]
                # The Remarketing page's numbers, as this api-server serves them (compared with the ledger below).
                days = sorted({now.date(), datetime.now(UTC).date()})  # both, should the runs cross midnight
                page_days = [
                    requests.get(
                        f"{stack.url}/remarketing/api/day",
                        params={"day": day.isoformat()},
                        headers={"Authorization": f"Bearer {stack.token()}"},
                        timeout=60,
                    )
                    for day in days
                ]
                assert [r.status_code for r in page_days] == [200] * len(days), page_days[0].text[:500]
            home, database = stack.home, stack.database

        # Everything the stack started is gone, its metadata database too.
        assert stack.stopped_pids, "the stack reported no process stopped"
        assert not processes_of(home), "processes of the stack are still running"
        assert not database_exists(database)
        print(f"whole test (stack, runs, stop): {time.perf_counter() - started:.1f}s")

        # SendGrid accepted exactly the ledger's mails, each once, all marketing mails with one-click unsubscribe.
        engine = sa.create_engine(state_url)
        with engine.connect() as conn:
            ledger = pd.read_sql(sa.text("SELECT * FROM send_ledger"), conn)
            profiles = conn.execute(
                sa.text("SELECT COUNT(*), COUNT(DISTINCT customer_id) FROM customer_profiles")
            ).one()
        engine.dispose()
        accepted = sendgrid.accepted_recipients()
        counts = sendgrid.ledger_key_counts()
        assert len(ledger) > 0 and set(ledger["status"]) == {"accepted"}
        assert set(counts) == set(ledger["ledger_key"]) and set(counts.values()) == {1}, "each mail accepted once"
        assert set(ledger["flow"]) == {"cart_recovery"} and set(ledger["step"]) == {"1"}
        assert {r["custom_args"]["market"] for r in accepted} <= set(load_markets().codes)
        assert all(r["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for r in accepted)
        assert HALTED not in set(ledger["market"]), "a halted market sends nothing"
        # The halted market raised the alert from the Celery worker, through the Slack notifier.
        halts = [t for t in slack.texts if f"market {HALTED} halted" in t]
        assert len(halts) == 1 and "bounce rate 9.09%" in halts[0], slack.texts
        assert len(slack.texts) == 1, f"no other alert (nothing failed): {slack.texts}"
        slack.shutdown()
        slack.server_close()
        # The page showed what the ledger holds: per market, mails sent or scheduled; the halted market and why.
        shown: dict[str, int] = {}
        for response in page_days:
            for market in response.json()["markets"]:
                funnel = market["funnel"]
                shown[market["code"]] = shown.get(market["code"], 0) + funnel["sent"] + funnel["scheduled"]
        assert {code: n for code, n in shown.items() if n} == ledger.groupby("market").size().to_dict()
        gates = {m["code"]: m["gate"] for m in page_days[-1].json()["markets"]}
        assert gates[HALTED]["status"] == "halted" and "bounce rate 9.09%" in gates[HALTED]["reasons"][0]
        # lifecycle_segments profiled every customer, once.
        assert profiles == (len(frames["customers"]), len(frames["customers"]))
