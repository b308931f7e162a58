"""Airflow glue for delivery: which transport, which secrets, suppression and stats sync.

The transport is chosen by ``REMARKETING_TRANSPORT``: ``outbox`` (the embedded default: every
mail becomes an .eml file under ``$REMARKETING_DATA_BASE/outbox/`` with an index.html) or
``sendgrid`` (the ``sendgrid_default`` connection: API key in the password, optional host).
Links in mails (cart restore, unsubscribe) are signed with ``REMARKETING_LINK_SECRET`` or the
Airflow Variable ``remarketing_link_secret``; the shop verifies them with the same secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from airflow.sdk import task

from remarketing.platform import settings
from remarketing.platform.settings import LINK_SECRET_ENV, LINK_SECRET_VARIABLE, TRANSPORT_ENV

SENDGRID_CONN_ID = "sendgrid_default"
SAMPLES_FOLDER = "outbox-dry-run"


class DeliverySetupError(RuntimeError):
    """Delivery is not configured; retrying will not help."""


def transport_name() -> str:
    name = settings.transport()
    if name not in ("outbox", "sendgrid"):
        raise DeliverySetupError(f"{TRANSPORT_ENV}={name!r}: expected 'outbox' or 'sendgrid'")
    return name


def link_secret() -> bytes:
    secret = settings.link_secret()
    if not secret or len(secret.encode()) < 16:
        raise DeliverySetupError(
            f"no link secret: set {LINK_SECRET_ENV} or the Airflow Variable {LINK_SECRET_VARIABLE!r} "
            "(at least 16 characters; the shop verifies cart and unsubscribe links with it)"
        )
    return secret.encode()


def make_transport(rehearsal_now=None):
    """The configured transport. A rehearsal (a run with ``as_of``) runs on the outbox only, on the
    rehearsal's clock, so mails planned days ahead validate as SendGrid would then."""
    if rehearsal_now is not None and transport_name() != "outbox":
        raise DeliverySetupError("a rehearsal (as_of) runs on the outbox transport only")
    if transport_name() == "sendgrid":
        from remarketing.delivery.sendgrid_transport import SendGridTransport

        return SendGridTransport.from_connection(SENDGRID_CONN_ID)
    from remarketing.delivery.outbox import OutboxTransport
    from remarketing.platform.storage import data_base_path

    folder = data_base_path() / "outbox"
    folder.mkdir(parents=True, exist_ok=True)
    if rehearsal_now is None:
        return OutboxTransport(folder)
    return OutboxTransport(folder, clock=lambda: rehearsal_now)


def make_api():
    """SendGrid's read API (suppressions, stats), or None with the outbox transport."""
    if transport_name() != "sendgrid":
        return None
    from remarketing.delivery.sendgrid_api import SendGridApi

    return SendGridApi.from_connection(SENDGRID_CONN_ID)


def sync_suppressions_and_health(markets: list[str]) -> dict[str, Any]:
    """Pull suppressions since the last sync and the markets' recent stats; log what changed."""
    from remarketing.delivery.gate import refresh_market_health
    from remarketing.delivery.suppressions import sync_suppressions
    from remarketing.markets import load_markets
    from remarketing.platform.clock import utcnow
    from remarketing.platform.connections import prepare_state, remarketing_engine

    api = make_api()
    if api is None:
        print("outbox transport: no SendGrid account to sync suppressions or stats from")
        return {"transport": "outbox", "suppressions": {}, "health_days": 0}
    prepare_state()
    config = load_markets()
    selected = [config[code] for code in markets]
    engine = remarketing_engine()
    now = utcnow()
    try:
        synced = sync_suppressions(engine, api, now=now)
        window = max(m.deliverability.window_days for m in selected)
        days = refresh_market_health(engine, api, selected, now.date() - timedelta(days=window), now.date())
    finally:
        engine.dispose()
    print("suppressions synced: " + (", ".join(f"{k} {v}" for k, v in synced.items()) or "none new"))
    return {"transport": "sendgrid", "suppressions": synced, "health_days": days}


@task
def sync_suppressions(params: dict | None = None) -> dict:
    """Pull SendGrid's suppressions (paged, from the high-water mark) and per-market stats before anyone is mailed."""
    return sync_suppressions_and_health(markets=params["markets"])


@contextmanager
def setup_errors_fail_the_task():
    """Delivery that is not configured (no link secret, a rehearsal on SendGrid) fails at once: retrying won't help."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except DeliverySetupError as exc:
        raise AirflowFailException(str(exc)) from exc


def resolve_now(as_of: str | None):
    """The run's "now": the wall clock, or a rehearsal instant (outbox transport only)."""
    from datetime import UTC, datetime

    from remarketing.platform.clock import utcnow

    now = utcnow()
    if not as_of:
        return now
    chosen = datetime.fromisoformat(as_of)
    chosen = chosen.replace(tzinfo=chosen.tzinfo or UTC).astimezone(UTC)
    if transport_name() != "outbox" and abs(chosen - now) > timedelta(minutes=5):
        raise DeliverySetupError("as_of may differ from the clock only with the outbox transport (a rehearsal)")
    return chosen


