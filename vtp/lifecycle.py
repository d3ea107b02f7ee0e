"""Retry policy: how often, and how far apart, a unit of work is tried again.

Kept apart from the store so that the numbers are validated once, where they are built (from
settings or by a test), instead of being found wrong in the middle of a transition.

Two budgets, because two different things go wrong:

* an *attempt* is a call that reached the handler and ran (and crashed, timed out or failed
  cleanly): it costs real work, so there are few (`max_attempts`);
* a *refusal* is a call that never reached the handler: the function was down, restarting,
  busy (429) or unknown to the provider (500 "Can't reach service for"). Nothing ran, so a
  refusal spends no attempt, but a function that stays down must not be called forever:
  refusals have their own, larger budget (`max_refusals`), with the same back-off.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    """Exponential back-off with a cap: `base_s * 2**(n-1)`, at most `max_s`, for the n-th
    failure in a row."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=1, description="runs before a unit is dead")
    max_refusals: int = Field(
        default=8, ge=1, description="refused calls in a row before a unit is dead"
    )
    base_s: float = Field(default=10.0, gt=0)
    max_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetryPolicy:
        if self.max_s < self.base_s:
            raise ValueError(f"retry cap ({self.max_s:g}s) is below its base ({self.base_s:g}s)")
        return self

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1 for the first)."""
        exponent = min(max(failures - 1, 0), 30)  # 2**30 times the base is past any cap
        return float(min(self.base_s * 2**exponent, self.max_s))
