"""The trigger form of ``market_campaign``: its Params, as JSON Schema the Airflow UI validates.

Parse time: standard library and yaml only (Param is imported when the form is built). The
campaign model (``audience.Campaign``) takes the same patterns, so the form and the model agree.
"""

from __future__ import annotations

from remarketing.platform import settings

CAMPAIGN_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,62}$"
VARIANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
STAGES = ["prospect", "new", "active", "vip", "at_risk", "dormant"]
TEMPLATES = ["campaign/generic"]
LOCALE_KEY = "^[a-z]{2,3}([-_][A-Za-z]{2,4})?$"


def rfm_segment_names() -> list[str]:
    """RFM segment names from include/lifecycle.yaml, for the Param enum (parse time: yaml only)."""
    import yaml

    path = settings.lifecycle_file()
    try:
        grid = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("rfm_segments") or {}
    except (OSError, yaml.YAMLError):
        return []
    return sorted({name for row in grid.values() for name in row})


def _texts(max_length: int) -> dict:
    """A text per locale ({"de": ..., "en": ...}) or one for all."""
    one = {"type": "string", "minLength": 1, "maxLength": max_length}
    return {
        "anyOf": [
            one,
            {"type": "object", "propertyNames": {"pattern": LOCALE_KEY}, "additionalProperties": one},
        ]
    }


def _paragraphs() -> dict:
    lines = {"type": "array", "minItems": 1, "maxItems": 20, "items": {"type": "string", "minLength": 1}}
    return {
        "anyOf": [lines, {"type": "object", "propertyNames": {"pattern": LOCALE_KEY}, "additionalProperties": lines}]
    }


URL = {"type": "string", "pattern": "^https?://\\S+$", "maxLength": 2000}
CONTENT_PROPERTIES = {
    "subject": _texts(150),
    "preheader": _texts(200),
    "headline": _texts(200),
    "paragraphs": _paragraphs(),
    "cta_url": {"anyOf": [URL, {"type": "object", "additionalProperties": URL}]},
    "cta_label": _texts(60),
    "hero_image_url": URL,
    "hero_alt": _texts(200),
    "products_heading": _texts(100),
}
LOCALIZED = {
    "type": "object",
    "propertyNames": {"pattern": LOCALE_KEY},
    "additionalProperties": _texts(200)["anyOf"][0],
}


def campaign_params() -> dict:
    """The DAG's Params: who (campaign id, markets, stages, RFM segments, transitions), what (template,
    subjects, content, variants, A/B, holdout), when (send date), and how (dry run, rehearsal, refresh)."""
    from remarketing.platform.dag_parts import as_of_param, dry_run_param, full_refresh_param

    return {
        **_who(),
        **_what(),
        **_when(),
        "dry_run": dry_run_param("Audience, outcomes and rendered samples; claim and send nothing."),
        "as_of": as_of_param(),
        "full_refresh": full_refresh_param("Re-read the customers table in full."),
    }


def _who() -> dict:
    """Targeting: the campaign, its markets, stages, RFM segments and recent transitions."""
    from airflow.sdk import Param

    from remarketing.platform.dag_parts import markets_param

    return {
        "campaign_id": Param(
            None,
            type=["null", "string"],
            pattern=CAMPAIGN_ID_PATTERN,
            description="Campaign id (a-z, 0-9, dashes; 3-63 characters). Empty: run the campaign calendar.",
        ),
        "markets": markets_param(),
        "stages": Param(
            [],
            type="array",
            items={"type": "string", "enum": STAGES},
            uniqueItems=True,
            description="Lifecycle stages to target (any of them), e.g. vip.",
        ),
        "rfm_segments": Param(
            [],
            type="array",
            items={"type": "string", "enum": rfm_segment_names()},
            uniqueItems=True,
            description="RFM segments to target (any of them), e.g. Champions.",
        ),
        "became": Param(
            None,
            type=["null", "string"],
            enum=[None, *STAGES],
            description="Target customers who entered this stage within `within_days` days (e.g. at_risk).",
        ),
        "within_days": Param(7, type="integer", minimum=1, maximum=365, description="Window for `became`, in days."),
    }


def _what() -> dict:
    """Content: template, subjects, content fields, rotation variants, the A/B subject, the holdout."""
    from airflow.sdk import Param

    return {
        "template": Param(TEMPLATES[0], type="string", enum=TEMPLATES, description="The mail template."),
        "subject": Param(
            {}, **LOCALIZED, description='Subject per locale, e.g. {"de": "...", "fr": "...", "en": "..."}.'
        ),
        "preheader": Param({}, **LOCALIZED, description="Preheader (inbox preview line) per locale."),
        "content": Param(
            {},
            type="object",
            properties=CONTENT_PROPERTIES,
            additionalProperties=False,
            description="headline, paragraphs, cta_url (required), cta_label, hero_image_url, hero_alt: "
            "each one value or one per locale.",
        ),
        "variants": Param(
            [{"id": "v1"}],
            type="array",
            minItems=1,
            maxItems=10,
            items={
                "type": "object",
                "required": ["id"],
                "properties": {"id": {"type": "string", "pattern": VARIANT_ID_PATTERN}, **CONTENT_PROPERTIES},
                "additionalProperties": False,
            },
            description="Content variants for rotation: each round gives a customer one they have not had. "
            "Each may override content fields.",
        ),
        "subject_b": Param(
            None,
            type=["null", "object"],
            propertyNames={"pattern": LOCALE_KEY},
            additionalProperties={"type": "string", "minLength": 1, "maxLength": 150},
            description="Optional A/B test: subject B per locale.",
        ),
        "ab_share": Param(
            0.5, type="number", minimum=0, maximum=1, description="Share of the mailed audience that gets subject B."
        ),
        "holdout_share": Param(
            0.0,
            type="number",
            minimum=0,
            maximum=0.5,
            description="Control group: this share of the audience is held out (recorded, not mailed).",
        ),
    }


def _when() -> dict:
    from airflow.sdk import Param

    return {
        "send_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Local day to send on (YYYY-MM-DD), at most 72 h ahead. Empty = today.",
        ),
    }
