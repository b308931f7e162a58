"""A local SendGrid v3 API on loopback, for tests and benchmarks that cannot reach SendGrid.

A real HTTP server (stdlib ``ThreadingHTTPServer`` in a daemon thread, HTTP/1.1 keep-alive), not
a monkeypatch: the official ``sendgrid`` library, ``requests`` or anything else that takes a host
talks to it exactly as to api.sendgrid.com. It validates mail/send the way SendGrid documents it
(https://docs.sendgrid.com/api-reference/mail-send/errors), records what SendGrid would deliver,
serves suppressions and stats from state a test sets, and injects the faults a delivery layer must
survive: 429, 5xx, slow answers, timeouts and dropped connections *after* the mail was accepted
(the "did it go out?" case), and resets before the body was read.

Like SendGrid, some error messages name the offending address (duplicates): callers must not log
SendGrid's error bodies verbatim.

Usage::

    with FakeSendGrid() as sg:
        client = SendGridAPIClient(sg.api_key, host=sg.url)
        sg.inject("timeout", delay=5)
        ...
        assert sg.ledger_key_counts()["cart:42:1"] == 1
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import queue
import random
import re
import secrets
import socket
import socketserver
import string
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
MAIL_SEND = "/v3/mail/send"
DEFAULT_MAX_BODY_BYTES = 30 * 1024 * 1024  # SendGrid: total message size limit 30 MB
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_SEND_AT_AHEAD_SECONDS = 72 * 3600
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_EMAIL_LENGTH = 320
MAX_PAGE_LIMIT = 500

FAULT_KINDS = ("429", "500", "503", "slow", "timeout", "drop", "reset_before")
FAULT_OPTIONS = {"delay", "reset_after"}
DEFAULT_DELAY = {"slow": 0.2, "timeout": 30.0}
SUPPRESSION_KINDS = ("bounces", "blocks", "spam_reports", "invalid_emails", "unsubscribes")
# Fields of one record per suppression list, as SendGrid returns them.
SUPPRESSION_FIELDS = {
    "bounces": ("created", "email", "reason", "status"),
    "blocks": ("created", "email", "reason", "status"),
    "spam_reports": ("created", "email", "ip"),
    "invalid_emails": ("created", "email", "reason"),
    "unsubscribes": ("created", "email"),
}
STATS_METRICS = (
    "blocks",
    "bounce_drops",
    "bounces",
    "clicks",
    "deferred",
    "delivered",
    "invalid_emails",
    "opens",
    "processed",
    "requests",
    "spam_report_drops",
    "spam_reports",
    "unique_clicks",
    "unique_opens",
    "unsubscribe_drops",
    "unsubscribes",
)
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "Content-Type",
        "Content-Transfer-Encoding",
        "To",
        "From",
        "Subject",
        "Reply-To",
        "CC",
        "BCC",
    )
)
# (limit, window seconds) for the X-RateLimit-* headers; SendGrid: mail/send 10,000/s, others 600/min.
RATE_LIMITS = {"mail": (10_000, 1), "api": (600, 60)}

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    414: "URI Too Long",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_FAULT_MESSAGES = {
    "429": (429, "too many requests"),
    "500": (500, "internal server error"),
    "503": (503, "service unavailable"),
}
_UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
_ALNUM = string.ascii_letters + string.digits

# Pragmatic address syntax: no spaces or specials in the local part, dotted domain of letter/digit
# labels (any script), alphabetic or punycode TLD.
_EMAIL_RE = re.compile(
    r"^(?!\.)(?!.*\.\.)[^@\s\"(),:;<>\[\\\]]{1,64}(?<!\.)"
    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[a-z0-9-]{1,59})$",
    re.IGNORECASE,
)


def valid_email(address: Any) -> bool:
    return isinstance(address, str) and len(address) <= MAX_EMAIL_LENGTH and _EMAIL_RE.match(address) is not None


@dataclass(frozen=True)
class AcceptedRequest:
    """One mail/send request SendGrid answered 202 (or would have: see ``fault``)."""

    body: dict
    message_id: str
    received_at: datetime
    batch_id: str | None
    fault: str | None = None  # "slow", "timeout" or "drop" when the client may not have seen the 202


@dataclass
class _Fault:
    kind: str
    options: dict = field(default_factory=dict)


@dataclass
class _FaultRate:
    rate: float
    kinds: tuple[str, ...]
    options: dict


class _ApiError(Exception):
    """An error answer in SendGrid's format."""

    def __init__(self, status: int, errors: list[dict]):
        super().__init__(status)
        self.status = status
        self.errors = errors


def _error(message: str, field_name: str | None = None, help_anchor: str | None = None) -> dict:
    entry: dict[str, Any] = {"message": message, "field": field_name}
    if help_anchor is not None:
        entry["help"] = f"{HELP}#message.{help_anchor}"
    return entry


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string_map_errors(value: Any, field_name: str, what: str) -> list[dict]:
    if not isinstance(value, dict):
        return [_error(f"The {what} must be an object of key/value pairs.", field_name, field_name)]
    if not all(isinstance(v, str) for v in value.values()):
        return [_error(f"All values of the {what} object must be strings.", field_name, field_name)]
    return []


def _headers_errors(value: Any, field_name: str) -> list[dict]:
    errors = _string_map_errors(value, field_name, "headers")
    if errors:
        return errors
    for key in value:
        if not key.isascii() or " " in key or not key:
            errors.append(_error("Header keys cannot contain non-ASCII characters or empty spaces.", field_name))
        elif key.lower() in RESERVED_HEADERS:
            errors.append(_error("Header can not be one of the reserved keys.", field_name, "headers"))
    return errors


