"""Where the mails' files live: the Jinja2 templates (include/templates/) and the gettext catalogues (include/locale/)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = PACKAGE_ROOT / "templates"
LOCALE_DIR = PACKAGE_ROOT / "locale"
