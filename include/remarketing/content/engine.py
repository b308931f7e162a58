"""Mail rendering: Jinja2 templates in include/templates/, gettext catalogues, Babel formatting.

Why this shape:
- One Jinja2 environment (autoescape for ``*.html.j2``, StrictUndefined) renders every mail. The
  locale of one render travels in the template context, not in the environment, so renders in
  different locales can run side by side in one process.
- Text comes from gettext catalogues (include/locale/<lang>/LC_MESSAGES/messages.po), read at
  start with Babel and turned into ``babel.support.Translations`` in memory: no compile step.
- Every mail is two templates, ``<name>.html.j2`` (extends base.html.j2) and ``<name>.txt.j2``
  (extends base.txt.j2); the text template also holds the ``subject`` and ``preheader`` blocks.
- A render either gives a complete mail or raises :class:`RenderError` for that one mail, naming
  the template, the locale and the variable at fault, never the customer's data.

Context builders (:func:`cart_recovery_context`, :func:`welcome_context`,
:func:`campaign_context`) turn store rows into what the templates need; prices stay ``Decimal``
and are formatted in the template by the ``money`` filter for the render's locale.

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

import io
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from markupsafe import Markup, escape

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = PACKAGE_ROOT / "templates"
LOCALE_DIR = PACKAGE_ROOT / "locale"
SOURCE_LOCALE = "en"  # msgids are English; en needs no catalogue
MAX_HTML_BYTES = 100_000  # Gmail clips larger HTML ("[Message clipped]")
MAX_ITEMS_SHOWN = 20  # a bigger cart shows its first 20 lines and "and N more"
MAX_GRID_PRODUCTS = 12
SHARED_PLACEHOLDERS: Mapping[str, str] = {"greeting": "greeting", "unsubscribe_url": "unsubscribe_url"}

# Set by the renderer; a context must not bring its own.
_RESERVED = frozenset({"greeting", "subject", "preheader", "html_lang", "font_family", "_translations", "_locale"})
_LOCALE_RE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|\d{3}))?$")
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


class RenderError(ValueError):
    """One mail could not be rendered; names the template, the locale and the variable, no personal data."""

    def __init__(self, template: str, locale: str, problem: str, *, variable: str | None = None):
        self.template = template
        self.locale = locale
        self.variable = variable
        super().__init__(f"{template} [{locale}]: {problem}")


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    preheader: str
    html: str
    text: str
    locale: str  # the catalogue locale actually used, e.g. "de" for "de-AT"


def normalize_locale(tag: str | None) -> str | None:
    """'de_at', 'DE-AT' -> 'de-AT'; 'zh-hant-tw' -> 'zh-Hant-TW'; None for empty or malformed tags."""
    if not tag or not isinstance(tag, str):
        return None
    match = _LOCALE_RE.match(tag.strip())
    if not match:
        return None
    lang, script, region = match.groups()
    parts = [lang.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def _babel_tag(locale: str) -> str:
    return locale.replace("-", "_")


@lru_cache(maxsize=256)
def _babel_locale(tag: str):
    from babel import Locale, UnknownLocaleError

    try:
        return Locale.parse(_babel_tag(tag))
    except (UnknownLocaleError, ValueError):
        return None


def load_catalogues(locale_dir: Path) -> dict[str, Any]:
    """Read every include/locale/<lang>/LC_MESSAGES/messages.po into Babel Translations (in memory)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.support import Translations

    catalogues: dict[str, Any] = {}
    if not locale_dir.is_dir():
        return catalogues
    for po_path in sorted(locale_dir.glob("*/LC_MESSAGES/messages.po")):
        locale = normalize_locale(po_path.parents[1].name)
        if locale is None:
            raise ValueError(f"{po_path}: the folder name is not a locale such as 'de' or 'pt_BR'")
        try:
            with po_path.open("rb") as fh:
                catalog = read_po(fh, locale=_babel_tag(locale), abort_invalid=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a broken catalogue
            raise ValueError(f"{po_path} is not a valid PO file: {exc}") from exc
        buffer = io.BytesIO()
        write_mo(buffer, catalog)  # fuzzy entries are left out, as msgfmt does
        buffer.seek(0)
        catalogues[locale] = Translations(fp=buffer)
    return catalogues


# --- template filters (the render's locale and zone come from the template context) ---------------


def _ctx_locale(ctx):
    return ctx["_locale"]


def to_decimal(value: Any, field: str) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"{field} must be a number, got {type(value).__name__}")
    elif isinstance(value, numbers.Integral):
        result = Decimal(int(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{field} must be a number") from None
    else:
        try:  # numpy scalars and the like
            return to_decimal(float(value), field)
        except (TypeError, ValueError):
            raise ValueError(f"{field} must be a number, got {type(value).__name__}") from None
    if not result.is_finite():
        raise ValueError(f"{field} must be a finite number")
    return result


def quantize_amount(template: str, locale: str, amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit (JPY has none), so shown lines add up to the shown total."""
    from babel.numbers import get_currency_precision, list_currencies

    if currency not in list_currencies():
        raise RenderError(template, locale, f"{currency!r} is not an ISO 4217 currency code", variable="currency")
    return amount.quantize(Decimal(1).scaleb(-get_currency_precision(currency)), rounding=ROUND_HALF_UP)


@lru_cache(maxsize=8192)
def _format_currency(amount: Decimal, currency: str, locale) -> str:
    """Cached: a shop has few distinct prices, and Babel's formatting is most of a render's cost."""
    from babel.numbers import format_currency

    return format_currency(amount, currency, locale=locale)


def _money(ctx, amount: Any, currency: str | None = None) -> str:
    return _format_currency(to_decimal(amount, "amount"), currency or ctx["currency"], _ctx_locale(ctx))


def _percent(ctx, value: Any) -> str:
    """10 -> '10 %' (de), '10%' (en, ja)."""
    from babel.numbers import format_percent

    return format_percent(to_decimal(value, "percent") / 100, locale=_ctx_locale(ctx))


def _local_datetime(ctx, value: datetime) -> str:
    """Long date and short time in the customer's zone: '27. März 2026, 23:59'."""
    from babel.dates import format_datetime, get_date_format, get_datetime_format, get_time_format

    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError("dates shown in mails must be timezone-aware datetimes")
    locale = _ctx_locale(ctx)
    zone = ZoneInfo(ctx["time_zone"])
    pattern = (
        get_datetime_format("long", locale=locale)
        .replace("{1}", get_date_format("long", locale=locale).pattern)
        .replace("{0}", get_time_format("short", locale=locale).pattern)
    )
    return format_datetime(value.astimezone(zone), pattern, locale=locale)


@lru_cache(maxsize=1024)
def _format_number(value: Any, locale) -> str:
    from babel.numbers import format_decimal

    return format_decimal(value, locale=locale)


def _number(ctx, value: Any) -> str:
    return _format_number(value, _ctx_locale(ctx))


def _gettext(ctx, message: str) -> str:
    return ctx["_translations"].gettext(message)


def _ngettext(ctx, singular: str, plural: str, n: int) -> str:
    return ctx["_translations"].ngettext(singular, plural, n)


def _pgettext(ctx, context: str, message: str) -> str:
    return ctx["_translations"].pgettext(context, message)


def _npgettext(ctx, context: str, singular: str, plural: str, n: int) -> str:
    return ctx["_translations"].npgettext(context, singular, plural, n)


def _build_environment(templates_dir: Path):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(templates_dir)),
        autoescape=select_autoescape(enabled_extensions=("html.j2", "html"), default_for_string=False),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        pass_context(_gettext),
        pass_context(_ngettext),
        newstyle=True,
        pgettext=pass_context(_pgettext),
        npgettext=pass_context(_npgettext),
    )
    env.filters.update(
        money=pass_context(_money),
        percent=pass_context(_percent),
        local_datetime=pass_context(_local_datetime),
        number=pass_context(_number),
    )
    return env


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
        self._env = _build_environment(self.templates_dir)
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
            found = _babel_locale(candidate)
            if found is not None:
                return found
        return _babel_locale(SOURCE_LOCALE)

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
        from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError

        resolved = self.resolve_locale(locale)
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

        try:
            html_template = self._env.get_template(f"{template}.html.j2")
            text_template = self._env.get_template(f"{template}.txt.j2")
        except TemplateNotFound as exc:
            raise RenderError(template, resolved, f"template file {exc.name} not found") from None
        except TemplateSyntaxError as exc:
            raise RenderError(
                template, resolved, f"template syntax error: {exc.message} ({exc.name}:{exc.lineno})"
            ) from None

        translations = self._catalogues[resolved]
        language = resolved.split("-")[0]
        common = {
            "_translations": translations,
            "_locale": self.format_locale(locale, resolved),
            "html_lang": resolved,
            "font_family": Markup(_FONTS.get(language, _DEFAULT_FONT)),  # our constant, quotes kept as they are
        }
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
