"""OutboxTransport: .eml files that parse back, an HTML index of every mail, idempotent by ledger key."""

from __future__ import annotations

import email
import html
import re
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest

from remarketing.delivery import outbox as outbox_module
from remarketing.delivery.messages import Message, Recipient
from remarketing.delivery.outbox import OutboxTransport, safe_name

NOW = datetime(2026, 3, 27, 8, 0, tzinfo=UTC)


def person(i: int, **extra_args) -> Recipient:
    return Recipient(
        email=f"customer{i}@example.com",
        ledger_key=f"cart_recovery/step1/customer:{i}/cart:{100 + i}",
        name=f"Kunde {i}",
        substitutions={"-first_name-": f"Jürgen{i}", "-cart_url-": f"https://shop.example/cart/{100 + i}"},
        headers={"List-Unsubscribe": f"<https://shop.example/unsubscribe/{i}>"},
        custom_args={"customer_id": str(i), **extra_args},
    )


def mail(recipients, market: str | None = "DE", **overrides) -> Message:
    fields = dict(
        recipients=tuple(recipients),
        from_email="shop@mail.example.com",
        from_name="Shop",
        subject="Hallo -first_name-, Ihr Warenkorb",
        html="<p>Hallo <b>-first_name-</b>, <a href='-cart_url-'>zum Warenkorb</a></p>",
        text="Hallo -first_name-, zum Warenkorb: -cart_url-",
        reply_to="help@example.com",
        send_at=NOW + timedelta(hours=3),
        categories=("cart_recovery", market or "all", "step1"),
        asm_group_id=11,
        custom_args={"flow": "cart_recovery", **({"market": market} if market else {})},
    )
    fields.update(overrides)
    return Message(**fields)


@pytest.fixture
def outbox(tmp_path) -> OutboxTransport:
    return OutboxTransport(tmp_path / "outbox", clock=lambda: NOW)


def read_eml(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)


def test_each_recipient_becomes_an_eml_that_parses_back(outbox, tmp_path):
    message = mail([person(1), person(2, time_zone="Europe/Berlin")])
    results = list(outbox.send([message]))
    assert [(r.outcome, r.ledger_keys) for r in results] == [
        ("accepted", tuple(r.ledger_key for r in message.recipients))
    ]

    folder = tmp_path / "outbox" / "DE"
    emls = sorted(folder.glob("*.eml"))
    assert len(emls) == 2
    parsed = read_eml(folder / f"{safe_name(person(2).ledger_key)}.eml")
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Hallo Jürgen2, zum Warenkorb: https://shop.example/cart/102"
    assert "<b>Jürgen2</b>" in parts[1].get_content() and "-first_name-" not in parts[1].get_content()
    assert parsed["Subject"] == "Hallo Jürgen2, Ihr Warenkorb"
    assert parsed["To"] == "Kunde 2 <customer2@example.com>"
    assert parsed["From"] == "Shop <shop@mail.example.com>"
    assert parsed["Reply-To"] == "help@example.com"
    assert parsed["List-Unsubscribe"] == "<https://shop.example/unsubscribe/2>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["X-Remarketing-Ledger-Key"] == person(2).ledger_key
    assert datetime.fromisoformat(parsed["X-Remarketing-Send-At"]) == NOW + timedelta(hours=3)
    assert parsed["Date"].datetime == NOW + timedelta(hours=3)
    assert re.fullmatch(r"<[0-9a-f]{32}@mail\.example\.com>", parsed["Message-ID"])
    assert parsed["X-Remarketing-Categories"] == "cart_recovery, DE, step1"
    # the preview is the HTML part of this recipient
    preview = (folder / f"{safe_name(person(2).ledger_key)}.html").read_text()
    assert preview == parts[1].get_content().rstrip("\n")


def test_transactional_mail_has_no_one_click_header(outbox, tmp_path):
    receipt = Recipient(email="buyer@example.com", ledger_key="receipt:1")
    list(outbox.send([mail([receipt], marketing=False, market=None, send_at=None)]))
    parsed = read_eml(tmp_path / "outbox" / "all" / f"{safe_name('receipt:1')}.eml")
    assert parsed["List-Unsubscribe-Post"] is None and parsed["List-Unsubscribe"] is None
    assert datetime.fromisoformat(parsed["X-Remarketing-Send-At"]) == NOW  # unscheduled: sent "now"


