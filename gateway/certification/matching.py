"""Hourly matching with storage and contracted certificates (certification.md, "hourly-matched share"). Pure.

The hourly-matched share is sum_h min(load_h, renewable_h) / sum_h load_h, where renewable_h counts, in
this order:

1. **on-site renewable generation** in hour h (`hourly_matched_onsite_wh`);
2. **the renewable part of storage discharge** in hour h (`hourly_matched_storage_wh`), by the
   Granular Registry's storage method (Storage Charge Records, Storage Discharge Records, Storage
   Allocation Records linked first-in first-out, losses deducted) — see `fifo`;
3. **contracted hourly granular certificates** cancelled against what is left of this site's
   consumption in their hour (`hourly_matched_contracted_wh`), each certificate id once — see
   `certificates.py`.

The storage method, per storage unit (a device with `storage_charge` / `storage_discharge` channels):

* **Charge records (SCR)**: the unit's charge per hour, tagged by source from the site's own hourly
  balance: the renewable surplus of the hour, max(0, on-site renewable - load), charges the units in
  report order; what it does not cover came from the grid. (Contracted certificates back consumption,
  not charging.)
* **Losses** are measured over the period from the unit's own registers: losses = charge - discharge,
  the input - output method EnergyTag's standard suggests (it implicitly includes parasitic losses). Each
  charge record delivers floor(part x discharge / charge) Wh, rounded down so rounding never creates
  energy. **The state of charge is not used**: a battery's SoC is the BMS's estimate, not a metered
  register, and is not in the evidence. What that costs is bounded: the queue opens empty (energy stored
  before the period is of unknown origin: a discharge it serves finds no charge record and counts as
  grid), so the energy allocated never exceeds the period's measured charge or discharge, and a stock
  change only moves *which* charge records a discharge draws from. When discharge >= charge the losses
  cannot be measured this way and the unit gets **no storage credit** for the period (every discharge
  counts as grid): the conservative reading.
* **Discharge records (SDR)** are served first-in first-out from the queue (within an hour the grid part
  of a charge record before its renewable part, the conservative order); each link is an **allocation
  record (SAR)** `(charge hour, discharge hour, source, Wh)`, written to the evidence bundle
  (`storage_allocation.csv`) and committed to by its SHA-256 in the signed report.

Every input is an integer Wh per hour; shares are decimal strings. `gia verify` calls the same
functions: from the report's own hourly lists (internal consistency) and from the evidence (every hourly
list recomputed from the readings, the allocation file compared line for line).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from gateway.certification.exact import iso_ms, ratio, wh_factors_kg

#: `method.hourly_matching` of reports computed with this module; reports without it were matched
#: storage-blind (on-site generation only) and are verified that way.
MATCHING_METHOD: Final = "gia-hourly-matching/1"
HOUR_MS: Final = 3_600_000
ALLOCATION_HEADER: Final = "unit,charge_hour,discharge_hour,source,energy_wh\n"

METHOD_TEXT: Final = (
    "renewable_h = on-site renewable generation, then the renewable part of storage discharge (hourly charge"
    " records tagged renewable up to the site's hourly surplus max(0, renewable - load), grid otherwise;"
    " losses = charge - discharge over the period, state of charge not used, each charge record delivering"
    " floor(part x discharge / charge) Wh; discharge records served first-in first-out from a queue that opens"
    " empty, the grid part of an hour before its renewable part; no storage credit when discharge >= charge),"
    " then contracted granular certificates cancelled against the rest of the hour's load (each id once);"
    " matched_h = min(load_h, renewable_h)"
)


@dataclass(frozen=True, slots=True)
class StorageHours:
    """One storage unit's metered charge and discharge per hour (Wh, integers)."""

    unit: str
    charge_channels: tuple[str, ...]
    discharge_channels: tuple[str, ...]
    charge: list[int]
    discharge: list[int]


@dataclass(frozen=True, slots=True)
class Allocation:
    """A Storage Allocation Record: `wh` of a discharge in `discharge_hour` drawn from the `source` part
    of the charge record of `charge_hour` (None with source `unallocated`: no charge record left)."""

    unit: str
    charge_hour: int | None
    discharge_hour: int
    source: str
    wh: int


