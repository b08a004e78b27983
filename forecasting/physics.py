"""Physical priors the learnt models correct: a wind power curve and irradiance on the PV modules.

PV uses pvlib, the field's reference library (in the `forecast` extra, imported only for PV targets):
solar position, a clear-sky model and the transposition of horizontal irradiance onto the modules'
plane (`tilt_deg`, `azimuth_deg` of the target). Why plane-of-array and not only the horizontal
clear-sky shape: a 30° south-facing array sees ~30 % more than GHI at a spring noon and less in a
summer morning; the learnt correction could absorb a constant factor, not one that changes with the
season and the hour. The clear-sky model is Haurwitz (needs no turbidity data files); horizontal
irradiance is split into direct and diffuse parts by the Erbs model, then transposed with the
isotropic sky model.
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


def _solar_position(index: pd.DatetimeIndex, latitude: float, longitude: float, offset_s: float) -> pd.DataFrame:
    import pvlib

    times = index.tz_convert("UTC") + pd.Timedelta(seconds=offset_s)
    pos: pd.DataFrame = pvlib.solarposition.get_solarposition(times, latitude, longitude)
    return pos


def clear_sky_ghi(
    index: pd.DatetimeIndex, latitude: float, longitude: float, *, offset_s: float = 0.0
) -> NDArray[np.float64]:
    """Haurwitz clear-sky global horizontal irradiance (pvlib), W/m², 0 at night."""
    import pvlib

    pos = _solar_position(index, latitude, longitude, offset_s)
    ghi = pvlib.clearsky.haurwitz(pos["apparent_zenith"])["ghi"].to_numpy(dtype=np.float64)
    out: NDArray[np.float64] = np.nan_to_num(ghi, nan=0.0)
    return out


def plane_of_array(
    index: pd.DatetimeIndex,
    latitude: float,
    longitude: float,
    *,
    tilt_deg: float,
    azimuth_deg: float | None = None,
    ghi: Sequence[NDArray[np.float64]] = (),
    offset_s: float = 0.0,
) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
    """(clear-sky irradiance on the modules, each `ghi` transposed onto the modules), W/m², 0 at night.

    `azimuth_deg` None faces the equator. `ghi`: forecasts of horizontal irradiance on `index` (one per
    lead); NaN in them stays NaN.
    """
    import pvlib

    azimuth = azimuth_deg if azimuth_deg is not None else (180.0 if latitude >= 0 else 0.0)
    pos = _solar_position(index, latitude, longitude, offset_s)
    times = pd.DatetimeIndex(pos.index)

    def transpose(g: NDArray[np.float64]) -> NDArray[np.float64]:
        ghi_s = pd.Series(np.clip(g, 0.0, None), index=times)
        parts = pvlib.irradiance.erbs(ghi_s, pos["apparent_zenith"], times)
        poa = pvlib.irradiance.get_total_irradiance(
            tilt_deg,
            azimuth,
            pos["apparent_zenith"],
            pos["azimuth"],
            dni=parts["dni"],
            ghi=ghi_s,
            dhi=parts["dhi"],
            model="isotropic",
        )["poa_global"]
        out = np.nan_to_num(poa.to_numpy(dtype=np.float64), nan=0.0)
        return np.where(np.isfinite(g), np.clip(out, 0.0, None), np.nan)

    cs = pvlib.clearsky.haurwitz(pos["apparent_zenith"])["ghi"].to_numpy(dtype=np.float64)
    clear = transpose(np.nan_to_num(cs, nan=0.0))
    return clear, [transpose(np.asarray(g, dtype=np.float64)) for g in ghi]


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
