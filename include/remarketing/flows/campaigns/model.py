"""A campaign as the trigger form or the calendar gives it: content, variants, subjects, targets, holdout.

Validated on parse; an error names the campaign and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from remarketing.flows.campaigns.params import CAMPAIGN_ID_PATTERN, VARIANT_ID_PATTERN
from remarketing.markets import Market

FLOW = "market_campaign"
SUBJECT_KIND = "campaign"
TEMPLATES = ("campaign/generic",)
STAGES = ("prospect", "new", "active", "vip", "at_risk", "dormant")  # segments.STAGES (tested equal)
ARMS = ("a", "b")
HOLDOUT = "holdout"
PRESEND_OUTCOMES = (HOLDOUT, "already_sent", "invalid_address")
REASON_EXHAUSTED = "had every variant"
REASON_THIS_DATE = "had this calendar date's mail already (an earlier run scheduled it)"
LocalText = str | dict[str, str]


class CampaignError(ValueError):
    """A campaign definition or calendar entry that cannot run; the message names the campaign and field."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Content(StrictModel):
    """What campaign/generic shows; each text once for all locales or per locale ({"de": ...})."""

    subject: LocalText | None = None
    preheader: LocalText | None = None
    headline: LocalText | None = None
    paragraphs: list[str] | dict[str, list[str]] | None = None
    cta_url: LocalText | None = None
    cta_label: LocalText | None = None
    hero_image_url: str | None = None
    hero_alt: LocalText | None = None
    products_heading: LocalText | None = None


class Variant(Content):
    """A content variant: overrides the campaign's content where it says something."""

    id: str = Field(pattern=VARIANT_ID_PATTERN)


class Campaign(StrictModel):
    campaign_id: str = Field(pattern=CAMPAIGN_ID_PATTERN)
    markets: tuple[str, ...] = Field(min_length=1)
    stages: tuple[str, ...] = ()
    rfm_segments: tuple[str, ...] = ()
    became: str | None = None  # lifecycle stage entered ...
    within_days: int = Field(default=7, ge=1, le=365)  # ... within this many days
    template: str = TEMPLATES[0]
    content: Content = Field(default_factory=Content)
    subject_b: LocalText | None = None
    ab_share: float = Field(default=0.5, ge=0, le=1)
    variants: tuple[Variant, ...] = (Variant(id="v1"),)
    holdout_share: float = Field(default=0.0, ge=0, le=0.5)

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
        return value

    @field_validator("became")
    @classmethod
    def _became(cls, value: str | None) -> str | None:
        if value is not None and value not in STAGES:
            raise ValueError(f"unknown stage {value!r}; stages: {', '.join(STAGES)}")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value not in TEMPLATES:
            raise ValueError(f"unknown campaign template {value!r}; templates: {', '.join(TEMPLATES)}")
        return value

    @model_validator(mode="after")
    def _whole(self) -> Campaign:
        if not (self.stages or self.rfm_segments or self.became):
            raise ValueError("no audience: give stages, rfm_segments or became (a lifecycle transition)")
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"variant ids must be distinct, got {ids}")
        if len(set(self.markets)) != len(self.markets):
            raise ValueError(f"markets must be distinct, got {list(self.markets)}")
        return self

    @property
    def subject_id(self) -> str:
        """The ledger key's subject: the campaign id (no '/' or spaces by its pattern)."""
        return self.campaign_id

    def variant_fields(self, variant_id: str, arm: str = "a") -> dict[str, Any]:
        """The ``campaign`` mapping for render.campaign_context: content, the variant's overrides, the arm's subject."""
        variant = next((v for v in self.variants if v.id == variant_id), None)
        if variant is None:
            raise CampaignError(f"campaign {self.campaign_id}: no variant {variant_id!r}")
        fields = self.content.model_dump(exclude_none=True)
        fields.update(variant.model_dump(exclude_none=True, exclude={"id"}))
        if arm == "b":
            if self.subject_b is None:
                raise CampaignError(f"campaign {self.campaign_id}: arm b without subject_b")
            fields["subject"] = self.subject_b
        fields["campaign_id"] = self.campaign_id
        return fields

    def content_hash(self, variant_id: str) -> str:
        """What the customer reads in this variant (both subjects included), as a short hash."""
        fields = self.variant_fields(variant_id)
        fields["subject_b"] = self.subject_b
        text = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def validation_problems(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}{('.' + field) if field else ''}: {err['msg']}")
    return "; ".join(parts)


def parse_campaign(raw: Mapping[str, Any], source: str = "params") -> Campaign:
    """A Campaign from Params or a calendar entry; CampaignError naming the campaign and field."""
    name = raw.get("campaign_id") if isinstance(raw, Mapping) else None
    try:
        return Campaign(**dict(raw))
    except ValidationError as exc:
        raise CampaignError(validation_problems(exc, f"{source} campaign {name or '?'}")) from None
    except TypeError as exc:
        raise CampaignError(f"{source} campaign {name or '?'}: {exc}") from None


def campaign_from_params(params: Mapping[str, Any]) -> Campaign:
    """The trigger form's Params (market_campaign DAG) as a Campaign."""
    content = dict(params.get("content") or {})
    for key in ("subject", "preheader"):
        if params.get(key):
            content[key] = params[key]
    raw = {
        "campaign_id": params.get("campaign_id"),
        "markets": tuple(params.get("markets") or ()),
        "stages": tuple(params.get("stages") or ()),
        "rfm_segments": tuple(params.get("rfm_segments") or ()),
        "became": params.get("became") or None,
        "within_days": params.get("within_days", 7),
        "template": params.get("template") or TEMPLATES[0],
        "content": content,
        "subject_b": params.get("subject_b") or None,
        "ab_share": params.get("ab_share", 0.5),
        "variants": tuple(params.get("variants") or ({"id": "v1"},)),
        "holdout_share": params.get("holdout_share", 0.0),
    }
    return parse_campaign(raw)


def local_today(market: Market, now: datetime) -> date:
    return now.astimezone(market.zone).date()
