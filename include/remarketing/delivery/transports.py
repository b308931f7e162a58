"""The transports a send step can use, behind one interface.

``SendGridTransport`` posts to SendGrid; ``OutboxTransport`` (the embedded default) writes files.
Both validate a Message the same way (ValueError naming the ledger key, nothing sent), yield one
``SendResult`` per Message from ``send()``, and offer ``create_batch_id()``/``cancel_batch()`` so a
market run's scheduled mail can be cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from remarketing.delivery.messages import Message, SendResult
from remarketing.delivery.outbox import OutboxTransport
from remarketing.delivery.retry import RetryPolicy
from remarketing.delivery.sendgrid_api import SUPPRESSION_KINDS, SendGridApi
from remarketing.delivery.sendgrid_client import SendGridError
from remarketing.delivery.sendgrid_transport import SendGridTransport, build_mail, validate_message

__all__ = [
    "SUPPRESSION_KINDS",
    "OutboxTransport",
    "RetryPolicy",
    "SendGridApi",
    "SendGridError",
    "SendGridTransport",
    "Transport",
    "build_mail",
    "validate_message",
]


@runtime_checkable
class Transport(Protocol):
    def send(self, messages: Iterable[Message]) -> Iterator[SendResult]: ...

    def create_batch_id(self) -> str: ...

    def cancel_batch(self, batch_id: str) -> None: ...

    def close(self) -> None: ...
