"""The feedback loop without Airflow: real sends to the local SendGrid server, events back, folded.

Events are built from what the local SendGrid server accepted, shaped as SendGrid's Event
Webhook posts them (custom args repeated as top-level fields, ``category`` a list).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from market_fixtures import TEST_SENDER, TEST_STOREFRONT

from remarketing.delivery import ledger
from remarketing.delivery.engagement import best_hours, delivery_outcomes, email_events, load_engagement, send_outcomes
from remarketing.delivery.gate import check_market, health_totals, market_health, refresh_market_health
from remarketing.delivery.messages import Message, Recipient
from remarketing.delivery.retry import RetryPolicy
from remarketing.delivery.send_step import send_market
from remarketing.delivery.sendgrid_api import SendGridApi
from remarketing.delivery.sendgrid_transport import SendGridTransport
from remarketing.delivery.suppressions import suppression_reasons, suppression_sync, suppressions, sync_suppressions
from remarketing.flows.feedback.fold import fold_pending
from remarketing.flows.feedback.store import (
    FeedbackError,
    apply_suppressions,
    email_event_batches,
    event_json,
    pending_batches,
    store_batch,
)
from remarketing.markets import MarketConfig, parse_markets
from remarketing.platform import state

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # Friday 11:00 in Berlin
FLOW = "cart_recovery"


def market(**overrides):
    body = {
        "name": "Germany",
        "locales": ["de-DE"],
        "currency": "EUR",
        "default_time_zone": "Europe/Berlin",
        "time_zones": ["Europe/Berlin"],
        "send_hours": {d: [9, 20] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "holidays": {"country": "DE", "policy": "target"},
        "marketing_consent_required": False,
        "sender": TEST_SENDER,
        "sendgrid_unsubscribe_group_id": 1001,
        "warmup_daily_cap": 10_000,
        "storefront": TEST_STOREFRONT,
    }
    body.update(overrides)
    return parse_markets({"markets": {"DE": body}})["DE"]


def audience(ids, *, step=1) -> pd.DataFrame:
    ids = list(ids)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"customer{i}@example.com" for i in ids],
            "market": "DE",
            "locale": "de-DE",
            "time_zone": "Europe/Berlin",
            "earliest_at": pd.Timestamp(NOW),
            "best_hour": pd.array([pd.NA] * len(ids), dtype="Int64"),
            "marketing_consent": True,
            "value": [float(i) for i in ids],
            "step": step,
            "subject_kind": "cart",
            "subject_id": [f"{i}" for i in ids],
            "variant": "v1",
        }
    )


def render_each(chunk: pd.DataFrame):
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
            custom_args={"flow": FLOW, "market": "DE"},
        )


def transport_for(sendgrid, now=NOW):
    retry = RetryPolicy(max_attempts=3, base_delay=0, sleep=lambda s: None)
    return SendGridTransport(
        sendgrid.api_key, host=sendgrid.url, timeout=2, max_workers=2, retry=retry, clock=lambda: now
    )


def send(engine, sendgrid, frame, *, run_id, now=NOW, m=None):
    with transport_for(sendgrid, now) as transport:
        return send_market(
            flow=FLOW,
            market=m or market(),
            audience=frame,
            render=render_each,
            transport=transport,
            engine=engine,
            run_id=run_id,
            try_number=1,
            now=now,
        )


_counter = iter(range(10**9))


def event_for(recipient: dict, kind: str, at: datetime, **extra) -> dict:
    """One Event Webhook event for a mail the server accepted, as SendGrid shapes it."""
    return {
        "email": recipient["email"],
        "timestamp": int(at.timestamp()),
        "event": kind,
        "sg_event_id": f"sg-{kind}-{next(_counter)}",
        "sg_message_id": f"{recipient['message_id']}.filter0001",
        "category": recipient["categories"],
        **recipient["custom_args"],  # custom args arrive as top-level fields
        **extra,
    }


def synthetic(kind: str, n: int, at: datetime, **extra) -> list[dict]:
    """Events of mails sent outside this test's ledger (no ledger key), tagged with the market category."""
    return [
        {
            "email": f"other{i}@example.com",
            "timestamp": int(at.timestamp()),
            "event": kind,
            "sg_event_id": f"syn-{kind}-{next(_counter)}",
            "category": ["flow:campaign", "market:DE"],
            **extra,
        }
        for i in range(n)
    ]


