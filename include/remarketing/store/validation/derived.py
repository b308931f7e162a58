"""The derived check columns of one table, added to its conformed frame for the GX suite to assert.

Each ``__check__*`` / ``__ref__*`` column holds ``ok`` or a reason per row (see rules for why):
the column checks come from column_checks, the referential and currency checks from references.
Emails and invalid customer time zones are normalised in the frame on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from remarketing.store.validation.column_checks import (
    contact_checks,
    format_checks,
    name_checks,
    nul_notes,
    number_checks,
    timestamp_checks,
)
from remarketing.store.validation.conform import Prepared
from remarketing.store.validation.references import (
    ParentRows,
    credit_note_checks,
    currency_checks,
    reference_checks,
)
from remarketing.store.validation.rules import MIN_TIMESTAMP
from remarketing.store.validation.scope import scope_checks


def derive(
    prepared: Prepared,
    table: str,
    *,
    markets,
    now: datetime,
    future_skew: timedelta,
    min_timestamp: datetime = MIN_TIMESTAMP,
    text_max_length: int,
    parents: Mapping[str, ParentRows],
    fx,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Add the derived check columns and normalise emails / time zones; returns (frame, normalised counts)."""
    frame = prepared.frame
    assert frame is not None
    derived: dict[str, Any] = timestamp_checks(
        prepared, table, now=now, future_skew=future_skew, min_timestamp=min_timestamp
    )
    derived.update(number_checks(prepared, table))
    derived.update(format_checks(frame, table, text_max_length=text_max_length))
    contacts, normalised = contact_checks(frame, table)
    derived.update(contacts)
    scope, scoped = scope_checks(frame, table, markets=markets, parents=parents)
    derived.update(scope)
    normalised.update(scoped)
    derived.update(currency_checks(frame, table, markets=markets, parents=parents, fx=fx))
    derived.update(credit_note_checks(frame, table, parents))
    derived.update(name_checks(frame, table))
    derived.update(reference_checks(frame, table, parents))
    derived["__check__nul"] = nul_notes(prepared)

    frame = pd.concat([frame, pd.DataFrame(derived, index=frame.index)], axis=1)
    return frame, normalised
