"""The send ledger: exactly-once intent for every email, across retries, re-runs and crashes.

One row per email we mean to send, keyed by ``ledger_key``. Its columns say what the mail is, one
meaning each: ``flow``; ``step``, its place in a sequence (a recovery step ``1``-``3``, the welcome
``member``/``reminder`` mail; empty for a one-off mail); ``arm``, the A/B subject arm (``a``/``b``,
campaigns only); ``subject_kind`` + ``subject_id``, what the mail is about (``cart`` 9001,
``campaign`` spring-sale, ``series`` welcome); ``variant``, the content variant (a campaign's
rotation variant, ``v1`` elsewhere).

The key is ``flow/position/customer/subject/variant`` (e.g. ``cart_recovery/1/c42/cart9001/v1``,
``market_campaign/a/c42/spring/v2``): the position is the step, else the arm; a cart's subject is
spelt ``cart<id>``. That spelling predates the columns and is kept, because the key travels with
every mail to SendGrid (``custom_args``) and its events come back by it, also for mails sent before
an upgrade. The key holds no personal data: a guest without a customer id is named by a stable hash
of the normalised address (``g`` + 20 hex digits), never by the address.

Protocol (the send step follows it chunk by chunk):

0. **attempt**: each process attempt registers its ``claim_token`` (``run_id|market|try N|<random>``,
   unique to the process, so two processes running the same try never share one) in
   ``send_attempts``, and keeps a heartbeat there with every claim and mark-sending (its lease).
1. **claim**: INSERT the chunk's keys as ``claimed`` with this attempt's ``claim_token``. The primary key makes a second claimer lose; the claimer then
   reads back which keys carry its own token. Keys are claimed in sorted order, so concurrent
   PostgreSQL writers take row locks in the same order and cannot deadlock each other.
2. **mark sending**: one transaction flips keys to ``sending`` right before their HTTP calls
   (the send step does it in batches of a few dozen recipients as the transport pulls messages,
   so a crash leaves few rows in doubt). Only rows still ``claimed`` under this token move, and only those are sent.
3. **record**: each result becomes ``accepted``, ``rejected`` or ``unknown`` as it arrives
   (batched). The update is conditioned on this token, so a late zombie cannot overwrite a
   newer try's work.

What a crash leaves behind, and who cleans it up:

* ``claimed`` rows never reached the HTTP call (step 2 commits before any request). The next
  attempt of the same run and market (a retry, or a twin process of the same try) takes them
  over at its start (compare-and-set on the token, so the earlier attempt, zombie or twin, can
  no longer send them) and sends them; those no longer due (the member left the audience, or is
  now suppressed or capped) are released (deleted) at the end of the attempt.
* ``sending`` rows may or may not have reached SendGrid. The retry marks them ``unknown``
  and does NOT resend them.
* Another run's ``claimed``/``sending`` rows are left alone while its attempt is alive
  (overlapping runs). Every send starts by reconciling the rows of attempts that are dead (no
  heartbeat within the lease, default 10 min: killed, even on their last try) or finished:
  ``sending`` becomes ``unknown``; ``claimed`` is released, since it provably was never sent,
  and the member is eligible again (``reconcile_dead_attempts``; the send's notes count them).
  ``reconcile_stale`` remains for rows of tokens no attempt ever registered (before 0010).

Retry policy for finished rows:

* ``accepted`` and ``unknown`` are final for sending: the key is never sent again. ``unknown``
  is reconciled later from SendGrid's ``processed`` events (the feedback loop) through
  ``mark_outcome``; by default an unknown outcome is not resent, because a duplicate email is
  worse than a missed one.
* ``rejected`` is retried by a later run only when the failure was retryable (429 or 5xx after
  the transport's retries, or a request that provably never left): ``retryable`` is true. A
  4xx other than 429 is final: the same request would be refused again.

Modules: ``tables`` (schema, statuses), ``keys``, ``protocol`` (claim, mark sending, record,
clean-up), ``history`` (what other steps read). Callers use this package's names.

Times are stored timezone-aware UTC; SQLite hands them back naive, and they are read as UTC.
"""

from remarketing.delivery.ledger.history import (
    already_sent,
    claimed_count,
    customer_history,
    lookup,
    record_send_run,
    run_batch_id,
)
from remarketing.delivery.ledger.keys import (
    CLAIM_COLUMNS,
    KEY_COLUMNS,
    LedgerError,
    customer_ref,
    guest_ref,
    key_position,
    key_subject,
    ledger_key,
    ledger_keys,
    normalise_email,
)
from remarketing.delivery.ledger.protocol import (
    ClaimContext,
    ResultRecorder,
    begin_attempt,
    claim,
    finish_attempt,
    heartbeat,
    mark_outcome,
    mark_sending,
    reconcile_dead_attempts,
    reconcile_stale,
    record_results,
    recover_try,
    release_claims,
    transactional,
)
from remarketing.delivery.ledger.tables import (
    DEFAULT_LEASE,
    DEFAULT_STALE_AGE,
    IN_FLIGHT,
    KEY_CHUNK,
    MAY_BE_SENT,
    STATUSES,
    ledger_metadata,
    send_attempts,
    send_ledger,
    send_runs,
)

__all__ = [
    "CLAIM_COLUMNS",
    "DEFAULT_LEASE", "DEFAULT_STALE_AGE", "IN_FLIGHT", "KEY_CHUNK", "KEY_COLUMNS", "MAY_BE_SENT", "STATUSES",
    "ClaimContext", "LedgerError", "ResultRecorder",
    "begin_attempt",
    "finish_attempt",
    "heartbeat",
    "reconcile_dead_attempts",
    "send_attempts", "already_sent", "claim", "claimed_count", "customer_history",
    "customer_ref", "guest_ref", "key_position", "key_subject", "ledger_key", "ledger_keys", "ledger_metadata",
    "lookup", "mark_outcome", "mark_sending", "normalise_email", "reconcile_stale", "record_results",
    "record_send_run", "recover_try", "release_claims", "run_batch_id", "send_ledger", "send_runs", "transactional",
]  # fmt: skip