def table(engine, t: sa.Table) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(sa.select(t)).all(), columns=[c.name for c in t.columns])


# -- the loop ------------------------------------------------------------------------------------


def test_a_bounce_arriving_between_two_sends_stops_the_second(engine, sendgrid):
    first = send(engine, sendgrid, audience(range(1, 6)), run_id="run-1")
    assert first.counts["sent"] == 5
    accepted = {r["custom_args"]["ledger_key"]: r for r in sendgrid.accepted_recipients()}
    bounced_key = ledger.ledger_key(FLOW, 3, step=1, subject_kind="cart", subject_id="3", variant="v1")
    batch = [event_for(r, "delivered", NOW + timedelta(minutes=1)) for k, r in accepted.items() if k != bounced_key]
    batch.append(
        event_for(
            accepted[bounced_key],
            "bounce",
            NOW + timedelta(minutes=1),
            type="bounce",
            reason="550 5.1.1 <customer3@example.com> no such user",
        )
    )
    stored = store_batch(engine, event_json(batch), now=NOW + timedelta(minutes=2))
    assert stored.new and stored.suppressed == 1

    # Next day: step 2 for the same carts. No fold has run yet: the webhook's suppression is enough.
    sendgrid.reset()
    later = NOW + timedelta(days=1)
    second = send(engine, sendgrid, audience(range(1, 6), step=2), run_id="run-2", now=later)
    assert second.counts["suppressed"] == 1 and second.counts["sent"] == 4
    assert "customer3@example.com" not in {r["email"] for r in sendgrid.accepted_recipients()}
    assert len(sendgrid.accepted_recipients()) == 4

    # The fold records the outcome per key and the history per customer, with the address masked.
    summary = fold_pending(engine, now=later)
    assert summary.new_events == 5 and summary.by_type == {"delivered": 4, "bounce": 1}
    outcomes = delivery_outcomes(engine, accepted)
    assert outcomes.loc[bounced_key, "delivery"] == "bounced"
    assert (outcomes.drop(index=bounced_key)["delivery"] == "delivered").all()
    stored_outcomes = table(engine, send_outcomes).set_index("ledger_key")
    assert set(stored_outcomes.loc[list(accepted), "run_id"]) == {"run-1"}, "each outcome names its mail's run"
    assert set(stored_outcomes.loc[list(accepted), "flow"]) == {FLOW}
    engagement = load_engagement(engine).set_index("customer_id")
    assert engagement.loc[3, "hard_bounces"] == 1 and engagement.loc[1, "hard_bounces"] == 0
    reasons = table(engine, email_events)["reason"].dropna()
    assert reasons.tolist() == ["550 5.1.1 <<address>> no such user"]


def test_unknown_outcomes_are_reconciled_from_processed_and_dropped_events(engine, sendgrid):
    sendgrid.inject("drop", times=2)  # SendGrid took the mail, the answer never came back
    summary = send(engine, sendgrid, audience(range(1, 5)), run_id="run-1")
    assert summary.counts["unknown"] == 2 and summary.counts["sent"] == 2
    statuses = ledger.lookup(engine, [r["custom_args"]["ledger_key"] for r in sendgrid.accepted_recipients()])
    unknown = sorted(statuses.index[statuses["status"] == "unknown"])
    assert len(unknown) == 2
    by_key = {r["custom_args"]["ledger_key"]: r for r in sendgrid.accepted_recipients()}
    batch = [
        event_for(by_key[unknown[0]], "processed", NOW),
        event_for(by_key[unknown[1]], "dropped", NOW, reason="Invalid"),
    ]
    store_batch(engine, event_json(batch), now=NOW)

    folded = fold_pending(engine, now=NOW)
    assert folded.reconciled == {"accepted": 1, "rejected": 1}
    after = ledger.lookup(engine, unknown)
    assert after.loc[unknown[0], "status"] == "accepted"
    assert after.loc[unknown[1], "status"] == "rejected" and "dropped by SendGrid" in after.loc[unknown[1], "error"]
    assert not after["retryable"].any(), "a dropped mail is not retried"
    assert set(ledger.already_sent(engine, unknown)) == set(unknown)


