"""Physical priors the learnt models correct: a wind power curve and a clear-sky irradiance.

Why a small clear-sky formula instead of pvlib: pvlib is the field's reference, but the forecast only needs
the *shape* of the clear-sky day (the learnt correction absorbs the site's level, orientation and
shading). The Haurwitz model on a NOAA-style solar position is ~20 lines of numpy, accurate to a few
per cent of GHI at noon for the purpose, and keeps pvlib's dependency tree (h5py, requests...) off the Pi.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True, slots=True)
class PowerCurve:
    """Farm power (W) versus hub wind speed (m/s), linear between points, zero above cut-out.

    Capacity caps every value, so neither the curve nor the learnt model on top may exceed it.
    """

    speeds: tuple[float, ...]
    powers: tuple[float, ...]
    cut_out_ms: float = 25.0
    capacity: float | None = None

    def power(self, wind_speed: ArrayLike) -> NDArray[np.float64]:
        ws = np.asarray(wind_speed, dtype=np.float64)
        p = np.interp(ws, self.speeds, self.powers, left=0.0, right=self.powers[-1])
        p = np.where(ws >= self.cut_out_ms, 0.0, p)
        if self.capacity is not None:
            p = np.minimum(p, self.capacity)
        return np.where(np.isnan(ws), np.nan, p)

    @classmethod
    def from_points(
        cls, points: Sequence[tuple[float, float]], *, cut_out_ms: float = 25.0, capacity: float | None = None
    ) -> PowerCurve:
        return cls(tuple(float(s) for s, _ in points), tuple(float(p) for _, p in points), cut_out_ms, capacity)

    @classmethod
    def from_windpowerlib(cls, turbine_type: str, *, capacity: float, cut_out_ms: float = 25.0) -> PowerCurve:
        """A manufacturer curve from windpowerlib's turbine library, scaled to the farm's capacity.

        The library copy that ships inside the package is read, never the OpenEnergy database online: a
        gateway on a site network often has no internet, and a curve must not change under a model.
        windpowerlib is optional (imported here only); a missing package or unknown type is a clear error.
        """
        if turbine_type not in windpowerlib_turbine_types():
            raise ValueError(
                f"unknown windpowerlib turbine type {turbine_type!r}; the names are those of "
                "windpowerlib.data.get_turbine_types(print_out=False), e.g. 'E-82/2300'"
            )
        from windpowerlib import WindTurbine

        # the hub height does not enter the power curve; windpowerlib requires one
        with _quiet_library():
            curve = WindTurbine(turbine_type=turbine_type, hub_height=100.0).power_curve
        speeds = [float(v) for v in curve["wind_speed"]]
        values = [float(v) for v in curve["value"]]
        peak = max(values)
        return cls(tuple(speeds), tuple(v / peak * capacity for v in values), cut_out_ms, capacity)

    @classmethod
    def empirical(
        cls,
        wind_speed: ArrayLike,
        power: ArrayLike,
        *,
        capacity: float,
        cut_out_ms: float = 25.0,
        bin_ms: float = 0.5,
    ) -> PowerCurve:
        """A curve learnt from history: median power per wind-speed bin, made non-decreasing.

        Used when no curve is configured: with forecast (not hub-measured) wind it is also the right
        curve, because it absorbs the forecast's bias and the farm's wake losses.
        """
        ws = np.asarray(wind_speed, dtype=np.float64)
        pw = np.asarray(power, dtype=np.float64)
        ok = np.isfinite(ws) & np.isfinite(pw) & (ws < cut_out_ms)
        ws, pw = ws[ok], pw[ok]
        edges = np.arange(0.0, cut_out_ms + bin_ms, bin_ms)
        centres, medians = [], []
        for lo, hi in pairwise(edges):
            sel = (ws >= lo) & (ws < hi)
            if sel.sum() >= 5:
                centres.append((lo + hi) / 2)
                medians.append(float(np.median(pw[sel])))
        if len(centres) < 2:
            centres, medians = [3.0, 12.0], [0.0, capacity]
        mono = np.maximum.accumulate(np.clip(medians, 0.0, capacity))
        return cls(tuple(centres), tuple(float(v) for v in mono), cut_out_ms, capacity)


def solar_cos_zenith(
    index: pd.DatetimeIndex, latitude: float, longitude: float, *, offset_s: float = 0.0
) -> NDArray[np.float64]:
    """Cosine of the solar zenith angle (Spencer declination and equation of time), clipped at 0."""
    t = index.tz_convert("UTC") + pd.Timedelta(seconds=offset_s)
    doy = t.day_of_year.to_numpy().astype(float)
    hours = t.hour.to_numpy() + t.minute.to_numpy() / 60.0 + t.second.to_numpy() / 3600.0
    g = 2.0 * np.pi / 365.0 * (doy - 1 + (hours - 12) / 24)
    decl = (
        0.006918
        - 0.399912 * np.cos(g)
        + 0.070257 * np.sin(g)
        - 0.006758 * np.cos(2 * g)
        + 0.000907 * np.sin(2 * g)
        - 0.002697 * np.cos(3 * g)
        + 0.00148 * np.sin(3 * g)
    )
    eot_min = 229.18 * (
        0.000075 + 0.001868 * np.cos(g) - 0.032077 * np.sin(g) - 0.014615 * np.cos(2 * g) - 0.040849 * np.sin(2 * g)
    )
    solar_time = hours * 60 + eot_min + 4 * longitude
    hour_angle = np.deg2rad(solar_time / 4 - 180)
    lat = np.deg2rad(latitude)
    cz = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    out: NDArray[np.float64] = np.clip(cz, 0.0, 1.0)
    return out


def clear_sky_ghi(
    index: pd.DatetimeIndex, latitude: float, longitude: float, *, offset_s: float = 0.0
) -> NDArray[np.float64]:
    """Haurwitz clear-sky global horizontal irradiance, W/m², 0 at night."""
    cz = solar_cos_zenith(index, latitude, longitude, offset_s=offset_s)
    with np.errstate(divide="ignore", over="ignore"):
        ghi = np.where(cz > 0.01, 1098.0 * cz * np.exp(-0.059 / np.maximum(cz, 0.01)), 0.0)
    out: NDArray[np.float64] = ghi.astype(np.float64)
    return out


def windpowerlib_turbine_types() -> frozenset[str]:
    """Turbine types with a power curve in windpowerlib's bundled library (RuntimeError if not installed)."""
    try:
        from windpowerlib import data as wpl_data
    except ImportError:
        raise RuntimeError(
            "turbine_type needs the optional package windpowerlib (installed with the 'forecast' extra), "
            "or give power_curve points in the config"
        ) from None
    with _quiet_library():
        df = wpl_data.get_turbine_types(turbine_library="local", print_out=False, filter_=True)
    return frozenset(str(t) for t in df.loc[df["has_power_curve"].astype(bool), "turbine_type"])


@contextmanager
def _quiet_library() -> Iterator[None]:
    """windpowerlib 0.2.2 uses pandas API that pandas 3 deprecates: its warnings are not the operator's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