@dataclass(slots=True)
class StorageResult:
    hours: StorageHours
    charge_renewable: list[int]
    discharge_renewable: list[int]
    discharge_grid: list[int]
    discharge_unallocated: list[int]
    losses_wh: int | None
    losses_measured: bool
    basis: str
    closing_renewable_wh: int
    closing_grid_wh: int
    allocations: list[Allocation]

    @property
    def charge_wh(self) -> int:
        return sum(max(0, x) for x in self.hours.charge)

    @property
    def discharge_wh(self) -> int:
        return sum(max(0, x) for x in self.hours.discharge)


def tag_charges(load: Sequence[int], renewable: Sequence[int], units: Sequence[StorageHours]) -> list[list[int]]:
    """The renewable part of each unit's charge per hour: the hour's on-site renewable surplus
    max(0, renewable - load) charges the units in order; the rest of a charge came from the grid."""
    out = [[0] * len(load) for _ in units]
    for h in range(len(load)):
        surplus = max(0, renewable[h] - max(0, load[h]))
        for u, unit in enumerate(units):
            take = min(max(0, unit.charge[h]), surplus)
            out[u][h] = take
            surplus -= take
    return out


def fifo(unit: StorageHours, charge_renewable: Sequence[int]) -> StorageResult:
    """Link the unit's discharge records to its charge records first-in first-out, losses deducted."""
    n = len(unit.charge)
    charge = [max(0, x) for x in unit.charge]
    discharge = [max(0, x) for x in unit.discharge]
    total_c, total_d = sum(charge), sum(discharge)
    measured = 0 < total_d < total_c
    if measured:
        losses: int | None = total_c - total_d
        basis = "charge - discharge over the period (state of charge not used)"
    elif total_d == 0:
        losses = None
        basis = "no discharge in the period: nothing to allocate"
    else:
        losses = None
        basis = (
            "discharge >= charge over the period: the unit ran down energy stored before it, losses cannot be"
            " measured from its registers; no storage credit (every discharge counted as grid)"
        )
    queue: deque[list[Any]] = deque()  # [charge hour, source, deliverable Wh left]
    ren = [0] * n
    grid = [0] * n
    unalloc = [0] * n
    allocations: list[Allocation] = []
    for h in range(n):
        if measured and charge[h]:
            r = min(charge_renewable[h], charge[h])
            for source, part in (("grid", charge[h] - r), ("renewable", r)):
                deliver = part * total_d // total_c
                if deliver > 0:
                    queue.append([h, source, deliver])
        need = discharge[h]
        while need > 0 and queue:
            head = queue[0]
            take = min(need, head[2])
            allocations.append(Allocation(unit.unit, head[0], h, head[1], take))
            if head[1] == "renewable":
                ren[h] += take
            else:
                grid[h] += take
            head[2] -= take
            need -= take
            if head[2] == 0:
                queue.popleft()
        if need > 0:
            allocations.append(Allocation(unit.unit, None, h, "unallocated", need))
            unalloc[h] += need
    closing_r = sum(e[2] for e in queue if e[1] == "renewable")
    closing_g = sum(e[2] for e in queue if e[1] == "grid")
    tags = [min(charge_renewable[h], charge[h]) for h in range(n)]
    return StorageResult(unit, tags, ren, grid, unalloc, losses, measured, basis, closing_r, closing_g, allocations)


@dataclass(frozen=True, slots=True)
class HourlyInputs:
    """Everything the matching depends on, per hour of the period (integer Wh; factors t CO2/MWh)."""

    start_ms: int
    load: list[int]  # the site's consumption at the connection point, >= 0
    renewable: list[int]  # on-site renewable generation
    grid_import: list[int]
    storage: list[StorageHours]
    certificates: list[int]  # Wh of accepted certificates per hour (offered)
    factors: list[str | None] | None = None  # hourly location-based factors; None hours use the annual one