def test_index_lists_every_mail_grouped_by_market(outbox, tmp_path):
    markets = ["DE", "US", "JP"]
    messages = [mail([person(m * 100 + i) for i in range(15)], market=code) for m, code in enumerate(markets)]
    list(outbox.send(messages))
    outbox.close()

    page = (tmp_path / "outbox" / "index.html").read_text()
    for message in messages:
        for r in message.recipients:
            assert html.escape(r.ledger_key) in page
    hrefs = re.findall(r'href="([^"#]+)"', page)
    assert len(hrefs) == 2 * 45
    for href in hrefs:
        assert (tmp_path / "outbox" / html.unescape(href)).is_file()
    for code in markets:
        assert f'<details id="m-{code}" open><summary>{code}: 15 mails</summary>' in page
    assert page.index('id="m-DE"') < page.index('id="m-JP"') < page.index('id="m-US"')
    assert "45 mails in 3 markets" in page


def test_index_shows_utc_and_recipient_local_time(outbox, tmp_path):
    message = mail([person(1, time_zone="Asia/Kolkata"), person(2, local_send_at="Fr 14:00 (Tokio)")])
    list(outbox.send([message]))
    outbox.write_index()
    page = (tmp_path / "outbox" / "index.html").read_text()
    assert "2026-03-27 11:00 UTC" in page
    assert "2026-03-27 16:30 IST (Asia/Kolkata)" in page  # a half-hour zone
    assert "Fr 14:00 (Tokio)" in page
    assert "cart_recovery / step1" in page  # flow / step from the categories, the market dropped


def test_same_ledger_key_twice_keeps_one_file(outbox, tmp_path):
    list(outbox.send([mail([person(1)])]))
    list(outbox.send([mail([person(1)], subject="Second version -first_name-")]))
    folder = tmp_path / "outbox" / "DE"
    assert len(list(folder.glob("*.eml"))) == 1 and len(list(folder.glob("*.json"))) == 1
    assert read_eml(next(folder.glob("*.eml")))["Subject"] == "Second version Jürgen1"
    assert [row["subject"] for row in outbox.rows()] == ["Second version Jürgen1"]


