"""Failure and halt notifications: off by default, Slack webhook and SMTP through Airflow's notifiers.

Real servers on loopback stand in for Slack (an HTTP server taking webhook posts) and for the
mail relay (a minimal SMTP server), so the providers' own hooks do the talking.
"""

from __future__ import annotations

import json
import socketserver
import threading
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from remarketing.platform import notify

REPO = Path(__file__).resolve().parents[3]
WEBHOOK_TOKEN = "T000/B000/secret"


class _Slack(ThreadingHTTPServer):
    def __init__(self, status: int = 200):
        self.posts: list[tuple[str, dict]] = []
        self.status = status
        super().__init__(("127.0.0.1", 0), _SlackHandler)


class _SlackHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.path, json.loads(body)))
        answer = b"ok" if self.server.status == 200 else b"internal_error"
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for one client: EHLO, MAIL, RCPT, DATA, QUIT."""

    def handle(self):
        def say(line: str):
            self.wfile.write(line.encode() + b"\r\n")

        say("220 localhost test SMTP")
        sender, recipients = None, []
        while True:
            line = self.rfile.readline().decode().rstrip("\r\n")
            verb = line.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                say("250 localhost")
            elif verb == "MAIL":
                sender = line.split(":", 1)[1].strip().strip("<>")
                say("250 OK")
            elif verb == "RCPT":
                recipients.append(line.split(":", 1)[1].strip().strip("<>"))
                say("250 OK")
            elif verb == "DATA":
                say("354 go ahead")
                data = b""
                while (chunk := self.rfile.readline()) != b".\r\n":
                    data += chunk
                self.server.mails.append((sender, recipients, message_from_bytes(data, policy=policy.default)))
                sender, recipients = None, []
                say("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                say("250 OK")
            elif verb == "QUIT" or not line:
                say("221 bye")
                return
            else:
                say("502 not implemented")


class _Smtp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.mails: list = []
        super().__init__(("127.0.0.1", 0), _SmtpHandler)


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def slack(monkeypatch):
    server = _serve(_Slack())
    conn = {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{server.server_port}", "password": WEBHOOK_TOKEN}
    monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_SLACK", json.dumps(conn))
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def smtp(monkeypatch):
    server = _serve(_Smtp())
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": server.server_address[1],
        "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1},
    }
    monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_SMTP", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_REMARKETING_ALERT_EMAILS", "ops@example.com; data-team@example.com")
    monkeypatch.setenv("AIRFLOW_VAR_REMARKETING_ALERT_FROM", "airflow@example.com")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_channels(monkeypatch):
    for name in (
        "AIRFLOW_CONN_REMARKETING_SLACK",
        "AIRFLOW_CONN_REMARKETING_SMTP",
        "AIRFLOW_VAR_REMARKETING_ALERT_EMAILS",
        "AIRFLOW_VAR_REMARKETING_ALERT_FROM",
    ):
        monkeypatch.delenv(name, raising=False)


def logged(caplog, capfd) -> str:
    """What was logged, wherever Airflow's logging setup sent it (stdlib capture or the console)."""
    out, err = capfd.readouterr()
    return caplog.text + out + err


HALTED = {"status": "halted", "reasons": ["bounce rate 7.50% over the last 7 days is at or above the halt threshold"]}


def test_nothing_is_configured_by_default_so_nothing_is_sent(caplog, capfd):
    alert = notify.halt_alert("cart_recovery", "DE", HALTED, "manual__1")
    assert notify.configured_notifiers(alert) == []
    with caplog.at_level("INFO", logger="remarketing.platform.notify"):
        assert notify.send_alert(alert) == {}
    assert "no notification channel configured" in logged(caplog, capfd)


def test_a_halted_market_posts_its_gate_reasons_to_the_slack_webhook(slack):
    assert notify.notify_if_halted("cart_recovery", "DE", {"status": "open", "reasons": []}, "run1") is None
    assert notify.notify_if_halted("cart_recovery", "DE", {"status": "warn", "reasons": ["close"]}, "run1") is None
    assert slack.posts == [], "an open or warning gate is no alert"

    outcome = notify.notify_if_halted("cart_recovery", "DE", HALTED, "scheduled__2026-11-22T10:00:00+00:00")
    assert outcome == {"slack": "sent"}
    [(path, body)] = slack.posts
    assert path == "/" + WEBHOOK_TOKEN
    assert "cart_recovery: market DE halted" in body["text"]
    assert HALTED["reasons"][0] in body["text"]
    assert "scheduled__2026-11-22T10:00:00+00:00" in body["text"]