@dataclass(slots=True)
class Matched:
    inputs: HourlyInputs
    onsite: list[int]
    storage: list[int]
    contracted: list[int]
    units: list[StorageResult]

    @property
    def matched(self) -> list[int]:
        return [a + b + c for a, b, c in zip(self.onsite, self.storage, self.contracted, strict=True)]

    def remaining_after_storage(self) -> list[int]:
        """What certificates may be cancelled against, per hour."""
        i = self.inputs
        return [max(0, load - a - b) for load, a, b in zip(i.load, self.onsite, self.storage, strict=True)]


def match(inputs: HourlyInputs) -> Matched:
    """On-site renewables first, then the renewable part of storage discharge, then certificates."""
    load = [max(0, x) for x in inputs.load]
    tags = tag_charges(load, inputs.renewable, inputs.storage)
    units = [fifo(u, t) for u, t in zip(inputs.storage, tags, strict=True)]
    onsite = [min(lh, max(0, rh)) for lh, rh in zip(load, inputs.renewable, strict=True)]
    storage = []
    contracted = []
    for h, lh in enumerate(load):
        s = min(lh - onsite[h], sum(u.discharge_renewable[h] for u in units))
        storage.append(s)
        contracted.append(min(lh - onsite[h] - s, max(0, inputs.certificates[h])))
    return Matched(inputs, onsite, storage, contracted, units)


def allocation_lines(m: Matched) -> list[str]:
    """`storage_allocation.csv` (without its header): one Storage Allocation Record per line."""
    start = m.inputs.start_ms
    out = []
    for u in m.units:
        for a in u.allocations:
            ch = iso_ms(start + a.charge_hour * HOUR_MS) if a.charge_hour is not None else ""
            out.append(f"{a.unit},{ch},{iso_ms(start + a.discharge_hour * HOUR_MS)},{a.source},{a.wh}\n")
    return out


def allocation_csv(m: Matched) -> str:
    return ALLOCATION_HEADER + "".join(allocation_lines(m))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def storage_units(channels: Iterable[Any]) -> list[tuple[str, list[str], list[str]]]:
    """(unit id = device, charge channel ids, discharge channel ids) in report channel order."""
    units: dict[str, tuple[list[str], list[str]]] = {}
    for ch in channels:
        if ch.role in ("storage_charge", "storage_discharge"):
            c, d = units.setdefault(ch.device, ([], []))
            (c if ch.role == "storage_charge" else d).append(ch.id)
    return [(u, c, d) for u, (c, d) in units.items()]


def matching_block(
    m: Matched,
    *,
    certificates: Mapping[str, Any] | None,
    grid_factors: Mapping[str, Any] | None,
    annual_factor: str,
) -> dict[str, Any]:
    """The report's `matching` object: the hourly inputs (so the arithmetic can be re-run from the report
    alone), the matched energy per hour, each storage unit's records and totals, the certificates' and the
    hourly factors' provenance (passed in: `certificates.py` builds them)."""
    i = m.inputs
    units = []
    for u in m.units:
        h = u.hours
        units.append(
            {
                "unit": h.unit,
                "charge_channels": list(h.charge_channels),
                "discharge_channels": list(h.discharge_channels),
                "charge_wh": u.charge_wh,
                "discharge_wh": u.discharge_wh,
                "charge_renewable_wh": sum(u.charge_renewable),
                "charge_grid_wh": u.charge_wh - sum(u.charge_renewable),
                "losses_wh": u.losses_wh,
                "losses_measured": u.losses_measured,
                "losses_basis": u.basis,
                "delivered_share": ratio(u.discharge_wh, u.charge_wh) if u.losses_measured else None,
                "discharge_renewable_wh": sum(u.discharge_renewable),
                "discharge_grid_wh": sum(u.discharge_grid),
                "discharge_unallocated_wh": sum(u.discharge_unallocated),
                "closing_renewable_wh": u.closing_renewable_wh,
                "closing_grid_wh": u.closing_grid_wh,
                "allocation_records": len(u.allocations),
                "hourly_charge_wh": list(h.charge),
                "hourly_discharge_wh": list(h.discharge),
                "hourly_charge_renewable_wh": u.charge_renewable,
                "hourly_discharge_renewable_wh": u.discharge_renewable,
            }
        )
    block: dict[str, Any] = {
        "method": MATCHING_METHOD,
        "hours": len(i.load),
        "start": iso_ms(i.start_ms),
        "hourly_load_wh": list(i.load),
        "hourly_renewable_wh": list(i.renewable),
        "hourly_grid_import_wh": list(i.grid_import),
        "hourly_certificates_wh": list(i.certificates),
        "hourly_matched_wh": m.matched,
        "hourly_matched_onsite_wh": m.onsite,
        "hourly_matched_storage_wh": m.storage,
        "hourly_matched_contracted_wh": m.contracted,
        "storage": units,
        "storage_allocation_sha256": _sha(allocation_csv(m)) if m.units else None,
        "certificates": None,
        "grid_factors": None,
    }
    if certificates is not None:
        offered = sum(i.certificates)
        cancelled = sum(m.contracted)
        block["certificates"] = {
            **certificates,
            "offered_wh": offered,
            "cancelled_wh": cancelled,
            "excess_wh": offered - cancelled,
        }
    if grid_factors is not None and i.factors is not None:
        from_file = sum(1 for f in i.factors if f is not None)
        block["grid_factors"] = {
            **grid_factors,
            "unit": "t CO2/MWh",
            "hourly_t_co2_per_mwh": list(i.factors),
            "hours_from_file": from_file,
            "hours_annual_fallback": len(i.factors) - from_file,
            "annual_fallback_value": annual_factor,
        }
    return block