def _args_too_big(args: dict) -> bool:
    """Compact JSON of ``args`` over 10,000 bytes? A cheap bound first: 6 bytes a char covers \\uXXXX escapes."""
    if 2 + sum(6 * (len(k) + len(v) + 1) for k, v in args.items()) <= MAX_CUSTOM_ARGS_BYTES:
        return False
    return len(json.dumps(args, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_CUSTOM_ARGS_BYTES


def validate_mail(body: Any, *, now: float, known_batches: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """SendGrid's mail/send validation: the list of errors (empty when SendGrid would accept it)."""
    if not isinstance(body, dict):
        return [_error("The request body must be a JSON object.", None)]
    errors: list[dict] = []
    template_id = body.get("template_id")
    if template_id is not None and not isinstance(template_id, str):
        errors.append(_error("The template ID must be a string.", "template_id", "template_id"))

    # from / reply_to
    if "from" not in body or body["from"] is None:
        errors.append(
            _error(
                "The from object must be provided for every email send. It is an object that requires the email "
                'parameter, but may also contain a name parameter. e.g. {"email" : "example@example.com"} or '
                '{"email" : "example@example.com", "name" : "Example Recipient"}.',
                "from",
                "from",
            )
        )
    elif not isinstance(body["from"], dict) or not valid_email(body["from"].get("email")):
        errors.append(_error("Does not contain a valid address.", "from.email", "from"))
    if "reply_to" in body and (
        not isinstance(body["reply_to"], dict) or not valid_email(body["reply_to"].get("email"))
    ):
        errors.append(_error("Does not contain a valid address.", "reply_to.email", "reply_to"))
    if "reply_to_list" in body:
        reply_list = body["reply_to_list"]
        if not isinstance(reply_list, list) or not reply_list:
            errors.append(_error("The reply_to_list must be a non-empty array.", "reply_to_list", "reply_to"))
        else:
            for j, item in enumerate(reply_list):
                if not isinstance(item, dict) or not valid_email(item.get("email")):
                    errors.append(_error("Does not contain a valid address.", f"reply_to_list.{j}.email", "reply_to"))

    # personalizations
    personalizations = body.get("personalizations")
    all_have_subject = False
    if personalizations is None or personalizations == []:
        errors.append(_error("You must have at least one personalization.", "personalizations", "personalizations"))
    elif not isinstance(personalizations, list):
        errors.append(_error("The personalizations field must be an array.", "personalizations", "personalizations"))
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        errors.append(
            _error(
                f"The personalization block is limited to {MAX_PERSONALIZATIONS} personalizations per API request. "
                f"You have provided {len(personalizations)} personalizations. Please consider splitting this into "
                "multiple requests and resending your request.",
                "personalizations",
                "personalizations",
            )
        )
    else:
        errors.extend(_personalization_errors(body, personalizations, now))
        all_have_subject = all(isinstance(p, dict) and p.get("subject") for p in personalizations)

    # subject
    if "subject" in body and not (isinstance(body["subject"], str) and body["subject"]):
        errors.append(
            _error("The subject of your email must be a string at least one character in length.", "subject", "subject")
        )
    elif not body.get("subject") and template_id is None and not all_have_subject and personalizations:
        errors.append(
            _error(
                "The subject is required. You can get around this requirement if you use a template with a subject "
                "defined or if every personalization has a subject defined.",
                "subject",
                "subject",
            )
        )

    errors.extend(_content_errors(body, template_id))

    # send_at, batch_id, categories, custom_args, headers, asm
    if "send_at" in body:
        errors.extend(_send_at_errors(body["send_at"], "send_at", now))
    if "batch_id" in body:
        batch_id = body["batch_id"]
        if not isinstance(batch_id, str):
            errors.append(_error("The batch_id must be a string.", "batch_id", "batch_id"))
        elif batch_id not in known_batches:
            errors.append(
                _error("The batch_id is not valid: create it with POST /v3/mail/batch.", "batch_id", "batch_id")
            )
    if "categories" in body:
        errors.extend(_categories_errors(body["categories"]))
    if "custom_args" in body:
        arg_errors = _custom_args_errors(body["custom_args"], "custom_args")
        errors.extend(arg_errors)
        if not arg_errors and _args_too_big(body["custom_args"]):
            errors.append(_custom_args_size_error("custom_args"))
    if "headers" in body:
        errors.extend(_headers_errors(body["headers"], "headers"))
    if "asm" in body:
        errors.extend(_asm_errors(body["asm"]))
    if "attachments" in body:
        errors.extend(_attachment_errors(body["attachments"]))
    return errors


def _personalization_errors(body: dict, personalizations: list, now: float) -> list[dict]:
    errors: list[dict] = []
    seen: set[str] = set()
    total = 0
    top_args = body.get("custom_args") if isinstance(body.get("custom_args"), dict) else {}
    for i, p in enumerate(personalizations):
        where = f"personalizations.{i}"
        if not isinstance(p, dict):
            errors.append(_error("Each personalization must be an object.", where, "personalizations"))
            continue
        if not p.get("to"):
            errors.append(
                _error(
                    "The to array is required for all personalization objects, and must have at least one email "
                    "object with a valid email address.",
                    f"{where}.to",
                    "personalizations.to",
                )
            )
        for kind in ("to", "cc", "bcc"):
            if kind not in p or (kind == "to" and not p["to"]):
                continue
            people = p[kind]
            if not isinstance(people, list) or not people:
                errors.append(
                    _error(
                        f"The {kind} array, when used, must at least have an email parameter with a valid email "
                        "address and it may also contain a name parameter.",
                        f"{where}.{kind}",
                        f"personalizations.{kind}",
                    )
                )
                continue
            total += len(people)
            for j, person in enumerate(people):
                address = person.get("email") if isinstance(person, dict) else None
                if not valid_email(address):
                    errors.append(
                        _error(
                            "Does not contain a valid address.", f"{where}.{kind}.{j}.email", f"personalizations.{kind}"
                        )
                    )
                    continue
                folded = address.casefold()
                if folded in seen:
                    errors.append(
                        _error(
                            "Each email address in the personalization block should be unique between to, cc, and "
                            f"bcc. We found the first duplicate instance of [{address}] in the {where}.{kind} field.",
                            where,
                            "personalizations",
                        )
                    )
                seen.add(folded)
        if "subject" in p and not (isinstance(p["subject"], str) and p["subject"]):
            errors.append(
                _error(
                    "The subject of your email must be a string at least one character in length.",
                    f"{where}.subject",
                    "personalizations.subject",
                )
            )
        if "send_at" in p:
            errors.extend(_send_at_errors(p["send_at"], f"{where}.send_at", now))
        if "headers" in p:
            errors.extend(_headers_errors(p["headers"], f"{where}.headers"))
        if "substitutions" in p:
            errors.extend(_string_map_errors(p["substitutions"], f"{where}.substitutions", "substitutions"))
        if "custom_args" in p:
            arg_errors = _custom_args_errors(p["custom_args"], f"{where}.custom_args")
            errors.extend(arg_errors)
            if not arg_errors and _args_too_big({**top_args, **p["custom_args"]}):
                errors.append(_custom_args_size_error(f"{where}.custom_args"))
        if "dynamic_template_data" in p and not isinstance(p["dynamic_template_data"], dict):
            errors.append(_error("The dynamic_template_data must be an object.", f"{where}.dynamic_template_data"))
    if total > MAX_RECIPIENTS:
        errors.append(
            _error(
                f"There is a limit of {MAX_RECIPIENTS} total recipients (to + cc + bcc) per request.",
                "personalizations",
                "personalizations",
            )
        )
    return errors


def _content_errors(body: dict, template_id: Any) -> list[dict]:
    if "content" not in body:
        if template_id is None:
            return [
                _error(
                    "The content param is required unless you are using a transactional template and have defined "
                    "a template_ID.",
                    "content",
                    "content",
                )
            ]
        return []
    content = body["content"]
    if not isinstance(content, list) or not content:
        return [
            _error(
                "There must be at least one defined content block. We typically suggest both text/plain and "
                "text/html blocks are included, but only one block is required.",
                "content",
                "content",
            )
        ]
    errors: list[dict] = []
    types: list[str] = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str) or not block["type"]:
            errors.append(
                _error(
                    "Your content type must be a string with length of at least one character.",
                    f"content.{i}.type",
                    "content.type",
                )
            )
            types.append("")
            continue
        if any(c in block["type"] for c in ";\r\n"):
            errors.append(_error("Cannot contain ';', or CRLF characters.", f"content.{i}.type", "content.type"))
        if not isinstance(block.get("value"), str) or not block["value"]:
            errors.append(
                _error(
                    "The content value must be a string at least one character in length.",
                    f"content.{i}.value",
                    "content.value",
                )
            )
        types.append(block["type"].lower())
    expected = [t for t in ("text/plain", "text/html") if t in types]
    if types[: len(expected)] != expected:
        errors.append(
            _error(
                "Following RFC 1341, section 7.2, if either text/html or text/plain are to be sent in your email: "
                "text/plain needs to be first, followed by text/html, followed by any other content.",
                "content",
                "content.value",
            )
        )
    return errors


def _send_at_errors(value: Any, field_name: str, now: float) -> list[dict]:
    if not _is_int(value):
        return [
            _error(
                "The send_at parameter is expecting a Unix timestamp as an integer. We will send immediately if you "
                "include a send_at timestamp that is in the past.",
                field_name,
                "send_at",
            )
        ]
    if value > now + MAX_SEND_AT_AHEAD_SECONDS:
        return [_error("Scheduling more than 72 hours in advance is forbidden.", field_name, "send_at")]
    return []


def _categories_errors(categories: Any) -> list[dict]:
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        return [_error("Categories must be an array of strings.", "categories", "categories")]
    errors: list[dict] = []
    if len(categories) > MAX_CATEGORIES:
        errors.append(
            _error(
                f"There is a limit of {MAX_CATEGORIES} categories for each email that is sent. "
                f"You provided {len(categories)} categories.",
                "categories",
                "categories",
            )
        )
    seen: set[str] = set()
    for category in categories:
        if len(category) > MAX_CATEGORY_LENGTH:
            errors.append(
                _error(
                    f"Each category must not be longer than {MAX_CATEGORY_LENGTH} characters. "
                    f"[{category}] exceeds this limit",
                    "categories",
                    "categories",
                )
            )
        if not category.isascii():
            errors.append(_error("Categories can not contain non-ASCII characters.", "categories", "categories"))
        if category in seen:
            errors.append(
                _error(
                    f"The categories must be a unique list, and you have included [{category}] more than once.",
                    "categories",
                    "categories",
                )
            )
        seen.add(category)
    return errors


def _custom_args_errors(value: Any, field_name: str) -> list[dict]:
    if not isinstance(value, dict):
        return [_error("The custom arguments must be an object.", field_name, "personalizations.custom_args")]
    if not value:
        return [_error("custom_args cannot be empty.", field_name, "personalizations.custom_args")]
    if not all(isinstance(v, str) for v in value.values()):
        return [
            _error("All values of custom arguments object must be strings", field_name, "personalizations.custom_args")
        ]
    return []


def _custom_args_size_error(field_name: str) -> dict:
    return _error(
        f"The combined size of both global and personalization custom arguments may not exceed "
        f"{MAX_CUSTOM_ARGS_BYTES:,} bytes per personalization.",
        field_name,
        "personalizations.custom_args",
    )


def _asm_errors(asm: Any) -> list[dict]:
    if not isinstance(asm, dict) or not _is_int(asm.get("group_id")):
        return [_error("The ASM group ID must be an integer.", "asm.group_id", "asm.group_id")]
    display = asm.get("groups_to_display")
    if display is not None:
        if not isinstance(display, list) or not all(_is_int(g) for g in display):
            return [
                _error(
                    "The ASM Group IDs to display must be an array of integers.",
                    "asm.groups_to_display",
                    "asm.groups_to_display",
                )
            ]
        if len(display) > 25:
            return [
                _error(
                    "There is a limit of 25 unsubscribe groups that can be displayed to a user at a time.",
                    "asm.groups_to_display",
                    "asm.groups_to_display",
                )
            ]
    return []


def _attachment_errors(attachments: Any) -> list[dict]:
    if not isinstance(attachments, list):
        return [_error("The attachments must be an array.", "attachments")]
    errors: list[dict] = []
    for i, att in enumerate(attachments):
        where = f"attachments.{i}"
        if not isinstance(att, dict):
            errors.append(_error("Each attachment must be an object.", where))
            continue
        content = att.get("content")
        if not isinstance(content, str) or not content:
            errors.append(
                _error(
                    "The attachment content must be a string at least one character in length.",
                    f"{where}.content",
                    "attachments.content",
                )
            )
        else:
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                errors.append(
                    _error("The attachment content must be base64 encoded.", f"{where}.content", "attachments.content")
                )
        if not isinstance(att.get("filename"), str) or not att["filename"]:
            errors.append(_error("filename is required.", f"{where}.filename", "attachments.filename"))
        if att.get("disposition", "attachment") not in ("attachment", "inline"):
            errors.append(
                _error(
                    'The disposition of your attachment can be either "inline" or "attachment".',
                    f"{where}.disposition",
                    "attachments.disposition",
                )
            )
    return errors


def _int_param(params: dict, name: str, default: int | None, *, low: int = 0, high: int | None = None) -> int | None:
    values = params.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _ApiError(400, [_error(f"{name} must be an integer", name)]) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _ApiError(400, [_error(f"{name} must be {bound}", name)])
    return value


def _date_param(params: dict, name: str, default: date | None) -> date:
    values = params.get(name)
    if not values:
        if default is None:
            raise _ApiError(400, [_error(f"{name} is required", name)])
        return default
    text = values[-1]
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise _ApiError(400, [_error(f"{name} must be a date in the format YYYY-MM-DD", name)]) from None


def _epoch(value: datetime | int | None, what: str) -> int:
    if value is None:
        return int(time.time())
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} must be timezone-aware, got a naive datetime")
        return int(value.timestamp())
    if _is_int(value) and value >= 0:
        return value
    raise ValueError(f"{what} must be an aware datetime or a non-negative epoch int, got {type(value).__name__}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    disable_nagle_algorithm = True  # small keep-alive answers must not wait for delayed ACKs
    fake: FakeSendGrid  # set on a per-server subclass

    def setup(self) -> None:
        super().setup()
        self.fake._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """No per-request logging: thousands of requests a second in benchmarks."""

    def handle_one_request(self) -> None:
        """The base class's loop, with a lean header parser (``email.parser`` costs ~100 us a request).

        ``self.headers`` is a dict with lower-case names.
        """
        try:
            line = self.rfile.readline(65537)
            if not line:
                self.close_connection = True
                return
            parts = line.split()
            if len(line) > 65536 or len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                self._reject(400 if len(line) <= 65536 else 414)
                return
            self.command, self.path, self.request_version = (p.decode("latin-1") for p in parts)
            headers: dict[str, str] = {}
            while True:
                raw = self.rfile.readline(65537)
                if raw in (b"\r\n", b"\n", b""):
                    break
                name, sep, value = raw.decode("latin-1").partition(":")
                if not sep or len(headers) >= 100:
                    self._reject(400)
                    return
                headers[name.strip().lower()] = value.strip()
            self.headers = headers  # type: ignore[assignment]
            connection = headers.get("connection", "").lower()
            if self.request_version == "HTTP/1.1":
                self.close_connection = connection == "close"
            else:
                self.close_connection = connection != "keep-alive"
            if headers.get("expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.fake._handle(self)
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def _reject(self, status: int) -> None:
        self.close_connection = True
        self.wfile.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )


class _Server(ThreadingHTTPServer):
    """One thread per open connection, reused: clients that open a connection per request
    (python_http_client does) would otherwise pay a thread start each time."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for held ("timeout") answers
    request_queue_size = 1024  # bursts of new connections must not hit SYN retries
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = 0
        self._workers = 0
        self._pool_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._pool_lock:
            spawn = self._idle == 0
            if spawn:
                self._workers += 1
            else:
                self._idle -= 1  # that idle worker will take this job
        if spawn:
            threading.Thread(target=self._work, args=((request, client_address),), daemon=True).start()
        else:
            self._jobs.put((request, client_address))

    def _work(self, job: tuple | None) -> None:
        while job is not None:
            self.process_request_thread(*job)  # handles, reports errors, closes the socket
            with self._pool_lock:
                self._idle += 1
            job = self._jobs.get()

    def server_close(self) -> None:
        super().server_close()
        with self._pool_lock:
            workers = self._workers
        for _ in range(workers):
            self._jobs.put(None)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn (a DNS lookup)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up are expected here; anything else is kept for the test to see."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        self.fake.server_errors.append(traceback.format_exc())


class FakeSendGrid:
    """SendGrid's v3 API on http://127.0.0.1:<port>, with recorded sends and injectable faults.

    Endpoints: POST /v3/mail/send; POST /v3/mail/batch, GET /v3/mail/batch/{id};
    POST|GET /v3/user/scheduled_sends, GET|PATCH|DELETE /v3/user/scheduled_sends/{batch_id};
    GET /v3/suppression/{bounces,blocks,spam_reports,invalid_emails,unsubscribes}[/{email}];
    GET /v3/asm/suppressions, GET /v3/asm/groups/{group_id}/suppressions; GET /v3/stats,
    GET /v3/categories/stats. List endpoints page with limit (<= 500), offset, start_time/end_time
    and a Link header. Everything else is 404 (405 for a wrong method), in SendGrid's error format.
    """

    def __init__(
        self, api_key: str = "SG.fake-test-key", *, seed: int = 0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ):
        self.api_key = api_key
        self.url = ""
        self.max_body_bytes = max_body_bytes
        self.accepted: list[AcceptedRequest] = []
        self.sandboxed: list[AcceptedRequest] = []  # valid sends in sandbox mode: 200, never delivered
        self.requests_log: list[tuple[str, str, int]] = []  # status 0: no answer (drop, reset_before)
        self.server_errors: list[str] = []  # tracebacks of bugs in this server; tests may assert it stays empty
        self.batches: set[str] = set()
        self.scheduled_sends: dict[str, str] = {}  # batch_id -> "cancel" | "pause"
        self.cancelled_batches: set[str] = set()
        self.paused_batches: set[str] = set()
        self._auth = f"Bearer {api_key}"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._queued: dict[str, collections.deque[_Fault]] = {}
        self._rates: dict[str, _FaultRate] = {}
        self._windows: dict[str, tuple[float, int]] = {}
        self._suppressions: dict[str, dict[str, dict]] = {kind: {} for kind in SUPPRESSION_KINDS}
        self._asm: dict[tuple[int, str], dict] = {}
        self._group_names: dict[int, str] = {}
        self._stats: dict[tuple[str | None, date], dict[str, int]] = {}
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._date_cache = (0, "")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeSendGrid:
        if self._server is not None:
            raise RuntimeError("FakeSendGrid is already started")
        handler = type("FakeSendGridHandler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-sendgrid", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake held answers and hang up on idle keep-alive connections."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget recorded requests and faults (suppressions, stats and batches stay)."""
        with self._lock:
            self.accepted.clear()
            self.sandboxed.clear()
            self.requests_log.clear()
            self._queued.clear()
            self._rates.clear()

    # -- what SendGrid accepted -----------------------------------------------------------------
    def accepted_recipients(self) -> list[dict]:
        """One entry per personalization "to" address of every accepted request, as SendGrid merges them."""
        out: list[dict] = []
        for accepted in list(self.accepted):
            body = accepted.body
            top_args = body.get("custom_args") or {}
            top_headers = body.get("headers") or {}
            categories = list(body.get("categories") or [])
            for p in body["personalizations"]:
                substitutions = dict(p.get("substitutions") or {})
                subject = p.get("subject") or body.get("subject")
                if subject:
                    for token, value in substitutions.items():
                        subject = subject.replace(token, value)
                custom_args = {**top_args, **(p.get("custom_args") or {})}
                headers = {**top_headers, **(p.get("headers") or {})}
                send_at = p.get("send_at", body.get("send_at"))
                for person in p["to"]:
                    out.append(
                        {
                            "email": person["email"],
                            "name": person.get("name"),
                            "custom_args": dict(custom_args),
                            "send_at": send_at,
                            "batch_id": accepted.batch_id,
                            "categories": list(categories),
                            "subject": subject,
                            "headers": dict(headers),
                            "substitutions": dict(substitutions),
                            "asm": body.get("asm"),
                            "message_id": accepted.message_id,
                        }
                    )
        return out

    def ledger_key_counts(self) -> collections.Counter:
        """custom_args["ledger_key"] -> how many times SendGrid accepted a mail carrying it."""
        return collections.Counter(
            r["custom_args"]["ledger_key"] for r in self.accepted_recipients() if "ledger_key" in r["custom_args"]
        )

    # -- fault injection ------------------------------------------------------------------------
    def inject(self, kind: str, times: int = 1, *, path: str = MAIL_SEND, **options: Any) -> None:
        """The next ``times`` requests to ``path`` get fault ``kind`` (after any already queued)."""
        _check_fault(kind, options)
        if not _is_int(times) or times < 1:
            raise ValueError(f"times must be a positive int, got {times!r}")
        with self._lock:
            queue = self._queued.setdefault(_normal_path(path), collections.deque())
            queue.extend(_Fault(kind, dict(options)) for _ in range(times))

    def set_fault_rate(
        self,
        rate: float,
        kinds: Sequence[str] = ("429", "500", "503", "timeout", "drop"),
        *,
        path: str = MAIL_SEND,
        **options: Any,
    ) -> None:
        """Each request to ``path`` (not served by ``inject``) is faulted with probability ``rate``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {rate!r}")
        kinds = tuple(kinds)
        if not kinds:
            raise ValueError("kinds must name at least one fault kind")
        for kind in kinds:
            _check_fault(kind, options)
        with self._lock:
            if rate == 0.0:
                self._rates.pop(_normal_path(path), None)
            else:
                self._rates[_normal_path(path)] = _FaultRate(rate, kinds, dict(options))

    def clear_faults(self) -> None:
        with self._lock:
            self._queued.clear()
            self._rates.clear()

    def _next_fault(self, path: str) -> _Fault | None:
        with self._lock:
            queue = self._queued.get(path)
            if queue:
                return queue.popleft()
            rate = self._rates.get(path)
            if rate is not None and self._rng.random() < rate.rate:
                return _Fault(self._rng.choice(rate.kinds), rate.options)
        return None

    # -- state for the read endpoints -----------------------------------------------------------
    def add_suppression(
        self,
        kind: str,
        email: str,
        *,
        created: datetime | int | None = None,
        reason: str = "",
        status: str = "",
        group_id: int | None = None,
        ip: str = "",
        group_name: str | None = None,
    ) -> None:
        """Put ``email`` on a suppression list (replacing its earlier entry on that list)."""
        if not isinstance(email, str) or not email:
            raise ValueError("email must be a non-empty string")
        stamp = _epoch(created, "created")
        if kind == "asm":
            if not _is_int(group_id):
                raise ValueError("group_id (an int) is required for kind 'asm'")
            if reason or status or ip:
                raise ValueError("asm suppressions carry no reason, status or ip")
            record = {"email": email, "group_id": group_id, "created_at": stamp}
            with self._lock:
                if group_name is not None:
                    self._group_names[group_id] = group_name
                self._asm[(group_id, email.casefold())] = record
            return
        if kind not in SUPPRESSION_FIELDS:
            raise ValueError(f"unknown suppression kind {kind!r}; expected one of {(*SUPPRESSION_KINDS, 'asm')}")
        if group_id is not None or group_name is not None:
            raise ValueError(f"group_id/group_name only apply to kind 'asm', not {kind!r}")
        fields = SUPPRESSION_FIELDS[kind]
        for name, value in (("reason", reason), ("status", status), ("ip", ip)):
            if value and name not in fields:
                raise ValueError(f"{kind} records have no {name!r} field")
        values = {"created": stamp, "email": email, "reason": reason, "status": status, "ip": ip}
        with self._lock:
            self._suppressions[kind][email.casefold()] = {name: values[name] for name in fields}

    def set_stats(self, day: date, metrics: dict, *, category: str | None = None) -> None:
        """Metrics of one day (globally, or for one category); missing metrics are zero."""
        if isinstance(day, datetime) or not isinstance(day, date):
            raise ValueError(f"day must be a date, got {type(day).__name__}")
        if category is not None and (not isinstance(category, str) or not category):
            raise ValueError("category must be a non-empty string")
        row = dict.fromkeys(STATS_METRICS, 0)
        for name, value in metrics.items():
            if name not in row:
                raise ValueError(f"unknown metric {name!r}; expected one of {STATS_METRICS}")
            if not _is_int(value) or value < 0:
                raise ValueError(f"metric {name!r} must be a non-negative int, got {value!r}")
            row[name] = value
        with self._lock:
            self._stats[(category, day)] = row

    # -- request handling -----------------------------------------------------------------------
    def _handle(self, h: _Handler) -> None:
        method = h.command
        path, _, query = h.path.partition("?")
        path = _normal_path(path)
        try:
            if h.headers.get("authorization") != self._auth:
                self._drain(h)
                self._answer(h, method, path, 401, {"errors": [{"field": None, "message": _UNAUTHORIZED}]})
                return
            fault = self._next_fault(path)
            if fault is not None and fault.kind in _FAULT_MESSAGES:
                self._drain(h)
                status, message = _FAULT_MESSAGES[fault.kind]
                headers = []
                if fault.kind == "429":
                    limit = RATE_LIMITS["mail" if path == MAIL_SEND else "api"][0]
                    reset = int(time.time() + fault.options.get("reset_after", 1))
                    headers = [
                        ("X-RateLimit-Limit", str(limit)),
                        ("X-RateLimit-Remaining", "0"),
                        ("X-RateLimit-Reset", str(reset)),
                    ]
                self._answer(
                    h, method, path, status, {"errors": [{"field": None, "message": message}]}, headers, rate=False
                )
                return
            if fault is not None and fault.kind == "reset_before":
                self.requests_log.append((method, path, 0))
                h.close_connection = True
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()  # RST once the handler lets go of the socket; the body stays unread
                return
            try:
                raw = self._read_body(h)
                status, payload, headers = self._route(method, path, query, raw, fault.kind if fault else None)
            except _ApiError as exc:
                status, payload, headers = exc.status, {"errors": exc.errors}, []
            if fault is not None and fault.kind == "drop":
                self.requests_log.append((method, path, 0))
                h.close_connection = True  # the server hangs up (FIN) without a status line
                return
            if fault is not None:  # slow, timeout: the work is done (and logged), the answer is late
                self.requests_log.append((method, path, status))
                self._stopping.wait(float(fault.options.get("delay", DEFAULT_DELAY[fault.kind])))
                self._answer(h, method, path, status, payload, headers, log=False)
                return
            self._answer(h, method, path, status, payload, headers)
        except OSError:
            h.close_connection = True
        except Exception:  # noqa: BLE001 - a bug here must reach the test as a 500 and in server_errors
            self.server_errors.append(traceback.format_exc())
            h.close_connection = True
            try:
                self._answer(h, method, path, 500, {"errors": [{"field": None, "message": "internal server error"}]})
            except OSError:
                pass

    def _read_body(self, h: _Handler) -> bytes:
        if h.headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked(h)
        length = _content_length(h)
        if length > self.max_body_bytes:
            self._discard(h, length)
            raise _ApiError(413, [_error("The JSON payload you have included in your request is too large.", None)])
        return h.rfile.read(length) if length else b""

    def _read_chunked(self, h: _Handler) -> bytes:
        parts: list[bytes] = []
        size_total = 0
        while True:
            line = h.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            except ValueError:
                h.close_connection = True
                raise _ApiError(400, [_error("Malformed chunked request body.", None)]) from None
            if size == 0:
                while h.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            size_total += size
            chunk = h.rfile.read(size)
            h.rfile.readline(65537)
            if size_total <= self.max_body_bytes:
                parts.append(chunk)
        if size_total > self.max_body_bytes:
            raise _ApiError(413, [_error("The JSON payload you have included in your request is too large.", None)])
        return b"".join(parts)

    def _drain(self, h: _Handler) -> None:
        """Read and forget the body so the keep-alive connection stays usable."""
        try:
            if h.headers.get("transfer-encoding", "").lower() == "chunked":
                self._read_chunked(h)
            else:
                self._discard(h, _content_length(h))
        except _ApiError:
            pass  # too big or malformed: nothing to keep anyway

    @staticmethod
    def _discard(h: _Handler, length: int) -> None:
        while length > 0:
            chunk = h.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _answer(
        self,
        h: _Handler,
        method: str,
        path: str,
        status: int,
        payload: Any = None,
        headers: Sequence[tuple[str, str]] = (),
        *,
        rate: bool = True,
        log: bool = True,
    ) -> None:
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nServer: nginx\r\nDate: {self._date()}\r\n"
            f"Content-Length: {len(body)}\r\n"
        ]
        if body:
            lines.append("Content-Type: application/json\r\n")
        if rate:
            limit, remaining, reset = self._rate_window(path)
            lines.append(
                f"X-RateLimit-Limit: {limit}\r\nX-RateLimit-Remaining: {remaining}\r\nX-RateLimit-Reset: {reset}\r\n"
            )
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n")
        lines.append("Connection: close\r\n\r\n" if h.close_connection else "Connection: keep-alive\r\n\r\n")
        if log:
            self.requests_log.append((method, path, status))
        h.wfile.write("".join(lines).encode("latin-1") + body)

    def _date(self) -> str:
        now = int(time.time())
        cached_at, text = self._date_cache
        if cached_at != now:
            text = formatdate(now, usegmt=True)
            self._date_cache = (now, text)
        return text

    def _rate_window(self, path: str) -> tuple[int, int, int]:
        group = "mail" if path == MAIL_SEND else "api"
        limit, window = RATE_LIMITS[group]
        now = time.time()
        with self._lock:
            start, count = self._windows.get(group, (0.0, 0))
            if now >= start + window:
                start, count = now - now % window, 0
            count += 1
            self._windows[group] = (start, count)
        return limit, max(limit - count, 0), int(start + window)

    def _json(self, raw: bytes) -> Any:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _ApiError(415, [_error("Invalid UTF8 in request", None)]) from None
        try:
            return json.loads(text)
        except ValueError:
            raise _ApiError(400, [_error("Bad Request: the body is not valid JSON.", None)]) from None

    # -- routes ---------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: str, raw: bytes, fault: str | None) -> tuple[int, Any, list]:
        parts = path.strip("/").split("/")
        params = parse_qs(query, keep_blank_values=True) if query else {}
        if path == MAIL_SEND:
            _allow(method, "POST")
            return self._mail_send(raw, fault)
        if path == "/v3/mail/batch":
            _allow(method, "POST")
            return self._batch_create()
        if len(parts) == 4 and parts[:3] == ["v3", "mail", "batch"]:
            _allow(method, "GET")
            batch_id = unquote(parts[3])
            if batch_id not in self.batches:
                raise _ApiError(400, [_error("invalid batch id", None)])
            return 200, {"batch_id": batch_id}, []
        if parts[:3] == ["v3", "user", "scheduled_sends"] and len(parts) in (3, 4):
            return self._scheduled_sends(method, unquote(parts[3]) if len(parts) == 4 else None, raw)
        if len(parts) in (3, 4) and parts[:2] == ["v3", "suppression"] and parts[2] in SUPPRESSION_KINDS:
            _allow(method, "GET")
            with self._lock:
                rows = list(self._suppressions[parts[2]].values())
            if len(parts) == 4:
                wanted = unquote(parts[3]).casefold()
                return 200, [r for r in rows if r["email"].casefold() == wanted], []
            return self._page(path, params, rows, "created", lambda r: r)
        if path == "/v3/asm/suppressions":
            _allow(method, "GET")
            with self._lock:
                rows = list(self._asm.values())
                names = dict(self._group_names)

            def shape(r: dict) -> dict:
                name = names.get(r["group_id"], f"Group {r['group_id']}")
                return {
                    "email": r["email"],
                    "group_id": r["group_id"],
                    "group_name": name,
                    "created_at": r["created_at"],
                }

            return self._page(path, params, rows, "created_at", shape)
        if len(parts) == 5 and parts[:3] == ["v3", "asm", "groups"] and parts[4] == "suppressions":
            _allow(method, "GET")
            try:
                group_id = int(parts[3])
            except ValueError:
                raise _ApiError(400, [_error("group_id must be an integer", "group_id")]) from None
            with self._lock:
                rows = [r for r in self._asm.values() if r["group_id"] == group_id]
            return self._page(path, params, rows, "created_at", lambda r: r["email"])
        if path == "/v3/stats":
            _allow(method, "GET")
            return self._stats_answer(params, None)
        if path == "/v3/categories/stats":
            _allow(method, "GET")
            categories = params.get("categories") or []
            if not categories or not all(categories):
                raise _ApiError(400, [_error("categories is required", "categories")])
            if len(categories) > MAX_CATEGORIES:
                raise _ApiError(400, [_error(f"at most {MAX_CATEGORIES} categories can be requested", "categories")])
            return self._stats_answer(params, categories)
        raise _ApiError(404, [_error("resource not found", None)])

    def _mail_send(self, raw: bytes, fault: str | None) -> tuple[int, Any, list]:
        body = self._json(raw)
        errors = validate_mail(body, now=time.time(), known_batches=self.batches)
        if errors:
            return 400, {"errors": errors}, []
        message_id = secrets.token_urlsafe(16)
        accepted = AcceptedRequest(
            body=body, message_id=message_id, received_at=datetime.now(UTC), batch_id=body.get("batch_id"), fault=fault
        )
        settings = body.get("mail_settings") or {}
        if ((settings.get("sandbox_mode") or {}).get("enable")) is True:
            self.sandboxed.append(accepted)  # SendGrid: 200 = valid but not queued for delivery
            return 200, None, [("X-Message-Id", message_id)]
        with self._lock:
            self.accepted.append(accepted)
        return 202, None, [("X-Message-Id", message_id)]

    def _batch_create(self) -> tuple[int, Any, list]:
        batch_id = "".join(secrets.choice(_ALNUM) for _ in range(32))
        with self._lock:
            self.batches.add(batch_id)
        return 201, {"batch_id": batch_id}, []

    def _scheduled_sends(self, method: str, batch_id: str | None, raw: bytes) -> tuple[int, Any, list]:
        if batch_id is None:
            _allow(method, "GET", "POST")
            if method == "GET":
                return 200, [{"batch_id": b, "status": s} for b, s in self.scheduled_sends.items()], []
            body = self._json(raw)
            if not isinstance(body, dict):
                raise _ApiError(400, [_error("The request body must be a JSON object.", None)])
            batch_id, status = body.get("batch_id"), body.get("status")
            self._check_schedule(batch_id, status)
            with self._lock:
                if batch_id in self.scheduled_sends:
                    raise _ApiError(
                        400, [_error("This batch already has a status; update or delete it instead.", "batch_id")]
                    )
                self._set_schedule(batch_id, status)
            return 201, {"batch_id": batch_id, "status": status}, []
        _allow(method, "GET", "PATCH", "DELETE")
        if method == "GET":
            status = self.scheduled_sends.get(batch_id)
            return 200, ([] if status is None else [{"batch_id": batch_id, "status": status}]), []
        with self._lock:
            if batch_id not in self.scheduled_sends:
                raise _ApiError(404, [_error("batch id not found", "batch_id")])
            if method == "DELETE":
                self._set_schedule(batch_id, None)
                return 204, None, []
        body = self._json(raw)
        status = body.get("status") if isinstance(body, dict) else None
        self._check_schedule(batch_id, status)
        with self._lock:
            self._set_schedule(batch_id, status)
        return 204, None, []

    def _check_schedule(self, batch_id: Any, status: Any) -> None:
        if not isinstance(batch_id, str) or batch_id not in self.batches:
            raise _ApiError(400, [_error("invalid batch id", "batch_id")])
        if status not in ("cancel", "pause"):
            raise _ApiError(400, [_error("status must be either cancel or pause", "status")])

    def _set_schedule(self, batch_id: str, status: str | None) -> None:
        self.cancelled_batches.discard(batch_id)
        self.paused_batches.discard(batch_id)
        if status is None:
            self.scheduled_sends.pop(batch_id, None)
            return
        self.scheduled_sends[batch_id] = status
        (self.cancelled_batches if status == "cancel" else self.paused_batches).add(batch_id)

    def _page(self, path: str, params: dict, rows: list[dict], key: str, shape: Any) -> tuple[int, Any, list]:
        """SendGrid's list paging: newest first, start/end_time inclusive on ``key``, Link header."""
        limit = _int_param(params, "limit", MAX_PAGE_LIMIT, low=1, high=MAX_PAGE_LIMIT)
        offset = _int_param(params, "offset", 0, low=0)
        start = _int_param(params, "start_time", None)
        end = _int_param(params, "end_time", None)
        if start is not None:
            rows = [r for r in rows if r[key] >= start]
        if end is not None:
            rows = [r for r in rows if r[key] <= end]
        rows.sort(key=lambda r: r[key], reverse=True)  # stable: equal times keep insertion order
        page = [shape(r) for r in rows[offset : offset + limit]]
        total = len(rows)
        kept = {k: v[-1] for k, v in params.items() if k in ("start_time", "end_time")}

        def link(at: int, rel: str, title: int) -> str:
            return (
                f'<{self.url}{path}?{urlencode({**kept, "limit": limit, "offset": at})}>; rel="{rel}"; title="{title}"'
            )

        links = []
        if offset + limit < total:
            links.append(link(offset + limit, "next", (offset + limit) // limit + 1))
        if offset > 0:
            links.append(link(max(offset - limit, 0), "prev", max(offset - limit, 0) // limit + 1))
        last = max((total - 1) // limit, 0) * limit
        links.append(link(last, "last", last // limit + 1))
        links.append(link(0, "first", 1))
        return 200, page, [("Link", ", ".join(links))]

    def _stats_answer(self, params: dict, categories: list[str] | None) -> tuple[int, Any, list]:
        start = _date_param(params, "start_date", None)
        end = _date_param(params, "end_date", datetime.now(UTC).date())
        if end < start:
            raise _ApiError(400, [_error("end_date must be on or after start_date", "end_date")])
        aggregated_by = (params.get("aggregated_by") or ["day"])[-1]
        if aggregated_by not in ("day", "week", "month"):
            raise _ApiError(400, [_error("aggregated_by must be day, week or month", "aggregated_by")])
        names: list[str | None] = list(categories) if categories is not None else [None]
        buckets: dict[date, dict[str | None, dict[str, int]]] = {}
        zero = dict.fromkeys(STATS_METRICS, 0)
        with self._lock:
            day = start
            while day <= end:
                if aggregated_by == "day":
                    label = day
                elif aggregated_by == "week":
                    label = max(start, day - timedelta(days=day.weekday()))
                else:
                    label = max(start, day.replace(day=1))
                bucket = buckets.setdefault(label, {name: dict(zero) for name in names})
                for name in names:
                    row = self._stats.get((name, day))
                    if row:
                        totals = bucket[name]
                        for metric, value in row.items():
                            totals[metric] += value
                day += timedelta(days=1)
        out = []
        for label, per_name in buckets.items():
            if categories is None:
                stats = [{"metrics": per_name[None]}]
            else:
                stats = [{"metrics": per_name[name], "name": name, "type": "category"} for name in names]
            out.append({"date": label.isoformat(), "stats": stats})
        return 200, out, []


def _content_length(h: _Handler) -> int:
    text = h.headers.get("content-length") or "0"
    if not text.isdigit():
        h.close_connection = True  # the body's end is unknown: this connection cannot be reused
        raise _ApiError(400, [_error("Content-Length must be a non-negative integer.", None)])
    return int(text)


def _normal_path(path: str) -> str:
    return path.rstrip("/") or "/"


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _ApiError(405, [_error("method not allowed", None)])


def _check_fault(kind: str, options: dict) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
    unknown = set(options) - FAULT_OPTIONS
    if unknown:
        raise ValueError(f"unknown fault options {sorted(unknown)}; expected some of {sorted(FAULT_OPTIONS)}")
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"fault option {name!r} must be a non-negative number, got {value!r}")


_LOAD_CLIENT = """
import http.client, json, sys, threading, time
port, connections, per_connection, key = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = json.dumps({"personalizations": [{"to": [{"email": "a@example.org"}], "custom_args": {"ledger_key": "k"}}],
    "from": {"email": "shop@example.com"}, "subject": "Hi",
    "content": [{"type": "text/plain", "value": "x"}, {"type": "text/html", "value": "<p>x</p>"}]}).encode()
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
def work():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(per_connection):
        conn.request("POST", "/v3/mail/send", body, headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 202, response.status
threads = [threading.Thread(target=work) for _ in range(connections)]
started = time.perf_counter()
for t in threads: t.start()
for t in threads: t.join()
print(time.perf_counter() - started)
"""


def _load_check(connections: int = 4, per_connection: int = 2000) -> None:
    """Throughput with keep-alive clients in another process: ``python tests/support/fake_sendgrid.py [conns] [per conn]``."""
    import os

    with FakeSendGrid() as server:
        before = os.times()
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _LOAD_CLIENT,
                server.url.rsplit(":", 1)[1],
                str(connections),
                str(per_connection),
                server.api_key,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        after = os.times()
        total = connections * per_connection
        seconds = float(result.stdout.strip())
        cpu = (after.user + after.system) - (before.user + before.system)
        print(
            f"{total} mail/send requests over {connections} keep-alive connections: {total / seconds:,.0f} req/s; "
            f"server CPU {cpu / total * 1e6:.0f} us/request; accepted {len(server.accepted)}; "
            f"server errors {len(server.server_errors)}"
        )


if __name__ == "__main__":
    _load_check(*(int(a) for a in sys.argv[1:3]))