def test_email_goes_to_every_recipient_of_the_variable_from_the_configured_sender(smtp):
    outcome = notify.send_alert(notify.halt_alert("market_campaign", "JP", HALTED, "manual__x"))
    assert outcome == {"smtp": "sent"}
    [(sender, recipients, message)] = smtp.mails
    assert sender == "airflow@example.com"
    assert sorted(recipients) == ["data-team@example.com", "ops@example.com"]
    assert message["Subject"] == "[remarketing] market_campaign: market JP halted"
    html = message.get_body(("html",)).get_content()
    assert "bounce rate 7.50%" in html


def test_smtp_without_recipients_warns_instead_of_dropping_the_alert_silently(smtp, monkeypatch, caplog, capfd):
    monkeypatch.delenv("AIRFLOW_VAR_REMARKETING_ALERT_EMAILS")
    with caplog.at_level("WARNING", logger="remarketing.platform.notify"):
        assert notify.send_alert(notify.halt_alert("cart_recovery", "FR", HALTED, "r")) == {}
    assert "remarketing_alert_emails" in logged(caplog, capfd)
    assert smtp.mails == []


def test_a_broken_channel_is_reported_and_the_other_still_delivers(smtp, monkeypatch, caplog, capfd):
    broken = _serve(_Slack(status=500))
    conn = {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{broken.server_port}", "password": WEBHOOK_TOKEN}
    monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_SLACK", json.dumps(conn))
    try:
        with caplog.at_level("ERROR", logger="remarketing.platform.notify"):
            outcome = notify.send_alert(notify.halt_alert("cart_recovery", "GB", HALTED, "r"))
    finally:
        broken.shutdown()
        broken.server_close()
    assert outcome["smtp"] == "sent" and len(smtp.mails) == 1
    assert outcome["slack"].startswith("failed:")
    assert "alert through slack failed" in logged(caplog, capfd)


def test_failure_alert_names_dag_run_task_and_market_and_only_the_first_error_line():
    class TI:
        task_id = "send_market"
        map_index = 2
        rendered_map_index = "US"

    class Dag:
        dag_id = "cart_recovery"

    context = {
        "dag": Dag(),
        "run_id": "manual__2026-11-22",
        "ti": TI(),
        "reason": "task_failure",
        "exception": RuntimeError("SendGrid answered 401\nbody: {...}"),
    }
    alert = notify.failure_alert(context)
    assert alert.subject == "[remarketing] cart_recovery failed"
    assert "run manual__2026-11-22 failed" in alert.body
    assert "Failed task: send_market [US]" in alert.body
    assert "RuntimeError: SendGrid answered 401" in alert.body
    assert "body:" not in alert.body, "only the first line of an error goes out"
    bare = notify.failure_alert({"dag_run": {"dag_id": "lifecycle_segments", "run_id": "r9"}})
    assert "DAG lifecycle_segments, run r9 failed." in bare.body


@pytest.mark.parametrize("dag_file", sorted((REPO / "dags").glob("*.py")), ids=lambda p: p.name)
def test_every_dag_alerts_on_failure(dag_file):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.import_errors, bag.import_errors
    for dag_id, dag in bag.dags.items():
        callbacks = dag.on_failure_callback if isinstance(dag.on_failure_callback, list) else [dag.on_failure_callback]
        assert notify.dag_failure_callback in callbacks, f"{dag_id}: on_failure_callback=dag_failure_callback"


@pytest.mark.airflow_run
def test_a_failed_run_calls_the_dag_callback_which_posts_to_slack(airflow_metadata, run_data, slack, monkeypatch):
    """Airflow itself runs the callback with its real context (dag.test runs DAG callbacks too)."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv("AIRFLOW_CONN_STORE_DB", raising=False)  # no store: extraction fails at once
    bag = DagBag(dag_folder=str(REPO / "dags" / "store_snapshot.py"))
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag("store_snapshot").test(run_conf={"tables": ["customers"]})
    assert run.state == "failed"
    texts = [body["text"] for _, body in slack.posts]
    assert len(texts) == 1, f"one alert per failed run: {texts}"
    assert "[remarketing] store_snapshot failed" in texts[0]
    assert f"run {run.run_id} failed" in texts[0]
    assert "Failed task: store.extract_table" in texts[0]
    assert "@" not in texts[0], "no address in an alert"
