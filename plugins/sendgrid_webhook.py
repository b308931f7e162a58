"""SendGrid Event Webhook endpoint, served by Airflow's API server: POST /sendgrid/events.

Point SendGrid's signed Event Webhook at ``https://<airflow>/sendgrid/events``. Airflow's login
does not guard plugin apps (SendGrid cannot log in); SendGrid's ECDSA signature does: an
unsigned, badly signed or stale request gets 403 and nothing is stored. A verified batch is
stored raw in the remarketing DB (connection ``remarketing_db``) and its hard bounces, spam
reports and unsubscribes are suppressed at once; the hourly ``email_feedback`` DAG folds the
rest. The answer comes as soon as the batch is stored, so SendGrid does not time out and retry.

Settings: the verification key (SendGrid > Mail Settings > Signed Event Webhook, base64) in
``REMARKETING_SENDGRID_WEBHOOK_KEY`` or the Airflow Variable ``sendgrid_webhook_public_key``.
Without it the endpoint answers 503 (SendGrid retries for up to 24 h).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from remarketing.flows.feedback.webhook import (
    DEFAULT_MAX_AGE,
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidPayload,
    InvalidSignature,
    WebhookConfigError,
    load_public_key,
    parse_events,
    verify_signature,
)
from remarketing.platform import settings

log = logging.getLogger(__name__)

KEY_ENV = settings.WEBHOOK_KEY_ENV
KEY_VARIABLE = settings.WEBHOOK_KEY_VARIABLE


def _configured_key() -> str:
    key = settings.webhook_key()
    if not key:
        raise WebhookConfigError(f"no webhook verification key: set {KEY_ENV} or the Airflow Variable {KEY_VARIABLE!r}")
    return key


def create_app(
    *,
    engine_factory: Callable | None = None,
    key_loader: Callable[[], str] = _configured_key,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    max_body: int = MAX_BODY_BYTES,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> FastAPI:
    """The webhook app; tests pass their own engine, key and clock."""
    app = FastAPI(title="SendGrid Event Webhook", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    resources: dict = {}

    def resource(name: str, make: Callable):
        with lock:
            if name not in resources:
                resources[name] = make()
            return resources[name]

    def state_engine():
        """The given engine, or the ``remarketing_db`` connection's: an edited connection is used at once."""
        if engine_factory is not None:
            return resource("engine", engine_factory)
        from remarketing.platform.connections import migrated_remarketing_engine

        return migrated_remarketing_engine()

    def refuse(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/events")
    async def events(request: Request):
        try:
            text = key_loader()  # read per batch: a rotated key takes effect without a restart
            public_key = resource(("key", text), lambda: load_public_key(text))
        except WebhookConfigError as exc:
            log.error("SendGrid webhook refused a batch: %s", exc)
            return refuse(503, "webhook not configured")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return refuse(413, f"body larger than {max_body} bytes")
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            return refuse(403, "missing signature")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                return refuse(413, f"body larger than {max_body} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            verify_signature(public_key, body, signature, timestamp, now=clock(), max_age=max_age)
        except InvalidSignature as exc:
            log.warning("SendGrid webhook: 403, %s", exc)
            return refuse(403, "invalid signature")
        try:
            parsed = parse_events(body)
        except InvalidPayload as exc:
            log.warning("SendGrid webhook: 400, %s", exc)
            return refuse(400, str(exc))

        def store():
            from remarketing.flows.feedback.store import store_batch

            return store_batch(state_engine(), body, parsed, now=clock())

        stored = await run_in_threadpool(store)
        log.info(
            "SendGrid webhook: batch %s, %s events%s, %s suppressed at once",
            stored.batch_id,
            stored.events,
            "" if stored.new else " (a repeat, stored before)",
            stored.suppressed,
        )
        return {"batch_id": stored.batch_id, "events": stored.events, "new": stored.new}

    return app


app = create_app()


class SendGridWebhookPlugin(AirflowPlugin):
    name = "remarketing_sendgrid_webhook"
    fastapi_apps = [{"app": app, "url_prefix": "/sendgrid", "name": "SendGrid Event Webhook"}]
