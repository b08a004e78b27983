"""`LedgerHistory`: forecasting's history source over the ledger's energy registers.

The forecasting package knows nothing of the ledger; this adapts it. History is the mean power of the
site's flows per interval computed from energy-register advances (the same arithmetic as the live
balance and the monthly report, `gateway.site.balance.flow_history`), so a forecast is compared with
what certification will count: target `load` is the site's consumption, `wind`/`pv` its wind/PV
generation. Each read opens its own read-only connection in the calling thread: training on a year of
history never blocks commits. Imported by the training child too, so it stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from drivers.model import from_ms, to_ms
from gateway.ledger.store import Ledger

#: forecast target -> the site flow (gateway/site/balance.py `flow_history`) it forecasts
TARGET_FLOW: Final = {"load": "consumption", "wind": "generation_wind", "pv": "generation_pv"}


class LedgerHistory:
    """`forecasting.types.HistorySource` over the ledger's energy registers."""

    def __init__(self, ledger_path: Path, channels: Sequence[Any]) -> None:
        self._path = ledger_path
        self._channels = list(channels)

    def values(self, series: str, start: datetime, end: datetime, resolution_s: int) -> list[tuple[datetime, float]]:
        from gateway.site.balance import flow_history

        if not self._path.exists():
            return []
        led = Ledger(self._path, readonly=True)
        try:
            hist = flow_history(self._channels, led, start_ms=to_ms(start), end_ms=to_ms(end), step_s=resolution_s)
        finally:
            led.close()
        flow = hist["flows"].get(TARGET_FLOW.get(series, series), [])
        return [(from_ms(ts), float(v)) for ts, v in zip(hist["ts"], flow, strict=False) if v is not None]