def test_the_gate_halts_a_market_after_spam_reports(engine, sendgrid):
    m = market()
    delivered = synthetic("delivered", 400, NOW - timedelta(hours=3))
    store_batch(engine, event_json(delivered), now=NOW)
    fold_pending(engine, now=NOW)
    before = check_market(engine, m, now=NOW)
    assert before.status == "open" and before.delivered == 400

    # Two complaints on 400 delivered: 0.5% >= the 0.3% halt threshold.
    store_batch(engine, event_json(synthetic("spamreport", 2, NOW - timedelta(hours=1))), now=NOW)
    fold_pending(engine, now=NOW)
    assert health_totals(engine, "DE", NOW.date(), NOW.date())["spam_reports"] == 2
    after = check_market(engine, m, now=NOW)
    assert after.status == "halted" and after.complaint_rate == pytest.approx(2 / 400)
    assert any("spam complaint rate" in reason for reason in after.reasons)

    summary = send(engine, sendgrid, audience(range(1, 4)), run_id="run-1")
    assert summary.counts["gated"] == 3 and sendgrid.accepted == []


def test_events_raise_health_counts_but_never_lower_what_stats_say(engine, sendgrid):
    m = market()
    sendgrid.set_stats(NOW.date(), {"delivered": 1000, "spam_reports": 1}, category="market:DE")
    with SendGridApi(sendgrid.api_key, host=sendgrid.url, retry=RetryPolicy(base_delay=0, sleep=lambda s: None)) as api:
        refresh_market_health(engine, api, [m], NOW.date(), NOW.date(), now=NOW)
    store_batch(engine, event_json(synthetic("delivered", 10, NOW) + synthetic("spamreport", 5, NOW)), now=NOW)
    fold_pending(engine, now=NOW)
    totals = health_totals(engine, "DE", NOW.date(), NOW.date())
    assert totals["delivered"] == 1000, "stats saw more deliveries than the events: kept"
    assert totals["spam_reports"] == 5, "events saw more complaints than the stats: raised"
    # A stats refresh replaces the row; the next fold raises it again from the stored events.
    with SendGridApi(sendgrid.api_key, host=sendgrid.url, retry=RetryPolicy(base_delay=0, sleep=lambda s: None)) as api:
        refresh_market_health(engine, api, [m], NOW.date(), NOW.date(), now=NOW)
    assert health_totals(engine, "DE", NOW.date(), NOW.date())["spam_reports"] == 1
    fold_pending(engine, now=NOW + timedelta(hours=1))
    assert health_totals(engine, "DE", NOW.date(), NOW.date())["spam_reports"] == 5


