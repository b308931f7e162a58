"""The SendGrid transport: one ``POST /v3/mail/send`` per Message, concurrently, retried only when safe.

Request bodies are built with the official library's ``sendgrid.helpers.mail`` (so the JSON is
what SendGrid documents); they are posted through :class:`remarketing.delivery.retry.HttpClient`
rather than ``SendGridAPIClient``, whose urllib client opens a new connection per request and
cannot tell a request that never left from one that may have been delivered (see retry.py and
bench/bench_delivery.py for the figures).

Outcomes (``SendResult.outcome``): ``accepted`` on 2xx; ``rejected`` when SendGrid refused it
(4xx other than 429, with SendGrid's messages) or 429/5xx/connection failures outlasted the
retries (definitely not sent); ``unknown`` when the request was written and no answer came back
(read timeout, connection dropped while waiting): never retried, for the ledger to reconcile.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import queue
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from sendgrid.helpers.mail import (
    Asm,
    BatchId,
    Category,
    Content,
    CustomArg,
    From,
    GroupId,
    Header,
    Mail,
    Personalization,
    ReplyTo,
    SendAt,
    Subject,
    Substitution,
    To,
)

from remarketing.delivery.messages import (
    MAX_RECIPIENTS_PER_REQUEST,
    MAX_SEND_AT_AHEAD_HOURS,
    Message,
    SendResult,
)
from remarketing.delivery.retry import RetryPolicy
from remarketing.delivery.sendgrid_client import DEFAULT_HOST, SendGridClient, SendGridError, ok_json

log = logging.getLogger(__name__)

LEDGER_KEY_ARG = "ledger_key"
MAX_CATEGORIES = 10  # SendGrid: at most 10 categories per request
ONE_CLICK = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")  # RFC 8058


def _keys_hint(message: Message) -> str:
    keys = [r.ledger_key for r in message.recipients]
    if not keys:
        return "a message with no recipients"
    return f"ledger key {keys[0]!r}" + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")


def _has_header(headers: Mapping[str, str], name: str) -> bool:
    lowered = name.lower()
    return any(key.lower() == lowered for key in headers)


def validate_message(message: Message, now: datetime) -> None:
    """Check SendGrid's per-request rules before anything is sent; ValueError names the ledger key."""
    recipients = message.recipients
    if not recipients:
        raise ValueError("a Message has no recipients")
    for name in ("from_email", "subject", "html", "text"):
        value = getattr(message, name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{_keys_hint(message)}: {name} must be a non-empty string")
    if len(recipients) > MAX_RECIPIENTS_PER_REQUEST:
        raise ValueError(
            f"{_keys_hint(message)}: {len(recipients)} recipients in one Message, "
            f"SendGrid takes at most {MAX_RECIPIENTS_PER_REQUEST} personalizations per request"
        )
    seen_addresses: dict[str, str] = {}
    seen_keys: set[str] = set()
    for recipient in recipients:
        key = recipient.ledger_key
        if not key or not isinstance(key, str):
            raise ValueError(f"{_keys_hint(message)}: a recipient has an empty ledger key")
        if key in seen_keys:
            raise ValueError(f"ledger key {key!r} appears twice in one Message")
        seen_keys.add(key)
        if not isinstance(recipient.email, str) or "@" not in recipient.email:
            raise ValueError(f"ledger key {key!r}: the recipient has no valid email address")
        if recipient.name is not None and not isinstance(recipient.name, str):
            raise ValueError(f"ledger key {key!r}: the recipient's name must be a string or None")
        address = recipient.email.strip().lower()
        if address in seen_addresses:
            raise ValueError(
                f"ledger keys {seen_addresses[address]!r} and {key!r} have the same address in one Message; "
                "SendGrid allows an address only once per request"
            )
        seen_addresses[address] = key
        if LEDGER_KEY_ARG in recipient.custom_args:
            raise ValueError(f"ledger key {key!r}: custom_args must not set {LEDGER_KEY_ARG!r}, the transport does")
        for name, values in (("substitutions", recipient.substitutions), ("custom_args", recipient.custom_args)):
            for token, value in values.items():
                if not isinstance(value, str):
                    raise ValueError(f"ledger key {key!r}: {name}[{token!r}] must be a string")
        if message.marketing and not (
            _has_header(recipient.headers, "List-Unsubscribe") or _has_header(message.headers, "List-Unsubscribe")
        ):
            raise ValueError(f"ledger key {key!r}: marketing mail without a List-Unsubscribe header (RFC 8058)")
    if len(message.categories) > MAX_CATEGORIES:
        raise ValueError(f"{_keys_hint(message)}: {len(message.categories)} categories, SendGrid allows 10")
    for token, value in message.custom_args.items():
        if not isinstance(value, str):
            raise ValueError(f"{_keys_hint(message)}: custom_args[{token!r}] must be a string")
    if LEDGER_KEY_ARG in message.custom_args:
        raise ValueError(f"{_keys_hint(message)}: shared custom_args must not set {LEDGER_KEY_ARG!r}")
    if message.send_at is not None:
        if message.send_at.tzinfo is None or message.send_at.utcoffset() is None:
            raise ValueError(f"{_keys_hint(message)}: send_at must be timezone-aware")
        if message.send_at > now + timedelta(hours=MAX_SEND_AT_AHEAD_HOURS):
            raise ValueError(
                f"{_keys_hint(message)}: send_at {message.send_at.isoformat()} is more than "
                f"{MAX_SEND_AT_AHEAD_HOURS} h ahead of {now.isoformat()}"
            )


def _address(cls, email: str, name: str | None):
    """``cls(email, name)`` without the library's ``parseaddr`` of a name-less address (a third of the
    build time); the address goes out exactly as given."""
    address = cls()
    address.email = email
    if name:
        address.name = name
    return address


def build_mail(message: Message) -> dict:
    """The v3 ``mail/send`` body: one personalization per recipient, text before html, one-click unsubscribe."""
    mail = Mail()
    mail.from_email = _address(From, message.from_email, message.from_name)
    mail.subject = Subject(message.subject)
    for index, recipient in enumerate(message.recipients):
        personalization = Personalization()
        personalization.add_to(_address(To, recipient.email, recipient.name))
        for token, value in recipient.substitutions.items():
            personalization.add_substitution(Substitution(token, value))
        for name, value in recipient.headers.items():
            personalization.add_header(Header(name, value))
        for name, value in recipient.custom_args.items():
            personalization.add_custom_arg(CustomArg(name, value))
        personalization.add_custom_arg(CustomArg(LEDGER_KEY_ARG, recipient.ledger_key))
        mail.add_personalization(personalization, index=index)
    mail.add_content(Content("text/plain", message.text))
    mail.add_content(Content("text/html", message.html))
    if message.reply_to:
        mail.reply_to = ReplyTo(message.reply_to)
    if message.send_at is not None:
        mail.send_at = SendAt(int(message.send_at.timestamp()))
    if message.batch_id:
        mail.batch_id = BatchId(message.batch_id)
    for category in reversed(message.categories):  # add_category inserts at the front
        mail.add_category(Category(category))
    if message.asm_group_id is not None:
        mail.asm = Asm(GroupId(message.asm_group_id))
    for name, value in message.custom_args.items():
        mail.add_custom_arg(CustomArg(name, value))
    for name, value in message.headers.items():
        mail.add_header(Header(name, value))
    if message.marketing and not _has_header(message.headers, ONE_CLICK[0]):
        mail.add_header(Header(*ONE_CLICK))
    return mail.get()


def pack_message(message: Message, limit: int = MAX_RECIPIENTS_PER_REQUEST) -> list[Message]:
    """Split one shared-content Message into requests SendGrid takes: at most ``limit`` recipients
    each, an address at most once per request (a repeated address moves to the next request that
    does not have it yet). Recipient order is kept within each request.
    """
    if not 1 <= limit <= MAX_RECIPIENTS_PER_REQUEST:
        raise ValueError(f"limit must be between 1 and {MAX_RECIPIENTS_PER_REQUEST}, got {limit}")
    chunks: list[list] = []
    addresses: list[set[str]] = []
    first_open = 0  # chunks before this one are full
    for recipient in message.recipients:
        address = recipient.email.strip().lower()
        index = first_open
        while index < len(chunks) and (len(chunks[index]) >= limit or address in addresses[index]):
            index += 1
        if index == len(chunks):
            chunks.append([])
            addresses.append(set())
        chunks[index].append(recipient)
        addresses[index].add(address)
        while first_open < len(chunks) and len(chunks[first_open]) >= limit:
            first_open += 1
    return [replace(message, recipients=tuple(chunk)) for chunk in chunks]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SendGridTransport(SendGridClient):
    """Delivers Messages through SendGrid's v3 API with a bounded pool of keep-alive connections."""

    def __init__(
        self,
        api_key: str,
        *,
        host: str = DEFAULT_HOST,
        timeout: float = 10,
        max_workers: int = 8,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        super().__init__(api_key, host, timeout=timeout, retry=retry, pool_size=max_workers)
        self.max_workers = max_workers
        self.clock = clock
        self._executor: cf.ThreadPoolExecutor | None = None

    # --- sending ----------------------------------------------------------------------------------

    def send_one(self, message: Message) -> SendResult:
        """One Message, one request (retried when safe). Validates first: ValueError never sends."""
        validate_message(message, self.clock())
        return self._post(message)

    def _post(self, message: Message) -> SendResult:
        keys = tuple(r.ledger_key for r in message.recipients)
        body = json.dumps(build_mail(message), separators=(",", ":")).encode()
        result = self.http.call("POST", "/v3/mail/send", self.retry, body=body, what=_keys_hint(message))
        reply = result.reply
        if reply is None:
            outcome = "unknown" if result.maybe_sent else "rejected"
            return SendResult(keys, outcome, None, result.error, result.attempts)
        if 200 <= reply.status < 300:
            message_id = next((v for k, v in reply.headers.items() if k.lower() == "x-message-id"), None)
            return SendResult(keys, "accepted", reply.status, None, result.attempts, message_id)
        log.warning("%s rejected by SendGrid: HTTP %d: %s", _keys_hint(message), reply.status, result.error)
        return SendResult(keys, "rejected", reply.status, result.error, result.attempts)

    def send(self, messages: Iterable[Message]) -> Iterator[SendResult]:
        """Send concurrently (``max_workers``) and yield one SendResult per Message as each completes.

        A list or tuple is validated whole before the first request. Any other iterable is
        validated as it is consumed: an invalid Message stops the run (the ones already in flight
        finish and are yielded), then ValueError is raised; it and the rest are never sent.
        """
        prevalidated = isinstance(messages, Sequence)
        if prevalidated:
            now = self.clock()
            for message in messages:
                validate_message(message, now)
        executor = self._pool()
        window = self.max_workers * 2  # bounded: a consumer that stops early leaves little in flight
        pending: set[cf.Future[SendResult]] = set()
        finished: queue.SimpleQueue[cf.Future[SendResult]] = queue.SimpleQueue()
        source = iter(messages)
        exhausted = False
        failure: ValueError | None = None
        try:
            while True:
                while not exhausted and failure is None and len(pending) < window:
                    message = next(source, None)
                    if message is None:
                        exhausted = True
                        break
                    try:
                        if not prevalidated:
                            validate_message(message, self.clock())
                    except ValueError as exc:
                        failure = exc
                        break
                    future = executor.submit(self._post, message)
                    pending.add(future)
                    future.add_done_callback(finished.put)
                if not pending:
                    break
                future = finished.get()
                pending.discard(future)
                yield future.result()
        finally:
            for future in pending:
                future.cancel()
        if failure is not None:
            raise failure

    def _pool(self) -> cf.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix="sendgrid")
        return self._executor

    # --- scheduled sends --------------------------------------------------------------------------

    def create_batch_id(self) -> str:
        """A new batch id (``POST /v3/mail/batch``): one per market run, so its scheduled mail can be cancelled."""
        result = self.http.call("POST", "/v3/mail/batch", self.retry, idempotent=True, what="mail/batch")
        data = ok_json(result, "POST /v3/mail/batch")
        if not isinstance(data, dict) or not data.get("batch_id"):
            raise SendGridError("POST /v3/mail/batch: the answer has no batch_id")
        return str(data["batch_id"])

    def cancel_batch(self, batch_id: str) -> None:
        """Cancel every not-yet-sent mail of ``batch_id`` (``POST /v3/user/scheduled_sends``)."""
        body = json.dumps({"batch_id": batch_id, "status": "cancel"}).encode()
        result = self.http.call(
            "POST", "/v3/user/scheduled_sends", self.retry, body=body, idempotent=True, what="scheduled_sends"
        )
        if result.reply is not None and result.reply.status == 400 and self._batch_status(batch_id) == "cancel":
            return  # already cancelled (by us, in an attempt whose answer was lost)
        ok_json(result, "POST /v3/user/scheduled_sends")

    def _batch_status(self, batch_id: str) -> str | None:
        path = f"/v3/user/scheduled_sends/{quote(batch_id, safe='')}"
        result = self.http.call("GET", path, self.retry, idempotent=True, what="scheduled_sends")
        data = ok_json(result, f"GET {path}")
        return data[0].get("status") if isinstance(data, list) and data else None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self.http.close()

    def __enter__(self) -> SendGridTransport:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
