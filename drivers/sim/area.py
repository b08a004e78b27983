"""Consuming neighbours for `gia demo --area`: the demo site's two halls behind a grid meter, nothing else.

`ConsumerSite` is `DemoSite` without generation (no PV, the wind turbine stands still and draws nothing)
and with its battery parked at its floor (it never charges: there is no surplus, and it cannot discharge
below 10 %), so the grid meter reads exactly the halls' load, scaled: a different company beside the
producer. Everything stays a pure function of (seed, t), as the demo site is.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.sim.site import BATTERY_WH, DemoSite, _DayStart


@dataclass
class ConsumerSite(DemoSite):
    scale: float = 1.0

    def pv_w(self, t: float) -> float:
        return 0.0

    def wind_w(self, t: float) -> float:
        return 0.0

    def load_a_w(self, t: float) -> float:
        return self.scale * super().load_a_w(t)

    def load_b_w(self, t: float) -> float:
        return self.scale * super().load_b_w(t)

    def _initial(self) -> _DayStart:
        start = super()._initial()
        return _DayStart(cum=start.cum, soc_wh=0.1 * BATTERY_WH)