def job_now(job: Mapping[str, Any]):
    """A send task's "now": the rehearsal instant its plan recorded, or the clock."""
    return resolve_now(job["now"]) if job.get("rehearsal") else resolve_now(None)


def write_samples(samples: Mapping[tuple, Any], *, run_id: str, market: str, label: str) -> str | None:
    """Dry run: one rendered mail per (content, locale) into ``$REMARKETING_DATA_BASE/outbox-dry-run/``."""
    from dataclasses import replace

    from remarketing.delivery.outbox import OutboxTransport
    from remarketing.platform.storage import run_folder

    if not samples:
        return None
    folder = run_folder(SAMPLES_FOLDER, label, run_id=run_id)
    outbox = OutboxTransport(folder)
    for message in samples.values():
        outbox.send_one(replace(message, recipients=message.recipients[:1], send_at=None))
    outbox.close()  # writes index.html
    print(f"  {market}: {len(samples)} sample mail(s) rendered into {folder}")
    return str(folder)


class MarketSender:
    """One market's send task, opened by ``market_sender``: what every flow's sends share.

    ``send`` runs the shared send step for one audience, logs its outcome table and, unless this
    is a dry run, alerts when the deliverability gate halted the market.
    """

    def __init__(self, *, flow: str, market, job: Mapping[str, Any], run_id: str, try_number: int, dry_run: bool):
        from remarketing.platform.connections import remarketing_engine

        self.flow, self.market, self.run_id = flow, market, run_id
        self.try_number, self.dry_run = try_number, dry_run
        self.secret = link_secret()
        self.now = job_now(job)
        self.engine = remarketing_engine()
        self.transport = make_transport(self.now if job.get("rehearsal") else None)
        self.api = make_api()

    def send(self, audience, render, *, run_id: str | None = None, horizon=None, header: str | None = None):
        from remarketing.delivery.send_step import send_market
        from remarketing.platform.notify import notify_if_halted
        from remarketing.platform.storage import data_base_path

        run_id = run_id or self.run_id
        options = {} if horizon is None else {"horizon": horizon}
        summary = send_market(
            flow=self.flow,
            market=self.market,
            audience=audience,
            render=render,
            transport=self.transport,
            engine=self.engine,
            run_id=run_id,
            try_number=self.try_number,
            now=self.now,
            dry_run=self.dry_run,
            api=self.api,
            outcomes_dir=data_base_path(),
            **options,
        )
        if header:
            print(header)
        print(summary.log_table())
        if not self.dry_run:
            notify_if_halted(self.flow, self.market.code, summary.gate, run_id)
        return summary

    def samples(self, render, label: str) -> str | None:
        """Dry run: the rendered samples into the dry-run outbox (else None)."""
        if not self.dry_run:
            return None
        return write_samples(render.samples, run_id=self.run_id, market=self.market.code, label=label)

    def close(self) -> None:
        self.transport.close()
        self.engine.dispose()


@contextmanager
def market_sender(flow: str, job: Mapping[str, Any], *, run_id: str, try_number: int, dry_run: bool):
    """The market of ``job``, its clock, link secret, remarketing DB, transport and SendGrid API; closed after."""
    from remarketing.markets import load_markets

    sender = MarketSender(
        flow=flow,
        market=load_markets()[job["market"]],
        job=job,
        run_id=run_id,
        try_number=try_number,
        dry_run=dry_run,
    )
    try:
        yield sender
    finally:
        sender.close()


def outcome_table(title: str, leading: list[str], results: list[dict]) -> tuple[list[str], dict[str, int]]:
    """A flow's per-market outcome table for the task log: one line per market, then the totals.

    ``results``: per market, ``market``, ``gate`` and ``values`` (the ``leading`` columns and the
    send step's outcome counts). Returns the lines and the totals per column.
    """
    from remarketing.delivery.send_step import OUTCOMES

    shown = [*leading, *OUTCOMES]
    width = max(len(o) for o in shown)
    lines = [title, "  " + "market".ljust(8) + "".join(o.rjust(width + 1) for o in shown)]
    totals: dict[str, int] = {}
    for result in sorted(results, key=lambda r: r["market"]):
        values = result["values"]
        for key, value in values.items():
            totals[key] = totals.get(key, 0) + int(value)
        gate = "" if result["gate"]["status"] == "open" else f"  gate {result['gate']['status']}"
        lines.append(
            "  " + result["market"].ljust(8) + "".join(str(values.get(o, 0)).rjust(width + 1) for o in shown) + gate
        )
    lines.append("  " + "all".ljust(8) + "".join(str(totals.get(o, 0)).rjust(width + 1) for o in shown))
    return lines, totals
