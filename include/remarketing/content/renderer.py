"""Mail rendering: Jinja2 templates in include/templates/, gettext catalogues, Babel formatting.

Why this shape:
- One Jinja2 environment (:mod:`remarketing.content.jinja_environment`) renders every mail; the
  locale of one render travels in the template context, so renders in different locales can run
  side by side in one process.
- Text comes from gettext catalogues (:mod:`remarketing.content.locales`), read at start into
  memory: no compile step.
- Every mail is two templates, ``<name>.html.j2`` (extends base.html.j2) and ``<name>.txt.j2``
  (extends base.txt.j2); the text template also holds the ``subject`` and ``preheader`` blocks.
- A render either gives a complete mail or raises :class:`RenderError` for that one mail, naming
  the template, the locale and the variable at fault, never the customer's data.

Context builders (:func:`cart_recovery_context`, :func:`welcome_context`,
:func:`campaign_context`, in ``flows/<flow>/mail.py``) turn store rows into what the templates
need; prices stay ``Decimal`` and are formatted in the template by the ``money`` filter for the
render's locale.

Shared content (one render for up to 1,000 recipients of a campaign): :meth:`MailRenderer.render_shared`
puts tokens where per-recipient values go (``-greeting_html-`` in the HTML part,
``-greeting_text-`` in the text part) and :func:`substitutions_for` gives each recipient's values
for SendGrid's ``substitutions``, HTML-escaped for the html tokens::

    mail = renderer.render_shared("campaign/generic", "de-DE", ctx, SHARED_PLACEHOLDERS)
    subs = substitutions_for(SHARED_PLACEHOLDERS, {
        "greeting": renderer.greeting("de-DE", customer["first_name"]),
        "unsubscribe_url": unsubscribe_url,
    })
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from markupsafe import Markup, escape

from remarketing.content.errors import RenderError
from remarketing.content.jinja_environment import build_environment
from remarketing.content.locales import SOURCE_LOCALE, babel_locale, load_catalogues, normalize_locale
from remarketing.content.paths import LOCALE_DIR, TEMPLATES_DIR

MAX_HTML_BYTES = 100_000  # Gmail clips larger HTML ("[Message clipped]")
SHARED_PLACEHOLDERS: Mapping[str, str] = {"greeting": "greeting", "unsubscribe_url": "unsubscribe_url"}

# Set by the renderer; a context must not bring its own.
_RESERVED = frozenset({"greeting", "subject", "preheader", "html_lang", "font_family", "_translations", "_locale"})
_STEM_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_UNDEFINED_RE = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'|has no element '?([^']+?)'?$")
# Mail clients pick these up; CJK text needs a CJK font first or it falls back unevenly.
_FONTS = {
    "ja": "'Hiragino Kaku Gothic ProN','Hiragino Sans',Meiryo,'Noto Sans JP',sans-serif",
    "zh": "'PingFang SC','Microsoft YaHei','Noto Sans SC',sans-serif",
}
_DEFAULT_FONT = "Arial,Helvetica,sans-serif"


def _(message: str) -> str:
    """Marks a msgid for extraction; the text is looked up at render time."""
    return message


# Greetings: built in Python so that shared content can carry the whole line as one substitution
# (a guest without a name gets the neutral form, not "Hello ,").
GREETING_NAMED = _("Hello %(name)s,")
GREETING_NEUTRAL = _("Hello,")
# Where the family name comes first and the full name is the polite form.
_FAMILY_NAME_FIRST = {"ja": " ", "zh": ""}


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    preheader: str
    html: str
    text: str
    locale: str  # the catalogue locale actually used, e.g. "de" for "de-AT"


# ASCII whitespace only: the no-break spaces in "10\u00a0%" and "commande\u00a0?" must stay.
_BLANKS = " \t\r"


def _one_line(text: str) -> str:
    return re.sub(r"[ \t\r\n]+", " ", text).strip(_BLANKS + "\n")


def _compact_html(html: str) -> str:
    """Drop indentation and blank lines: bytes count against Gmail's clipping limit."""
    return "\n".join(line.strip(_BLANKS) for line in html.split("\n") if line.strip(_BLANKS)) + "\n"


