"""Ledger keys: what identifies one email, without personal data."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import pandas as pd

_BAD_KEY_PART = re.compile(r"[/\s]")


class LedgerError(ValueError):
    """A ledger key or row that cannot be built from the given values."""


# ---------------------------------------------------------------------------------------------
# Keys


def normalise_email(email: str) -> str:
    """Lower-case, trimmed: how SendGrid compares addresses, and how we hash and match them."""
    return email.strip().lower()


def guest_ref(email: str) -> str:
    """A stable, non-reversible name for a guest: ``g`` + 20 hex digits of SHA-256 of the address."""
    if not isinstance(email, str) or not email.strip():
        raise LedgerError("a guest (no customer_id) needs an email to derive its ledger identity")
    return "g" + hashlib.sha256(normalise_email(email).encode("utf-8")).hexdigest()[:20]


def _part(value: Any, field: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        raise LedgerError(f"ledger key field {field} is missing")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # ids that went through a float column (NaN for guests)
    text = str(value).strip()
    if not text or _BAD_KEY_PART.search(text):
        raise LedgerError(f"ledger key field {field}={text!r} must be non-empty, without '/' or spaces")
    return text


def customer_ref(customer_id: Any, email: str | None = None) -> str:
    """``c<customer_id>`` for customers, ``g<hash>`` for guests."""
    if customer_id is None or customer_id is pd.NA or (isinstance(customer_id, float) and math.isnan(customer_id)):
        return guest_ref(email)  # type: ignore[arg-type]
    return "c" + _part(customer_id, "customer_id")


def text_or_none(value: Any) -> str | None:
    """The value as stripped text; None for a missing or blank one."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def key_position(step: Any, arm: Any) -> str:
    """The key's second part: the step, else the A/B arm (both: ``step-arm``)."""
    step, arm = text_or_none(step), text_or_none(arm)
    if step is None and arm is None:
        raise LedgerError("a mail needs a step or an A/B arm")
    return _part("-".join(p for p in (step, arm) if p is not None), "step")


def key_subject(subject_kind: Any, subject_id: Any) -> str:
    """The key's subject part, spelt as keys always were: ``cart<id>`` for carts, the bare id otherwise."""
    kind, ident = _part(subject_kind, "subject_kind"), _part(subject_id, "subject_id")
    return f"cart{ident}" if kind == "cart" else ident


def ledger_key(
    flow: str,
    customer_id: Any,
    *,
    subject_kind: Any,
    subject_id: Any,
    variant: Any,
    step: Any = None,
    arm: Any = None,
    email: str | None = None,
) -> str:
    """Readable key without personal data, e.g. ``cart_recovery/1/c42/cart9001/v1``.

    ``customer_id`` None (a guest) needs ``email``, which is hashed (``g...``), never stored.
    """
    parts = (
        _part(flow, "flow"),
        key_position(step, arm),
        customer_ref(customer_id, email),
        key_subject(subject_kind, subject_id),
        _part(variant, "variant"),
    )
    key = "/".join(parts)
    if len(key) > 250:
        raise LedgerError(f"ledger key longer than 250 characters (subject_id {parts[3]!r})")
    return key


KEY_COLUMNS = ("subject_kind", "subject_id", "variant")  # besides step and/or arm, and the customer
# What ``claim`` stores of an audience row (``step`` or ``arm`` may be absent), besides kind and batch.
CLAIM_COLUMNS = ("ledger_key", "step", "arm", "customer_ref", "customer_id", *KEY_COLUMNS, "send_at")


def ledger_keys(flow: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Vectorised keys for an audience: a copy with ``customer_ref`` and ``ledger_key`` columns.

    Needs ``subject_kind``, ``subject_id``, ``variant``, ``step`` and/or ``arm``, and either
    ``customer_ref`` or ``customer_id`` and ``email``. Errors name the customer.
    """
    out = frame.copy()
    missing = [c for c in KEY_COLUMNS if c not in out]
    if missing or ("step" not in out and "arm" not in out):
        raise LedgerError(f"ledger keys need columns {missing or ['step or arm']}")
    if "customer_ref" not in out:
        refs = [
            customer_ref(cid, email)
            for cid, email in zip(out["customer_id"].astype(object).tolist(), out["email"].tolist(), strict=True)
        ]
        out["customer_ref"] = pd.Series(refs, index=out.index, dtype=object)
    flow_part = _part(flow, "flow")
    none = pd.Series(None, index=out.index, dtype=object)
    columns = [out.get(c, none) for c in ("customer_ref", "step", "arm", *KEY_COLUMNS)]
    keys = []
    for ref, step, arm, kind, subject, variant in zip(*(c.astype(object).tolist() for c in columns), strict=True):
        try:
            parts = (key_position(step, arm), _part(ref, "customer_ref"), key_subject(kind, subject))
            key = "/".join((flow_part, *parts, _part(variant, "variant")))
        except LedgerError as exc:
            raise LedgerError(f"customer {ref}: {exc}") from None
        if len(key) > 250:
            raise LedgerError(f"customer {ref}: ledger key longer than 250 characters")
        keys.append(key)
    out["ledger_key"] = pd.Series(keys, index=out.index, dtype=object)
    return out
