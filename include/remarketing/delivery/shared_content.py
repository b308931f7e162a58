"""The send step's render callback for mails whose content is shared (campaigns, the welcome series).

Content is rendered once per group of members and locale; each member gets only substitutions
(greeting, one-click unsubscribe link) and a List-Unsubscribe header.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class SharedContentRenderer:
    """The send step's render callback for shared content.

    ``content(key, locale) -> (template, context)`` gives what to render for a group of members
    sharing ``group_columns`` values and a locale; it is rendered once (``render_shared``) and
    each member gets substitutions (greeting, unsubscribe_url) and a List-Unsubscribe header.
    The first message of each group is kept (``samples``) for dry-run previews.
    """

    def __init__(
        self,
        *,
        flow: str,
        market,
        secret: bytes,
        group_columns: tuple[str, ...],
        content: Callable[[tuple, str], tuple[str, Mapping[str, Any]]],
        categories: Callable[[tuple], tuple[str, ...]] = lambda key: (),
        custom_args: Callable[[tuple], Mapping[str, str]] = lambda key: {},
        renderer=None,
    ):
        from remarketing.content.renderer import MailRenderer

        self.flow = flow
        self.market = market
        self.secret = secret
        self.group_columns = group_columns
        self.content = content
        self.categories = categories
        self.custom_args = custom_args
        self.renderer = renderer or MailRenderer()
        self._mails: dict[tuple, Any] = {}
        self.samples: dict[tuple, Any] = {}

    def _mail(self, key: tuple, locale: str):
        from remarketing.content.renderer import SHARED_PLACEHOLDERS

        cache_key = (*key, locale)
        if cache_key not in self._mails:
            try:
                template, context = self.content(key, locale)
                self._mails[cache_key] = self.renderer.render_shared(template, locale, context, SHARED_PLACEHOLDERS)
            except Exception as exc:  # noqa: BLE001 - RenderError, CampaignError: the group fails, not the market
                self._mails[cache_key] = exc
        return self._mails[cache_key]

    def __call__(self, chunk):
        from remarketing.content.renderer import SHARED_PLACEHOLDERS, substitutions_for
        from remarketing.delivery.compose import marketing_message, marketing_recipient, unsubscribe_link
        from remarketing.delivery.send_step import RenderFailure

        market = self.market
        columns = ["locale", *self.group_columns]
        for values, group in chunk.groupby(columns, sort=True, dropna=False):
            locale, key = values[0], tuple(values[1:])
            mail = self._mail(key, locale)
            keys = tuple(group["ledger_key"])
            if isinstance(mail, Exception):
                yield RenderFailure(keys, f"render failed for {'/'.join(map(str, key))} [{locale}]: {mail}")
                continue
            recipients = []
            for row in group.to_dict("records"):
                unsubscribe = unsubscribe_link(market, row["customer_ref"], self.secret)
                first = row.get("first_name")
                first = first if isinstance(first, str) else None
                last = row.get("last_name")
                last = last if isinstance(last, str) else None
                greeting = self.renderer.greeting(locale, first, last)
                recipients.append(
                    marketing_recipient(
                        row,
                        unsubscribe=unsubscribe,
                        name=first,
                        substitutions=substitutions_for(
                            SHARED_PLACEHOLDERS, {"greeting": greeting, "unsubscribe_url": unsubscribe}
                        ),
                    )
                )
            message = marketing_message(
                market,
                mail,
                tuple(recipients),
                categories=self.categories(key),
                custom_args={"flow": self.flow, "market": market.code, **self.custom_args(key)},
            )
            self.samples.setdefault((*key, locale), message)
            yield message
