"""A one-to-two page PDF summary of a monthly report, marked NON-AUTHORITATIVE, with a chart of the month.

Why fpdf2: pure Python, typed (py.typed), maintained, and it draws lines and rectangles itself, so the
chart needs no plotting stack (matplotlib would add ~40 MB to a Pi image for one bar chart). ReportLab
would do too but is a much larger toolkit than one page needs. The signed `report.json` is the record;
this file only helps a human read it, so it carries the report's SHA-256 and says so on every page.

Rendering is CPU work: call it off the event loop (the API uses a thread).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from fpdf import FPDF

from gateway.certification.compute import ChannelResult


def _t(text: object) -> str:
    """Core PDF fonts are Latin-1: replace what they cannot show instead of failing."""
    return (
        str(text).replace("—", "-").replace("≥", ">=").replace("≤", "<=").encode("latin-1", "replace").decode("latin-1")
    )


def _kwh(wh: int | None) -> str:
    return "-" if wh is None else f"{wh / 1000:,.1f} kWh"


def _pct(share: object) -> str:
    """A share as a percentage. The report keeps exact decimal strings; a reader wants "81.2 %"."""
    if share is None or share == "":
        return "-"
    try:
        return f"{Decimal(str(share)) * 100:.1f} %"
    except ArithmeticError:
        return _t(share)


def _local(iso: str, tz: str) -> str:
    """A report timestamp (UTC, ISO) in the site's time zone: the month a reader thinks of is local."""
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    return at.strftime("%Y-%m-%d %H:%M")


def _fit(doc: FPDF, text: str, width: float) -> str:
    """Shorten `text` with an ellipsis until it fits `width` mm in the current font: a cell never spills
    over its border or the page margin, whatever a channel or device is called."""
    text = _t(text)
    pad = 2 * doc.c_margin
    if doc.get_string_width(text) + pad <= width:
        return text
    while text and doc.get_string_width(text + "...") + pad > width:
        text = text[:-1]
    return text + "..."


def _nice_top(x: float) -> float:
    """The axis maximum: the next 1, 2 or 5 times a power of ten at or above `x` (ticks read as round numbers)."""
    mag = 10 ** math.floor(math.log10(x)) if x > 0 else 1.0
    for f in (1, 2, 5, 10):
        if f * mag >= x:
            return float(f * mag)
    return float(10 * mag)


