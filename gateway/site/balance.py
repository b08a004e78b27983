"""The site's energy arithmetic: the balance formulas and register advances over the ledger.

Why registers and not integrated live power: a period's energy is the advance of each channel's
cumulative register between the period's start and its end (the certification rule), so the page's
"this month" converges to the signed report instead of drifting away from it, and a page opened at
15:00 knows the morning without having watched it. The same rule gives the flow history: the mean
power over an interval is register advance / interval length, which is what forecasting learns from.

`energy_balance` is the one place the balance formulas are written (the signed report, the live page
and forecasting history all call it). The rest are pure functions over a `RegisterLookup` (a ledger
reader satisfies it structurally): no I/O of their own, no clock. Standard library only.

Energy balance conventions (certification.md, "Site indicators"):

* consumption = grid import + generation - grid export + storage discharge - storage charge when the site
  has grid channels; otherwise the sum of `consumption` channels;
* self-consumption = generation - export (same connection point, never below 0);
* renewable energy consumed on site = renewable generation - export, never below 0: exports are counted
  as renewable first, the conservative choice for a renewable share.

Figures from `register_balance` are *provisional*: no boundary interpolation, no VEE; the signed monthly
report is the authority.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from drivers.model import from_ms, iso_utc, to_ms
from gateway.site.channels import ROLE_FLOW, ChannelSpec


class _EntryLike(Protocol):
    @property
    def ts_ms(self) -> int: ...

    @property
    def value(self) -> float | int | None: ...


class RegisterLookup(Protocol):
    """What the balance needs from the ledger (gateway.ledger.store.Ledger has exactly these)."""

    def last_before(self, device: str, quantity: str, ts_ms: int) -> _EntryLike | None: ...

    def first_at_or_after(self, device: str, quantity: str, ts_ms: int) -> _EntryLike | None: ...


class BalanceChannel(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def source(self) -> str | None: ...
    @property
    def renewable(self) -> bool | None: ...


def energy_balance(energy: Mapping[str, int], channels: Sequence[BalanceChannel]) -> dict[str, Any]:
    """The site's energy balance from channel energies (channel id -> Wh; missing channels count 0).

    The one place these formulas are written: the signed report and the live page's provisional
    balance both call it, so the two can never disagree about what "consumption" means.
    consumption = import + generation - export + discharge - charge (at the connection point), or the
    metered consumption channels when the site has no grid meter.
    """

    def total(role: str) -> int:
        return sum(energy.get(c.id, 0) for c in channels if c.role == role)

    imp, exp, gen = total("grid_import"), total("grid_export"), total("generation")
    charge, discharge = total("storage_charge"), total("storage_discharge")
    ren = sum(energy.get(c.id, 0) for c in channels if c.role == "generation" and c.renewable)
    has_grid = any(c.role in ("grid_import", "grid_export") for c in channels)
    consumption = imp + gen - exp + discharge - charge if has_grid else total("consumption")
    by_source: dict[str, int] = {}
    for c in channels:
        if c.role == "generation":
            key = c.source or "other"
            by_source[key] = by_source.get(key, 0) + energy.get(c.id, 0)
    return {
        "consumption_wh": consumption,
        "metered_consumption_wh": total("consumption"),
        "generation_wh": gen,
        "generation_by_source_wh": dict(sorted(by_source.items())),
        "renewable_generation_wh": ren,
        "renewable_consumed_on_site_wh": max(0, ren - exp),
        "grid_import_wh": imp,
        "grid_export_wh": exp,
        "storage_charge_wh": charge,
        "storage_discharge_wh": discharge,
        "auxiliary_wh": total("auxiliary"),
        "self_consumption_wh": max(0, gen - exp),
    }


#: How far back to look for an invalid-free register reading before giving up on a boundary.
_MAX_INVALID_SKIPS: Final = 20


def site_layout(channels: Sequence[ChannelSpec], device_classes: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """device id -> {class, flow, source}: how the page turns each device's live `power_w` into a site flow.

    A device's flow is that of its first channel role (a grid meter has import+export, a battery
    charge+discharge: same flow). Devices without channels get `flow: null` (shown, not balanced).
    """
    layout: dict[str, dict[str, Any]] = {
        d: {"class": c, "flow": None, "source": None, "renewable": None} for d, c in device_classes.items()
    }
    for ch in channels:
        entry = layout.setdefault(ch.device, {"class": None, "flow": None, "source": None, "renewable": None})
        flow, _sign = ROLE_FLOW[ch.role]
        if entry["flow"] is None or (entry["flow"] == "auxiliary" and flow != "auxiliary"):
            entry["flow"] = flow
        if ch.role == "generation":
            entry["source"] = ch.source
            entry["renewable"] = ch.renewable
    return layout


def _reading_at(lookup: RegisterLookup, device: str, quantity: str, ts_ms: int) -> tuple[int, int] | None:
    """(ts_ms, value) of the last valid reading at or before `ts_ms`."""
    bound = ts_ms + 1
    for _ in range(_MAX_INVALID_SKIPS):
        e = lookup.last_before(device, quantity, bound)
        if e is None:
            return None
        if e.value is not None:
            return e.ts_ms, int(e.value)
        bound = e.ts_ms
    return None


def _first_reading(lookup: RegisterLookup, device: str, quantity: str, ts_ms: int) -> tuple[int, int] | None:
    for _ in range(_MAX_INVALID_SKIPS):
        e = lookup.first_at_or_after(device, quantity, ts_ms)
        if e is None:
            return None
        if e.value is not None:
            return e.ts_ms, int(e.value)
        ts_ms = e.ts_ms + 1
    return None


#: A wrapping register is read at least this often when summing its advance: a 16-bit register in
#: 0.1 kWh (6553.6 kWh) at 100 kW wraps every 65 h, so 6 h chunks hold at most one wrap.
WRAP_CHUNK_MS: Final = 6 * 3_600_000


def _advance(lookup: RegisterLookup, ch: ChannelSpec, opening: tuple[int, int], closing: tuple[int, int]) -> int | None:
    """Register advance (counts) between two readings; None when it went backwards without a modulus."""
    if ch.register_modulus_wh is None:
        diff = closing[1] - opening[1]
        return diff if diff >= 0 else None
    total, prev = 0, opening
    t = opening[0] + WRAP_CHUNK_MS
    while True:
        nxt = closing if t >= closing[0] else (_reading_at(lookup, ch.device, ch.quantity, t) or prev)
        total += (nxt[1] - prev[1]) % ch.register_modulus_wh
        prev = nxt
        if nxt is closing:
            return total
        t += WRAP_CHUNK_MS


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den > 0 else None


def indicators(energy: Mapping[str, int], channels: Sequence[ChannelSpec]) -> dict[str, Any]:
    """Site indicators from channel energies (channel id -> Wh); channels missing from `energy` count 0.

    The balance plus two provisional shares as floats (the page's; the signed report has its own).
    """
    out = energy_balance(energy, channels)
    consumption, imp = out["consumption_wh"], out["grid_import_wh"]
    out["renewable_share"] = _ratio(out["renewable_consumed_on_site_wh"], consumption)
    out["self_sufficiency"] = _ratio(max(0, consumption - imp), consumption)
    return out


#: Quality of a derived figure, best first: the worst of its inputs'. `unknown`: an input has no
#: usable register advance, so the figure is not shown as a number at all.
QUALITY_ORDER: Final = ("good", "stale", "partial", "unknown")
_STATUS_QUALITY: Final = {"ok": "good", "stale": "stale", "partial": "partial"}


def _inputs(channels: Sequence[BalanceChannel]) -> dict[str, list[str]]:
    """indicator -> the channel ids it is computed from (the formulas of `energy_balance`)."""

    def ids(pred: Callable[[BalanceChannel], Any]) -> list[str]:
        return [c.id for c in channels if pred(c)]

    def role(*roles: str) -> list[str]:
        return ids(lambda c: c.role in roles)

    has_grid = any(c.role in ("grid_import", "grid_export") for c in channels)
    consumption = (
        role("grid_import", "grid_export", "generation", "storage_charge", "storage_discharge")
        if has_grid
        else role("consumption")
    )
    renewable = ids(lambda c: c.role == "generation" and c.renewable)
    out = {
        "consumption_wh": consumption,
        "metered_consumption_wh": role("consumption"),
        "generation_wh": role("generation"),
        "renewable_generation_wh": renewable,
        "renewable_consumed_on_site_wh": renewable + role("grid_export"),
        "grid_import_wh": role("grid_import"),
        "grid_export_wh": role("grid_export"),
        "storage_charge_wh": role("storage_charge"),
        "storage_discharge_wh": role("storage_discharge"),
        "auxiliary_wh": role("auxiliary"),
        "self_consumption_wh": role("generation", "grid_export"),
    }
    out["renewable_share"] = out["renewable_consumed_on_site_wh"] + consumption
    out["self_sufficiency"] = consumption + out["grid_import_wh"]
    for c in channels:
        if c.role == "generation":
            out.setdefault(f"generation_{c.source or 'other'}_wh", []).append(c.id)
    return out


def graded_indicators(
    energy: Mapping[str, int], channels: Sequence[ChannelSpec], status: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """`indicators` where every figure with an unusable input is None, and each figure's quality.

    `status`: channel id -> `ok`, `stale`, `partial`, or anything else for "no usable advance" (no
    data, register went backwards). Why: a missing grid import counted as 0 Wh turned a meter restart
    into "100 % renewable"; unknown must stay unknown, and a figure is only as good as its worst input.
    """
    out = indicators(energy, channels)
    quality: dict[str, str] = {}
    for name, ids in _inputs(channels).items():
        q = "good"
        for cid in ids:
            cq = _STATUS_QUALITY.get(status.get(cid, ""), "unknown")
            if QUALITY_ORDER.index(cq) > QUALITY_ORDER.index(q):
                q = cq
        quality[name] = q
        if q == "unknown":
            if name.startswith("generation_") and name != "generation_wh":
                out["generation_by_source_wh"][name[len("generation_") : -3]] = None
            elif name in out:
                out[name] = None
    return out, quality


def register_balance(
    channels: Sequence[ChannelSpec],
    lookup: RegisterLookup,
    *,
    start_ms: int,
    end_ms: int,
    stale_after_ms: int = 600_000,
) -> dict[str, Any]:
    """Register advance of every channel over [start_ms, end_ms] and the site indicators.

    A channel whose register has no reading at or before the start uses its first reading after it
    (the period is then covered only partly: `partial`); a register that went backwards is left out
    and named in `warnings` (the report's VEE decides what it was), and every figure computed from it
    is None (unknown), never a number with that channel counted as 0 (`graded_indicators`). `complete`
    is true when every channel has both boundaries and its closing reading is at most `stale_after_ms` old.
    """
    rows: list[dict[str, Any]] = []
    energy: dict[str, int] = {}
    warnings: list[str] = []
    for ch in channels:
        opening = _reading_at(lookup, ch.device, ch.quantity, start_ms)
        partial = False
        if opening is None:
            opening = _first_reading(lookup, ch.device, ch.quantity, start_ms)
            partial = opening is not None
        closing = _reading_at(lookup, ch.device, ch.quantity, end_ms)
        row: dict[str, Any] = {"id": ch.id, "device": ch.device, "role": ch.role, "source": ch.source}
        if opening is None or closing is None or closing[0] < opening[0]:
            row.update(energy_wh=None, status="no_data")
            warnings.append(f"{ch.id}: no register reading in this period")
            rows.append(row)
            continue
        advance = _advance(lookup, ch, opening, closing)
        if advance is None:
            row.update(energy_wh=None, status="register_decreased")
            warnings.append(f"{ch.id}: register went backwards ({opening[1]} -> {closing[1]} Wh); left out")
        else:
            wh = advance * ch.multiplier
            energy[ch.id] = wh
            status = "partial" if partial else ("stale" if end_ms - closing[0] > stale_after_ms else "ok")
            row.update(
                energy_wh=wh,
                status=status,
                opening_ts=iso_utc(_dt(opening[0])),
                closing_ts=iso_utc(_dt(closing[0])),
            )
            if partial:
                warnings.append(f"{ch.id}: readings start at {row['opening_ts']}, after the period start")
            elif status == "stale":
                warnings.append(f"{ch.id}: last register reading at {row['closing_ts']}")
        rows.append(row)
    graded, quality = graded_indicators(energy, channels, {r["id"]: r["status"] for r in rows})
    worst = max((QUALITY_ORDER.index(q) for q in quality.values()), default=0)
    return {
        "start": iso_utc(_dt(start_ms)),
        "end": iso_utc(_dt(end_ms)),
        "indicators": graded,
        "quality": quality,
        "worst_quality": QUALITY_ORDER[worst],
        "channels": rows,
        "complete": all(r["status"] == "ok" for r in rows) and bool(rows),
        "warnings": warnings,
    }


def _dt(ms: int) -> datetime:
    return from_ms(ms)


def period_starts(now: datetime, timezone: str) -> dict[str, datetime]:
    """Start of the local day and of the local month containing `now`, as UTC datetimes."""
    tz = ZoneInfo(timezone)
    local = now.astimezone(tz)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    # Re-attach the zone so a DST change between midnight and now gives the right offset.
    day = datetime(day.year, day.month, day.day, tzinfo=tz)
    month = datetime(month.year, month.month, 1, tzinfo=tz)
    return {"today": day, "month": month}


def energy_summary(
    channels: Sequence[ChannelSpec],
    lookup: RegisterLookup,
    *,
    site: str,
    timezone: str,
    now: datetime,
    device_classes: Mapping[str, str] | None = None,
    site_name: str = "",
) -> dict[str, Any]:
    """Today's and this month's balance so far (provisional), plus the site layout for the live flows.

    The JSON the page reads from `GET /api/v1/summary`.
    """
    starts = period_starts(now, timezone)
    end_ms = to_ms(now)
    today = register_balance(channels, lookup, start_ms=to_ms(starts["today"]), end_ms=end_ms)
    month = register_balance(channels, lookup, start_ms=to_ms(starts["month"]), end_ms=end_ms)
    local_day = starts["today"]
    today["label"] = local_day.strftime("%Y-%m-%d")
    month["label"] = starts["month"].strftime("%Y-%m")
    month["provisional"] = True  # until the month is closed and its report signed
    previous = (starts["month"] - timedelta(days=1)).strftime("%Y-%m")
    return {
        "site": site,
        "site_name": site_name,
        "timezone": timezone,
        "generated_at": iso_utc(now),
        "today": today,
        "month": month,
        "previous_month": previous,
        "layout": site_layout(channels, device_classes or {}),
    }


def flow_history(
    channels: Sequence[ChannelSpec], lookup: RegisterLookup, *, start_ms: int, end_ms: int, step_s: int = 900
) -> dict[str, Any]:
    """Mean power of each site flow per interval, from register advances: the 'actual' beside a forecast.

    Returns `{"ts": [interval starts, ms], "step_s", "flows": {name: [W or None]}}` where the names are
    `grid` (+ import), `storage` (+ discharge), `consumption`, `generation`, and `generation_<source>`
    (`generation_wind`, `generation_pv`: what the forecast targets wind/pv compare with; `consumption`
    is what target `load` compares with). One register lookup per channel and grid point (indexed), so
    a day at 15 min is ~100 lookups per channel.
    """
    if step_s <= 0:
        raise ValueError("step_s must be > 0")
    step_ms = step_s * 1000
    first = start_ms - start_ms % step_ms
    grid = list(range(first, end_ms + 1, step_ms))
    if len(grid) < 2:
        return {"ts": [], "step_s": step_s, "flows": {}}
    readings = {ch.id: [_reading_at(lookup, ch.device, ch.quantity, t) for t in grid] for ch in channels}
    n = len(grid) - 1
    energy_per_interval: list[dict[str, int]] = [{} for _ in range(n)]
    for ch in channels:
        rs = readings[ch.id]
        for i in range(n):
            a, b = rs[i], rs[i + 1]
            # Only intervals bracketed by readings near both edges: a long gap is not spread evenly.
            if a is None or b is None or grid[i] - a[0] > step_ms or grid[i + 1] - b[0] > step_ms:
                continue
            diff = b[1] - a[1]
            if diff < 0:
                if ch.register_modulus_wh is None:
                    continue
                diff %= ch.register_modulus_wh
            energy_per_interval[i][ch.id] = diff * ch.multiplier
    names = ["grid", "storage", "consumption", "generation"]
    sources = sorted({c.source or "other" for c in channels if c.role == "generation"})
    names += [f"generation_{s}" for s in sources]
    flows: dict[str, list[float | None]] = {k: [] for k in names}
    needed = {c.id for c in channels}
    for i in range(n):
        e = energy_per_interval[i]
        if needed - e.keys():
            for k in names:
                flows[k].append(None)
            continue
        ind = indicators(e, channels)
        hours = step_s / 3600
        flows["grid"].append(round((ind["grid_import_wh"] - ind["grid_export_wh"]) / hours, 1))
        flows["storage"].append(round((ind["storage_discharge_wh"] - ind["storage_charge_wh"]) / hours, 1))
        flows["consumption"].append(round(ind["consumption_wh"] / hours, 1))
        flows["generation"].append(round(ind["generation_wh"] / hours, 1))
        for s in sources:
            flows[f"generation_{s}"].append(round(ind["generation_by_source_wh"].get(s, 0) / hours, 1))
    return {"ts": grid[:-1], "step_s": step_s, "flows": flows}
