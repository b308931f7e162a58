"""The outbox transport, the embedded default: every email becomes a file instead of a SendGrid call.

Layout under ``folder`` (a local Path or an ObjectStoragePath)::

    index.html                     every mail, grouped by market (regenerated on close()/write_index())
    <market or 'all'>/<name>.eml   the email as a mailbox would get it (multipart/alternative: text, html)
    <market or 'all'>/<name>.html  the HTML part, to preview in a browser
    <market or 'all'>/<name>.json  the index row (written last: a mail is listed once it is complete)

``<name>`` comes from the ledger key alone (readable slug plus a hash of the exact key), so writing
the same key again replaces its files instead of adding a second email. Messages are validated
exactly as the SendGrid transport does, so the demo fails where production would.
"""

from __future__ import annotations

import email.errors
import hashlib
import html
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from remarketing.delivery.messages import Message, Recipient, SendResult
from remarketing.delivery.sendgrid_transport import ONE_CLICK, validate_message

ALL_MARKETS = "all"
LOCAL_SEND_AT_ARG = "local_send_at"  # recipient custom arg: the send time in the recipient's zone, preformatted
TIME_ZONE_ARG = "time_zone"  # recipient custom arg: IANA zone, to show the local time when no local_send_at
OPEN_SECTION_LIMIT = 200  # markets with more mails start collapsed in the index
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def safe_name(ledger_key: str) -> str:
    """A file name for a ledger key: readable, collision-free (hash of the exact key), no path characters."""
    slug = _UNSAFE.sub("_", ledger_key).strip("._-")[:80] or "mail"
    digest = hashlib.sha256(ledger_key.encode()).hexdigest()[:12]
    return f"{slug}-{digest}"


def _market_folder(message: Message) -> str:
    market = str(message.custom_args.get("market") or "").strip()
    folder = _UNSAFE.sub("_", market).strip("._-")
    return folder or ALL_MARKETS


def _substitute(text: str, substitutions: Mapping[str, str]) -> str:
    """Replace every token in one pass, longest first (as SendGrid does: values are inserted as given)."""
    if not substitutions:
        return text
    pattern = re.compile("|".join(re.escape(t) for t in sorted(substitutions, key=len, reverse=True)))
    return pattern.sub(lambda m: substitutions[m.group(0)], text)


def _local_time(recipient: Recipient, send_at: datetime) -> str | None:
    given = recipient.custom_args.get(LOCAL_SEND_AT_ARG)
    if given:
        return str(given)
    zone = recipient.custom_args.get(TIME_ZONE_ARG)
    if not zone:
        return None
    try:
        local = send_at.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({zone})"