def _tidy_text(text: str) -> str:
    lines = [line.rstrip(_BLANKS) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _token(stem: str, part: str) -> str:
    return f"-{stem}_{part}-"


def _check_placeholders(template: str, locale: str, placeholders: Mapping[str, str]) -> None:
    stems = list(placeholders.values())
    for name, stem in placeholders.items():
        if not isinstance(stem, str) or not _STEM_RE.match(stem):
            raise RenderError(
                template, locale, f"placeholder stem for {name!r} must match [a-z][a-z0-9_]*", variable=name
            )
    if len(set(stems)) != len(stems):
        raise RenderError(template, locale, "placeholder stems must be distinct")


def _checked_placeholders(
    template: str, resolved: str, context: Mapping[str, Any], placeholders: Mapping[str, str] | None
) -> dict[str, str]:
    """The render's placeholders, once the context and they are known to be usable: fail before rendering."""
    if not isinstance(context, Mapping):
        raise RenderError(template, resolved, f"context must be a mapping, got {type(context).__name__}")
    reserved = sorted(_RESERVED.intersection(context))
    if reserved:
        raise RenderError(template, resolved, f"context sets reserved variables {reserved}", variable=reserved[0])
    placeholders = dict(placeholders or {})
    _check_placeholders(template, resolved, placeholders)
    for name in placeholders:
        if name != "greeting" and name not in context:
            raise RenderError(template, resolved, f"placeholder {name!r} is not a context variable", variable=name)
    return placeholders


def substitutions_for(placeholders: Mapping[str, str], values: Mapping[str, str | None]) -> dict[str, str]:
    """One recipient's SendGrid substitutions for content rendered by ``render_shared``.

    ``placeholders`` is the mapping given to ``render_shared`` (variable -> token stem); ``values``
    holds this recipient's raw value per variable (None -> empty). The html token gets the
    HTML-escaped value, the text token the raw one. A missing variable raises ValueError naming it.
    """
    subs: dict[str, str] = {}
    for name, stem in placeholders.items():
        if name not in values:
            raise ValueError(f"no value for placeholder {name!r}")
        raw = values[name]
        raw = "" if raw is None else str(raw)
        subs[_token(stem, "html")] = str(escape(raw))
        subs[_token(stem, "text")] = raw
    return subs


class MailRenderer:
    """Renders the mails in include/templates/ for a locale; safe to share between threads."""

    def __init__(
        self,
        templates_dir: Path | None = None,
        locale_dir: Path | None = None,
        *,
        max_html_bytes: int = MAX_HTML_BYTES,
    ):
        from babel.support import NullTranslations

        self.templates_dir = Path(templates_dir) if templates_dir is not None else TEMPLATES_DIR
        self.locale_dir = Path(locale_dir) if locale_dir is not None else LOCALE_DIR
        self.max_html_bytes = max_html_bytes
        self._env = build_environment(self.templates_dir)
        self._catalogues = load_catalogues(self.locale_dir)
        self._catalogues.setdefault(SOURCE_LOCALE, NullTranslations())
        self._resolved: dict[str | None, str] = {}

    @property
    def locales(self) -> tuple[str, ...]:
        """Locales with text: the source language and every catalogue found."""
        return tuple(sorted(self._catalogues))

    def resolve_locale(self, locale: str | None) -> str:
        """The catalogue for a customer's locale: exact, then the language, then a sibling, then en.

        de-AT, de-CH -> de; fr-BE -> fr; en-GB -> en; zh-CN -> zh; pt-BR exact; pt-PT -> pt when a
        pt catalogue exists, else pt-BR; unknown or missing -> en.
        """
        try:
            return self._resolved[locale]
        except (KeyError, TypeError):
            pass
        tag = normalize_locale(locale)
        resolved = SOURCE_LOCALE
        if tag is not None:
            language = tag.split("-")[0]
            siblings = sorted(c for c in self._catalogues if c.split("-")[0] == language)
            if tag in self._catalogues:
                resolved = tag
            elif language in self._catalogues:
                resolved = language
            elif siblings:
                resolved = siblings[0]
        if isinstance(locale, str | None) and len(self._resolved) < 10_000:
            self._resolved[locale] = resolved
        return resolved

    def format_locale(self, locale: str | None, resolved: str | None = None):
        """The Babel locale for numbers and dates: the customer's own when it speaks the mail's language.

        de-AT gets Austrian formats with German text; es-US without a Spanish catalogue gets en-US
        formats with the English text.
        """
        resolved = resolved or self.resolve_locale(locale)
        tag = normalize_locale(locale)
        candidates = []
        language = resolved.split("-")[0]
        if tag is not None:
            if tag.split("-")[0] == language:
                candidates.append(tag)
            region = tag.split("-")[-1]
            if len(region) == 2 and region.isupper():
                candidates.append(f"{language}-{region}")
        candidates.append(resolved)
        for candidate in candidates:
            found = babel_locale(candidate)
            if found is not None:
                return found
        return babel_locale(SOURCE_LOCALE)

    def greeting(self, locale: str | None, first_name: str | None, last_name: str | None = None) -> str:
        """The salutation line: with the name when known, neutral otherwise (guests may have none).

        Japanese and Chinese use the full name, family name first, when both parts are known.
        """
        resolved = self.resolve_locale(locale)
        translations = self._catalogues[resolved]
        first = (first_name or "").strip() if isinstance(first_name, str) else ""
        last = (last_name or "").strip() if isinstance(last_name, str) else ""
        language = resolved.split("-")[0]
        if language in _FAMILY_NAME_FIRST and first and last:
            name = last + _FAMILY_NAME_FIRST[language] + first
        else:
            name = first
        if not name:
            return translations.gettext(GREETING_NEUTRAL)
        return translations.gettext(GREETING_NAMED) % {"name": name}

    # --- rendering ----------------------------------------------------------------------------------

    def render(self, template: str, locale: str | None, context: Mapping[str, Any]) -> RenderedMail:
        """Render one mail (subject, preheader, HTML and text parts); RenderError for this mail only."""
        return self._render(template, locale, context, placeholders=None)

    def render_shared(
        self, template: str, locale: str | None, context: Mapping[str, Any], placeholders: Mapping[str, str]
    ) -> RenderedMail:
        """Render once for many recipients: per-recipient variables become tokens.

        ``placeholders`` maps a context variable (or ``greeting``, which the renderer otherwise
        builds from first_name/last_name) to a token stem; the HTML part gets ``-<stem>_html-``,
        the text part, subject and preheader ``-<stem>_text-``. Fill them per recipient with
        :func:`substitutions_for`.
        """
        return self._render(template, locale, context, placeholders=placeholders)

    def _render(
        self,
        template: str,
        locale: str | None,
        context: Mapping[str, Any],
        placeholders: Mapping[str, str] | None,
    ) -> RenderedMail:
        resolved = self.resolve_locale(locale)
        placeholders = _checked_placeholders(template, resolved, context, placeholders)
        templates = self._templates(template, resolved)
        common = self._common_variables(locale, resolved)
        subject, preheader, text, html = self._fill_templates(
            template, resolved, templates, context, common, placeholders
        )
        for stem in placeholders.values():  # the preheader and title carry text tokens into the HTML
            html = html.replace(_token(stem, "text"), _token(stem, "html"))
        size = len(html.encode("utf-8"))
        if size > self.max_html_bytes:
            raise RenderError(
                template,
                resolved,
                f"rendered HTML is {size} bytes, over the {self.max_html_bytes} byte limit (Gmail clips larger mails)",
            )
        if not subject:
            raise RenderError(template, resolved, "the subject is empty", variable="subject")
        return RenderedMail(subject=subject, preheader=preheader, html=html, text=text, locale=resolved)

    def _templates(self, template: str, resolved: str) -> tuple[Any, Any]:
        """The mail's HTML and text templates; a missing or broken file fails this one mail."""
        from jinja2 import TemplateNotFound, TemplateSyntaxError

        try:
            html_template = self._env.get_template(f"{template}.html.j2")
            text_template = self._env.get_template(f"{template}.txt.j2")
        except TemplateNotFound as exc:
            raise RenderError(template, resolved, f"template file {exc.name} not found") from None
        except TemplateSyntaxError as exc:
            raise RenderError(
                template, resolved, f"template syntax error: {exc.message} ({exc.name}:{exc.lineno})"
            ) from None
        return html_template, text_template

    def _common_variables(self, locale: str | None, resolved: str) -> dict[str, Any]:
        """The variables the renderer sets (see _RESERVED): the render's locale travels in them."""
        translations = self._catalogues[resolved]
        language = resolved.split("-")[0]
        return {
            "_translations": translations,
            "_locale": self.format_locale(locale, resolved),
            "html_lang": resolved,
            "font_family": Markup(_FONTS.get(language, _DEFAULT_FONT)),  # our constant, quotes kept as they are
        }

    def _fill_templates(
        self,
        template: str,
        resolved: str,
        templates: tuple[Any, Any],
        context: Mapping[str, Any],
        common: dict[str, Any],
        placeholders: Mapping[str, str],
    ) -> tuple[str, str, str, str]:
        """Subject, preheader, text and HTML; any failure becomes a RenderError naming where, not the values."""
        from jinja2 import TemplateSyntaxError, UndefinedError

        html_template, text_template = templates
        try:
            if "greeting" not in placeholders:
                common["greeting"] = self.greeting(resolved, context["first_name"], context.get("last_name"))
            text_vars = {**context, **common}
            html_vars = {**context, **common}
            for name, stem in placeholders.items():
                text_vars[name] = _token(stem, "text")
                html_vars[name] = _token(stem, "html")

            text_ctx = text_template.new_context(text_vars)
            missing = [b for b in ("subject", "preheader") if b not in text_template.blocks]
            if missing:
                raise RenderError(template, resolved, f"{text_template.name} defines no {missing[0]} block")
            subject = _one_line("".join(text_template.blocks["subject"](text_ctx)))
            preheader = _one_line("".join(text_template.blocks["preheader"](text_ctx)))
            text = _tidy_text(text_template.render(text_vars))
            html_vars["subject"] = subject
            html_vars["preheader"] = preheader
            html = _compact_html(html_template.render(html_vars))
        except RenderError:
            raise
        except KeyError as exc:  # context["first_name"] above
            name = str(exc.args[0]) if exc.args else "?"
            raise RenderError(template, resolved, f"missing variable '{name}'", variable=name) from None
        except UndefinedError as exc:
            variable = _undefined_name(exc)
            where = _template_position(exc)
            raise RenderError(template, resolved, f"{exc.message}{where}", variable=variable) from None
        except Exception as exc:  # noqa: BLE001 - one mail fails, with where and what, not the values
            where = _template_position(exc)
            shown = (ValueError, ZoneInfoNotFoundError, TemplateSyntaxError)  # messages without row values
            problem = str(exc) if isinstance(exc, shown) else type(exc).__name__
            raise RenderError(template, resolved, f"{type(exc).__name__}: {problem}{where}") from None
        return subject, preheader, text, html


def _undefined_name(exc: Exception) -> str | None:
    match = _UNDEFINED_RE.search(getattr(exc, "message", None) or str(exc))
    if not match:
        return None
    return next(group for group in match.groups() if group is not None)


def _template_position(exc: BaseException) -> str:
    """' (cart_recovery/step1.html.j2 line 12)' from the traceback Jinja rewrites to template lines."""
    tb = exc.__traceback__
    found = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            name = Path(filename).as_posix()
            marker = "/templates/"
            name = name.split(marker, 1)[1] if marker in name else Path(filename).name
            found = f" ({name} line {tb.tb_lineno})"
        tb = tb.tb_next
    return found
