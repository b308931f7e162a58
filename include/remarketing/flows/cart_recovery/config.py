"""Flow configuration: one YAML file (include/flows.yaml), validated on load.

Kept apart from the market configuration: markets say *where and when* mail may go, flows say
*what* each flow sends and on which delays. Errors name the flow and the field.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from remarketing.platform import settings

DEFAULT_FLOWS_FILE = settings.DEFAULT_FLOWS_FILE


class FlowConfigError(ValueError):
    """The flow configuration is invalid; the message names the flow and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Incentive(_Strict):
    code: str = Field(min_length=1, max_length=64)
    percent: int = Field(gt=0, le=90)
    valid_days: int = Field(gt=0, le=60)


class RecoveryStep(_Strict):
    step: int = Field(ge=1, le=3)
    template: str
    delay_hours: float = Field(gt=0)  # after the cart's last change
    min_gap_hours: float = Field(default=0, ge=0)  # after the previous step was sent
    min_cart_value: dict[str, float] | None = None  # per currency; carts below it skip this step
    incentive: Incentive | None = None


class CartRecoveryConfig(_Strict):
    schedule: str = "@hourly"
    max_cart_age_days: float = Field(default=7, gt=0)
    send_horizon_hours: float = Field(default=2, gt=0, le=72)
    attribution_window_days: float = Field(default=7, gt=0)
    steps: tuple[RecoveryStep, ...] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _ordered(self) -> CartRecoveryConfig:
        numbers = [s.step for s in self.steps]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"steps must be numbered 1..{len(numbers)} in order, got {numbers}")
        delays = [s.delay_hours for s in self.steps]
        if delays != sorted(delays) or len(set(delays)) != len(delays):
            raise ValueError(f"step delays must increase, got {delays}")
        if self.steps[-1].delay_hours > self.max_cart_age_days * 24:
            raise ValueError("the last step's delay is beyond max_cart_age_days: it could never be sent")
        return self

    def step(self, number: int) -> RecoveryStep:
        return self.steps[number - 1]


class FlowsConfig(_Strict):
    cart_recovery: CartRecoveryConfig


def flows_file() -> Path:
    return settings.flows_file()


def parse_flows(raw: object, source: str = "<flows>") -> FlowsConfig:
    if not isinstance(raw, dict):
        raise FlowConfigError(f"{source}: expected a mapping of flows")
    try:
        return FlowsConfig(**raw)
    except ValidationError as exc:
        problems = [".".join(str(p) for p in err["loc"]) + f": {err['msg']}" for err in exc.errors()]
        raise FlowConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems)) from None


def load_flows(path: str | Path | None = None) -> FlowsConfig:
    """Load and validate the flow configuration (cached until the file changes)."""
    return settings.load_config(
        path or flows_file(), what="flow configuration", parse=parse_flows, error=FlowConfigError
    )
