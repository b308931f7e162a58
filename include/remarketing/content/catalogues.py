"""Catalogue maintenance: the msgids of the templates and the renderer's greetings, as a .pot for translators.

python -m remarketing.content.catalogues --pot include/locale/messages.pot
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from remarketing.content import renderer
from remarketing.content.paths import LOCALE_DIR, PACKAGE_ROOT, TEMPLATES_DIR


def extract_messages(templates_dir: Path | None = None):
    """All msgids: the templates' gettext calls and trans blocks, and the renderer's greetings."""
    from babel.messages.catalog import Catalog
    from babel.messages.extract import extract_from_file

    templates_dir = Path(templates_dir) if templates_dir is not None else TEMPLATES_DIR
    catalog = Catalog(project="remarketing", msgid_bugs_address=None)
    options = {
        "extensions": "jinja2.ext.i18n",
        "trim_blocks": "true",
        "lstrip_blocks": "true",
        "newstyle_gettext": "true",
    }
    sources = [(path, "jinja2.ext.babel_extract", options) for path in sorted(templates_dir.rglob("*.j2"))]
    sources.append((Path(renderer.__file__), "python", {}))
    for path, method, opts in sources:
        keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2)}
        for lineno, message, comments, context in extract_from_file(method, str(path), keywords=keywords, options=opts):
            location = path.relative_to(PACKAGE_ROOT).as_posix() if path.is_relative_to(PACKAGE_ROOT) else path.name
            catalog.add(message, None, [(location, lineno)], auto_comments=comments, context=context)
    return catalog


def main(argv: list[str] | None = None) -> int:
    """``python -m remarketing.content.catalogues --pot include/locale/messages.pot`` writes the catalogue template."""
    from babel.messages.pofile import write_po

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--pot", type=Path, default=LOCALE_DIR / "messages.pot")
    args = parser.parse_args(argv)
    with args.pot.open("wb") as fh:
        write_po(fh, extract_messages(), omit_header=False, sort_output=True, width=120)
    print(f"written {args.pot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
