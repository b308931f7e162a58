"""SendGrid's read side: suppression lists and stats, for the suppression sync and the deliverability gate.

Same connection pool and retry policy as the transport; these are GETs, so a timeout or a dropped
connection is retried too (reading twice changes nothing). Failures raise :class:`SendGridError`
naming the endpoint and status, never an address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import date, datetime

from remarketing.delivery.retry import RetryPolicy
from remarketing.delivery.sendgrid_client import DEFAULT_HOST, SendGridClient, SendGridError, ok_json

log = logging.getLogger(__name__)

SUPPRESSION_KINDS = ("bounces", "blocks", "spam_reports", "invalid_emails", "unsubscribes")
PAGE_SIZE = 500  # SendGrid's maximum page for the suppression lists
MAX_CATEGORIES_PER_STATS_CALL = 10  # SendGrid: categories per /v3/categories/stats request


class SendGridApi(SendGridClient):
    """Suppressions and stats from SendGrid's v3 API."""

    def __init__(
        self,
        api_key: str,
        host: str = DEFAULT_HOST,
        timeout: float = 10,
        retry: RetryPolicy | None = None,
        *,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        super().__init__(api_key, host, timeout=timeout, retry=retry, pool_size=2)
        self.page_size = page_size

    def _get(self, path: str, query: dict | None = None):
        result = self.http.call("GET", path, self.retry, query=query, idempotent=True, what=f"GET {path}")
        return ok_json(result, f"GET {path}")

    def _pages(self, path: str, query: dict) -> Iterator[dict]:
        """limit/offset pages until a short one; a page longer than asked means the server ignores paging."""
        offset = 0
        while True:
            page = self._get(path, {**query, "limit": self.page_size, "offset": offset})
            if not isinstance(page, list):
                raise SendGridError(f"GET {path}: expected a list, got {type(page).__name__}")
            if len(page) > self.page_size:
                raise SendGridError(f"GET {path}: {len(page)} rows for limit {self.page_size}: paging not honoured")
            yield from page
            if len(page) < self.page_size:
                return
            offset += len(page)

    def iter_suppressions(self, kind: str, *, start_time: datetime | None = None) -> Iterator[dict]:
        """Rows of one global suppression list (``created`` is epoch seconds), created at or after ``start_time``."""
        if kind not in SUPPRESSION_KINDS:
            raise ValueError(f"unknown suppression kind {kind!r}; expected one of {', '.join(SUPPRESSION_KINDS)}")
        query: dict = {}
        if start_time is not None:
            if start_time.tzinfo is None:
                raise ValueError("start_time must be timezone-aware")
            query["start_time"] = int(start_time.timestamp())
        yield from self._pages(f"/v3/suppression/{kind}", query)

    def iter_group_suppressions(self) -> Iterator[dict]:
        """Every unsubscribe-group suppression: ``email``, ``group_id``, ``group_name``, ``created_at``."""
        yield from self._pages("/v3/asm/suppressions", {})

    def category_stats(self, categories: Sequence[str], start: date, end: date) -> list[dict]:
        """One row per day and category: ``{"date": date, "category": name, <metric>: int, ...}``."""
        if isinstance(categories, str):
            raise TypeError("categories must be a sequence of names, not one string")
        _check_range(start, end)
        rows: list[dict] = []
        names = list(dict.fromkeys(categories))
        for first in range(0, len(names), MAX_CATEGORIES_PER_STATS_CALL):
            chunk = names[first : first + MAX_CATEGORIES_PER_STATS_CALL]
            query = {
                "categories": chunk,
                "start_date": start.isoformat(),
                "end_date": end.isoformat(),
                "aggregated_by": "day",
            }
            for day in self._stats_days("/v3/categories/stats", query):
                for stat in day.get("stats") or []:
                    rows.append({"date": day["date"], "category": stat.get("name"), **(stat.get("metrics") or {})})
        return rows

    def global_stats(self, start: date, end: date) -> list[dict]:
        """One row per day: ``{"date": date, <metric>: int, ...}`` (requests, delivered, bounces, spam_reports...)."""
        _check_range(start, end)
        query = {"start_date": start.isoformat(), "end_date": end.isoformat(), "aggregated_by": "day"}
        rows = []
        for day in self._stats_days("/v3/stats", query):
            metrics: dict = {}
            for stat in day.get("stats") or []:
                for name, value in (stat.get("metrics") or {}).items():
                    metrics[name] = metrics.get(name, 0) + value
            rows.append({"date": day["date"], **metrics})
        return rows

    def _stats_days(self, path: str, query: dict) -> list[dict]:
        data = self._get(path, query)
        if not isinstance(data, list):
            raise SendGridError(f"GET {path}: expected a list of days, got {type(data).__name__}")
        for day in data:
            try:
                day["date"] = date.fromisoformat(day["date"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SendGridError(f"GET {path}: a row without a valid 'date'") from exc
        return data

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SendGridApi:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _check_range(start: date, end: date) -> None:
    if isinstance(start, datetime) or isinstance(end, datetime):
        raise TypeError("start and end are dates, not datetimes")
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
