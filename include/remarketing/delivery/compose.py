"""Putting a rendered marketing mail together for a market: its one-click unsubscribe link, the
recipient, the message with the market's sender and unsubscribe group. Every flow's renderer uses
these, so no flow can forget the unsubscribe header or mislabel the sender."""

from __future__ import annotations

from collections.abc import Mapping

from remarketing.delivery.messages import Message, Recipient


def unsubscribe_link(market, customer_ref: str, secret: bytes) -> str:
    """The member's signed one-click unsubscribe URL for ``market``'s unsubscribe group."""
    from remarketing.content.unsubscribe_links import sign_unsubscribe_token, unsubscribe_url

    token = sign_unsubscribe_token(
        customer_ref, market=market.code, group_id=market.sendgrid_unsubscribe_group_id, secret=secret
    )
    return unsubscribe_url(market.storefront.unsubscribe_url, token)


def marketing_recipient(
    row: Mapping, *, unsubscribe: str, name: str | None, substitutions: Mapping[str, str] | None = None
) -> Recipient:
    """One audience row as a recipient: its ledger key, List-Unsubscribe header and time zone."""
    return Recipient(
        email=row["email"],
        ledger_key=row["ledger_key"],
        name=name,
        substitutions=substitutions or {},
        headers={"List-Unsubscribe": f"<{unsubscribe}>"},
        custom_args={"time_zone": str(row["time_zone"])},
    )


def marketing_message(
    market, mail, recipients: tuple[Recipient, ...], *, categories: tuple[str, ...], custom_args: Mapping[str, str]
) -> Message:
    """A rendered mail (subject, html, text) from ``market``'s sender, in its unsubscribe group."""
    sender = market.sender
    return Message(
        recipients=recipients,
        from_email=sender.from_email,
        from_name=sender.from_name,
        reply_to=sender.reply_to,
        subject=mail.subject,
        html=mail.html,
        text=mail.text,
        categories=categories,
        asm_group_id=market.sendgrid_unsubscribe_group_id,
        marketing=True,
        custom_args=custom_args,
    )
