"""SendGrid Event Webhook endpoint, served by Airflow's API server: POST /sendgrid/events.

Point SendGrid's signed Event Webhook at ``https://<airflow>/sendgrid/events``. Airflow's login
does not guard plugin apps (SendGrid cannot log in); SendGrid's ECDSA signature does: an
unsigned, badly signed or stale request (any malformed signature or timestamp header) gets 403
and nothing is stored. A verified batch is stored raw in the remarketing DB (connection
``remarketing_db``) and its hard bounces, spam reports and unsubscribes are suppressed at once;
the hourly ``email_feedback`` DAG folds the rest. The answer comes as soon as the batch is
stored, so SendGrid does not time out and retry.

Answers: 200 once the batch, its quarantined events and its suppressions are all stored (one
transaction); 400 for a signed body that is not a UTF-8 JSON array of events (or a malformed
Content-Length); 403 for a bad signature; 413 for an oversize body; 503 when the batch could not
be stored (not configured, database down, anything unforeseen: nothing was kept, SendGrid
retries). Never 500. An event that breaks the rules (``store.check_event``) does not fail its
batch: it is quarantined (``email_event_rejects``), counted in the answer and the log.

Settings: the verification key (SendGrid > Mail Settings > Signed Event Webhook, base64) in
``REMARKETING_SENDGRID_WEBHOOK_KEY`` or the Airflow Variable ``sendgrid_webhook_public_key``.
Without it the endpoint answers 503 (SendGrid retries for up to 24 h).
"""

from __future__ import annotations

import logging
import threading
import traceback
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
    parse_batch,
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
            return await receive(request)
        except Exception as exc:  # noqa: BLE001 - no request may crash the endpoint: answer, SendGrid retries
            # The message may quote SQL parameters (addresses): log the type and where, never the text.
            where = "".join(traceback.format_tb(exc.__traceback__))
            log.error("SendGrid webhook: 503, %s, nothing stored; at\n%s", type(exc).__name__, where)
            return refuse(503, "batch not stored, retry later")

    async def receive(request: Request):
        try:
            text = key_loader()  # read per batch: a rotated key takes effect without a restart
            public_key = resource(("key", text), lambda: load_public_key(text))
        except WebhookConfigError as exc:
            log.error("SendGrid webhook refused a batch: %s", exc)
            return refuse(503, "webhook not configured")
        body = await _body(request, max_body)
        if isinstance(body, JSONResponse):
            return body
        signature, timestamp = request.headers[SIGNATURE_HEADER], request.headers[TIMESTAMP_HEADER]
        try:
            verify_signature(public_key, body, signature, timestamp, now=clock(), max_age=max_age)
        except InvalidSignature as exc:
            log.warning("SendGrid webhook: 403, %s", exc)
            return refuse(403, "invalid signature")
        try:
            parsed = parse_batch(body)
        except InvalidPayload as exc:
            log.warning("SendGrid webhook: 400, %s", exc)
            return refuse(400, str(exc))

        def store():
            from remarketing.flows.feedback.store import store_batch

            return store_batch(state_engine(), body, parsed, now=clock())

        stored = await run_in_threadpool(store)
        _log_stored(stored)
        return {"batch_id": stored.batch_id, "events": stored.events, "new": stored.new, "rejected": stored.rejected}

    return app


async def _body(request: Request, max_body: int) -> bytes | JSONResponse:
    """The signed body, read within ``max_body`` bytes; or the refusal (400, 403, 413) before any parsing."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit() and len(length) <= 12):
            return JSONResponse({"detail": "malformed Content-Length"}, status_code=400)
        if int(length) > max_body:
            return JSONResponse({"detail": f"body larger than {max_body} bytes"}, status_code=413)
    if not request.headers.get(SIGNATURE_HEADER) or not request.headers.get(TIMESTAMP_HEADER):
        return JSONResponse({"detail": "missing signature"}, status_code=403)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            return JSONResponse({"detail": f"body larger than {max_body} bytes"}, status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _log_stored(stored) -> None:
    """Counts and reasons only: never an address."""
    log.info(
        "SendGrid webhook: batch %s, %s events%s, %s suppressed at once, %s quarantined%s",
        stored.batch_id,
        stored.events,
        "" if stored.new else " (a repeat, stored before)",
        stored.suppressed,
        stored.rejected,
        "".join(f"; {n} x {reason}" for reason, n in sorted(stored.reasons.items())),
    )


app = create_app()


class SendGridWebhookPlugin(AirflowPlugin):
    name = "remarketing_sendgrid_webhook"
    fastapi_apps = [{"app": app, "url_prefix": "/sendgrid", "name": "SendGrid Event Webhook"}]
