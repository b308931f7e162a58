"""What flows hand to a transport, and what a transport hands back.

One Message is one rendered content. It goes to one recipient (personal content, such as a
cart reminder) or to up to 1,000 (shared content, such as a campaign variant), in which case
each recipient's own values travel as SendGrid substitutions. Every recipient carries the
send-ledger key that identifies this one email; transports put it in ``custom_args`` so
SendGrid's events can be joined back to the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from remarketing.content.text import one_line

MAX_RECIPIENTS_PER_REQUEST = 1000  # SendGrid: personalizations per mail/send request
MAX_SEND_AT_AHEAD_HOURS = 72  # SendGrid: send_at at most 72 hours ahead

Outcome = Literal["accepted", "rejected", "unknown"]


@dataclass(frozen=True)
class Recipient:
    email: str
    ledger_key: str
    name: str | None = None
    substitutions: Mapping[str, str] = field(default_factory=dict)  # token -> value, for shared content
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. List-Unsubscribe with this recipient's URL
    custom_args: Mapping[str, str] = field(default_factory=dict)  # besides ledger_key; never personal data

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", one_line(self.name) or None)  # header text: never a line break


@dataclass(frozen=True)
class Message:
    recipients: tuple[Recipient, ...]
    from_email: str
    from_name: str
    subject: str
    html: str
    text: str
    reply_to: str | None = None
    send_at: datetime | None = None  # timezone-aware; None = now
    batch_id: str | None = None  # one per market run, so the run's scheduled mail can be cancelled
    categories: tuple[str, ...] = ()  # flow, market, step: never personal data
    asm_group_id: int | None = None  # the market's unsubscribe group
    marketing: bool = True  # marketing mail carries List-Unsubscribe-Post: List-Unsubscribe=One-Click
    headers: Mapping[str, str] = field(default_factory=dict)
    custom_args: Mapping[str, str] = field(default_factory=dict)  # shared by all recipients: flow, market, run

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", one_line(self.subject))  # header text: never a line break
        object.__setattr__(self, "from_name", one_line(self.from_name))


@dataclass(frozen=True)
class SendResult:
    """The outcome of one Message (all its recipients share it).

    accepted: SendGrid answered 202 (or the outbox wrote the files).
    rejected: definitely not sent: a 4xx other than 429, or 429/5xx retries exhausted.
    unknown: the request may have reached SendGrid (timed out or connection dropped after it
    was sent); never retried blindly, reconciled later from SendGrid's events.
    """

    ledger_keys: tuple[str, ...]
    outcome: Outcome
    status: int | None = None
    error: str | None = None  # SendGrid's error message(s); no personal data
    attempts: int = 1
    message_id: str | None = None
