"""The rendered validation report: one self-contained HTML page next to the run's data.

Built from the GX validation results (not GX Data Docs): Data Docs show failing values, and
those can be emails or names. This page shows counts, example row keys and the reasons we wrote
ourselves, so it can be shared with anyone who may read the task logs.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from remarketing.store.validation.results import StoreValidation, TableValidation, ValidationPolicy

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f3f3f3}
td.n{text-align:right}
.ok{color:#176a2c}.failed{color:#b00020;font-weight:bold}.note{color:#8a5a00}
code{font-size:.85rem}
"""


def _cell(value: object, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f"<td{klass}>{escape(str(value))}</td>"


def _status(success: bool, action: str) -> tuple[str, str]:
    if success:
        return "passed", "ok"
    if action == "note":
        return "noted", "note"
    return "failed", "failed"


def _table_section(t: TableValidation) -> str:
    parts = [f'<h2 id="{escape(t.table)}">{escape(t.table)} <span class="{t.status}">{escape(t.status)}</span></h2>']
    if t.failure is not None:
        parts.append(f'<p class="failed">{escape(str(t.failure))}</p>')
    parts.append(
        "<p>"
        f"extracted {t.extracted}, clean {t.clean}, quarantined {t.quarantined}; {t.seconds:.2f} s"
        + (f"; clean: <code>{escape(t.clean_path)}</code>" if t.clean_path else "")
        + (f"; quarantine: <code>{escape(t.quarantine_path)}</code>" if t.quarantine_path else "")
        + "</p>"
    )
    bad = {label: n for label, n in t.failed_expectations.items() if n}
    if bad:
        items = "".join(f"<li>{escape(label)}: {n}</li>" for label, n in sorted(bad.items(), key=lambda kv: -kv[1]))
        parts.append(f"<p>bad rows (quarantined), per check:</p><ul>{items}</ul>")
    if t.out_of_scope:
        ranked = sorted(t.out_of_scope.items(), key=lambda kv: (-kv[1], kv[0]))
        items = "".join(f"<li>{escape(reason)}: {n}</li>" for reason, n in ranked)
        parts.append(
            f"<p>out of scope (kept in the clean data and profiled where they have a market; never mailed): "
            f"{sum(t.out_of_scope.values())}</p><ul>{items}</ul>"
        )
    if t.converted_currency:
        items = ", ".join(f"{escape(c)}: {n}" for c, n in sorted(t.converted_currency.items()))
        parts.append(f"<p>in another currency than their market's, converted with the FX rates: {items}</p>")
    if t.normalised:
        items = ", ".join(f"{escape(c)}: {n}" for c, n in sorted(t.normalised.items()))
        parts.append(f"<p>normalised values (kept): {items}</p>")
    if t.extra_columns:
        parts.append(f"<p>columns not in the canonical schema (ignored): {escape(', '.join(t.extra_columns))}</p>")
    rows = [
        "<tr><th>check</th><th>expectation</th><th>column</th><th>on failure</th><th>result</th>"
        "<th>rows</th><th>example keys</th><th>reasons</th></tr>"
    ]
    for e in t.expectations:
        word, css = _status(e.success, e.action)
        action = {"quarantine": "quarantine row", "note": "keep row, note", "table": "fail the feed"}[e.action]
        reasons = "<br>".join(escape(r) + (f" &times;{n}" if n else "") for r, n in e.reasons.items())
        rows.append(
            "<tr>"
            + _cell(e.name)
            + f"<td><code>{escape(e.label)}</code></td>"
            + _cell(e.column or "")
            + _cell(action)
            + _cell(word, css)
            + f'<td class="n">{e.unexpected}</td>'
            + _cell(", ".join("null" if k is None else str(k) for k in e.example_keys))
            + f"<td>{reasons}</td>"
            + "</tr>"
        )
    parts.append("<table>" + "".join(rows) + "</table>")
    return "\n".join(parts)


def render_report(validation: StoreValidation, *, now: datetime, policy: ValidationPolicy) -> str:
    """The whole report as an HTML document (UTF-8, no external resources)."""
    summary = [
        "<tr><th>table</th><th>extracted</th><th>clean</th><th>of which out of scope</th><th>quarantined</th>"
        "<th>seconds</th><th>status</th></tr>"
    ]
    for name, t in validation.tables.items():
        summary.append(
            "<tr>"
            + f'<td><a href="#{escape(name)}">{escape(name)}</a></td>'
            + f'<td class="n">{t.extracted}</td><td class="n">{t.clean}</td>'
            + f'<td class="n">{sum(t.out_of_scope.values())}</td><td class="n">{t.quarantined}</td>'
            + f'<td class="n">{t.seconds:.2f}</td>'
            + _cell(t.status, t.status)
            + "</tr>"
        )
    verdict = "all tables passed" if validation.ok else "BROKEN FEED: nothing may be sent from this run"
    body = [
        f"<h1>Store validation, run {escape(validation.run_id)}</h1>",
        f'<p class="{"ok" if validation.ok else "failed"}">{escape(verdict)}</p>',
        f"<p>validated as of {escape(now.isoformat())}; max_bad_share {policy.max_bad_share:.1%}, "
        f"future_skew {escape(str(policy.future_skew))}; rows extracted = clean + quarantined for every table; out of scope is "
        "not bad: such rows are clean, kept, and never mailed.</p>",
        "<table>" + "".join(summary) + "</table>",
        *(_table_section(t) for t in validation.tables.values()),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Store validation {escape(validation.run_id)}</title><style>{_STYLE}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