class OutboxTransport:
    """Writes each recipient's email as files under ``folder``; same interface as SendGridTransport."""

    def __init__(self, folder, *, clock: Callable[[], datetime] = _utcnow) -> None:
        if not isinstance(folder, Path) and getattr(folder, "protocol", None) in ("file", "local"):
            folder = Path(folder.path)  # a file:// ObjectStoragePath: plain files, written atomically
        self.folder = folder
        self.clock = clock
        self._local = isinstance(folder, Path)
        self._rows: dict[str, dict] = {}  # relative row file -> row, everything seen so far

    @classmethod
    def from_path(cls, location: str | Path, **kwargs) -> OutboxTransport:
        """A local path, or an ObjectStoragePath URL such as ``s3://bucket/outbox`` (Airflow imported then)."""
        if isinstance(location, Path) or "://" not in str(location) or str(location).startswith("file://"):
            return cls(Path(str(location).removeprefix("file://")), **kwargs)
        from airflow.sdk import ObjectStoragePath

        return cls(ObjectStoragePath(str(location)), **kwargs)

    # --- files ------------------------------------------------------------------------------------

    def _write(self, path, data: bytes) -> None:
        if self._local:
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # readers never see half a file
        else:
            path.write_bytes(data)  # object stores replace objects whole

    def _mkdir(self, path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    # --- sending ----------------------------------------------------------------------------------

    def build_email(self, message: Message, recipient: Recipient, send_at: datetime) -> EmailMessage:
        """The recipient's email: substitutions applied, text then html, unsubscribe and our tracing headers."""
        subs = recipient.substitutions
        mail = EmailMessage()
        mail["From"] = formataddr((message.from_name, message.from_email)) if message.from_name else message.from_email
        mail["To"] = formataddr((recipient.name, recipient.email)) if recipient.name else recipient.email
        if message.reply_to:
            mail["Reply-To"] = message.reply_to
        mail["Subject"] = _substitute(message.subject, subs)
        mail["Date"] = format_datetime(send_at)
        domain = message.from_email.rpartition("@")[2] or "outbox.invalid"
        mail["Message-ID"] = f"<{hashlib.sha256(recipient.ledger_key.encode()).hexdigest()[:32]}@{domain}>"
        headers = {**message.headers, **recipient.headers}
        for name, value in headers.items():
            mail[name] = _substitute(value, subs)
        if message.marketing and ONE_CLICK[0].lower() not in {n.lower() for n in headers}:
            mail[ONE_CLICK[0]] = ONE_CLICK[1]
        mail["X-Remarketing-Ledger-Key"] = recipient.ledger_key
        mail["X-Remarketing-Send-At"] = send_at.astimezone(UTC).isoformat()
        if message.batch_id:
            mail["X-Remarketing-Batch-Id"] = message.batch_id
        if message.categories:
            mail["X-Remarketing-Categories"] = ", ".join(message.categories)
        if message.asm_group_id is not None:
            mail["X-Remarketing-Asm-Group"] = str(message.asm_group_id)
        mail.set_content(_substitute(message.text, subs))
        mail.add_alternative(_substitute(message.html, subs), subtype="html")
        return mail

    def send_one(self, message: Message) -> SendResult:
        now = self.clock()
        validate_message(message, now)
        return self._write_message(message, now)

    def _write_message(self, message: Message, now: datetime) -> SendResult:
        send_at = (message.send_at or now).astimezone(UTC)
        market = _market_folder(message)
        target = self.folder / market
        self._mkdir(target)
        for recipient in message.recipients:
            name = safe_name(recipient.ledger_key)
            mail = self.build_email(message, recipient, send_at)
            self._write(target / f"{name}.eml", mail.as_bytes())
            self._write(target / f"{name}.html", _substitute(message.html, recipient.substitutions).encode())
            row = {
                "ledger_key": recipient.ledger_key,
                "market": market,
                "send_at": send_at.isoformat(),
                "local_send_at": _local_time(recipient, send_at),
                "categories": list(message.categories),
                "subject": str(mail["Subject"]),
                "batch_id": message.batch_id,
                "scheduled": message.send_at is not None and message.send_at > now,
                "cancelled": False,
                "eml": f"{market}/{name}.eml",
                "preview": f"{market}/{name}.html",
            }
            self._write(target / f"{name}.json", json.dumps(row).encode())
            self._rows[f"{market}/{name}.json"] = row
        return SendResult(tuple(r.ledger_key for r in message.recipients), "accepted", None, None, 1)

    def send(self, messages: Iterable[Message]) -> Iterator[SendResult]:
        """Write each Message (validated first, like SendGrid would) and yield one result each.

        A message that cannot be built (an address the mail format cannot carry, say) is
        ``rejected`` with status 400, as SendGrid would refuse it, alone: the rest go on.
        """
        for message in messages:
            now = self.clock()
            validate_message(message, now)  # a malformed Message is a bug: ValueError, nothing written
            try:
                yield self._write_message(message, now)
            except (ValueError, TypeError, UnicodeError, email.errors.MessageError) as exc:
                keys = tuple(r.ledger_key for r in message.recipients)
                yield SendResult(keys, "rejected", 400, f"the message cannot be built ({type(exc).__name__})", 1)

    def create_batch_id(self) -> str:
        return uuid.uuid4().hex

    def cancel_batch(self, batch_id: str) -> None:
        """Remove the batch's mails still scheduled in the future; the index keeps them, marked cancelled."""
        now = self.clock()
        self._scan()
        for relative, row in self._rows.items():
            if row.get("batch_id") != batch_id or row.get("cancelled"):
                continue
            if datetime.fromisoformat(row["send_at"]) <= now:
                continue  # already "sent"
            for file in (row["eml"], row["preview"]):
                path = self.folder / file
                if path.exists():
                    path.unlink()
            row["cancelled"] = True
            self._write(self.folder / relative, json.dumps(row).encode())

    # --- index ------------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Read the row files not seen yet (other runs may write the same outbox)."""
        if not self.folder.exists():
            return
        for market_dir in self.folder.iterdir():
            if not market_dir.is_dir():
                continue
            for path in market_dir.iterdir():
                if not path.name.endswith(".json") or path.name.startswith("."):
                    continue
                relative = f"{market_dir.name}/{path.name}"
                if relative not in self._rows:
                    self._rows[relative] = json.loads(path.read_bytes())

    def rows(self) -> list[dict]:
        """Every mail in the outbox (this transport's and earlier runs'), one dict per ledger key."""
        self._scan()
        return list(self._rows.values())

    def write_index(self) -> None:
        """(Re)write ``index.html`` from every row file in the outbox."""
        self._mkdir(self.folder)
        self._write(self.folder / "index.html", render_index(self.rows(), generated_at=self.clock()).encode())

    def close(self) -> None:
        self.write_index()

    def __enter__(self) -> OutboxTransport:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _link(relative: str, label: str) -> str:
    return f'<a href="{html.escape(quote(relative), quote=True)}">{html.escape(label)}</a>'


def render_index(rows: list[dict], *, generated_at: datetime) -> str:
    """The outbox page: a summary per market, then one table per market sorted by send time; all text escaped."""
    by_market: dict[str, list[dict]] = {}
    for row in rows:
        by_market.setdefault(row["market"], []).append(row)
    esc = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Remarketing outbox</title>',
        "<style>body{font-family:system-ui,sans-serif;margin:1.5rem}table{border-collapse:collapse;width:100%}"
        "td,th{border-bottom:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}"
        "tr.cancelled td{color:#999;text-decoration:line-through}summary{font-size:1.1rem;margin:1rem 0 .5rem}"
        "code{font-size:.8rem}</style></head><body>",
        f"<h1>Remarketing outbox</h1><p>{len(rows)} mails in {len(by_market)} markets; "
        f"generated {esc(generated_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC'))}.</p>",
        "<table><thead><tr><th>market</th><th>mails</th><th>scheduled</th><th>cancelled</th>"
        "<th>first send (UTC)</th><th>last send (UTC)</th></tr></thead><tbody>",
    ]
    for market in sorted(by_market):
        items = by_market[market]
        times = sorted(r["send_at"] for r in items)
        out.append(
            f'<tr><td><a href="#m-{esc(quote(market), quote=True)}">{esc(market)}</a></td><td>{len(items)}</td>'
            f"<td>{sum(bool(r.get('scheduled')) for r in items)}</td><td>{sum(bool(r.get('cancelled')) for r in items)}</td>"
            f"<td>{esc(_utc_label(times[0]))}</td><td>{esc(_utc_label(times[-1]))}</td></tr>"
        )
    out.append("</tbody></table>")
    for market in sorted(by_market):
        items = sorted(by_market[market], key=lambda r: (r["send_at"], r["ledger_key"]))
        opened = " open" if len(items) <= OPEN_SECTION_LIMIT else ""
        out.append(
            f'<details id="m-{esc(quote(market), quote=True)}"{opened}><summary>{esc(market)}: {len(items)} mails</summary>'
            "<table><thead><tr><th>send at (UTC)</th><th>recipient's local time</th><th>flow / step</th>"
            "<th>subject</th><th>ledger key</th><th>files</th></tr></thead><tbody>"
        )
        for row in items:
            flow_step = " / ".join(c for c in row.get("categories") or [] if c != market)
            files = (
                "cancelled"
                if row.get("cancelled")
                else f"{_link(row['eml'], '.eml')} {_link(row['preview'], 'preview')}"
            )
            css = ' class="cancelled"' if row.get("cancelled") else ""
            out.append(
                f"<tr{css}><td>{esc(_utc_label(row['send_at']))}</td><td>{esc(row.get('local_send_at') or '')}</td>"
                f"<td>{esc(flow_step)}</td><td>{esc(row.get('subject') or '')}</td>"
                f"<td><code>{esc(row['ledger_key'])}</code></td><td>{files}</td></tr>"
            )
        out.append("</tbody></table></details>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _utc_label(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
