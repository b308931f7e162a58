"""The send ledger: keys, the claim / sending / result protocol, crash recovery, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from databases import fresh_postgres_database, migrated_postgres_database, state_engine

from remarketing.delivery import ledger
from remarketing.delivery.ledger import ClaimContext, LedgerError
from remarketing.delivery.messages import SendResult
from remarketing.platform import state

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


DELIVERY_TABLES = ("send_ledger", "send_runs", "suppressions", "suppression_sync", "market_health")


@pytest.fixture(scope="module")
def postgres_url():
    """One PostgreSQL database for the module (creating one per test costs seconds); emptied per test."""
    with migrated_postgres_database("rmk_ledger") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    engine = state_engine(request.param, tmp_path, request, DELIVERY_TABLES)
    yield engine
    engine.dispose()


def rows(keys, *, customers=None, send_at=None, kind="recovery") -> pd.DataFrame:
    keys = list(keys)
    return pd.DataFrame(
        {
            "ledger_key": keys,
            "kind": kind,
            "step": "1",
            "customer_ref": customers or [k.split("/")[2] for k in keys],
            "customer_id": [k.split("/")[2][1:] for k in keys],
            "subject_kind": "cart",
            "subject_id": [k.split("/")[3].removeprefix("cart") for k in keys],
            "variant": "v1",
            "send_at": send_at if send_at is not None else pd.NaT,
        }
    )


def cart_key(customer_id, cart_id, step=1, *, email=None) -> str:
    return ledger.ledger_key(
        "cart_recovery", customer_id, step=step, subject_kind="cart", subject_id=cart_id, variant="v1", email=email
    )


def keys_for(n):
    return [cart_key(i, i) for i in range(n)]


def statuses(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(ledger.send_ledger.c.ledger_key, ledger.send_ledger.c.status)).all())


def accepted(keys) -> SendResult:
    return SendResult(tuple(keys), "accepted", 202, None, 1, "msg-1")


# --- keys ---------------------------------------------------------------------------------------


def test_ledger_key_is_readable_and_holds_no_personal_data():
    assert cart_key(42, 9001) == "cart_recovery/1/c42/cart9001/v1"
    assert cart_key(42.0, "9001", step=2) == "cart_recovery/2/c42/cart9001/v1"
    guest = cart_key(None, 7, email="  Anna.Muster@Example.COM ")
    same = cart_key(float("nan"), 7, email="anna.muster@example.com")
    other = cart_key(None, 7, email="anna.other@example.com")
    assert guest == same != other
    assert "anna" not in guest.lower() and "example" not in guest.lower()
    assert guest.split("/")[2].startswith("g") and len(guest.split("/")[2]) == 21


def test_each_flow_spells_its_key_as_before_the_columns_had_one_meaning():
    """Keys travel to SendGrid and come back with its events: the columns changed, the keys did not."""
    welcome = ledger.ledger_key(
        "welcome_series", 7, step="reminder", subject_kind="series", subject_id="welcome", variant="v1"
    )
    campaign = ledger.ledger_key(
        "market_campaign", 7, arm="b", subject_kind="campaign", subject_id="spring", variant="v2"
    )
    assert welcome == "welcome_series/reminder/c7/welcome/v1"
    assert campaign == "market_campaign/b/c7/spring/v2"
    both = ledger.ledger_key("x_flow", 7, step=2, arm="a", subject_kind="campaign", subject_id="s", variant="v1")
    assert both == "x_flow/2-a/c7/s/v1"


GOOD = {"step": 1, "subject_kind": "cart", "subject_id": 9, "variant": "v1"}


@pytest.mark.parametrize(
    ("flow", "fields", "field"),
    [
        ("cart_recovery", {"subject_id": "9/1"}, "subject_id"),
        ("cart_recovery", {"step": None}, "step or an A/B arm"),
        ("cart_recovery", {"variant": " "}, "variant"),
        ("cart_recovery", {"subject_kind": None}, "subject_kind"),
        ("cart recovery", {}, "flow"),
    ],
)
def test_ledger_key_rejects_bad_fields_naming_them(flow, fields, field):
    with pytest.raises(LedgerError, match=field):
        ledger.ledger_key(flow, 42, **{**GOOD, **fields})
    with pytest.raises(LedgerError, match="needs an email"):
        cart_key(None, 9)


def test_vectorised_keys_match_the_scalar_ones_and_name_the_customer_on_error():
    frame = pd.DataFrame(
        {
            "customer_id": [42, None, 7],
            "email": ["a@example.com", "Guest@Example.com", "c@example.com"],
            "step": [1, 2, 3],
            "subject_kind": "cart",
            "subject_id": ["1", "2", "3"],
            "variant": ["v1", "v1", "v2"],
        }
    )
    out = ledger.ledger_keys("cart_recovery", frame)
    expected = [
        ledger.ledger_key("cart_recovery", c, step=s, subject_kind="cart", subject_id=j, variant=v, email=e)
        for c, e, s, j, v in frame[["customer_id", "email", "step", "subject_id", "variant"]].itertuples(index=False)
    ]
    assert out["ledger_key"].tolist() == expected
    assert out["customer_ref"].tolist()[0] == "c42" and out["customer_ref"].tolist()[1].startswith("g")
    with pytest.raises(LedgerError, match="customer c7: .*subject_id"):
        ledger.ledger_keys("cart_recovery", frame.assign(subject_id=["1", "2", "a/b"]))


# --- schema -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_engine(request, tmp_path):
    if request.param == "sqlite":
        factory = nullcontext(f"sqlite:///{tmp_path / 'remarketing.db'}")
    else:
        factory = fresh_postgres_database("rmk_ledger")
    with factory as url:
        engine = state.create_state_engine(url)
        yield engine
        engine.dispose()


def test_migration_creates_the_delivery_tables_and_downgrades(fresh_engine):
    engine = fresh_engine
    assert state.upgrade(engine) == state.head_revision()
    tables = set(sa.inspect(engine).get_table_names())
    assert {"send_ledger", "send_runs", "suppressions", "suppression_sync", "market_health"} <= tables
    indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("send_ledger")}
    assert {"ix_send_ledger_customer", "ix_send_ledger_run", "ix_send_ledger_market_claimed"} <= indexes
    config = Config()
    config.set_main_option("script_location", str(state.MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert "send_ledger" not in set(sa.inspect(engine).get_table_names())
    assert state.upgrade(engine) == state.head_revision()
    assert "send_ledger" in set(sa.inspect(engine).get_table_names())


# --- the protocol -------------------------------------------------------------------------------


def test_claim_send_record_round_trip_in_utc(engine):
    ctx = ClaimContext("run-1", "DE", 1, "cart_recovery")
    keys = keys_for(3)
    at = pd.Timestamp("2026-11-21 09:15:00", tz="UTC")
    held = ledger.claim(engine, ctx, rows(keys, send_at=[at, pd.NaT, at]), now=NOW)
    assert held == set(keys)
    assert ledger.mark_sending(engine, ctx, held, now=NOW, batch_id="b1") == set(keys)
    result = SendResult((keys[0],), "rejected", 400, "The from address does not match a verified Sender Identity", 1)
    assert ledger.record_results(engine, ctx, [accepted(keys[1:]), result], now=NOW) == 3
    found = ledger.lookup(engine, keys + ["absent/1/c1/x/v1"])
    assert found.loc[keys[1], "status"] == "accepted" and found.loc[keys[0], "status"] == "rejected"
    assert not found.loc[keys[0], "retryable"] and found.loc[keys[0], "http_status"] == 400
    assert found.loc[keys[2], "send_at"] == at and found.loc[keys[2], "batch_id"] == "b1"
    assert "absent/1/c1/x/v1" not in found.index
    assert ledger.already_sent(engine, keys) == set(keys)  # a 4xx is final: never retried
    history = ledger.customer_history(engine, ["c1", "c2", "c0"], since=NOW - timedelta(days=7))
    assert set(history["ledger_key"]) == set(keys[1:])  # rejected mail reached nobody
    assert history.loc[history["ledger_key"] == keys[2], "at"].iloc[0] == at  # counted at its send_at
    assert ledger.claimed_count(engine, "DE", since=NOW - timedelta(hours=1)) == 2
    assert ledger.claimed_count(engine, "FR", since=NOW - timedelta(hours=1)) == 0


def test_a_second_claimer_loses_and_overlapping_runs_never_touch_each_other(engine):
    first = ClaimContext("run-1", "DE", 1, "cart_recovery")
    second = ClaimContext("run-2", "DE", 1, "cart_recovery")
    keys = keys_for(6)
    assert ledger.claim(engine, first, rows(keys[:4]), now=NOW) == set(keys[:4])
    assert ledger.claim(engine, second, rows(keys[2:]), now=NOW) == set(keys[4:])
    ledger.mark_sending(engine, first, keys[:2], now=NOW)
    # run-2 starting (or retrying) must not turn run-1's in-flight rows unknown or release them.
    run2_try2 = ClaimContext("run-2", "DE", 2, "cart_recovery")
    assert ledger.recover_try(engine, run2_try2, now=NOW) == {"unknown": 0, "taken_over": 2}  # only its own
    assert ledger.release_claims(engine, run2_try2) == 2  # only its own
    assert statuses(engine) == {keys[0]: "sending", keys[1]: "sending", keys[2]: "claimed", keys[3]: "claimed"}
    assert ledger.mark_sending(engine, second, keys[:4], now=NOW) == set()  # not its rows


def test_a_retry_takes_over_claimed_rows_and_the_crashed_try_can_no_longer_send_them(engine):
    try1 = ClaimContext("run-1", "DE", 1, "cart_recovery")
    try2 = ClaimContext("run-1", "DE", 2, "cart_recovery")
    keys = keys_for(4)
    ledger.claim(engine, try1, rows(keys), now=NOW)
    ledger.mark_sending(engine, try1, keys[:1], now=NOW)  # try 1 dies during the first request
    assert ledger.recover_try(engine, try2, now=NOW) == {"unknown": 1, "taken_over": 3}
    assert ledger.mark_sending(engine, try1, keys, now=NOW) == set()  # a zombie try 1 sends nothing
    assert ledger.claim(engine, try2, rows(keys[1:3]), now=NOW) == set(keys[1:3])  # still due: sent by try 2
    assert ledger.mark_sending(engine, try2, keys[1:3], now=NOW) == set(keys[1:3])
    assert ledger.release_claims(engine, try2) == 1  # keys[3]: no longer due, never sent
    assert statuses(engine) == {keys[0]: "unknown", keys[1]: "sending", keys[2]: "sending"}
    assert ledger.already_sent(engine, keys) == set(keys[:3])


def test_results_only_land_for_the_token_that_sent_and_never_change_a_finished_row(engine):
    try1 = ClaimContext("run-1", "DE", 1, "cart_recovery")
    try2 = ClaimContext("run-1", "DE", 2, "cart_recovery")
    keys = keys_for(2)
    ledger.claim(engine, try1, rows(keys), now=NOW)
    ledger.mark_sending(engine, try1, keys, now=NOW)
    ledger.recover_try(engine, try2, now=NOW)  # try 1 presumed dead: unknown
    assert ledger.record_results(engine, try2, [accepted(keys)], now=NOW) == 0  # try 2 never sent them
    # Try 1 was alive after all and its answer arrives: it upgrades unknown to the truth, once.
    assert ledger.record_results(engine, try1, [accepted(keys[:1])], now=NOW) == 1
    assert ledger.record_results(engine, try1, [SendResult((keys[0],), "rejected", 500, "x", 5)], now=NOW) == 0
    assert statuses(engine) == {keys[0]: "accepted", keys[1]: "unknown"}


def test_retryable_rejections_are_retried_by_a_later_run_only(engine):
    run1 = ClaimContext("run-1", "DE", 1, "cart_recovery")
    keys = keys_for(3)
    ledger.claim(engine, run1, rows(keys), now=NOW)
    ledger.mark_sending(engine, run1, keys, now=NOW)
    ledger.record_results(
        engine,
        run1,
        [
            SendResult((keys[0],), "rejected", 503, "Service Unavailable", 5),
            SendResult((keys[1],), "rejected", None, "connection refused", 5),  # never left this machine
            SendResult((keys[2],), "rejected", 413, "too large", 1),
        ],
        now=NOW,
    )
    assert ledger.already_sent(engine, keys) == {keys[2]}
    assert ledger.claim(engine, ClaimContext("run-1", "DE", 2, "cart_recovery"), rows(keys), now=NOW) == set()
    run2 = ClaimContext("run-2", "DE", 1, "cart_recovery")
    assert ledger.claim(engine, run2, rows(keys), now=NOW + timedelta(hours=1)) == set(keys[:2])
    found = ledger.lookup(engine, keys)
    assert found.loc[keys[0], "run_id"] == "run-2" and pd.isna(found.loc[keys[0], "http_status"])
    assert found.loc[keys[2], "status"] == "rejected"
    with engine.connect() as conn:
        attempts = conn.execute(
            sa.select(ledger.send_ledger.c.attempts).where(ledger.send_ledger.c.ledger_key == keys[0])
        ).scalar_one()
    assert attempts == 5  # the history of tries is kept


def test_reconcile_stale_handles_only_old_rows_of_runs_that_are_gone(engine):
    old, young, live = (ClaimContext(r, "DE", 1, "cart_recovery") for r in ("old", "young", "live"))
    keys = keys_for(6)
    ledger.claim(engine, old, rows(keys[:2]), now=NOW - timedelta(hours=7))
    ledger.mark_sending(engine, old, keys[:1], now=NOW - timedelta(hours=7))
    ledger.claim(engine, live, rows(keys[2:4]), now=NOW - timedelta(hours=7))
    ledger.mark_sending(engine, live, keys[2:3], now=NOW - timedelta(hours=7))
    ledger.claim(engine, young, rows(keys[4:]), now=NOW - timedelta(hours=1))
    ledger.mark_sending(engine, young, keys[4:5], now=NOW - timedelta(hours=1))
    assert ledger.reconcile_stale(engine, now=NOW, live_run_ids=["live"]) == {"unknown": 1, "released": 1}
    assert statuses(engine) == {
        keys[0]: "unknown",
        keys[2]: "sending",
        keys[3]: "claimed",
        keys[4]: "sending",
        keys[5]: "claimed",
    }


def test_twin_processes_of_the_same_run_and_try_never_send_one_key_twice(engine):
    """A zombie worker, or `airflow tasks test` beside the scheduled try: same run, market and try number."""
    first = ClaimContext("run-1", "DE", 1, "cart_recovery")
    twin = ClaimContext("run-1", "DE", 1, "cart_recovery")
    assert first.token != twin.token, "every process attempt claims under its own token"
    keys = keys_for(10)
    assert ledger.claim(engine, first, rows(keys), now=NOW) == set(keys)
    assert ledger.mark_sending(engine, first, keys[:4], now=NOW) == set(keys[:4])
    # The twin starts: it fences the first attempt out (its in-flight rows unknown, its claims taken over).
    assert ledger.recover_try(engine, twin, now=NOW) == {"unknown": 4, "taken_over": 6}
    assert ledger.mark_sending(engine, first, keys, now=NOW) == set(), "the fenced attempt sends nothing more"
    assert ledger.mark_sending(engine, twin, keys, now=NOW) == set(keys[4:]), "and the twin only what it holds"


def test_a_dead_attempt_is_reconciled_by_the_next_run_and_a_live_one_is_not(engine):
    """Killed on its last try: its claims are released (eligible again), its in-flight rows unknown."""
    dead = ClaimContext("run-1", "DE", 4, "cart_recovery")
    live = ClaimContext("run-2", "FR", 1, "cart_recovery")
    keys = keys_for(10)
    ledger.begin_attempt(engine, dead)  # leases run on the wall clock, whatever instant a run rehearses
    ledger.claim(engine, dead, rows(keys[:6]), now=NOW)
    ledger.mark_sending(engine, dead, keys[:2], now=NOW)
    ledger.begin_attempt(engine, live)
    ledger.claim(engine, live, rows(keys[6:]), now=NOW)
    later = datetime.now(UTC) + timedelta(hours=1)  # the next hourly run
    ledger.heartbeat(engine, live, wall_now=later - timedelta(minutes=2))  # still sending
    assert ledger.reconcile_dead_attempts(engine, wall_now=later) == {"unknown": 2, "released": 4}
    assert statuses(engine) == {
        keys[0]: "unknown", keys[1]: "unknown", **{k: "claimed" for k in keys[6:]},
    }  # fmt: skip
    next_run = ClaimContext("run-3", "DE", 1, "cart_recovery")
    assert ledger.claim(engine, next_run, rows(keys[2:6]), now=NOW) == set(keys[2:6]), "eligible again"
    assert ledger.reconcile_dead_attempts(engine, wall_now=later) == {"unknown": 0, "released": 0}


def test_a_finished_attempt_leaves_nothing_to_reconcile_and_heartbeats_keep_an_attempt_alive(engine):
    ctx = ClaimContext("run-1", "DE", 1, "cart_recovery")
    keys = keys_for(3)
    start = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    ledger.begin_attempt(engine, ctx, wall_now=start)
    ledger.claim(engine, ctx, rows(keys), now=NOW)
    ledger.heartbeat(engine, ctx, wall_now=start + timedelta(minutes=30))
    assert ledger.reconcile_dead_attempts(engine, wall_now=start + timedelta(minutes=35)) == {
        "unknown": 0, "released": 0,
    }  # fmt: skip
    ledger.finish_attempt(engine, ctx, wall_now=start + timedelta(minutes=36))
    assert ledger.reconcile_dead_attempts(engine, wall_now=start + timedelta(minutes=37)) == {
        "unknown": 0, "released": 3,
    }, "a finished attempt's leftover claims never reached SendGrid"  # fmt: skip


def test_mark_outcome_reconciles_unknown_rows_only(engine):
    ctx = ClaimContext("run-1", "DE", 1, "cart_recovery")
    keys = keys_for(3)
    ledger.claim(engine, ctx, rows(keys), now=NOW)
    ledger.mark_sending(engine, ctx, keys, now=NOW)
    ledger.record_results(
        engine, ctx, [SendResult(tuple(keys[:2]), "unknown", None, "read timeout", 1), accepted(keys[2:])], now=NOW
    )
    assert ledger.mark_outcome(engine, keys[0], "accepted", message_id="m-9", now=NOW)
    assert ledger.mark_outcome(engine, keys[1], "rejected", error="dropped: bounced address", now=NOW)
    assert not ledger.mark_outcome(engine, keys[2], "rejected", now=NOW)  # finished rows stay
    assert not ledger.mark_outcome(engine, "cart_recovery/1/c9/x/v1", "accepted", now=NOW)
    with pytest.raises(LedgerError, match="cart_recovery/1/c0/cart0/v1"):
        ledger.mark_outcome(engine, keys[0], "unknown")
    assert statuses(engine) == {keys[0]: "accepted", keys[1]: "rejected", keys[2]: "accepted"}
    assert ledger.already_sent(engine, keys) == set(keys)


def test_concurrent_claimers_split_the_keys_without_overlap(engine):
    """Four writers race over the same 2,000 keys (own engines, as separate processes would have)."""
    keys = keys_for(2000)
    held: dict[str, set] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def claimer(name: str, order: list[str]) -> None:
        eng = state.create_state_engine(engine.url.render_as_string(hide_password=False))
        try:
            barrier.wait()
            ctx = ClaimContext(name, "DE", 1, "cart_recovery")
            mine: set[str] = set()
            for start in range(0, len(order), 250):
                mine |= ledger.claim(eng, ctx, rows(order[start : start + 250]), now=NOW)
            held[name] = mine
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            eng.dispose()

    orders = [keys, keys[::-1], keys[500:] + keys[:500], keys[1000:] + keys[:1000]]
    threads = [threading.Thread(target=claimer, args=(f"run-{i}", o)) for i, o in enumerate(orders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(len(h) for h in held.values()) == len(keys)
    assert set().union(*held.values()) == set(keys)
    with engine.connect() as conn:
        owners = dict(conn.execute(sa.select(ledger.send_ledger.c.ledger_key, ledger.send_ledger.c.run_id)).all())
    assert all(owners[k] == name for name, mine in held.items() for k in mine)


def test_send_runs_are_recorded_per_outcome(engine):
    ctx = ClaimContext("run-1", "DE", 2, "cart_recovery")
    ledger.record_send_run(
        engine, ctx, {"sent": 5, "capped": 0, "failed": 1}, batch_id="b", gate_status="warn", dry_run=False, now=NOW
    )
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(ledger.send_runs.c.outcome, ledger.send_runs.c.count, ledger.send_runs.c.try_number)
        ).all()
    assert sorted(got) == [("failed", 1, 2), ("sent", 5, 2)]