def test_opens_and_clicks_give_engagement_and_a_personal_best_hour(engine, sendgrid):
    send(engine, sendgrid, audience(range(1, 4)), run_id="run-1")
    by_customer = {int(r["custom_args"]["ledger_key"].split("/")[2][1:]): r for r in sendgrid.accepted_recipients()}
    afternoon = datetime(2026, 11, 21, 14, 20, tzinfo=UTC)  # 15:20 in Berlin
    batch = [event_for(by_customer[2], "click", afternoon + timedelta(days=d)) for d in range(3)]
    batch.append(event_for(by_customer[2], "open", afternoon))
    batch.append(event_for(by_customer[3], "open", NOW + timedelta(hours=1)))
    store_batch(engine, event_json(batch), now=NOW)
    fold_pending(engine, now=NOW + timedelta(days=4))

    engagement = load_engagement(engine).set_index("customer_id")
    assert engagement.loc[2, ["opens", "clicks"]].tolist() == [1, 3]
    assert engagement.loc[2, "last_click_at"] == pd.Timestamp(afternoon + timedelta(days=2))
    assert engagement.loc[3, "last_open_at"] == pd.Timestamp(NOW + timedelta(hours=1))
    assert pd.isna(engagement.loc[3, "last_click_at"])
    assert 1 not in engagement.index or engagement.loc[1, ["opens", "clicks"]].sum() == 0

    customers = pd.DataFrame(
        {"customer_id": [1, 2, 3], "market": "DE", "time_zone": ["Europe/Berlin", "Europe/Berlin", "not/a zone"]}
    )
    best = best_hours(engine, customers, MarketConfig(markets={"DE": market()})).set_index("customer_id")
    assert set(best.index) == {2, 3}, "only customers with events get a personal hour"
    assert best.loc[2, "best_hour"] == 15, "three clicks at 15:xx local beat the prior"

    # The send step uses it: customer 2's next mail is scheduled at 15:00 Berlin.
    frame = audience([2], step=2)
    frame["best_hour"] = pd.array([best.loc[2, "best_hour"]], dtype="Int64")
    sendgrid.reset()
    summary = send(engine, sendgrid, frame, run_id="run-2", now=NOW + timedelta(days=1))
    assert summary.counts["scheduled"] == 1
    send_at = sendgrid.accepted_recipients()[0]["send_at"]
    assert datetime.fromtimestamp(send_at, UTC).astimezone(market().zone).hour == 15


def test_repeated_events_and_refolds_change_nothing(engine, sendgrid):
    send(engine, sendgrid, audience(range(1, 4)), run_id="run-1")
    recipients = sendgrid.accepted_recipients()
    batch = [event_for(r, "delivered", NOW) for r in recipients] + [event_for(recipients[0], "open", NOW)]
    store_batch(engine, event_json(batch), now=NOW)
    # SendGrid may also deliver an event again inside another batch.
    store_batch(engine, event_json([batch[1], *synthetic("open", 1, NOW)]), now=NOW)
    first = fold_pending(engine, now=NOW)
    assert first.batches == 2 and first.new_events == 5 and first.duplicates == 1
    snapshot = {t.name: table(engine, t).drop(columns=["updated_at"], errors="ignore") for t in (email_events,)}
    health = health_totals(engine, "DE", NOW.date(), NOW.date())

    # A fold cut off before it marked its batches: the next one does everything again, to the same result.
    with engine.begin() as conn:
        conn.execute(sa.update(email_event_batches).values(folded_at=None))
    again = fold_pending(engine, now=NOW)
    assert again.batches == 2 and again.new_events == 0 and again.duplicates == 6
    assert table(engine, email_events).drop(columns=["updated_at"], errors="ignore").equals(snapshot["email_events"])
    assert health_totals(engine, "DE", NOW.date(), NOW.date()) == health
    assert health["delivered"] == 3 and health["opens"] == 2
    assert pending_batches(engine) == 0
    assert fold_pending(engine, now=NOW).batches == 0


def test_events_without_our_ledger_key_and_unknown_types_are_counted_not_dropped(engine):
    batch = synthetic("delivered", 2, NOW) + synthetic("group_resubscribe", 1, NOW) + synthetic("mystery", 1, NOW)
    batch.append({**synthetic("open", 1, NOW)[0], "ledger_key": "cart_recovery/1/c999/cart9/v1"})
    store_batch(engine, event_json(batch), now=NOW)
    summary = fold_pending(engine, now=NOW)
    assert summary.new_events == 5 and len(table(engine, email_events)) == 5
    assert summary.unknown_types == {"mystery": 1}
    assert summary.without_ledger_key == 4 and summary.unmatched_keys == 1
    assert "other0@example.com" not in summary.log_table()


