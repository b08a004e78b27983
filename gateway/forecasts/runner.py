"""Forecasting and flexibility inside the agent: the rounds that predict, then update the signal.

History comes from the ledger through `gateway.forecasts.history.LedgerHistory`; models are trained in a
child process (`gateway.forecasts.training`). One supervised part runs the rounds: train when due
(nightly by default), predict every target, then update the flexibility signal; every result goes to
MQTT (retained), the API, and InfluxDB. scikit-learn is imported only in the forecasting package and only
when forecasting is enabled, so an agent without it stays small.

Live accuracy: the runner keeps one published forecast per target and hour for a week and, once an
hour, scores them against the ledger (`ForecastService.accuracy`: rolling nMAE, P10-P90 coverage, skill
against the best naive baseline on the same points). The result rides in each forecast's
`metadata.accuracy`, so it reaches MQTT and `GET /api/v1/forecasts/{target}` with the forecast itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drivers.model import to_ms
from forecasting.config import ForecastingConfig
from forecasting.types import Forecast
from gateway.rooms import Part, Room, Services
from gateway.runtime.clock import Clock, next_aligned
from gateway.runtime.live import LiveState
from gateway.settings import Settings
from gateway.sinks.influx.lineprotocol import format_line
from gateway.sinks.mqtt.topics import Topics
from gateway.sinks.outbox import LatestOutbox
from gateway.site.resolve import Site

log = logging.getLogger(__name__)

ROUND_S = 900  # a round every quarter of an hour (forecast and signal refresh)
ACCURACY_DAYS = 7  # live accuracy window


def forecast_lines(site: str, fc: Forecast) -> list[str]:
    """InfluxDB `forecast` points: tags site, target, quantile; field power_w; time = interval start."""
    lines = []
    for p in fc.points:
        for q, v in (("p10", p.p10), ("p50", p.p50), ("p90", p.p90)):
            lines.append(
                format_line(
                    "forecast", {"site": site, "target": fc.target, "quantile": q}, {"power_w": float(v)}, to_ms(p.ts)
                )
            )
    return lines


@dataclass
class ForecastRunner:
    settings: Settings
    clock: Clock
    live: LiveState
    channels: Sequence[Any]
    mqtt_outbox: LatestOutbox[str, bytes] | None = None
    influx_outbox: LatestOutbox[str, list[str]] | None = None
    forecasts: dict[str, Forecast] = field(default_factory=dict)
    flex: Any = None  # gateway.flexibility.service.FlexibilityService when enabled
    rounds: int = 0
    last_error: str | None = None
    _topics: Topics | None = None
    #: one published forecast per target and hour, for the live accuracy (a week plus the horizon)
    _past: dict[str, deque[Forecast]] = field(default_factory=dict)
    #: the models' unscaled forecasts, hourly, for the band scale (forecasting/recalibrate.py)
    _raw_past: dict[str, deque[Forecast]] = field(default_factory=dict)
    _accuracy: dict[str, tuple[datetime, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the flexibility service lives inside the rounds: every forecast refresh updates its signal
        prefix = self.settings.mqtt.prefix if self.settings.mqtt else "gia/{site}"
        self._topics = Topics.for_site(prefix, self.settings.site.id)
        if self.settings.flexibility.enabled:
            from gateway.flexibility.service import FlexibilityService

            self.flex = FlexibilityService(
                self.settings.flexibility, site=self.settings.site.id, timezone=self.settings.site.timezone
            )

    # -- what the API serves ---------------------------------------------------------------------------
    def forecast_payload(self, target: str) -> dict[str, Any] | None:
        fc = self.forecasts.get(target)
        return fc.to_payload() if fc is not None else None

    def flex_payload(self) -> dict[str, Any] | None:
        if self.flex is None:
            return None
        payload: dict[str, Any] | None = self.flex.signal_payload(self.clock.now())
        return payload

    # -- the rounds ------------------------------------------------------------------------------------
    def _targets(self) -> list[str]:
        cfg = self.settings.forecasting
        if cfg.targets:
            return list(cfg.targets)
        roles = {(c.role, c.source) for c in self.channels}
        out = ["load"]
        out += [t for t in ("wind", "pv") if ("generation", t) in roles]
        return out

    def _service(self) -> Any:
        from gateway.forecasts.training import ProcessTrainer, build_service

        return build_service(self.settings, self.channels, trainer=ProcessTrainer(self.settings, self.channels))

    def _publish_forecast(self, fc: Forecast) -> None:
        assert self._topics is not None
        if self.mqtt_outbox is not None:
            self.mqtt_outbox.put(self._topics.forecast(fc.target), json.dumps(fc.to_payload()).encode())
        if self.influx_outbox is not None and fc.points:
            self.influx_outbox.put(f"forecast:{fc.target}", forecast_lines(self.settings.site.id, fc))

    async def _flex_round(self, now: datetime) -> None:
        assert self._topics is not None
        flex = self.flex
        levels: dict[str, float | None] = {}
        for asset_id, src in flex.level_sources().items():
            sample = self.live.values.get((src.device, src.quantity))
            levels[asset_id] = float(sample.value) if sample is not None and sample.value is not None else None
        await asyncio.to_thread(flex.update, dict(self.forecasts), now, levels=levels)
        if self.mqtt_outbox is not None:
            for topic, payload in flex.mqtt_messages(self._topics).items():
                self.mqtt_outbox.put(topic, payload)
        if self.influx_outbox is not None:
            self.influx_outbox.put("flex", flex.influx_lines(self.settings.site.id))

    async def run(self) -> None:
        service: Any = await asyncio.to_thread(self._service) if self.settings.forecasting.enabled else None
        targets = self._targets() if service is not None else []
        training: asyncio.Task[None] | None = None
        try:
            while True:
                now = self.clock.now()
                for target in targets:
                    try:
                        # `predict` trains a quick first model by itself once there is enough history
                        previous = self.forecasts.get(target)
                        fc = await asyncio.to_thread(service.predict, target, now)
                        if previous is None or (previous.kind, previous.reason) != (fc.kind, fc.reason):
                            log.info("forecast %s: %s%s", target, fc.kind, f" ({fc.reason})" if fc.reason else "")
                    except Exception as exc:  # one target's failure must not stop the others or the signal
                        self.last_error = f"{target}: {type(exc).__name__}: {exc}"
                        log.exception("forecast %s failed", target)
                        continue
                    fc = await self._recalibrated(service, target, fc, now)
                    fc = await self._with_accuracy(service, target, fc, now)
                    self.forecasts[target] = fc
                    self._publish_forecast(fc)
                if self.flex is not None:
                    await self._flex_round(now)
                self.rounds += 1
                # Retraining (the full model after a quick first one, then nightly) runs beside the rounds:
                # a forecast is never late because a model is being trained; the next round uses it.
                if targets and (training is None or training.done()):
                    training = asyncio.create_task(self._retrain_due(service, targets, now), name="forecast-train")
                await self.clock.sleep_until(next_aligned(self.clock.now(), ROUND_S))
        finally:
            if service is not None:
                service.cancel_training()  # the thread gives up at its next estimator, not after the model
            if training is not None:
                training.cancel()

    async def _recalibrated(self, service: Any, target: str, fc: Forecast, now: datetime) -> Forecast:
        """The model's band scaled by its recent errors (forecasting/recalibrate.py); the unscaled forecast
        is kept (one per hour, four weeks) as what the next scale is measured on."""
        if fc.kind != "model":
            return fc
        from forecasting.recalibrate import RECENT_DAYS  # numpy: only with the forecast extra installed

        raw = self._raw_past.setdefault(target, deque(maxlen=RECENT_DAYS * 24 + 48))
        hour = fc.generated_at.replace(minute=0, second=0, microsecond=0)
        try:
            scaled: Forecast = await asyncio.to_thread(service.recalibrated, target, fc, list(raw), now)
        except Exception as exc:  # the trained band is still a band: keep it, say why
            self.last_error = f"{target} recalibration: {type(exc).__name__}: {exc}"
            log.exception("forecast %s: band recalibration failed", target)
            scaled = fc
        if not raw or raw[-1].generated_at.replace(minute=0, second=0, microsecond=0) != hour:
            raw.append(fc)
        return scaled

    async def _with_accuracy(self, service: Any, target: str, fc: Forecast, now: datetime) -> Forecast:
        """Keep `fc` for scoring later and attach the live accuracy (recomputed once an hour)."""
        past = self._past.setdefault(target, deque(maxlen=ACCURACY_DAYS * 24 + 48))
        hour = fc.generated_at.replace(minute=0, second=0, microsecond=0)
        if fc.points and (not past or past[-1].generated_at.replace(minute=0, second=0, microsecond=0) != hour):
            past.append(fc)
        cached = self._accuracy.get(target)
        if cached is None or (now - cached[0]).total_seconds() >= 3600:
            try:
                acc = await asyncio.to_thread(service.accuracy, target, list(past), now, window_days=ACCURACY_DAYS)
                cached = (now, acc.to_json())
            except Exception as exc:  # accuracy is a report; a failure must not stop the forecast
                self.last_error = f"{target} accuracy: {type(exc).__name__}: {exc}"
                log.exception("forecast %s: live accuracy failed", target)
                cached = (now, {"window_days": ACCURACY_DAYS, "points": 0})
            self._accuracy[target] = cached
        return dataclasses.replace(fc, metadata={**fc.metadata, "accuracy": cached[1]})

    async def _retrain_due(self, service: Any, targets: Sequence[str], now: datetime) -> None:
        """Train every target that is due, a target still on a baseline included (its first model)."""
        for target in targets:
            try:
                if not await asyncio.to_thread(service.needs_training, target, now):
                    continue
                result = await asyncio.to_thread(service.train, target, now=now)
                log.info("forecast %s retrained: %s", target, getattr(result, "reason", "") or "ok")
            except Exception as exc:  # a failed retraining keeps the current model; say so, go on
                self.last_error = f"{target}: {type(exc).__name__}: {exc}"
                log.exception("forecast %s: retraining failed", target)


async def parts(site: Site, services: Services) -> Sequence[Part]:
    """The forecasting room (sections `forecasting` and `flexibility`): one part running the rounds."""
    s = services.settings
    if not (s.forecasting.enabled or s.flexibility.enabled):
        return []
    runner = ForecastRunner(
        settings=s,
        clock=services.clock,
        live=services.live,
        channels=site.channels,
        mqtt_outbox=services.retained if s.mqtt is not None else None,
        influx_outbox=services.influx_extras if s.influxdb is not None else None,
    )
    services.providers.forecast = runner.forecast_payload
    services.providers.flexibility = runner.flex_payload
    return [Part("forecasting", runner.run)]


ROOM = Room("forecasting", parts, section="forecasting", config=ForecastingConfig)