def _daily(results: Sequence[ChannelResult], roles: set[str], per_day: int) -> list[int]:
    n = max((len(r.interval_wh) for r in results), default=0)
    out = [0] * ((n + per_day - 1) // per_day)
    for r in results:
        if r.spec.role in roles:
            for k, x in enumerate(r.interval_wh):
                out[k // per_day] += x
    return out


class _Doc(FPDF):
    sha = ""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=7)
        self.set_text_color(120, 0, 0)
        self.cell(
            0,
            5,
            _t(
                f"NON-AUTHORITATIVE summary. The signed report.json (SHA-256 {self.sha[:16]}...) is the record."
                f"  Page {self.page_no()}"
            ),
            align="C",
        )
        self.set_text_color(0, 0, 0)


def render_pdf(report: dict[str, Any], results: Sequence[ChannelResult], report_sha256: str) -> bytes:
    doc = _Doc(orientation="P", unit="mm", format="A4")
    # dated by the report, not by the clock: the PDF of a stored report is byte-identical on every fetch
    doc.set_creation_date(datetime.fromisoformat(str(report["generated_at"]).replace("Z", "+00:00")))
    doc.sha = report_sha256
    doc.set_auto_page_break(auto=True, margin=15)
    doc.add_page()
    site, per, ind, q = report["site"], report["period"], report["indicators"], report["quality"]
    doc.set_font("Helvetica", "B", 15)
    doc.cell(0, 8, _t(f"GIA monthly report - {site['id']} - {per['month']}"), new_x="LMARGIN", new_y="NEXT")
    doc.set_font("Helvetica", "B", 10)
    doc.set_text_color(170, 0, 0)
    doc.multi_cell(
        0,
        5,
        _t(
            "NON-AUTHORITATIVE: this PDF is a reading aid. Certify from the signed report.json and its evidence"
            f" bundle (gia verify). Report SHA-256: {report_sha256}"
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    doc.set_text_color(0, 0, 0)
    doc.set_font("Helvetica", size=9)
    tz = str(per["timezone"])
    doc.multi_cell(
        0,
        5,
        _t(
            f"Period {_local(per['start'], tz)} to {_local(per['end'], tz)} local time ({tz}, {per['hours']} h)"
            + ("" if per["complete"] or not per.get("as_of") else f", open month as of {_local(per['as_of'], tz)}")
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    sig = report.get("signature") or {}
    doc.multi_cell(
        0,
        5,
        _t(f"Signed by key {sig.get('key_id', '(unsigned)')} ({sig.get('alg', '-')}); check it with gia verify."),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    doc.set_font("Helvetica", "B", 11)
    doc.cell(0, 7, _t(f"Grade: {q['grade'].upper()}"), new_x="LMARGIN", new_y="NEXT")
    claims = q.get("claims") or {}
    if claims:
        doc.set_font("Helvetica", size=8)
        doc.cell(
            0, 4, _t("Claims: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in claims.items())),
            new_x="LMARGIN", new_y="NEXT",
        )  # fmt: skip
    doc.set_font("Helvetica", size=8)
    for reason in q["reasons"][:8]:
        doc.multi_cell(0, 4, _t(f"- {reason}"), new_x="LMARGIN", new_y="NEXT")
    if len(q["reasons"]) > 8:
        doc.cell(0, 4, _t(f"... and {len(q['reasons']) - 8} more (see report.json)"), new_x="LMARGIN", new_y="NEXT")

    doc.ln(2)
    doc.set_font("Helvetica", "B", 10)
    doc.cell(0, 6, "Site indicators", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("Helvetica", size=9)
    rows = [
        ("Consumption", _kwh(ind["consumption_wh"])),
        ("Grid import / export", f"{_kwh(ind['grid_import_wh'])} / {_kwh(ind['grid_export_wh'])}"),
        ("Generation (renewable)", f"{_kwh(ind['generation_wh'])} ({_kwh(ind['renewable_generation_wh'])})"),
        ("Self-consumption", _kwh(ind["self_consumption_wh"])),
        ("Renewable share physical / market / hourly",
         f"{_pct(ind['renewable_share'])} / {_pct(ind['renewable_share_market'])}"
         f" / {_pct(ind['hourly_matched_share'])}"),
        ("Threshold", f"{_pct(ind['renewable_share_threshold'])} on {ind['threshold_basis']}:"
         f" met = {ind['threshold_met']}"),
        ("CO2 location / market (kg)", f"{ind['co2_location_kg']} / {ind['co2_market_kg']}"),
        ("Location factor", f"{ind['co2_factors']['location']['value']} t CO2/MWh,"
         f" {ind['co2_factors']['location']['year']}, {ind['co2_factors']['location']['source']}"),
    ]  # fmt: skip
    for label, value in rows:
        doc.cell(70, 5, _fit(doc, label, 70))
        doc.cell(0, 5, _fit(doc, value, doc.w - doc.r_margin - doc.get_x()), new_x="LMARGIN", new_y="NEXT")

    # chart: daily consumption vs generation
    per_day = max(1, 86400 // int(report["method"]["interval_s"]))
    has_grid = any(r.spec.role in ("grid_import", "grid_export") for r in results)
    gen = _daily(results, {"generation"}, per_day)
    if has_grid:
        imp = _daily(results, {"grid_import", "storage_discharge"}, per_day)
        exp = _daily(results, {"grid_export", "storage_charge"}, per_day)
        cons = [a + g - e for a, g, e in zip(imp, gen, exp, strict=True)]
    else:
        cons = _daily(results, {"consumption"}, per_day)
    doc.ln(3)
    doc.set_font("Helvetica", "B", 10)
    doc.cell(0, 6, "Daily energy (kWh): consumption (grey), generation (green)", new_x="LMARGIN", new_y="NEXT")
    axis = 12.0  # room left of the plot for the y-axis labels
    x0, y0, h = doc.l_margin + axis, doc.get_y() + 4, 50.0
    w = doc.w - doc.r_margin - x0
    top = _nice_top(max([*cons, *gen, 1]) / 1000)
    doc.set_draw_color(0, 0, 0)
    doc.line(x0, y0 + h, x0 + w, y0 + h)  # x axis
    doc.line(x0, y0, x0, y0 + h)  # y axis
    doc.set_font("Helvetica", size=6)
    doc.set_draw_color(210, 210, 210)
    for i in range(5):  # y ticks and grid at quarters of a round maximum
        val = top * i / 4
        y = y0 + h - h * i / 4
        if i:
            doc.line(x0, y, x0 + w, y)
        label = f"{val:,.2f}".rstrip("0").rstrip(".")
        doc.text(x0 - 1 - doc.get_string_width(label), y + 1, label)
    doc.set_draw_color(0, 0, 0)
    doc.text(doc.l_margin, y0 - 1.5, "kWh")
    n = max(1, len(cons))
    slot = w / n
    for k in range(len(cons)):
        for j, (vals, rgb) in enumerate(((cons, (150, 150, 150)), (gen, (40, 150, 60)))):
            bh = h * max(0, vals[k]) / 1000 / top
            doc.set_fill_color(*rgb)
            if bh > 0:
                doc.rect(x0 + k * slot + j * slot * 0.42 + slot * 0.08, y0 + h - bh, slot * 0.4, bh, style="F")
    step = 1 if n <= 12 else 5
    for k in range(0, len(cons), step):  # x ticks: day of the month
        label = str(k + 1)
        doc.text(x0 + (k + 0.5) * slot - doc.get_string_width(label) / 2, y0 + h + 3, label)
    doc.text(x0 + w - doc.get_string_width("day of month"), y0 + h + 6, "day of month")
    doc.set_y(y0 + h + 8)

    doc.set_font("Helvetica", "B", 10)
    doc.cell(0, 6, "Channels", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("Helvetica", "B", 7)
    widths = (34, 20, 22, 22, 20, 16, 12, 17, 17)
    head = ("channel", "role", "energy", "measured", "estimated", "coverage", "gaps", "open/close", "grade (int.)")
    for wd, text in zip(widths, head, strict=True):
        doc.cell(wd, 5, _fit(doc, text, wd), border=1)
    doc.ln()
    doc.set_font("Helvetica", size=7)
    for ch in report["channels"]:
        cells = (
            ch["id"], ch["role"], _kwh(ch["energy_wh"]), _kwh(ch["measured_wh"]), _kwh(ch["estimated_wh"]),
            _pct(ch["coverage"]["time"]), str(ch.get("gaps_total", len(ch.get("gaps", [])))),
            f"{ch['opening']['method'][:4]}/{ch['closing']['method'][:4]}",
            f"{ch['grade']} ({ch.get('interval_grade', '-')})",
        )  # fmt: skip
        for wd, text in zip(widths, cells, strict=True):
            doc.cell(wd, 5, _fit(doc, text, wd), border=1)
        doc.ln()
    gaps = [(ch["id"], g) for ch in report["channels"] for g in ch.get("gaps", [])]
    if gaps:
        doc.ln(2)
        doc.set_font("Helvetica", "B", 10)
        doc.cell(0, 6, "Gaps (local time)", new_x="LMARGIN", new_y="NEXT")
        doc.set_font("Helvetica", size=7)
        for cid, g in gaps[:20]:
            span = f"{_local(g['from'], tz)} to {_local(g['to'], tz)}"
            doc.multi_cell(
                0, 4, _t(f"- {cid}: {span}, {g['cause']}; {_kwh(g['energy_wh'])} ({g['treatment'] or 'not counted'})"),
                new_x="LMARGIN", new_y="NEXT",
            )  # fmt: skip
        if len(gaps) > 20:
            doc.cell(0, 4, f"... and {len(gaps) - 20} more (see report.json)", new_x="LMARGIN", new_y="NEXT")
    return bytes(doc.output())
