"""How a mail render fails: :class:`RenderError`, for that one mail.

A render either gives a complete mail or raises :class:`RenderError`, naming the template, the
locale and the variable at fault, never the customer's data.
"""

from __future__ import annotations


class RenderError(ValueError):
    """One mail could not be rendered; names the template, the locale and the variable, no personal data."""

    def __init__(self, template: str, locale: str, problem: str, *, variable: str | None = None):
        self.template = template
        self.locale = locale
        self.variable = variable
        super().__init__(f"{template} [{locale}]: {problem}")
