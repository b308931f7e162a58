"""Defaults every DAG shares. Imported at DAG parse time: standard library only."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

OWNER = "remarketing"
START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)  # noqa: UP017 - keep parse-time imports minimal
STORE_TABLES = ("customers", "products", "carts", "cart_items", "orders", "order_items")


def retry_delay() -> timedelta:
    """Real deployments wait a minute between tries; tests set REMARKETING_RETRY_DELAY_SECONDS=0."""
    return timedelta(seconds=float(os.environ.get("REMARKETING_RETRY_DELAY_SECONDS", "60")))


def default_args(retries: int = 2) -> dict:
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": retry_delay(),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
    }
