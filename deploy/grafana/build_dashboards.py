#!/usr/bin/env python3
"""Write the Grafana dashboards (InfluxQL and Flux flavours) as JSON from one description.

Why generated: ten dashboards (five views x two query languages) must agree with each other and with
the schema the InfluxDB sink writes (gateway/sinks/influx.py). One Python description keeps the panels
identical across flavours; the JSON files are committed (Grafana provisioning reads files), and
tests/web/test_grafana.py fails when they differ from what this script writes, or when a query names a
measurement or field that a real agent run does not write.

    python deploy/grafana/build_dashboards.py            # rewrite deploy/grafana/dashboards/
    python deploy/grafana/build_dashboards.py --check    # exit 1 if the committed files are stale

Schema the queries read (see deploy/grafana/README.md):
  meter | inverter | wind_turbine | battery   tags site, device; fields = quantities + string `quality`
  forecast                                    tags site, target, quantile (p10|p50|p90); field power_w
  flex                                        tags site, device; fields level (string), level_code,
                                              surplus_p10_w, surplus_p50_w, surplus_p90_w, upward_w, downward_w
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DEVICE_MEASUREMENTS = ("meter", "inverter", "wind_turbine", "battery")
DS = {"influxql": {"type": "influxdb", "uid": "gia-influxql"}, "flux": {"type": "influxdb", "uid": "gia-flux"}}
SITE_RE = "/^$site$/"


# -- one query, two languages ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Q:
    """A panel query in both languages; `legend` is the InfluxQL alias pattern ($tag_device, $m...)."""

    influxql: str
    flux: str
    legend: str = ""
    ref: str = "A"


def _flux_from(measurements: tuple[str, ...], fields: tuple[str, ...], extra: str = "") -> str:
    ms = " or ".join(f'r._measurement == "{m}"' for m in measurements)
    fs = " or ".join(f'r._field == "{f}"' for f in fields)
    return (
        'from(bucket: "${bucket}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f'  |> filter(fn: (r) => ({ms}) and ({fs}) and r.site == "${{site}}"{extra})\n'
    )


def _flux_devices() -> str:
    return " and contains(value: r.device, set: ${device:json})"


def series(
    measurements: tuple[str, ...],
    fld: str,
    *,
    fn: str = "mean",
    by_device: bool = True,
    device_filter: str | None = "device",
    legend: str = "$tag_device",
    ref: str = "A",
) -> Q:
    """Mean (or fn) of one field per device over time."""
    frm = ", ".join(f'"{m}"' for m in measurements)
    where = f'"site" =~ {SITE_RE}'
    extra_flux = ""
    if device_filter == "device":
        where += ' AND "device" =~ /^$device$/'
        extra_flux = _flux_devices()
    elif device_filter is not None:
        where += f' AND "device" =~ /^${device_filter}$/'
        extra_flux = f' and r.device == "${{{device_filter}}}"'
    group = 'GROUP BY time($__interval), "device"' if by_device else "GROUP BY time($__interval)"
    influxql = f'SELECT {fn}("{fld}") FROM {frm} WHERE {where} AND $timeFilter {group} fill(none)'
    flux = _flux_from(measurements, (fld,), extra_flux)
    flux += f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)\n"
    if by_device:
        flux += '  |> map(fn: (r) => ({r with _field: r.device}))\n  |> keep(columns: ["_time", "_value", "_field"])'
    else:
        name = legend if not legend.startswith("$") else fld
        flux += f'  |> group()\n  |> map(fn: (r) => ({{r with _field: "{name}"}}))\n'
        flux += '  |> keep(columns: ["_time", "_value", "_field"])'
    return Q(influxql, flux, legend, ref)


def class_total(measurement: str, fld: str = "power_w", *, ref: str = "A", legend: str = "") -> Q:
    """Sum over the devices of one class of their mean `fld` per interval (e.g. all PV inverters)."""
    influxql = (
        f'SELECT sum("m") FROM (SELECT mean("{fld}") AS "m" FROM "{measurement}" WHERE "site" =~ {SITE_RE}'
        f' AND $timeFilter GROUP BY time($__interval), "device" fill(none)) WHERE $timeFilter'
        " GROUP BY time($__interval) fill(none)"
    )
    flux = _flux_from((measurement,), (fld,))
    flux += (
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        '  |> group(columns: ["_measurement"])\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)\n"
        f'  |> map(fn: (r) => ({{r with _field: "{legend or measurement}"}}))\n'
        '  |> keep(columns: ["_time", "_value", "_field"])'
    )
    return Q(influxql, flux, legend or measurement, ref)


def latest(measurement: str, fld: str, *, device_var: str | None = None, ref: str = "A", legend: str = "") -> Q:
    """The latest value (summed over the devices of the class, or of one device)."""
    dev_where = f' AND "device" =~ /^${device_var}$/' if device_var else ""
    influxql = (
        f'SELECT sum("v") FROM (SELECT last("{fld}") AS "v" FROM "{measurement}" WHERE "site" =~ {SITE_RE}'
        f'{dev_where} AND $timeFilter GROUP BY "device")'
    )
    extra = f' and r.device == "${{{device_var}}}"' if device_var else ""
    flux = _flux_from((measurement,), (fld,), extra) + (
        f'  |> last()\n  |> group()\n  |> sum()\n  |> map(fn: (r) => ({{r with _field: "{legend or fld}"}}))'
    )
    return Q(influxql, flux, legend or fld, ref)


def forecast(target: str, *, ref: str = "F") -> Q:
    influxql = (
        f'SELECT mean("power_w") FROM "forecast" WHERE "site" =~ {SITE_RE} AND "target" = \'{target}\''
        ' AND $timeFilter GROUP BY time($__interval), "quantile" fill(none)'
    )
    flux = _flux_from(("forecast",), ("power_w",), f' and r.target == "{target}"') + (
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        "  |> map(fn: (r) => ({r with _field: r.quantile}))\n"
        '  |> keep(columns: ["_time", "_value", "_field"])'
    )
    return Q(influxql, flux, "$tag_quantile", ref)


def load_actual_flux() -> str:
    """Site consumption = grid (+ import) + generation + battery (+ discharge), per window."""
    return (
        'grid = from(bucket: "${bucket}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        '  |> filter(fn: (r) => r._measurement == "meter" and r._field == "power_w" and r.site == "${site}"'
        ' and r.device == "${grid_meter}")\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        "  |> group()\n"
        'other = from(bucket: "${bucket}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        '  |> filter(fn: (r) => (r._measurement == "inverter" or r._measurement == "wind_turbine" or'
        ' r._measurement == "battery") and r._field == "power_w" and r.site == "${site}")\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        "  |> group()\n"
        "union(tables: [grid, other])\n"
        '  |> group(columns: ["_time"])\n'
        "  |> sum()\n"
        "  |> group()\n"
        '  |> map(fn: (r) => ({r with _field: "actual"}))\n'
        '  |> keep(columns: ["_time", "_value", "_field"])'
    )


def load_actual() -> list[Q]:
    """InfluxQL cannot add across measurements: the parts are summed by a Grafana transformation."""
    grid = Q(
        f'SELECT mean("power_w") FROM "meter" WHERE "site" =~ {SITE_RE} AND "device" =~ /^$grid_meter$/'
        " AND $timeFilter GROUP BY time($__interval) fill(previous)",
        load_actual_flux(),
        "grid",
        "A",
    )
    parts = [
        Q(class_total(m).influxql.replace("fill(none)) WHERE", "fill(previous)) WHERE"), "", m, ref)
        for m, ref in (("inverter", "B"), ("wind_turbine", "C"), ("battery", "D"))
    ]
    return [grid, *parts]


# -- panels and dashboards ------------------------------------------------------------------------------
@dataclass
class Panel:
    title: str
    queries: list[Q]
    kind: str = "timeseries"
    unit: str = "watt"
    w: int = 12
    h: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # flavour -> list


def _target(q: Q, flavour: str) -> dict[str, Any]:
    if flavour == "influxql":
        t: dict[str, Any] = {"refId": q.ref, "rawQuery": True, "resultFormat": "time_series", "query": q.influxql}
        if q.legend:
            t["alias"] = q.legend
        return {**t, "datasource": DS["influxql"]}
    return {"refId": q.ref, "query": q.flux, "datasource": DS["flux"]}


def _panel(p: Panel, flavour: str, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = [_target(q, flavour) for q in p.queries if (q.flux if flavour == "flux" else q.influxql)]
    panel: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS[flavour],
        "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": p.unit, **p.defaults}, "overrides": p.overrides},
        "options": p.options,
    }
    if p.transformations.get(flavour):
        panel["transformations"] = p.transformations[flavour]
    return panel


def _variables(flavour: str, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ds = DS[flavour]
    if flavour == "influxql":
        site_q = 'SHOW TAG VALUES FROM "meter" WITH KEY = "site"'
        dev_q = 'SHOW TAG VALUES WITH KEY = "device" WHERE "site" =~ /^$site$/'
        meter_q = 'SHOW TAG VALUES FROM "meter" WITH KEY = "device" WHERE "site" =~ /^$site$/'
        out: list[dict[str, Any]] = []
    else:
        site_q = 'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "${bucket}", tag: "site")'
        dev_q = (
            'import "influxdata/influxdb/schema"\n'
            'schema.tagValues(bucket: "${bucket}", tag: "device", predicate: (r) => r.site == "${site}")'
        )
        meter_q = (
            'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "${bucket}", tag: "device",'
            ' predicate: (r) => r._measurement == "meter" and r.site == "${site}")'
        )
        out = [
            {
                "name": "bucket",
                "label": "Bucket",
                "type": "constant",
                "query": "energy",
                "hide": 2,
                "description": "the InfluxDB bucket the gateway writes to (influxdb.bucket in gia.yaml)",
            }
        ]

    def q(name: str, label: str, query: str, *, multi: bool = False, current: str | None = None) -> dict[str, Any]:
        v: dict[str, Any] = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": ds,
            "query": query,
            "definition": query,
            "refresh": 1,
            "multi": multi,
            "includeAll": multi,
            "sort": 1,
        }
        if current is not None:
            v["current"] = {"text": current, "value": current}
        elif multi:
            v["current"] = {"text": "All", "value": "$__all"}
        return v

    out.append(q("site", "Site", site_q))
    for e in extra:
        if e["name"] == "device":
            out.append(q("device", "Device", dev_q, multi=True))
        elif e["name"] == "grid_meter":
            out.append(q("grid_meter", "Grid meter", meter_q, current="grid"))
    return out


def dashboard(uid: str, title: str, rows: list[list[Panel]], flavour: str, *, variables: list[str]) -> dict[str, Any]:
    panels, pid, y = [], 1, 0
    for row in rows:
        x, h = 0, 0
        for p in row:
            panels.append(_panel(p, flavour, pid, x, y))
            pid += 1
            x += p.w
            h = max(h, p.h)
        y += h
    suffix = "" if flavour == "influxql" else "-flux"
    return {
        "uid": f"{uid}{suffix}",
        "title": f"{title}" + ("" if flavour == "influxql" else " (Flux)"),
        "tags": ["gia", flavour],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "links": [
            {"title": "GIA dashboards", "type": "dashboards", "tags": ["gia", flavour], "asDropdown": True},
        ],
        "templating": {"list": _variables(flavour, [{"name": v} for v in variables])},
        "annotations": {"list": []},
        "panels": panels,
    }


STAT = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value",
        "graphMode": "area", "textMode": "auto"}  # fmt: skip
LINE = {"custom": {"lineWidth": 2, "fillOpacity": 8, "showPoints": "never", "spanNulls": False}}


def _band_overrides() -> list[dict[str, Any]]:
    """P10-P90 as a shaded band, P50 dashed, actual solid."""
    return [
        {"matcher": {"id": "byName", "options": "p90"},
         "properties": [{"id": "custom.fillBelowTo", "value": "p10"}, {"id": "custom.fillOpacity", "value": 20},
                        {"id": "custom.lineWidth", "value": 0}, {"id": "displayName", "value": "P10–P90"}]},
        {"matcher": {"id": "byName", "options": "p10"},
         "properties": [{"id": "custom.lineWidth", "value": 0}, {"id": "custom.hideFrom",
                                                                  "value": {"legend": True, "tooltip": False,
                                                                            "viz": False}}]},
        {"matcher": {"id": "byName", "options": "p50"},
         "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [8, 6]}},
                        {"id": "displayName", "value": "forecast P50"}]},
    ]  # fmt: skip


def _load_transform() -> list[dict[str, Any]]:
    parts = ["grid", "inverter", "wind_turbine", "battery"]
    return [
        {"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}},
        {"id": "calculateField",
         "options": {"mode": "reduceRow", "alias": "actual", "reduce": {"reducer": "sum", "include": parts},
                     "replaceFields": False}},
        {"id": "organize", "options": {"excludeByName": dict.fromkeys(parts, True)}},
    ]  # fmt: skip


def site_overview(flavour: str) -> dict[str, Any]:
    stats = [
        Panel("Grid (+ import)", [latest("meter", "power_w", device_var="grid_meter", legend="grid")], "stat", w=4,
              h=5, options=STAT, description="Power at the grid connection: positive = importing."),
        Panel("Solar PV", [latest("inverter", "power_w", legend="pv")], "stat", w=4, h=5, options=STAT),
        Panel("Wind", [latest("wind_turbine", "power_w", legend="wind")], "stat", w=4, h=5, options=STAT),
        Panel("Battery (+ discharge)", [latest("battery", "power_w", legend="battery")], "stat", w=4, h=5,
              options=STAT, description="Positive = discharging into the site, negative = charging."),
        Panel("Battery state of charge", [latest("battery", "soc_pct", legend="soc")], "gauge", unit="percent",
              w=4, h=5, options={"reduceOptions": STAT["reduceOptions"]}, defaults={"min": 0, "max": 100}),
        Panel("Devices reporting", [Q(
            'SELECT count("v") FROM (SELECT last("quality") AS "v" FROM "meter", "inverter", "wind_turbine",'
            f' "battery" WHERE "site" =~ {SITE_RE} AND time > now() - 5m GROUP BY "device")',
            _flux_from(DEVICE_MEASUREMENTS, ("quality",)).replace("v.timeRangeStart", "-5m") +
            '  |> last()\n  |> group()\n  |> count()\n  |> map(fn: (r) => ({r with _field: "devices"}))',
            "$m")], "stat", unit="none", w=4, h=5, options=STAT,
            description="Devices with at least one point in the last 5 minutes."),
    ]  # fmt: skip
    flows = Panel(
        "Site flows",
        [
            series(("meter",), "power_w", by_device=False, device_filter="grid_meter", legend="grid"),
            class_total("inverter", ref="B", legend="pv"),
            class_total("wind_turbine", ref="C", legend="wind"),
            class_total("battery", ref="D", legend="battery"),
        ],
        w=24, h=9, defaults=LINE,
        description="Mean power per interval. Grid: + import. Battery: + discharge. Generation: + producing.",
    )  # fmt: skip
    energy = Panel(
        "Energy in the selected range (register advance)",
        [
            Q(
                f'SELECT spread("energy_import_wh") FROM "meter", "inverter", "wind_turbine", "battery"'
                f' WHERE "site" =~ {SITE_RE} AND $timeFilter GROUP BY "device"',
                _flux_from(DEVICE_MEASUREMENTS, ("energy_import_wh",))
                + '  |> spread()\n  |> map(fn: (r) => ({r with _field: r.device + " in"}))\n  |> group()',
                "$tag_device in",
            ),
            Q(
                f'SELECT spread("energy_export_wh") FROM "meter", "inverter", "wind_turbine", "battery"'
                f' WHERE "site" =~ {SITE_RE} AND $timeFilter GROUP BY "device"',
                _flux_from(DEVICE_MEASUREMENTS, ("energy_export_wh",))
                + '  |> spread()\n  |> map(fn: (r) => ({r with _field: r.device + " out"}))\n  |> group()',
                "$tag_device out",
                "B",
            ),
        ],
        "bargauge",
        unit="watth",
        w=24,
        h=8,
        options={"orientation": "horizontal", "displayMode": "gradient",
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        description="Advance of each energy register (max - min): not corrected for register wraps. "
        "The signed monthly report is the authority.",
    )  # fmt: skip
    return dashboard("gia-site", "GIA · Site overview", [stats, [flows], [energy]], flavour,
                     variables=["grid_meter"])  # fmt: skip


def devices(flavour: str) -> dict[str, Any]:
    dm = DEVICE_MEASUREMENTS
    rows = [
        [Panel("Active power", [series(dm, "power_w")], w=24, defaults=LINE)],
        [
            Panel("Voltage L1", [series(dm, "voltage_l1_v")], unit="volt", w=8, defaults=LINE),
            Panel("Current L1", [series(dm, "current_l1_a")], unit="amp", w=8, defaults=LINE),
            Panel("Frequency", [series(dm, "frequency_hz")], unit="hertz", w=8, defaults=LINE),
        ],
        [
            Panel("Energy in (register)", [series(dm, "energy_import_wh", fn="last")], unit="watth", defaults=LINE),
            Panel("Energy out (register)", [series(dm, "energy_export_wh", fn="last")], unit="watth", defaults=LINE),
        ],
        [
            Panel("Wind speed", [series(("wind_turbine",), "wind_speed_ms")], unit="velocityms", w=8, defaults=LINE),
            Panel("Battery state of charge", [series(("battery",), "soc_pct")], unit="percent", w=8, defaults=LINE),
            Panel("Temperature", [series(dm, "temperature_c")], unit="celsius", w=8, defaults=LINE),
        ],
    ]  # fmt: skip
    return dashboard("gia-devices", "GIA · Devices", rows, flavour, variables=["device"])


def forecasts(flavour: str) -> dict[str, Any]:
    def panel(title: str, target: str, actual: list[Q], transform: dict[str, list[dict[str, Any]]]) -> Panel:
        return Panel(
            title,
            [*actual, forecast(target)],
            w=24,
            h=9,
            defaults=LINE,
            overrides=_band_overrides(),
            transformations=transform,
            description=f"Actual mean power beside the {target} forecast: P50 dashed, P10–P90 shaded.",
        )

    wind = class_total("wind_turbine", legend="actual")
    pv = class_total("inverter", legend="actual")
    rows = [
        [panel("Load (site consumption)", "load", load_actual(), {"influxql": _load_transform()})],
        [panel("Wind", "wind", [wind], {})],
        [panel("Solar PV", "pv", [pv], {})],
    ]
    return dashboard("gia-forecasts", "GIA · Forecasts vs actuals", rows, flavour, variables=["grid_meter"])


def flexibility(flavour: str) -> dict[str, Any]:
    level = Q(
        f'SELECT last("level") FROM "flex" WHERE "site" =~ {SITE_RE} AND $timeFilter GROUP BY time($__interval)'
        " fill(none)",
        _flux_from(("flex",), ("level",)) + "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)",
        "level",
    )
    mappings = [{"type": "value", "options": {
        "absorb": {"text": "absorb", "color": "green", "index": 0},
        "neutral": {"text": "neutral", "color": "gray", "index": 1},
        "reduce": {"text": "reduce", "color": "red", "index": 2}}}]  # fmt: skip
    surplus = Q(
        f'SELECT mean("surplus_p10_w") AS "p10", mean("surplus_p50_w") AS "p50", mean("surplus_p90_w") AS "p90"'
        f' FROM "flex" WHERE "site" =~ {SITE_RE} AND $timeFilter GROUP BY time($__interval) fill(none)',
        _flux_from(("flex",), ("surplus_p10_w", "surplus_p50_w", "surplus_p90_w"))
        + "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)",
        "$col",
    )
    updown = Q(
        f'SELECT mean("upward_w") AS "upward", mean("downward_w") AS "downward" FROM "flex"'
        f' WHERE "site" =~ {SITE_RE} AND $timeFilter GROUP BY time($__interval) fill(none)',
        _flux_from(("flex",), ("upward_w", "downward_w"))
        + "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)",
        "$col",
    )
    rows = [
        [Panel("Signal level", [level], "state-timeline", unit="none", w=24, h=5,
               defaults={"mappings": mappings, "color": {"mode": "thresholds"}},
               options={"showValue": "auto", "mergeValues": True},
               description="absorb: surplus, use more now; reduce: shortage, use less; neutral otherwise.")],
        [Panel("Surplus (P10–P90)", [surplus], w=12, defaults=LINE, overrides=_band_overrides()),
         Panel("Available flexibility", [updown], w=12, defaults=LINE,
               description="Power the configured assets can add (upward) or shed (downward).")],
    ]  # fmt: skip
    return dashboard("gia-flex", "GIA · Flexibility", rows, flavour, variables=[])


def data_quality(flavour: str) -> dict[str, Any]:
    dm = DEVICE_MEASUREMENTS
    frm = ", ".join(f'"{m}"' for m in dm)

    def bad(quality: str, ref: str) -> Q:
        return Q(
            f'SELECT count("quality") FROM {frm} WHERE "site" =~ {SITE_RE} AND "device" =~ /^$device$/'
            f' AND "quality" = \'{quality}\' AND $timeFilter GROUP BY time($__interval), "device" fill(none)',
            _flux_from(dm, ("quality",), _flux_devices() + f' and r._value == "{quality}"')
            + "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)\n"
            + f'  |> map(fn: (r) => ({{r with _field: r.device + " {quality}"}}))\n'
            + '  |> keep(columns: ["_time", "_value", "_field"])',
            f"$tag_device {quality}",
            ref,
        )

    points = Q(
        f'SELECT count("quality") FROM {frm} WHERE "site" =~ {SITE_RE} AND "device" =~ /^$device$/'
        ' AND $timeFilter GROUP BY time($__interval), "device" fill(0)',
        _flux_from(dm, ("quality",), _flux_devices())
        + "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: true)\n"
        + '  |> map(fn: (r) => ({r with _field: r.device}))\n  |> keep(columns: ["_time", "_value", "_field"])',
        "$tag_device",
    )
    last_seen = Q(
        f'SELECT last("quality") FROM {frm} WHERE "site" =~ {SITE_RE} AND "device" =~ /^$device$/'
        ' AND $timeFilter GROUP BY "device"',
        _flux_from(dm, ("quality",), _flux_devices())
        + '  |> last()\n  |> group()\n  |> keep(columns: ["_time", "device", "_measurement", "_value"])',
        "$tag_device",
    )
    rows = [
        [Panel("Points per interval", [points], "timeseries", unit="none", w=24, defaults=LINE,
               description="A gap or a dip means missed polls: the device was offline or slow.")],
        [Panel("Readings not good", [bad("invalid", "A"), bad("stale", "B"), bad("estimated", "C")], "timeseries",
               unit="none", w=12, defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
               description="invalid: value unreadable (kept as a gap, never made up); stale: old value; "
               "estimated: filled in."),
         Panel("Last reading per device", [last_seen], "table", unit="none", w=12,
               transformations={"influxql": [{"id": "reduce", "options": {"reducers": ["lastNotNull"]}}]},
               description="Time and quality of each device's latest point.")],
    ]  # fmt: skip
    return dashboard("gia-quality", "GIA · Data quality", rows, flavour, variables=["device"])


BUILDERS = {
    "site-overview": site_overview,
    "devices": devices,
    "forecasts": forecasts,
    "flexibility": flexibility,
    "data-quality": data_quality,
}


def build() -> dict[Path, str]:
    out = {}
    for flavour in ("influxql", "flux"):
        for name, fn in BUILDERS.items():
            out[OUT / flavour / f"{name}.json"] = json.dumps(fn(flavour), indent=2, ensure_ascii=False) + "\n"
    return out


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [str(p) for p, text in files.items() if not p.exists() or p.read_text() != text]
        if stale:
            print("stale dashboards (run deploy/grafana/build_dashboards.py):", *stale, sep="\n  ")
            return 1
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} dashboards under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
