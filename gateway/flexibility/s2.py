"""S2 (EN 50491-12-2) messages built with the `s2-python` models, so what we publish validates against them.

What is published (topic level under `gia/{site}/flex/s2/`):

* `PowerForecast` — the site's expected net power at the connection *before* flexibility, in S2's sign
  (consumption positive): net = load - wind - pv = -surplus. `value_expected` is the P50; the 68 % and
  95 % bands are derived from our P10/P90 assuming a normal error on each side separately
  (half-width x 0.994/1.2816 and x 1.960/1.2816), since S2 has no 80 % band. Published only when the
  forecasts are current; otherwise the retained message is cleared (None -> empty retained payload).
* `PEBC.PowerConstraints.<battery>` — what the battery can do: upper and lower limit ranges from
  -max discharge to +max charge (S2 sign: charging = consuming = positive).
* `PEBC.Instruction.<battery>` — a power envelope per interval derived from the plan: the lower limit
  is minus the planned discharge (0 when the plan charges or holds), the upper limit the full charging
  power. The battery's own self-consumption controller keeps charging from whatever surplus really
  occurs, and discharges at most what the plan schedules, so energy is kept for the hours the plan
  reserves it for (peaks, later deficits). Pinning the battery to the setpoint instead would make it
  charge from the grid whenever a forecast surplus fails to appear, which lowers the renewable share
  (measured with bench/flex_replay.py). With no usable plan the envelope spans the battery's whole
  range: an explicit "no constraint", never an old plan.

Message ids are UUIDv5 of (site, message, generated_at), so rebuilding the same signal yields the same
messages (idempotent republishing). `s2python` is imported lazily (the `flex` extra).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from drivers.model import iso_utc
from gateway.flexibility.assets import BatteryAsset
from gateway.flexibility.signal import FlexSignal

_NS = uuid.UUID("6f1c2a8e-3d4b-5c6d-8e9f-0a1b2c3d4e5f")
Z68 = 0.9945  # one-sided normal quantile of the 68.27 % central band (0.8413)
Z95 = 1.9600
Z80 = 1.2816  # P10/P90
MAX_ELEMENTS = 288  # S2 list limit


def _uid(*parts: str) -> uuid.UUID:
    return uuid.uuid5(_NS, "|".join(parts))


def _wire(msg: Any) -> dict[str, Any]:
    """The message as S2 puts it on the wire (aliases, no nulls), as a JSON-ready dict."""
    out: dict[str, Any] = json.loads(msg.to_json())
    return out


def power_forecast(signal: FlexSignal) -> dict[str, Any] | None:
    """PowerForecast of the site's net power (W, consumption positive), or None without a usable signal."""
    from s2python.common import CommodityQuantity, Duration, PowerForecast, PowerForecastElement, PowerForecastValue

    ivs = [iv for iv in signal.intervals if iv.surplus is not None][:MAX_ELEMENTS]
    if not signal.usable or not ivs:
        return None
    elements = []
    for iv in ivs:
        assert iv.surplus is not None
        s10, s50, s90 = iv.surplus
        net = -s50
        up = s50 - s10  # net's upper side comes from the surplus's lower side
        down = s90 - s50
        elements.append(
            PowerForecastElement(
                duration=Duration.from_timedelta(iv.end - iv.start),
                power_values=[
                    PowerForecastValue(
                        value_expected=round(net, 1),
                        value_upper_68PPR=round(net + up * Z68 / Z80, 1),
                        value_lower_68PPR=round(net - down * Z68 / Z80, 1),
                        value_upper_95PPR=round(net + up * Z95 / Z80, 1),
                        value_lower_95PPR=round(net - down * Z95 / Z80, 1),
                        commodity_quantity=CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC,
                    )
                ],
            )
        )
    msg = PowerForecast(
        message_id=_uid(signal.site, "PowerForecast", iso_utc(signal.generated_at)),
        start_time=ivs[0].start,
        elements=elements,
    )
    return _wire(msg)