def test_suppressing_events_map_to_local_suppression_kinds(engine):
    batch = [
        *synthetic("bounce", 1, NOW, type="bounce"),
        *synthetic("bounce", 1, NOW, type="blocked"),  # a soft block: not suppressed
        *synthetic("spamreport", 1, NOW),
        *synthetic("unsubscribe", 1, NOW),
        *synthetic("group_unsubscribe", 1, NOW, asm_group_id=1002),
    ]
    for i, event in enumerate(batch):
        event["email"] = f"p{i}@example.com"
    assert apply_suppressions(engine, batch, now=NOW) == 4
    emails = pd.Series([f"p{i}@example.com" for i in range(5)])
    assert suppression_reasons(engine, emails, 1001).tolist() == ["manual", None, "complaint", "unsubscribes", None]
    assert suppression_reasons(engine, emails, 1002).tolist()[4] == "group_unsubscribes"

    without_address = synthetic("spamreport", 1, NOW)
    del without_address[0]["email"]
    with pytest.raises(FeedbackError, match=without_address[0]["sg_event_id"]):
        apply_suppressions(engine, without_address, now=NOW)


def test_suppression_sync_pages_through_every_list_from_its_high_water_mark(engine, sendgrid):
    base = NOW - timedelta(days=30)
    for i in range(1234):
        sendgrid.add_suppression("bounces", f"b{i}@example.com", created=base + timedelta(minutes=i), reason="550")
    for i in range(7):
        sendgrid.add_suppression("asm", f"g{i}@example.com", group_id=1001, created=base)
    retry = RetryPolicy(base_delay=0, sleep=lambda s: None)
    with SendGridApi(sendgrid.api_key, host=sendgrid.url, retry=retry, page_size=100) as api:
        counts = sync_suppressions(engine, api, now=NOW)
        assert counts["bounces"] == 1234 and counts["group_unsubscribes"] == 7
        pages = [p for m, p, s in sendgrid.requests_log if p.startswith("/v3/suppression/bounces")]
        assert len(pages) == 13, "1234 rows in pages of 100: twelve full pages and a short one"
        stored = table(engine, suppressions)
        assert (stored["kind"] == "bounces").sum() == 1234
        with engine.connect() as conn:
            mark = conn.execute(sa.select(suppression_sync.c.high_water).where(suppression_sync.c.kind == "bounces"))
            assert state.utc(mark.scalar_one()) == base + timedelta(minutes=1233)

        # New entries since: the next sync asks only from the mark (minus the overlap).
        for i in range(3):
            sendgrid.add_suppression("bounces", f"new{i}@example.com", created=NOW - timedelta(minutes=5 - i))
        sendgrid.reset()
        again = sync_suppressions(engine, api, now=NOW + timedelta(hours=1))
        # The three new ones, plus the 61 created within the hour before the mark (both ends included).
        assert again["bounces"] == 3 + 61
        pages = [p for m, p, s in sendgrid.requests_log if p.startswith("/v3/suppression/bounces")]
        assert len(pages) == 1
        assert (table(engine, suppressions)["kind"] == "bounces").sum() == 1237
        assert "new2@example.com" in set(table(engine, suppressions)["email"])


def stored_rejects(engine) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT batch_id, position, sg_event_id, event, reason FROM email_event_rejects")
        ).all()
    return sorted(tuple(r) for r in rows)


def test_a_stored_event_the_rules_refuse_is_quarantined_naming_the_batch_and_position(engine):
    """A batch stored before the rules (or edited since) is checked again by the fold, with the same rules."""
    store_batch(engine, event_json(synthetic("open", 1, NOW)), now=NOW)
    with engine.begin() as conn:
        conn.execute(sa.update(email_event_batches).values(body='[{"event": "open"}]'))
    summary = fold_pending(engine, now=NOW)
    assert summary.batches == 1 and summary.rejected == 1 and summary.new_events == 0
    assert stored_rejects(engine) == [(1, 0, None, "open", "field 'sg_event_id' is missing or not a string")]
    assert "rejected (quarantined): 1" in summary.log_table()
    with pytest.raises(ValueError, match="timezone-aware"):
        fold_pending(engine, now=datetime(2026, 1, 1))


