"""`FlexibilityService`: forecasts + asset states in, signal / plan / S2 / line protocol out.

Pure and synchronous: no I/O, no asyncio, no clock of its own (`now` is passed in), so the agent calls
`update` in a worker thread (the LP takes tens of milliseconds) and the tests and the replay drive it
with any time they like. It keeps only what a signal needs from the last one: the level published for
each interval (hysteresis across updates) and the shiftable energy its earlier plans delivered today.

The latest outputs are swapped in as one immutable snapshot, so readers on another thread (the HTTP API,
the MQTT outbox) never see half an update.

Wiring (gateway/forecasts/runner.py, ForecastRunner): every forecast refresh and at least every `resolution_s`:

    signal = await asyncio.to_thread(flex.update, forecasts, now, soc_pct, levels=readings)
    for topic, payload in flex.mqtt_messages(topics).items(): outbox.put(topic, payload)
    api: ApiServices(flexibility=lambda: flex.signal_payload(datetime.now(UTC)))
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from drivers.model import iso_utc
from forecasting.types import Forecast
from gateway.flexibility import s2
from gateway.flexibility.assets import LevelSource
from gateway.flexibility.config import FlexibilityConfig
from gateway.flexibility.lines import signal_lines
from gateway.flexibility.plan import Plan, PlanInput, solve
from gateway.flexibility.signal import (
    FlexInterval,
    FlexSignal,
    Level,
    combine,
    floor_time,
    forecast_info,
    forecast_problems,
    grid,
    neutral_signal,
    resample,
)
from gateway.flexibility.signal import (
    levels as level_series,
)
from gateway.sinks.mqtt.topics import Topics


@dataclass(frozen=True)
class _Snapshot:
    signal: FlexSignal
    plan: Plan | None
    s2: dict[str, dict[str, Any] | None] = field(default_factory=dict)


class FlexibilityService:
    def __init__(self, config: FlexibilityConfig, *, site: str, timezone: str = "UTC") -> None:
        self.config = config
        self.site = site
        self.timezone = timezone
        self._tz = ZoneInfo(timezone)
        self._snap: _Snapshot | None = None
        self._lock = threading.Lock()  # one update at a time; readers use the snapshot
        self._done: dict[tuple[str, date], float] = {}
        self._counted_until: datetime | None = None

    # -- inputs the caller reads for us ---------------------------------------------------------------
    def level_sources(self) -> dict[str, LevelSource]:
        """asset id -> (device, quantity) to read; pass the latest readings as `levels` to `update`."""
        out: dict[str, LevelSource] = {}
        for b in self.config.batteries:
            if b.soc is not None:
                out[b.id] = b.soc
        for j in self.config.thermal:
            if j.fill is not None:
                out[j.id] = j.fill
        return out

    # -- the computation --------------------------------------------------------------------------------
    def update(
        self,
        forecasts: Mapping[str, Forecast],
        now: datetime,
        soc_pct: float | None = None,
        *,
        levels: Mapping[str, float | None] | None = None,
        shiftable_done_wh: Mapping[str, float] | None = None,
    ) -> FlexSignal:
        """Compute the signal for `now` (UTC) and keep it as the latest.

        `soc_pct`: the state of charge of the (first) battery, in %; `levels`: raw readings per asset id
        of the quantity `level_sources()` names (converted with each source's empty_at/full_at);
        `shiftable_done_wh`: energy each shiftable load already got today, if metered — otherwise the
        service counts what its own earlier plans scheduled.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        with self._lock:
            snap = self._compute(forecasts, now.astimezone(UTC), soc_pct, levels or {}, shiftable_done_wh)
            self._snap = snap
            return snap.signal

    def _compute(
        self,
        forecasts: Mapping[str, Forecast],
        now: datetime,
        soc_pct: float | None,
        raw_levels: Mapping[str, float | None],
        shiftable_done_wh: Mapping[str, float] | None,
    ) -> _Snapshot:
        cfg = self.config
        targets = ["load", *cfg.generation]
        info = forecast_info(forecasts, targets)
        self._count_delivered(now)
        problems = forecast_problems(forecasts, targets, now, cfg.max_forecast_age_s)
        res = cfg.resolution_s
        start = floor_time(now, res)
        n_max = cfg.horizon_h * 3600 // res
        starts = grid(start, res, n_max)
        if not problems:
            series = {t: resample(forecasts[t], starts, res) for t in targets}
            n = 0
            while n < n_max and all(series[t][n] is not None for t in targets):
                n += 1
            if n == 0:
                problems.append("the forecasts do not cover the current interval " + iso_utc(start))
        if problems:
            return self._neutral(now, "; ".join(problems), info)
        starts = starts[:n]
        load = [q for q in series["load"][:n] if q is not None]
        gen: dict[str, list[tuple[float, float, float]]] = {
            t: [q for q in series[t][:n] if q is not None] for t in cfg.generation
        }
        surplus = [combine([gen[t][i] for t in cfg.generation], load[i], cfg.quantile_combination) for i in range(n)]
        previous = self._previous_level(start)
        lv = level_series(surplus, cfg.thresholds, previous)

        state = self._levels_pct(soc_pct, raw_levels)
        today = start.astimezone(self._tz).date()
        if shiftable_done_wh is None:
            done = {k.id: self._done.get((k.id, today), 0.0) for k in cfg.shiftable}
        else:
            done = dict(shiftable_done_wh)
        inp = PlanInput(
            starts=starts,
            resolution_s=res,
            load=load,
            generation=gen,
            battery_soc_pct={b.id: state.get(b.id) for b in cfg.batteries},
            thermal_fill_pct={j.id: state.get(j.id) for j in cfg.thermal},
            shiftable_done_wh=done,
            timezone=self.timezone,
        )
        plan = solve(cfg, inp)
        step = timedelta(seconds=res)
        ivs = tuple(
            FlexInterval(s, s + step, lv[i], surplus[i], plan.upward_w[i], plan.downward_w[i])
            for i, s in enumerate(starts)
        )
        signal = FlexSignal(
            site=self.site,
            generated_at=now,
            resolution_s=res,
            intervals=ivs,
            reason="",
            forecast=info,
            quantile_combination=cfg.quantile_combination,
            plan=plan.to_json(starts),
        )
        msgs: dict[str, dict[str, Any] | None] = {"PowerForecast": s2.power_forecast(signal)}
        for b in cfg.batteries:
            msgs[f"PEBC.PowerConstraints.{b.id}"] = s2.power_constraints(b, site=self.site, valid_from=start)
            msgs[f"PEBC.Instruction.{b.id}"] = s2.instruction(
                b, site=self.site, generated_at=now, starts=starts, resolution_s=res, power_w=plan.battery_w.get(b.id)
            )
        return _Snapshot(signal, plan, msgs)

    def _neutral(self, now: datetime, reason: str, info: dict[str, dict[str, Any]]) -> _Snapshot:
        cfg = self.config
        signal = neutral_signal(cfg, site=self.site, now=now, reason=reason, forecast=info)
        starts = [iv.start for iv in signal.intervals]
        msgs: dict[str, dict[str, Any] | None] = {"PowerForecast": None}
        for b in cfg.batteries:
            msgs[f"PEBC.PowerConstraints.{b.id}"] = s2.power_constraints(b, site=self.site, valid_from=starts[0])
            msgs[f"PEBC.Instruction.{b.id}"] = s2.instruction(
                b, site=self.site, generated_at=now, starts=starts, resolution_s=cfg.resolution_s, power_w=None
            )
        return _Snapshot(signal, None, msgs)

    def _previous_level(self, start: datetime) -> Level:
        snap = self._snap
        if snap is None or not snap.signal.usable:
            return "neutral"
        for iv in snap.signal.intervals:
            if iv.start == start:
                return iv.level
        return "neutral"

    def _levels_pct(self, soc_pct: float | None, raw: Mapping[str, float | None]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        sources = self.level_sources()
        for aid in [b.id for b in self.config.batteries] + [j.id for j in self.config.thermal]:
            value = raw.get(aid)
            src = sources.get(aid)
            out[aid] = None if value is None else (src.to_pct(value) if src is not None else value)
        batteries = self.config.batteries
        if soc_pct is not None and batteries:
            out[batteries[0].id] = soc_pct
        return out

    def _count_delivered(self, now: datetime) -> None:
        """Add the shiftable energy of elapsed intervals of the previous plan to today's tally."""
        snap = self._snap
        cut = floor_time(now, self.config.resolution_s)
        if snap is not None and snap.plan is not None and snap.signal.intervals:
            since = self._counted_until or snap.signal.intervals[0].start
            dt_h = self.config.resolution_s / 3600
            for i, iv in enumerate(snap.signal.intervals):
                if iv.start >= since and iv.end <= cut:
                    day = iv.start.astimezone(self._tz).date()
                    for kid, powers in snap.plan.shiftable_w.items():
                        self._done[(kid, day)] = self._done.get((kid, day), 0.0) + powers[i] * dt_h
        self._counted_until = cut
        old = cut.astimezone(self._tz).date() - timedelta(days=2)
        for key in [k for k in self._done if k[1] < old]:
            del self._done[key]

    # -- outputs ----------------------------------------------------------------------------------------
    @property
    def latest(self) -> FlexSignal | None:
        snap = self._snap
        return None if snap is None else snap.signal

    @property
    def latest_plan(self) -> Plan | None:
        snap = self._snap
        return None if snap is None else snap.plan

    def signal_payload(self, now: datetime | None = None) -> dict[str, Any] | None:
        """The latest signal as JSON, or None before the first update.

        With `now`, a signal whose last update is older than `max_forecast_age_s` is returned as a
        neutral one with the reason: a consumer never gets an old plan presented as current.
        """
        snap = self._snap
        if snap is None:
            return None
        sig = snap.signal
        if now is not None and (now - sig.generated_at).total_seconds() > self.config.max_forecast_age_s:
            reason = f"signal not updated since {iso_utc(sig.generated_at)}"
            return neutral_signal(
                self.config, site=self.site, now=now, reason=reason, forecast=sig.forecast
            ).to_payload()
        return sig.to_payload()

    def s2_messages(self) -> dict[str, dict[str, Any] | None]:
        """Topic level under `flex/s2/` -> S2 message (JSON-ready), or None: clear that retained topic."""
        snap = self._snap
        return {} if snap is None else dict(snap.s2)

    def mqtt_messages(self, topics: Topics) -> dict[str, bytes]:
        """topic -> retained payload for the signal and every S2 message (b"" clears a retained topic)."""
        payload = self.signal_payload()
        if payload is None:
            return {}
        out = {topics.flex_signal: _json(payload)}
        for level, msg in self.s2_messages().items():
            out[topics.flex_s2(level)] = b"" if msg is None else _json(msg)
        return out

    def influx_lines(self, site: str | None = None) -> list[str]:
        """Line protocol for the `flex` measurement (ms precision) of the latest signal and plan."""
        snap = self._snap
        if snap is None:
            return []
        return signal_lines(snap.signal, snap.plan, site=site or self.site)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
