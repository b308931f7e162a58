"""Text that goes into one line of a mail header: a subject, a sender or recipient name.

Why here: a first name from the shop's database or a translated subject can hold CR/LF, NEL,
U+2028/U+2029, vertical tab, form feed or NUL. In a header that is an injection (``Bcc:``) or a
message no library will build, which would abort a whole market's send. Every such break and
control character becomes a space; runs of spaces collapse. Format characters (zero-width
joiners in emoji) stay.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def one_line(text: str | None) -> str | None:
    """``text`` without line or paragraph separators and control characters, on one line; None stays None."""
    if text is None:
        return None
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(text))
    return _SPACES.sub(" ", cleaned).strip()