def legacy_batch(engine, body: str, at: datetime = NOW) -> None:
    """A batch stored by an older webhook, which checked less: straight into the table."""
    import hashlib

    row = {"digest": hashlib.sha256(body.encode()).hexdigest(), "received_at": at, "events": 0, "body": body}
    with engine.begin() as conn:
        conn.execute(sa.insert(email_event_batches).values(**row))


def test_bad_events_are_quarantined_and_never_block_other_events_or_later_batches(engine):
    good = synthetic("delivered", 2, NOW)
    unsubscribed = synthetic("unsubscribe", 1, NOW)
    bad = [
        {**synthetic("open", 1, NOW)[0], "timestamp": float("nan")},
        {**synthetic("open", 1, NOW)[0], "timestamp": 1e300},
        {**synthetic("open", 1, NOW)[0], "timestamp": 10**30},
        {**synthetic("open", 1, NOW)[0], "timestamp": float("inf")},
        {**synthetic("click", 1, NOW)[0], "timestamp": 4102444800 * 10},  # year 3269: beyond pandas' range
        {k: v for k, v in synthetic("unsubscribe", 1, NOW)[0].items() if k != "email"},
        {**synthetic("spamreport", 1, NOW)[0], "email": "not an address"},
        {k: v for k, v in synthetic("open", 1, NOW)[0].items() if k != "sg_event_id"},
        "not an event",
    ]
    body = event_json(good + bad + unsubscribed)
    stored = store_batch(engine, body, now=NOW)
    assert stored.new and stored.events == 12 and stored.rejected == 9 and stored.suppressed == 1
    webhook_verdicts = stored_rejects(engine)
    assert [r[1] for r in webhook_verdicts] == list(range(2, 11))
    assert not any("other" in str(r) or "@" in str(r) for r in webhook_verdicts), "no address in a stored reason"

    # The same body stored by an older webhook: the fold quarantines exactly what the webhook would.
    legacy_batch(engine, body.decode().replace("syn-", "old-"))
    store_batch(engine, event_json(synthetic("open", 2, NOW)), now=NOW)  # a later, good batch
    summary = fold_pending(engine, now=NOW)
    assert summary.batches == 3 and summary.rejected == 18
    assert summary.new_events == 2 + 1 + 2 + 1 + 2, "good events of all three batches are folded"
    legacy = [r for r in stored_rejects(engine) if r[0] == 2]
    assert [(p, reason) for _, p, _, _, reason in legacy] == [(p, reason) for _, p, _, _, reason in webhook_verdicts]
    assert pending_batches(engine) == 0
    assert suppression_reasons(engine, pd.Series([unsubscribed[0]["email"]]), None).tolist() == ["unsubscribes"]
    # Folding again quarantines nothing twice.
    with engine.begin() as conn:
        conn.execute(sa.update(email_event_batches).values(folded_at=None))
    assert fold_pending(engine, now=NOW).rejected == 18
    assert len(stored_rejects(engine)) == 18


def test_a_stored_body_that_is_not_a_batch_is_quarantined_whole_and_the_fold_goes_on(engine):
    legacy_batch(engine, "{not json")
    store_batch(engine, event_json(synthetic("open", 1, NOW)), now=NOW)
    summary = fold_pending(engine, now=NOW)
    assert summary.batches == 2 and summary.new_events == 1 and summary.rejected == 1
    assert stored_rejects(engine) == [(1, -1, None, None, "body is not JSON (line 1)")]
    assert pending_batches(engine) == 0


def test_a_batch_of_unsubscribes_is_suppressed_in_one_transaction_of_bulk_upserts(engine):
    n = 2_500
    batch = synthetic("unsubscribe", n, NOW)
    statements, commits = [], []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count_upserts(conn, cursor, statement, *args):
        if "INTO suppressions" in statement:
            statements.append(statement)

    sa.event.listen(engine, "commit", lambda conn: commits.append(1))
    stored = store_batch(engine, event_json(batch), now=NOW)
    assert stored.suppressed == n
    assert len(statements) <= 3, f"{len(statements)} statements for {n} addresses: not a bulk upsert"
    assert len(commits) == 1, "the batch and its suppressions are stored in one transaction"
    emails = pd.Series([e["email"] for e in batch])
    assert (suppression_reasons(engine, emails, None) == "unsubscribes").all()


