"""The forecasting boundary: what goes in (`HistorySource`) and what comes out (`Forecast`).

Kept free of numpy/pandas/scikit-learn so the gateway can import these types (to adapt the ledger, to
publish on MQTT) without paying for the numeric stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from drivers.model import iso_utc

ForecastKind = Literal["model", "baseline", "empty"]


class HistorySource(Protocol):
    """Where past values come from (the lead adapts the ledger to it).

    `values` returns the mean of `series` per interval of `resolution_s` seconds, for intervals whose
    start lies in `[start, end)`, as `(interval start UTC, mean value)` pairs in ascending order. Missing
    intervals are simply absent (gaps are fine); values are in the target's unit (W for power).
    """

    def values(
        self, series: str, start: datetime, end: datetime, resolution_s: int
    ) -> Sequence[tuple[datetime, float]]: ...


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    """One interval of a forecast: `ts` is the interval start (UTC); p10 <= p50 <= p90 always."""

    ts: datetime
    p10: float
    p50: float
    p90: float

    def to_json(self) -> dict[str, Any]:
        return {"ts": iso_utc(self.ts), "p10": self.p10, "p50": self.p50, "p90": self.p90}


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast for one target, as published on `gia/{site}/forecast/{target}`.

    `kind` says whether a trained model or a baseline produced it, and `reason` why (cold start, no
    weather, version mismatch...), so a consumer never mistakes a fallback for the real thing.
    """

    target: str
    generated_at: datetime
    resolution_s: int
    unit: str
    points: tuple[ForecastPoint, ...]
    kind: ForecastKind
    method: str
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        """The contract's MQTT/HTTP JSON: generated_at, resolution_s, unit, points, plus metadata."""
        return {
            "target": self.target,
            "generated_at": iso_utc(self.generated_at),
            "resolution_s": self.resolution_s,
            "unit": self.unit,
            "points": [p.to_json() for p in self.points],
            "metadata": {"kind": self.kind, "method": self.method, "reason": self.reason, **self.metadata},
        }
