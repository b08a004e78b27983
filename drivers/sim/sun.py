"""Clear-sky sunlight for the simulators: one formula for the demo site and `gia sim`.

A simulated PV inverter that delivers power at midnight teaches an operator the wrong thing (and the
issue saw 26 kW at 22:50 on a Riga December night), so every simulator derives PV from the sun's
elevation at a place. The model is deliberately simple and fast: a NOAA-style declination and hour angle
(solar time from longitude, no equation of time) and Meinel's clear-sky attenuation; good to a few
percent at the hour scale, which is all a simulator needs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

#: The pilot area's place (a Latvian wind park on a peat bog, Riga region): the simulators' default.
LATITUDE: Final = 56.9
LONGITUDE: Final = 24.1
_DAY: Final = 86400


def sin_elevation(t: float, *, latitude: float = LATITUDE, longitude: float = LONGITUDE) -> float:
    """Sine of the sun's elevation at Unix time `t` (seconds) and the place; negative below the horizon."""
    day_of_year = datetime.fromtimestamp(t, UTC).timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + day_of_year) / 365)
    solar_hours = (t % _DAY) / 3600 + longitude / 15
    hour_angle = math.radians(15 * (solar_hours - 12))
    lat = math.radians(latitude)
    return math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle)


def clear_sky_ghi(t: float, *, latitude: float = LATITUDE, longitude: float = LONGITUDE) -> float:
    """Clear-sky global horizontal irradiance (W/m²) at Unix time `t`; 0 at night."""
    sin_el = sin_elevation(t, latitude=latitude, longitude=longitude)
    if sin_el <= 0.01:
        return 0.0
    return float(1040 * sin_el * 0.7 ** ((1 / sin_el) ** 0.678))
