"""Airflow glue for delivery: which transport, which secrets, suppression and stats sync.

The transport is chosen by ``REMARKETING_TRANSPORT``: ``outbox`` (the embedded default: every
mail becomes an .eml file under ``$REMARKETING_DATA_BASE/outbox/`` with an index.html) or
``sendgrid`` (the ``sendgrid_default`` connection: API key in the password, optional host).
Links in mails (cart restore, unsubscribe) are signed with ``REMARKETING_LINK_SECRET`` or the
Airflow Variable ``remarketing_link_secret``; the shop verifies them with the same secret.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

TRANSPORT_ENV = "REMARKETING_TRANSPORT"
LINK_SECRET_ENV = "REMARKETING_LINK_SECRET"
LINK_SECRET_VARIABLE = "remarketing_link_secret"
SENDGRID_CONN_ID = "sendgrid_default"


class DeliverySetupError(RuntimeError):
    """Delivery is not configured; retrying will not help."""


def transport_name() -> str:
    name = os.environ.get(TRANSPORT_ENV, "outbox").strip().lower()
    if name not in ("outbox", "sendgrid"):
        raise DeliverySetupError(f"{TRANSPORT_ENV}={name!r}: expected 'outbox' or 'sendgrid'")
    return name


def link_secret() -> bytes:
    secret = os.environ.get(LINK_SECRET_ENV)
    if not secret:
        from airflow.sdk import Variable

        secret = Variable.get(LINK_SECRET_VARIABLE, default=None)
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
    from remarketing.platform.runtime import data_base_path

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
    from remarketing.platform.runtime import prepare_state, remarketing_engine
    from remarketing.store.extract import utcnow

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