def matching_indicators(m: Matched, *, annual_factor: str) -> dict[str, Any]:
    """The indicators the matching adds (and the hourly-matched share it defines)."""
    i = m.inputs
    load_total = sum(i.load)
    onsite, storage, contracted = sum(m.onsite), sum(m.storage), sum(m.contracted)
    matched = onsite + storage + contracted
    hours_with_load = sum(1 for x in i.load if x > 0)
    full = sum(1 for x, y in zip(i.load, m.matched, strict=True) if x > 0 and y >= x)
    co2_hourly = None
    if i.factors is not None:
        co2_hourly = wh_factors_kg(i.grid_import, [f if f is not None else annual_factor for f in i.factors])
    return {
        "hourly_matched_share": ratio(matched, load_total) if load_total > 0 else None,
        "hourly_matched_wh": matched,
        "hourly_load_wh": load_total,
        "hourly_matched_onsite_wh": onsite,
        "hourly_matched_storage_wh": storage,
        "hourly_matched_contracted_wh": contracted,
        "hourly_matched_share_onsite": ratio(onsite, load_total) if load_total > 0 else None,
        "hourly_matched_share_storage": ratio(onsite + storage, load_total) if load_total > 0 else None,
        "hours_with_load": hours_with_load,
        "hours_fully_matched": full,
        "hours_fully_matched_share": ratio(full, hours_with_load) if hours_with_load > 0 else None,
        "co2_location_hourly_kg": co2_hourly,
    }


def _decimal(value: Any) -> str:
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        raise ValueError(f"{value!r} is not a decimal factor") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{value!r} is not a non-negative factor")
    return str(value)


def inputs_from_block(block: Mapping[str, Any], start_ms: int) -> HourlyInputs:
    """The hourly inputs a report states (for `gia verify` without the evidence)."""
    storage = [
        StorageHours(
            str(u["unit"]),
            tuple(u["charge_channels"]),
            tuple(u["discharge_channels"]),
            [int(x) for x in u["hourly_charge_wh"]],
            [int(x) for x in u["hourly_discharge_wh"]],
        )
        for u in block["storage"]
    ]
    gf = block.get("grid_factors")
    factors = None if gf is None else [None if f is None else _decimal(f) for f in gf["hourly_t_co2_per_mwh"]]
    return HourlyInputs(
        start_ms,
        [int(x) for x in block["hourly_load_wh"]],
        [int(x) for x in block["hourly_renewable_wh"]],
        [int(x) for x in block["hourly_grid_import_wh"]],
        storage,
        [int(x) for x in block["hourly_certificates_wh"]],
        factors,
    )