def test_file_names_are_safe_and_distinct():
    keys = ["a/b", "a_b", "../../etc/passwd", "x" * 500, "ünï:cödé"]
    names = [safe_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and len(name) <= 93 and not name.startswith(".")


def test_subject_and_keys_are_escaped_in_the_index(outbox, tmp_path):
    evil = Recipient(
        email="x@example.com",
        ledger_key='k:"><img src=x onerror=alert(1)>',
        headers={"List-Unsubscribe": "<https://shop.example/u>"},
    )
    list(outbox.send([mail([evil], subject="<script>alert('hi')</script> & more", market="DE")]))
    outbox.close()
    page = (tmp_path / "outbox" / "index.html").read_text()
    assert "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script>" not in page and "<img" not in page


def test_a_new_transport_lists_mails_of_earlier_runs(tmp_path):
    first = OutboxTransport(tmp_path / "outbox", clock=lambda: NOW)
    list(first.send([mail([person(1)], market="DE")]))
    first.close()
    second = OutboxTransport(tmp_path / "outbox", clock=lambda: NOW)
    list(second.send([mail([person(2)], market="US")]))
    second.close()
    page = (tmp_path / "outbox" / "index.html").read_text()
    assert html.escape(person(1).ledger_key) in page and html.escape(person(2).ledger_key) in page
    assert "2 mails in 2 markets" in page


def test_invalid_message_writes_nothing(outbox, tmp_path):
    with pytest.raises(ValueError, match="more than 72 h ahead"):
        list(outbox.send([mail([person(1)], send_at=NOW + timedelta(hours=73))]))
    with pytest.raises(ValueError, match="same address"):
        list(outbox.send([mail([person(1), Recipient(**{**person(1).__dict__, "ledger_key": "other"})])]))
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").rglob("*.eml"))


def test_cancel_batch_removes_future_mails_and_marks_them(outbox, tmp_path):
    batch = outbox.create_batch_id()
    later = mail([person(1), person(2)], batch_id=batch)
    due = mail([person(3)], batch_id=batch, send_at=NOW - timedelta(minutes=1))
    other = mail([person(4)], batch_id=outbox.create_batch_id())
    list(outbox.send([later, due, other]))
    outbox.cancel_batch(batch)
    outbox.close()
    folder = tmp_path / "outbox" / "DE"
    assert sorted(p.name for p in folder.glob("*.eml")) == sorted(
        f"{safe_name(person(i).ledger_key)}.eml" for i in (3, 4)
    )
    cancelled = {row["ledger_key"] for row in outbox.rows() if row["cancelled"]}
    assert cancelled == {person(1).ledger_key, person(2).ledger_key}
    page = (tmp_path / "outbox" / "index.html").read_text()
    assert page.count('class="cancelled"') == 2


def test_big_markets_start_collapsed(outbox, tmp_path, monkeypatch):
    """Thousands of mails stay browsable: a market past the limit is a closed section (limit lowered here)."""
    monkeypatch.setattr(outbox_module, "OPEN_SECTION_LIMIT", 30)
    big = mail([person(i) for i in range(31)], market="US")
    small = mail([person(5000 + i) for i in range(30)], market="GB")
    list(outbox.send([big, small]))
    outbox.close()
    page = (tmp_path / "outbox" / "index.html").read_text()
    assert '<details id="m-US"><summary>US: 31 mails</summary>' in page
    assert '<details id="m-GB" open><summary>GB: 30 mails</summary>' in page
    assert page.count("<tr><td>2026-03-27 11:00 UTC</td>") == 61


def test_object_storage_paths(tmp_path):
    from airflow.sdk import ObjectStoragePath

    assert OutboxTransport.from_path(f"file://{tmp_path}/a").folder == tmp_path / "a"
    assert OutboxTransport(ObjectStoragePath(f"file://{tmp_path}/b")).folder == tmp_path / "b"

    folder = ObjectStoragePath(f"memory://outbox-test-{id(tmp_path)}/outbox")
    remote = OutboxTransport(folder, clock=lambda: NOW)
    batch = remote.create_batch_id()
    list(remote.send([mail([person(1), person(2)], batch_id=batch), mail([person(3)], market="US")]))
    remote.cancel_batch(batch)
    remote.close()
    page = (folder / "index.html").read_text()
    assert "3 mails in 2 markets" in page and page.count('class="cancelled"') == 2
    us = [p.name for p in (folder / "US").iterdir()]
    assert sorted(us) == sorted(f"{safe_name(person(3).ledger_key)}.{ext}" for ext in ("eml", "html", "json"))
    assert not any(p.name.endswith(".eml") for p in (folder / "DE").iterdir())


@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x00"])
def test_line_breaks_and_controls_in_names_and_subjects_never_reach_a_header(outbox, tmp_path, breaker):
    """A first name or subject with CRLF, NEL, VT, FF or U+2028 must not abort the market or inject a header."""
    recipient = Recipient(
        email="customer1@example.com",
        ledger_key="cart_recovery/1/c1/cart1/v1",
        name=f"Anna{breaker}Bcc: x@evil.test",
        headers={"List-Unsubscribe": "<https://shop.example/unsubscribe/1>"},
    )
    message = mail([recipient], subject=f"Hallo{breaker}Bcc: x@evil.test")
    (result,) = list(outbox.send([message]))
    assert result.outcome == "accepted"
    (eml,) = (tmp_path / "outbox" / "DE").glob("*.eml")
    parsed = read_eml(eml)
    assert parsed["Bcc"] is None and breaker not in str(parsed["Subject"]) and breaker not in str(parsed["To"])
    assert str(parsed["Subject"]) == "Hallo Bcc: x@evil.test"


def test_a_message_that_cannot_be_built_is_rejected_alone_and_the_rest_goes_out(outbox, tmp_path):
    broken = Recipient(
        email="jörg@exämple.de",
        ledger_key="cart_recovery/1/c9/cart9/v1",
        name="Jörg",
        headers={"List-Unsubscribe": "<https://shop.example/unsubscribe/9>"},
    )
    results = list(outbox.send([mail([person(1)]), mail([broken]), mail([person(2)])]))
    assert [r.outcome for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1].status == 400 and not results[1].error.count("@"), "the reason names no address"
    assert len(list((tmp_path / "outbox" / "DE").glob("*.eml"))) == 2
