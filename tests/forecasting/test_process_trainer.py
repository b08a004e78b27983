"""Training in a child process (`gateway.forecasts.training`): the agent's model arrives from the child,
and a stopping agent kills a running training at once instead of waiting for the fit to end.

Real child processes over a ledger filled by the demo's backfill; no broker or device needed.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.sim.site import DemoSite
from gateway.demo import DemoOptions, backfill, write_config, write_weather
from gateway.forecasts.training import CANCELLED, ProcessTrainer, build_service
from gateway.ledger.store import Ledger
from gateway.settings import load_config

pytestmark = [pytest.mark.cpu, pytest.mark.slow]


def demo_site(tmp_path: Path, days: float) -> tuple[Any, list[Any], datetime]:
    """Settings and channels of the demo site with `days` of backfilled history in tmp_path."""
    site, now = DemoSite(), datetime.now(UTC)
    led = Ledger(tmp_path / "ledger.db")
    try:
        backfill(led, site, days=days, until=now)
    finally:
        led.close()
    weather = write_weather(
        site, tmp_path / "weather.csv", start=now - timedelta(days=days + 2), end=now + timedelta(days=3)
    )
    urls = {d: f"tcp://127.0.0.1:{1 + i}" for i, d in enumerate(("grid", "hall-a", "hall-b", "pv", "wind", "battery"))}
    config = write_config(DemoOptions(tmp_path, backfill_days=days), urls, weather=weather)
    cfg = load_config(config)
    return cfg.settings, list(cfg.site.channels), now


def test_model_trained_in_a_child_is_used_and_stop_kills_a_running_training(tmp_path: Path) -> None:
    settings, channels, now = demo_site(tmp_path, 30)
    trainer = ProcessTrainer(settings, channels)
    service = build_service(settings, channels, trainer=trainer)
    fc = service.predict("load", now)  # no model yet: a quick one, trained in a child
    assert fc.kind == "model", fc.reason
    assert (settings.data_dir / "models" / "load.joblib").exists()

    # A full training of the wind model takes ~10 s; stop() must end it within a few seconds.
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(service.train("wind", now=now)))
    worker.start()
    deadline = time.monotonic() + 20
    while not trainer._running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trainer._running, "no training process started"
    time.sleep(1.0)  # past the child's imports, into the training
    t0 = time.monotonic()
    service.cancel_training()
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - t0 < 3.0  # without the kill: the rest of the fit, 9.7 s here
    assert not result[0].trained and result[0].reason == CANCELLED
    assert service.train("pv", now=now).reason == CANCELLED  # and no later training starts
