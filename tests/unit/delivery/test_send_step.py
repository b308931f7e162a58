"""The shared per-market send step, end to end: real SendGrid transport, the local SendGrid server, SQLite ledger.

Every audience member must end with exactly one outcome; what the server accepted must be
exactly the members reported sent or scheduled.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from market_fixtures import TEST_SENDER, synthetic_market

from remarketing.delivery import ledger
from remarketing.delivery.caps import FrequencyCaps
from remarketing.delivery.ledger import ClaimContext
from remarketing.delivery.messages import Message, Recipient, SendResult
from remarketing.delivery.retry import RetryPolicy
from remarketing.delivery.send_step import OUTCOMES, RenderFailure, send_market
from remarketing.delivery.sendgrid_transport import SendGridTransport
from remarketing.delivery.suppressions import add_local_suppression

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # Friday, 11:00 in Berlin
FLOW = "cart_recovery"


def market(**overrides):
    """Germany with real send and quiet hours (the windows matter in these tests)."""
    overrides.setdefault("send_hours", {d: [9, 20] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")})
    overrides.setdefault("quiet_hours", {"start": "21:00", "end": "08:00"})
    return synthetic_market("DE", **{"name": "Germany", **overrides})


def audience(n: int, **columns) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": list(range(1, n + 1)),
            "email": [f"customer{i}@example.com" for i in range(1, n + 1)],
            "market": "DE",
            "locale": "de-DE",
            "time_zone": "Europe/Berlin",
            "earliest_at": pd.Timestamp(NOW),
            "best_hour": pd.array([pd.NA] * n, dtype="Int64"),
            "marketing_consent": True,
            "value": [float(i) for i in range(1, n + 1)],
            "step": 1,
            "subject_kind": "cart",
            "subject_id": [f"{i}" for i in range(1, n + 1)],
            "variant": "v1",
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def render_each(chunk: pd.DataFrame):
    """One personal message per member, as a cart reminder is."""
    for row in chunk.itertuples(index=False):
        yield Message(
            recipients=(
                Recipient(row.email, row.ledger_key, headers={"List-Unsubscribe": "<https://shop.example.com/u?t=x>"}),
            ),
            from_email=TEST_SENDER["from_email"],
            from_name="Shop",
            subject="Ihr Warenkorb",
            html="<p>Hallo</p>",
            text="Hallo",
        )


@pytest.fixture
def transport(sendgrid):
    retry = RetryPolicy(max_attempts=3, base_delay=0, sleep=lambda s: None)
    with SendGridTransport(
        sendgrid.api_key, host=sendgrid.url, timeout=2, max_workers=4, retry=retry, clock=lambda: NOW
    ) as t:
        yield t


def run(engine, transport, frame, *, m=None, render=render_each, run_id="run-1", try_number=1, now=NOW, **kwargs):
    return send_market(
        flow=FLOW,
        market=m or market(),
        audience=frame,
        render=render,
        transport=transport,
        engine=engine,
        run_id=run_id,
        try_number=try_number,
        now=now,
        **kwargs,
    )


def prior_send(engine, run_id, customer_id, cart, *, at, status="accepted"):
    ctx = ClaimContext(run_id, "DE", 1, FLOW)
    key = ledger.ledger_key(FLOW, customer_id, step=1, subject_kind="cart", subject_id=cart, variant="v1")
    frame = pd.DataFrame(
        {
            "ledger_key": [key],
            "kind": "recovery",
            "step": "1",
            "customer_ref": f"c{customer_id}",
            "customer_id": str(customer_id),
            "subject_kind": "cart",
            "subject_id": str(cart),
            "variant": "v1",
            "send_at": pd.NaT,
        }
    )
    ledger.claim(engine, ctx, frame, now=at)
    ledger.mark_sending(engine, ctx, [key], now=at)
    ledger.record_results(engine, ctx, [SendResult((key,), status, 202, None, 1)], now=at)
    return key


def test_every_member_gets_exactly_one_outcome_and_the_server_agrees(engine, transport, sendgrid, tmp_path):
    frame = audience(14)
    frame.loc[1, "earliest_at"] = pd.Timestamp(NOW + timedelta(hours=5))  # 2: scheduled for 16:00 Berlin
    frame.loc[2, "earliest_at"] = pd.Timestamp(NOW + timedelta(hours=80))  # 3: beyond the 72 h horizon
    frame.loc[3, "email"] = "not an address"  # 4
    frame.loc[4, "email"] = "Unsubscribed@Example.com"  # 5: our own one-click unsubscribe
    frame.loc[5, "marketing_consent"] = False  # 6
    frame.loc[7, "customer_id"] = 8  # 8: same customer twice (its other cart ...)
    frame.loc[8, "customer_id"] = 8  # ... with the higher value wins
    frame.loc[10, "email"] = "group-unsub@example.com"  # 11: unsubscribed from this market's group
    add_local_suppression(engine, "unsubscribed@example.com", now=NOW - timedelta(days=1))
    add_local_suppression(engine, "group-unsub@example.com", kind="group_unsubscribes", group_id=1001, now=NOW)
    prior_send(engine, "run-0", 7, "old", at=NOW - timedelta(hours=5))  # 7: recovery cap (20 h)
    prior_send(engine, "run-0", 10, 10, at=NOW - timedelta(days=1))  # 10: this very key, earlier run

    def render(chunk):
        for message in render_each(chunk):
            key = message.recipients[0].ledger_key
            if "/c12/" in key:
                yield RenderFailure((key,), "template error: 'first_name' is undefined")
            elif "/c13/" in key:
                yield RenderFailure((key,), "cart 13 converted since the scan", outcome="converted")
            elif "/c14/" in key:  # SendGrid refuses it (reserved header): a 400, final
                yield Message(**{**message.__dict__, "headers": {"X-SG-ID": "x"}})
            else:
                yield message

    summary = run(engine, transport, frame, render=render, outcomes_dir=tmp_path / "data")

    assert len(pq.read_table(summary.outcomes_path)) == 14  # one row per member
    by_cart = (
        pq.read_table(summary.outcomes_path)
        .to_pandas()
        .set_index("subject_id")
        .rename(index=lambda cart: f"cart{cart}")
    )
    expected = {
        "cart1": "sent",
        "cart2": "scheduled",
        "cart3": "outside_window",
        "cart4": "invalid_address",
        "cart5": "suppressed",
        "cart6": "no_consent",
        "cart7": "capped",
        "cart8": "capped",
        "cart9": "sent",
        "cart10": "already_sent",
        "cart11": "suppressed",
        "cart12": "failed",
        "cart13": "converted",
        "cart14": "failed",
    }
    assert by_cart["outcome"].to_dict() == expected
    reasons = by_cart["reason"].to_dict()
    assert reasons["cart3"] == "beyond_send_at_horizon"
    assert reasons["cart5"] == "unsubscribes" and reasons["cart11"] == "group_unsubscribes"
    assert reasons["cart7"] == "recovery cap: another mail within 20 h"
    assert reasons["cart8"] == "another mail to this customer in this run"
    assert "first_name" in reasons["cart12"] and reasons["cart14"].startswith("HTTP 400")
    assert by_cart.loc["cart14", "http_status"] == 400
    counts = {o: n for o, n in summary.counts.items() if n}
    assert counts == {
        "sent": 2,
        "scheduled": 1,
        "outside_window": 1,
        "invalid_address": 1,
        "suppressed": 2,
        "no_consent": 1,
        "capped": 2,
        "already_sent": 1,
        "failed": 2,
        "converted": 1,
    }
    assert set(summary.counts) == set(OUTCOMES)

    # The server accepted exactly the sent and scheduled members, once, as SendGrid mail should look.
    recipients = {r["custom_args"]["ledger_key"]: r for r in sendgrid.accepted_recipients()}
    sent_keys = {
        ledger.ledger_key(FLOW, c, step=1, subject_kind="cart", subject_id=j, variant="v1")
        for c, j in ((1, 1), (2, 2), (8, 9))
    }
    assert set(recipients) == sent_keys and set(sendgrid.ledger_key_counts().values()) == {1}
    scheduled = recipients[ledger.ledger_key(FLOW, 2, step=1, subject_kind="cart", subject_id="2", variant="v1")]
    assert scheduled["send_at"] == int(datetime(2026, 11, 20, 15, 0, tzinfo=UTC).timestamp())
    assert (
        recipients[ledger.ledger_key(FLOW, 1, step=1, subject_kind="cart", subject_id="1", variant="v1")]["send_at"]
        is None
    )  # due now: no send_at
    assert {r["batch_id"] for r in recipients.values()} == {summary.batch_id} and summary.batch_id
    assert all(r["categories"][:3] == ["flow:cart_recovery", "market:DE", "step:1"] for r in recipients.values())
    assert all(r["asm"] == {"group_id": 1001} for r in recipients.values())

    # Ledger, run record and outcome file agree; no address anywhere in what is logged or stored.
    stored = pq.read_table(summary.outcomes_path).to_pandas()
    found = ledger.lookup(engine, stored["ledger_key"].dropna())
    assert found["status"].value_counts().to_dict() == {"accepted": 4, "rejected": 1}  # incl. run-0's cart10
    with engine.connect() as conn:
        recorded = dict(
            conn.execute(
                sa.select(ledger.send_runs.c.outcome, ledger.send_runs.c.count).where(
                    ledger.send_runs.c.run_id == "run-1"
                )
            ).all()
        )
    assert recorded == counts
    assert "email" not in stored.columns
    assert not stored.astype(str).apply(lambda col: col.str.contains("@")).any().any()
    assert "@" not in summary.log_table() and "@" not in str(summary.to_xcom())
    assert summary.to_xcom()["counts"]["sent"] == 2 and summary.to_xcom()["gate"]["status"] == "open"


def test_a_halted_market_sends_nothing_and_says_why(engine, transport, sendgrid):
    halted = market(sender={**TEST_SENDER, "authenticated": False})
    summary = run(engine, transport, audience(5), m=halted)
    assert summary.counts["gated"] == 5 and summary.gate["status"] == "halted"
    assert summary.gate["reasons"] == ["sender domain not authenticated"]
    assert "sender domain not authenticated" in summary.log_table()
    assert sendgrid.accepted == [] and summary.batch_id is None
    assert ledger.lookup(engine, ["x"]).empty
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger.send_ledger)).scalar_one() == 0


def test_the_warmup_cap_sends_the_highest_values_first(engine, transport, sendgrid):
    capped_market = market(warmup_daily_cap=5)
    prior_send(engine, "run-0", 100, 100, at=NOW - timedelta(minutes=30))  # already 1 today
    frame = audience(8, value=[5.0, 80.0, None, 20.0, 70.0, 10.0, 60.0, 30.0])
    summary = run(engine, transport, frame, m=capped_market)
    assert summary.counts["sent"] == 4 and summary.counts["capped"] == 4
    sent = {r["custom_args"]["ledger_key"] for r in sendgrid.accepted_recipients()}
    assert sent == {
        ledger.ledger_key(FLOW, c, step=1, subject_kind="cart", subject_id=c, variant="v1") for c in (2, 5, 7, 8)
    }
    second = run(engine, transport, audience(8), m=capped_market, run_id="run-2", now=NOW + timedelta(minutes=5))
    assert second.counts["capped"] == 4 and second.gate["warmup_remaining"] == 0  # the day is full
    assert len(sendgrid.accepted_recipients()) == 4


def test_a_retry_sends_what_was_claimed_and_never_resends_what_was_in_flight(engine, transport, sendgrid, tmp_path):
    frame = audience(6)
    keys = [ledger.ledger_key(FLOW, c, step=1, subject_kind="cart", subject_id=c, variant="v1") for c in range(1, 7)]
    try1 = ClaimContext("run-1", "DE", 1, FLOW)
    claim_rows = pd.DataFrame(
        {
            "ledger_key": keys[:4],
            "kind": "recovery",
            "step": "1",
            "customer_ref": [f"c{c}" for c in range(1, 5)],
            "customer_id": [str(c) for c in range(1, 5)],
            "subject_kind": "cart",
            "subject_id": [f"{c}" for c in range(1, 5)],
            "variant": "v1",
            "send_at": pd.NaT,
        }
    )
    ledger.claim(engine, try1, claim_rows, now=NOW)
    ledger.mark_sending(engine, try1, keys[:2], now=NOW)  # try 1 was killed during these two requests
    frame = frame[frame["customer_id"] != 4]  # customer 4 left the audience (say, ordered) meanwhile

    summary = run(engine, transport, frame, try_number=2, outcomes_dir=tmp_path)
    assert {o: n for o, n in summary.counts.items() if n} == {"unknown": 2, "sent": 3}
    assert set(sendgrid.ledger_key_counts()) == {keys[2], keys[4], keys[5]}
    assert keys[3] not in set(ledger.lookup(engine, keys).index)  # its claim was released, never sent
    assert any("cut off mid-send" in note for note in summary.notes)

    # Try 3 of the same run (say the summary task failed): reports the run's truth, sends nothing.
    again = run(engine, transport, frame, try_number=3)
    assert {o: n for o, n in again.counts.items() if n} == {"unknown": 2, "sent": 3}
    assert again.batch_id == summary.batch_id and len(sendgrid.batches) == 1  # one batch per market run
    assert sum(sendgrid.ledger_key_counts().values()) == 3
    # A later run does not resend unknown outcomes either.
    later = run(engine, transport, frame, run_id="run-2", now=NOW + timedelta(days=2))
    assert later.counts["already_sent"] == 5 and sum(sendgrid.ledger_key_counts().values()) == 3


def test_a_dry_run_renders_but_claims_and_sends_nothing(engine, transport, sendgrid, tmp_path):
    rendered = []

    def render(chunk):
        rendered.extend(chunk["ledger_key"])
        yield from render_each(chunk)

    frame = audience(4)
    frame.loc[0, "marketing_consent"] = False
    summary = run(engine, transport, frame, render=render, dry_run=True, outcomes_dir=tmp_path)
    assert {o: n for o, n in summary.counts.items() if n} == {"no_consent": 1, "sent": 3}
    assert len(rendered) == 3 and summary.dry_run and summary.batch_id is None
    assert sendgrid.requests_log == []  # not even a batch id
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger.send_ledger)).scalar_one() == 0
    assert summary.outcomes_path.endswith("try=1-dry.parquet")
    real = run(engine, transport, frame)
    assert real.counts["sent"] == 3 and len(sendgrid.accepted_recipients()) == 3


def test_an_unsubscribe_during_the_run_is_honoured_for_later_chunks(engine, transport, sendgrid):
    def render(chunk):
        if "/c1/" in chunk["ledger_key"].iloc[0]:  # while the first chunk renders, customer 9 unsubscribes
            add_local_suppression(engine, "customer9@example.com", now=NOW)
        yield from render_each(chunk)

    summary = run(engine, transport, audience(12), render=render, chunk_size=3)
    assert summary.counts["suppressed"] == 1 and summary.counts["sent"] == 11
    assert (
        ledger.ledger_key(FLOW, 9, step=1, subject_kind="cart", subject_id="9", variant="v1")
        not in sendgrid.ledger_key_counts()
    )


def test_shared_content_is_split_by_send_time_and_guests_are_keyed_without_their_address(engine, transport, sendgrid):
    frame = audience(4)
    frame["customer_id"] = [1, None, 3, None]
    frame.loc[2, "earliest_at"] = pd.Timestamp(NOW + timedelta(hours=3))

    def render(chunk):  # one campaign-style message for everybody
        yield Message(
            recipients=tuple(
                Recipient(e, k, headers={"List-Unsubscribe": "<https://shop.example.com/u>"})
                for e, k in zip(chunk["email"], chunk["ledger_key"], strict=True)
            ),
            from_email=TEST_SENDER["from_email"],
            from_name="Shop",
            subject="Neu im Shop",
            html="<p>Neu</p>",
            text="Neu",
        )

    summary = run(engine, transport, frame, render=render)
    assert summary.counts["sent"] == 3 and summary.counts["scheduled"] == 1
    requests = sendgrid.accepted
    assert len(requests) == 2  # one per send time
    keys = set(sendgrid.ledger_key_counts())
    guests = [k for k in keys if k.split("/")[2].startswith("g")]
    assert len(guests) == 2 and not any("customer" in k for k in keys)


def test_a_malformed_audience_is_refused_with_a_clear_error(engine, transport):
    with pytest.raises(ValueError, match=r"lacks columns \['value'\]"):
        run(engine, transport, audience(2).drop(columns="value"))
    with pytest.raises(ValueError, match="customer_id 2, market FR"):
        run(engine, transport, audience(2).assign(market=["DE", "FR"]))
    with pytest.raises(ValueError, match=re.escape("ledger key cart_recovery/1/c1/cart1/v1 appears twice")):
        run(engine, transport, audience(2).assign(customer_id=[1, 1], subject_id=["1", "1"]))
    with pytest.raises(ValueError, match="flow 'newsletter'"):
        send_market(
            flow="newsletter", market=market(), audience=audience(1), render=render_each, transport=transport,
            engine=engine, run_id="r", try_number=1, now=NOW,
        )  # fmt: skip


def test_marketing_caps_count_recovery_mail_across_flows(engine, transport, sendgrid):
    prior_send(engine, "run-0", 1, "x", at=NOW - timedelta(hours=3))  # a recovery mail this morning
    summary = send_market(
        flow="market_campaign",
        market=market(),
        audience=audience(2, step=None, arm="a", subject_kind="campaign", subject_id=["spring", "spring"]),
        render=render_each,
        transport=transport,
        engine=engine,
        run_id="campaign-1",
        try_number=1,
        now=NOW,
        caps=FrequencyCaps(),
    )
    assert summary.counts["capped"] == 1 and summary.counts["sent"] == 1
    assert set(sendgrid.ledger_key_counts()) == {"market_campaign/a/c2/spring/v1"}


def test_a_retry_does_not_count_its_own_earlier_claims_twice_against_the_warmup_cap(engine, transport, sendgrid):
    try1 = ClaimContext("run-1", "DE", 1, FLOW)
    frame = audience(5, value=[50.0, 40.0, 30.0, 20.0, 10.0])
    keys = [ledger.ledger_key(FLOW, c, step=1, subject_kind="cart", subject_id=c, variant="v1") for c in (1, 2)]
    ledger.claim(
        engine,
        try1,
        pd.DataFrame(
            {
                "ledger_key": keys,
                "kind": "recovery",
                "step": "1",
                "customer_ref": ["c1", "c2"],
                "customer_id": ["1", "2"],
                "subject_kind": "cart",
                "subject_id": ["1", "2"],
                "variant": "v1",
                "send_at": pd.NaT,
            }
        ),
        now=NOW - timedelta(minutes=1),
    )  # try 1 died after claiming, before sending
    summary = run(engine, transport, frame, m=market(warmup_daily_cap=3), try_number=2)
    assert summary.counts["sent"] == 3 and summary.counts["capped"] == 2
    assert set(sendgrid.ledger_key_counts()) == {
        ledger.ledger_key(FLOW, c, step=1, subject_kind="cart", subject_id=c, variant="v1") for c in (1, 2, 3)
    }


def test_a_send_killed_on_its_last_try_is_reconciled_by_the_next_run_not_lost(engine, transport, sendgrid):
    """Claims a dead attempt never dispatched are mailed by the next run; what it had in flight stays unknown."""
    frame = audience(5)
    keyed = ledger.ledger_keys(FLOW, frame)
    dead = ClaimContext("run-0", "DE", 4, FLOW)
    ledger.begin_attempt(engine, dead)
    claim_rows = keyed.assign(kind="recovery", send_at=pd.NaT)
    keys = list(keyed["ledger_key"])
    assert ledger.claim(engine, dead, claim_rows, now=NOW) == set(keys)
    ledger.mark_sending(engine, dead, keys[:2], now=NOW)  # killed during these two requests
    with engine.begin() as conn:  # ... an hour ago: its lease ran out long since
        conn.execute(sa.update(ledger.send_attempts).values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))
    summary = run(engine, transport, frame, run_id="run-1")
    assert summary.counts.get("sent") == 3, summary.counts
    assert summary.counts.get("already_sent") == 2, "in flight when killed: unknown, never resent"
    assert set(sendgrid.ledger_key_counts()) == set(keys[2:])
    assert any("reconciled" in note and "3 claims released" in note for note in summary.notes), summary.notes
    assert ledger.reconcile_dead_attempts(engine) == {"unknown": 0, "released": 0}, "the finished run left nothing"
