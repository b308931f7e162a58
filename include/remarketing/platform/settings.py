"""Every setting the project reads, in one place: environment variables, Airflow Variables, config files.

Standard library only at import time: DAG files read some of these while they are parsed. A
setting is read when asked for, never cached, so a test or an operator changing it is seen by the
next call. Airflow Variables are read only where an environment variable may be replaced by one
(secrets an operator keeps in Airflow).

| setting | what | default |
| --- | --- | --- |
| ``REMARKETING_MARKETS_FILE`` | market configuration | ``include/markets.yaml`` |
| ``REMARKETING_FLOWS_FILE`` | send flows (cart recovery steps) | ``include/flows.yaml`` |
| ``REMARKETING_LIFECYCLE_FILE`` | lifecycle stage thresholds | ``include/lifecycle.yaml`` |
| ``REMARKETING_CAMPAIGNS_FILE`` | the campaign calendar | ``include/campaigns.yaml`` |
| ``REMARKETING_STORE_SQL_DIR`` | the mapping SQL, one file per table | ``include/sql/store/`` |
| ``REMARKETING_FX_RATES`` | foreign-exchange rates, units per 1 EUR by date (CSV) | ``include/fx_rates.csv`` |
| ``REMARKETING_STORE_TIME_ZONE`` | the zone of the store's timestamps that carry no offset | ``UTC`` |
| ``REMARKETING_DATA_BASE`` | run data (an ObjectStoragePath URL) | ``file://$AIRFLOW_HOME/data`` |
| ``REMARKETING_TRANSPORT`` | ``outbox`` or ``sendgrid`` | ``outbox`` |
| ``REMARKETING_LINK_SECRET`` / Variable ``remarketing_link_secret`` | signs cart and unsubscribe links | none |
| ``REMARKETING_SENDGRID_WEBHOOK_KEY`` / Variable ``sendgrid_webhook_public_key`` | verifies the Event Webhook | none |
| ``REMARKETING_RETRY_DELAY_SECONDS`` | first wait between task tries | 60 |
| Variables ``remarketing_alert_emails``, ``remarketing_alert_from`` | alert mail recipients and sender | none |
"""

from __future__ import annotations

import os
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

INCLUDE = Path(__file__).resolve().parents[2]

MARKETS_FILE_ENV = "REMARKETING_MARKETS_FILE"
FLOWS_FILE_ENV = "REMARKETING_FLOWS_FILE"
LIFECYCLE_FILE_ENV = "REMARKETING_LIFECYCLE_FILE"
CAMPAIGNS_FILE_ENV = "REMARKETING_CAMPAIGNS_FILE"
STORE_SQL_DIR_ENV = "REMARKETING_STORE_SQL_DIR"
STORE_TIME_ZONE_ENV = "REMARKETING_STORE_TIME_ZONE"
FX_RATES_FILE_ENV = "REMARKETING_FX_RATES"
DATA_BASE_ENV = "REMARKETING_DATA_BASE"
TRANSPORT_ENV = "REMARKETING_TRANSPORT"
LINK_SECRET_ENV = "REMARKETING_LINK_SECRET"
LINK_SECRET_VARIABLE = "remarketing_link_secret"
WEBHOOK_KEY_ENV = "REMARKETING_SENDGRID_WEBHOOK_KEY"
WEBHOOK_KEY_VARIABLE = "sendgrid_webhook_public_key"
RETRY_DELAY_ENV = "REMARKETING_RETRY_DELAY_SECONDS"
ALERT_EMAILS_VARIABLE = "remarketing_alert_emails"
ALERT_FROM_VARIABLE = "remarketing_alert_from"

DEFAULT_MARKETS_FILE = INCLUDE / "markets.yaml"
DEFAULT_FLOWS_FILE = INCLUDE / "flows.yaml"
DEFAULT_LIFECYCLE_FILE = INCLUDE / "lifecycle.yaml"
DEFAULT_CAMPAIGNS_FILE = INCLUDE / "campaigns.yaml"
DEFAULT_STORE_SQL_DIR = INCLUDE / "sql" / "store"
DEFAULT_FX_RATES_FILE = INCLUDE / "fx_rates.csv"


def _env(name: str) -> str | None:
    """An environment variable; empty counts as unset."""
    value = os.environ.get(name)
    return value if value and value.strip() else None


def markets_file() -> Path:
    return Path(_env(MARKETS_FILE_ENV) or DEFAULT_MARKETS_FILE)


def flows_file() -> Path:
    return Path(_env(FLOWS_FILE_ENV) or DEFAULT_FLOWS_FILE)


def lifecycle_file() -> Path:
    return Path(_env(LIFECYCLE_FILE_ENV) or DEFAULT_LIFECYCLE_FILE)


def campaigns_file() -> Path:
    return Path(_env(CAMPAIGNS_FILE_ENV) or DEFAULT_CAMPAIGNS_FILE)


def store_sql_dir() -> Path:
    return Path(_env(STORE_SQL_DIR_ENV) or DEFAULT_STORE_SQL_DIR)


def fx_rates_file() -> Path:
    return Path(_env(FX_RATES_FILE_ENV) or DEFAULT_FX_RATES_FILE)


def store_time_zone() -> str:
    """The IANA zone a store timestamp without an offset is in (a shop exporting local time); ``UTC`` by default."""
    return (_env(STORE_TIME_ZONE_ENV) or "UTC").strip()


def data_base_url() -> str:
    """Where run data goes: ``REMARKETING_DATA_BASE``, else ``file://$AIRFLOW_HOME/data``."""
    base = _env(DATA_BASE_ENV)
    if base:
        return base
    home = _env("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return "file://" + os.path.join(os.path.abspath(home), "data")


def transport() -> str:
    """The configured transport name, lower-cased (checked by delivery)."""
    return (os.environ.get(TRANSPORT_ENV) or "outbox").strip().lower()


def retry_delay() -> timedelta:
    """Real deployments wait a minute between tries; tests set REMARKETING_RETRY_DELAY_SECONDS=0."""
    return timedelta(seconds=float(_env(RETRY_DELAY_ENV) or "60"))


def variable(key: str) -> str | None:
    """An Airflow Variable, stripped; None when unset, empty, or unreadable (no metadata DB here)."""
    from airflow.sdk import Variable

    try:
        value = Variable.get(key, default=None)
    except Exception:  # noqa: BLE001 - outside a task with no metadata DB: treated as unset
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def link_secret() -> str | None:
    """The link-signing secret: the environment first, then the Airflow Variable."""
    return _env(LINK_SECRET_ENV) or variable(LINK_SECRET_VARIABLE)


def webhook_key() -> str | None:
    """SendGrid's Event Webhook verification key: the environment first, then the Airflow Variable."""
    return _env(WEBHOOK_KEY_ENV) or variable(WEBHOOK_KEY_VARIABLE)


def load_config(path: str | Path, *, what: str, parse, error: type[Exception]):
    """A YAML configuration file, validated by ``parse(raw, source)``; cached until the file changes.

    A missing file or invalid YAML raises ``error`` naming the file; ``parse`` names the entry and
    field of anything else wrong.
    """
    path = Path(path)
    mtime = path.stat().st_mtime if path.exists() else 0.0
    return _load_config(str(path), mtime, what, parse, error)


@lru_cache(maxsize=16)
def _load_config(path: str, mtime: float, what: str, parse, error: type[Exception]):
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None
    return parse(raw, source=path)