def power_constraints(battery: BatteryAsset, *, site: str, valid_from: datetime) -> dict[str, Any]:
    """PEBC.PowerConstraints: the battery's own range (S2 sign: + charging)."""
    from s2python.common import CommodityQuantity, NumberRange
    from s2python.pebc import (
        PEBCAllowedLimitRange,
        PEBCPowerConstraints,
        PEBCPowerEnvelopeConsequenceType,
        PEBCPowerEnvelopeLimitType,
    )

    rng = NumberRange(start_of_range=-battery.max_discharge_w, end_of_range=battery.max_charge_w)
    msg = PEBCPowerConstraints(
        message_id=_uid(site, "PEBC.PowerConstraints", battery.id, iso_utc(valid_from)),
        id=constraints_id(site, battery.id),
        valid_from=valid_from,
        valid_until=None,
        consequence_type=PEBCPowerEnvelopeConsequenceType.DEFER,
        allowed_limit_ranges=[
            PEBCAllowedLimitRange(
                commodity_quantity=CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC,
                limit_type=kind,
                range_boundary=rng,
                abnormal_condition_only=False,
            )
            for kind in (PEBCPowerEnvelopeLimitType.UPPER_LIMIT, PEBCPowerEnvelopeLimitType.LOWER_LIMIT)
        ],
    )
    return _wire(msg)


def constraints_id(site: str, battery_id: str) -> uuid.UUID:
    """Stable id of a battery's PEBC.PowerConstraints (the instruction refers to it)."""
    return _uid(site, "constraints", battery_id)


def instruction(
    battery: BatteryAsset,
    *,
    site: str,
    generated_at: datetime,
    starts: Sequence[datetime],
    resolution_s: int,
    power_w: Sequence[float] | None,
) -> dict[str, Any]:
    """PEBC.Instruction with one envelope: discharge capped by the plan, or the full range without a plan.

    `power_w` uses the gateway's sign (+ discharging); S2 wants + consuming, so it is negated here.
    """
    from s2python.common import CommodityQuantity, Duration
    from s2python.pebc import PEBCInstruction, PEBCPowerEnvelope, PEBCPowerEnvelopeElement

    step = timedelta(seconds=resolution_s)
    elements: list[Any] = []
    if power_w is None or not starts:
        total = step * max(1, len(starts))
        elements.append(
            PEBCPowerEnvelopeElement(
                duration=Duration.from_timedelta(total),
                upper_limit=battery.max_charge_w,
                lower_limit=-battery.max_discharge_w,
            )
        )
    else:
        # consecutive equal limits become one element (S2 allows at most 288)
        runs: list[tuple[float, int]] = []
        for pw in power_w:
            lower = round(-max(0.0, pw), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
            if runs and runs[-1][0] == lower:
                runs[-1] = (lower, runs[-1][1] + 1)
            else:
                runs.append((lower, 1))
        for lower, count in runs[:MAX_ELEMENTS]:
            elements.append(
                PEBCPowerEnvelopeElement(
                    duration=Duration.from_timedelta(step * count),
                    upper_limit=float(battery.max_charge_w),
                    lower_limit=lower,
                )
            )
    execution = starts[0] if starts else generated_at
    msg = PEBCInstruction(
        message_id=_uid(site, "PEBC.Instruction", battery.id, iso_utc(generated_at)),
        id=_uid(site, "instruction", battery.id, iso_utc(generated_at)),
        execution_time=execution,
        abnormal_condition=False,
        power_constraints_id=constraints_id(site, battery.id),
        power_envelopes=[
            PEBCPowerEnvelope(
                id=str(_uid(site, "envelope", battery.id, iso_utc(generated_at))),
                commodity_quantity=CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC,
                power_envelope_elements=elements,
            )
        ],
    )
    return _wire(msg)
