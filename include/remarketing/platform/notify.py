"""Failure and halt notifications through Airflow's own notifiers (Slack webhook, SMTP). Off by default.

A data engineer should hear about a failed run or a market the deliverability gate stopped
without watching the UI. Each channel turns on when it is configured in Airflow, nothing else:

- Slack: a Slack Incoming Webhook connection ``remarketing_slack`` (conn type ``slackwebhook``,
  webhook token in the password) -> ``SlackWebhookNotifier``.
- Email: an SMTP connection ``remarketing_smtp`` plus the Variable ``remarketing_alert_emails``
  (comma-separated recipients; the sender is the Variable ``remarketing_alert_from`` or the
  connection's ``from_email`` extra) -> ``SmtpNotifier``.

Messages name DAGs, runs, tasks, markets and gate reasons only, never a customer. A channel
that fails to deliver is logged and the others still go; a notification never fails a task.
Imported at DAG parse time (the DAGs' ``on_failure_callback``): standard library only at the top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from remarketing.platform.settings import ALERT_EMAILS_VARIABLE, ALERT_FROM_VARIABLE, variable

log = logging.getLogger(__name__)

SLACK_CONN_ID = "remarketing_slack"
SMTP_CONN_ID = "remarketing_smtp"

SUBJECT_PREFIX = "[remarketing]"


@dataclass(frozen=True)
class Alert:
    """What to say: a one-line subject and a short plain-text body."""

    subject: str
    body: str

    def text(self) -> str:
        return f"{self.subject}\n{self.body}"


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - AirflowNotFoundException, or a secrets backend without it
        return False
    return True


def alert_recipients() -> list[str]:
    raw = variable(ALERT_EMAILS_VARIABLE) or ""
    return [address.strip() for address in raw.replace(";", ",").split(",") if address.strip()]


def configured_notifiers(alert: Alert) -> list[tuple[str, Any]]:
    """(channel name, Airflow notifier) for each configured channel; empty when none is (the default)."""
    notifiers: list[tuple[str, Any]] = []
    if _connection_exists(SLACK_CONN_ID):
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        notifiers.append(("slack", SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN_ID, text=alert.text())))
    if _connection_exists(SMTP_CONN_ID):
        recipients = alert_recipients()
        if not recipients:
            log.warning(
                "SMTP connection %r is set but the Variable %r holds no recipient: no email alert sent",
                SMTP_CONN_ID,
                ALERT_EMAILS_VARIABLE,
            )
        else:
            from html import escape

            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            notifiers.append(
                (
                    "smtp",
                    SmtpNotifier(
                        to=recipients,
                        from_email=variable(ALERT_FROM_VARIABLE),
                        subject=alert.subject,
                        html_content=f"<pre>{escape(alert.body)}</pre>",
                        smtp_conn_id=SMTP_CONN_ID,
                    ),
                )
            )
    return notifiers


def send_alert(alert: Alert, context: dict | None = None) -> dict[str, str]:
    """Send through every configured channel; returns channel -> "sent" or the error's first line."""
    outcome: dict[str, str] = {}
    for name, notifier in configured_notifiers(alert):
        try:
            # notify() directly: the text is final, it must not be rendered as a Jinja template.
            notifier.notify(context or {})
        except Exception as exc:  # noqa: BLE001 - a broken channel must not hide the others or fail the task
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            outcome[name] = f"failed: {type(exc).__name__}: {first}"
            log.error("alert through %s failed: %s", name, outcome[name])
        else:
            outcome[name] = "sent"
    if outcome:
        log.info("alert %r: %s", alert.subject, ", ".join(f"{k} {v}" for k, v in outcome.items()))
    else:
        log.info("alert %r not sent: no notification channel configured", alert.subject)
    return outcome


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def failure_alert(context: dict) -> Alert:
    """A failed DAG run: which DAG, run and task, and the error's first line (no row data)."""
    dag_run = context.get("dag_run")
    dag_id = _attr(context.get("dag"), "dag_id") or _attr(dag_run, "dag_id") or "unknown DAG"
    run_id = context.get("run_id") or _attr(dag_run, "run_id") or "unknown run"
    ti = context.get("ti") or context.get("task_instance")
    lines = [f"DAG {dag_id}, run {run_id} failed."]
    if ti is not None:
        task = _attr(ti, "task_id")
        shown = _attr(ti, "rendered_map_index")
        index = _attr(ti, "map_index", -1)
        where = f" [{shown}]" if shown else (f" [{index}]" if index not in (None, -1) else "")
        lines.append(f"Failed task: {task}{where}.")
    reason = context.get("reason")
    if reason:
        lines.append(f"Reason: {reason}.")
    exception = context.get("exception")
    if exception is not None:
        text = str(exception).strip().splitlines()
        lines.append(f"Error: {type(exception).__name__}: {text[0] if text else ''}".rstrip(": "))
    lines.append("See the run's task logs in the Airflow UI.")
    return Alert(subject=f"{SUBJECT_PREFIX} {dag_id} failed", body="\n".join(lines))


def halt_alert(flow: str, market: str, gate: dict, run_id: str) -> Alert:
    """A market stopped by the deliverability gate: the reasons the gate gave."""
    reasons = gate.get("reasons") or ["no reason recorded"]
    body = "\n".join(
        [
            f"{flow}: market {market} is halted by the deliverability gate (run {run_id}); nothing was sent there.",
            *[f"- {reason}" for reason in reasons],
            "It reopens by itself when the rates fall back under the thresholds in include/markets.yaml.",
        ]
    )
    return Alert(subject=f"{SUBJECT_PREFIX} {flow}: market {market} halted", body=body)


def notify_if_halted(flow: str, market: str, gate: dict, run_id: str) -> dict[str, str] | None:
    """Call after a market's send step: alerts when its gate is halted; None when it is not."""
    if gate.get("status") != "halted":
        return None
    return send_alert(halt_alert(flow, market, gate, run_id))


def dag_failure_callback(context: dict) -> None:
    """A DAG's ``on_failure_callback``: one alert per failed run, through the configured channels."""
    send_alert(failure_alert(context), context)
