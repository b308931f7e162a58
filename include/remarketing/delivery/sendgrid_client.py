"""What every SendGrid v3 API client shares: the connection's conventions, authenticated keep-alive HTTP, errors.

The SendGrid provider's conventions: the API key in the connection's password; an optional host
in the host field or ``extra.host``; ``extra.timeout``. The transport (mail send) and the API
client (suppressions, stats) are both ``SendGridClient``s.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from remarketing.delivery.retry import HttpClient, RetryPolicy

DEFAULT_HOST = "https://api.sendgrid.com"


class SendGridError(RuntimeError):
    """A SendGrid management call (batch ids, reads) failed; the message names the endpoint and status."""


def host_from_connection(conn) -> str:
    """The API base URL: ``extra.host``, else the connection's host (https unless it names a scheme)."""
    extra = conn.extra_dejson or {}
    host = extra.get("host") or conn.host
    if not host:
        return DEFAULT_HOST
    if "://" not in host:
        host = f"https://{host}"
    parts = urlsplit(host)
    if conn.port and parts.port is None and not extra.get("host"):
        host = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{conn.port}"))
    return host.rstrip("/")


def _connection(conn_id: str):
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if not conn.password:
        raise ValueError(f"connection {conn_id!r} has no API key: put it in the password field")
    return conn


def connection_args(conn_id: str, kwargs: dict) -> tuple[str, str, dict]:
    """As the SendGrid provider does: (API key from the password, host, kwargs with ``extra.timeout``)."""
    conn = _connection(conn_id)
    extra = conn.extra_dejson or {}
    if "timeout" in extra:
        kwargs = {"timeout": float(extra["timeout"]), **kwargs}
    return conn.password, host_from_connection(conn), kwargs


def sendgrid_http(api_key: str, host: str, *, timeout: float, pool_size: int) -> HttpClient:
    """Keep-alive connections to SendGrid's API, authenticated; shared by the transport and ``SendGridApi``."""
    return HttpClient(
        host,
        headers={
            "Authorization": f"Bearer {api_key}",
            "User-Agent": "remarketing-airflow",
            "Accept": "application/json",
        },
        timeout=timeout,
        pool_size=pool_size,
    )


class SendGridClient:
    """An authenticated, retrying client of one SendGrid host."""

    def __init__(
        self, api_key: str, host: str = DEFAULT_HOST, *, timeout: float, retry: RetryPolicy | None, pool_size: int
    ) -> None:
        if not api_key:
            raise ValueError("SendGrid API key is empty")
        self.host = host.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.http = sendgrid_http(api_key, self.host, timeout=timeout, pool_size=pool_size)

    @classmethod
    def from_connection(cls, conn_id: str = "sendgrid_default", **kwargs):
        """As the SendGrid provider does: API key in the password; optional host in host or extra."""
        api_key, host, kwargs = connection_args(conn_id, kwargs)
        return cls(api_key, host=host, **kwargs)


def ok_json(result, what: str):
    """The JSON of a 2xx reply, or SendGridError naming the endpoint, status and SendGrid's message."""
    reply = result.reply
    if reply is None:
        raise SendGridError(f"{what}: no answer after {result.attempts} attempt(s): {result.error}")
    if not 200 <= reply.status < 300:
        raise SendGridError(f"{what}: HTTP {reply.status} after {result.attempts} attempt(s): {result.error}")
    try:
        return reply.json()
    except ValueError as exc:
        raise SendGridError(f"{what}: HTTP {reply.status} with a body that is not JSON") from exc
