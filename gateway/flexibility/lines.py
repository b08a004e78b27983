"""Line protocol for the InfluxDB measurement `flex` (pure builders; the InfluxDB sink sends them).

One point per interval and series, time = the interval start in ms:

    flex,device=site,site=demo level="absorb",level_code=1i,surplus_p10_w=..,surplus_p50_w=..,
                               surplus_p90_w=..,upward_w=..,downward_w=..
    flex,device=battery,site=demo power_w=-50000.0,soc_pct=62.5       (the plan; + discharging)
    flex,device=press,site=demo power_w=50000.0                       (shiftable / thermal / curtail_w)

Idempotent like every gateway write: a point's identity is (measurement, tags, time), so the latest
signal overwrites what an earlier one said about the same future interval, and InfluxDB ends up
holding, per interval, the last signal computed before it began. A neutral fallback writes only
`level`/`level_code` (no invented surplus).
"""

from __future__ import annotations

from gateway.flexibility.plan import Plan
from gateway.flexibility.signal import LEVEL_CODE, FlexSignal
from gateway.sinks.influx.lineprotocol import FieldValue, format_line

MEASUREMENT = "flex"


def _ms(ts_s: float) -> int:
    return round(ts_s * 1000)


def signal_lines(signal: FlexSignal, plan: Plan | None, *, site: str) -> list[str]:
    lines: list[str] = []
    for i, iv in enumerate(signal.intervals):
        t = _ms(iv.start.timestamp())
        fields: dict[str, FieldValue] = {"level": iv.level, "level_code": LEVEL_CODE[iv.level]}
        if iv.surplus is not None:
            fields["surplus_p10_w"] = float(iv.surplus[0])
            fields["surplus_p50_w"] = float(iv.surplus[1])
            fields["surplus_p90_w"] = float(iv.surplus[2])
        if iv.upward_w is not None:
            fields["upward_w"] = float(iv.upward_w)
        if iv.downward_w is not None:
            fields["downward_w"] = float(iv.downward_w)
        lines.append(format_line(MEASUREMENT, {"site": site, "device": "site"}, fields, t))
        if plan is None:
            continue
        for aid, powers in plan.battery_w.items():
            f = {"power_w": float(powers[i]), "soc_pct": float(plan.battery_soc_pct[aid][i])}
            lines.append(format_line(MEASUREMENT, {"site": site, "device": aid}, f, t))
        for aid, powers in plan.shiftable_w.items():
            lines.append(format_line(MEASUREMENT, {"site": site, "device": aid}, {"power_w": float(powers[i])}, t))
        for aid, powers in plan.thermal_w.items():
            f = {"power_w": float(powers[i]), "fill_pct": float(plan.thermal_fill_pct[aid][i])}
            lines.append(format_line(MEASUREMENT, {"site": site, "device": aid}, f, t))
        for aid, powers in plan.curtail_w.items():
            lines.append(format_line(MEASUREMENT, {"site": site, "device": aid}, {"curtail_w": float(powers[i])}, t))
    return lines
