"""Defaults every DAG shares. Imported at DAG parse time: standard library only."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from remarketing.platform import settings

OWNER = "remarketing"
START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)  # noqa: UP017 - keep parse-time imports minimal
INCLUDE = settings.INCLUDE
STORE_TABLES = ("customers", "products", "carts", "cart_items", "orders", "order_items")


def retry_delay() -> timedelta:
    """Real deployments wait a minute between tries; tests set REMARKETING_RETRY_DELAY_SECONDS=0."""
    return settings.retry_delay()


def default_args(retries: int = 2) -> dict:
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": retry_delay(),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
    }


def _yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}  # the tasks load it validated and report the error where it shows


def market_codes() -> list[str]:
    """Configured market codes, for Param enums (read without validation: parse time must be cheap)."""
    path = settings.markets_file()
    return list((_yaml(path).get("markets") or {}).keys())


def recovery_schedule() -> str:
    """The cart_recovery schedule from include/flows.yaml (default hourly)."""
    path = settings.flows_file()
    return str((_yaml(path).get("cart_recovery") or {}).get("schedule") or "@hourly")