@pytest.mark.postgres
def test_the_loop_on_postgresql(sendgrid):
    from databases import fresh_postgres_database

    with fresh_postgres_database("rmk_feedback") as url:
        engine = state.create_state_engine(url)
        try:
            state.upgrade(engine)
            send(engine, sendgrid, audience(range(1, 4)), run_id="run-1")
            recipients = sendgrid.accepted_recipients()
            batch = [event_for(r, "delivered", NOW) for r in recipients]
            batch += [event_for(recipients[0], "spamreport", NOW), event_for(recipients[1], "open", NOW)]
            assert store_batch(engine, event_json(batch), now=NOW).suppressed == 1
            assert not store_batch(engine, event_json(batch), now=NOW).new
            summary = fold_pending(engine, now=NOW)
            assert summary.new_events == 5 and summary.outcomes_updated == 3 and summary.customers_updated == 3
            fold_pending(engine, now=NOW)  # the recount upserts again without conflict
            totals = health_totals(engine, "DE", NOW.date(), NOW.date())
            assert (totals["delivered"], totals["spam_reports"], totals["opens"]) == (3, 1, 1)
            engagement = load_engagement(engine)
            assert engagement["spam_reports"].sum() == 1 and engagement["opens"].sum() == 1
            with engine.connect() as conn:
                source = conn.execute(sa.select(market_health.c.source)).scalar_one()
            assert source == "event_webhook"
        finally:
            engine.dispose()


@pytest.mark.postgres
def test_quarantine_and_bulk_suppressions_on_postgresql():
    """What SQLite lets pass and PostgreSQL refuses: NUL, lone surrogates, over-long text, int overflow, one row twice."""
    from databases import migrated_postgres_database

    with migrated_postgres_database("rmk_feedback_odd") as url:
        engine = state.create_state_engine(url)
        try:
            unsubscribes = synthetic("unsubscribe", 3000, NOW)
            twice = [{**unsubscribes[0], "sg_event_id": "again", "email": unsubscribes[0]["email"].upper()}]
            odd = [
                {**synthetic("open", 1, NOW)[0], "sg_event_id": "nul\x00id"},
                {**synthetic("open", 1, NOW)[0], "sg_event_id": "\ud800"},
                {**synthetic("unsubscribe", 1, NOW)[0], "email": "a" * 400 + "@example.com"},
                {**synthetic("unsubscribe", 1, NOW)[0], "email": "nul\x00@example.com"},
            ]
            kept = [
                {**synthetic("group_unsubscribe", 1, NOW)[0], "email": "big-group@example.com", "asm_group_id": 10**20},
                {
                    **synthetic("bounce", 1, NOW, type="bounce")[0],
                    "email": "bounced@example.com",
                    "reason": "550 \x00 \udfff <bounced@example.com>",
                },
                {**synthetic("open", 1, NOW)[0], "flow": "f" * 300, "ledger_key": "k\x00" + "x" * 400},
            ]
            body = event_json(unsubscribes + twice + odd + kept)
            stored = store_batch(engine, body, now=NOW)
            assert stored.rejected == 4 and stored.suppressed == 3000 + 1 + 2
            assert not store_batch(engine, body, now=NOW).new
            summary = fold_pending(engine, now=NOW)
            assert summary.rejected == 4 and summary.new_events == 3001 + 3
            reasons = suppression_reasons(engine, pd.Series(["big-group@example.com", unsubscribes[0]["email"]]), 7)
            assert reasons.tolist() == ["unsubscribes", "unsubscribes"], "a group id out of range blocks everywhere"
            with engine.connect() as conn:
                stored_reason = conn.execute(
                    sa.select(email_events.c.reason).where(email_events.c.event == "bounce")
                ).scalar_one()
            assert "\x00" not in stored_reason and "@" not in stored_reason
        finally:
            engine.dispose()
