"""A one-to-two page PDF summary of a monthly report, marked NON-AUTHORITATIVE, with a chart of the month.

Why fpdf2: pure Python, typed (py.typed), maintained, and it draws lines and rectangles itself, so the
chart needs no plotting stack (matplotlib would add ~40 MB to a Pi image for one bar chart). ReportLab
would do too but is a much larger toolkit than one page needs. The signed `report.json` is the record;
this file only helps a human read it, so it carries the report's SHA-256 and says so on every page.

In the reader's language (English or Latvian, from the one catalogue `gateway/i18n`): Latvian needs
letters the PDF core fonts (Latin-1) lack (ā, č, ē, ģ, ī, ķ, ļ, ņ, š, ū, ž), so the text is set in DejaVu
Sans when the system has it (Debian's `fonts-dejavu-core`, which the installer and `make test` install);
without it the core font is used and letters outside Latin-1 lose their marks (ā -> a), never a "?".

Rendering is CPU work: call it off the event loop (the API uses a thread).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from fpdf import FPDF

from gateway.certification.compute import ChannelResult
from gateway.i18n import Translator

#: Where Debian (and Raspberry Pi OS) put DejaVu Sans: regular and bold.
UNICODE_FONTS: Final = (
    (
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    ),
)
ENGLISH: Final = Translator("en")


def _latin1(text: object) -> str:
    """Core PDF fonts are Latin-1: drop the marks Latin-1 has no letter for (Latvian ā -> a), and replace
    what is still outside it, instead of failing."""
    out = str(text).replace("—", "-").replace("≥", ">=").replace("≤", "<=").replace("\u202f", " ")
    out = "".join(
        c if ord(c) < 256 else unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode() or "?" for c in out
    )
    return out.encode("latin-1", "replace").decode("latin-1")


def _t(text: object) -> str:
    """Kept for the core-font path (and the tests that call it): Latin-1 text."""
    return _latin1(text)


def _kwh(wh: int | None, t: Translator = ENGLISH) -> str:
    """Energy in kWh with the reader's digit grouping and decimal sign (12,345.6 / 12 345,6)."""
    return "-" if wh is None else f"{t.number(wh / 1000, 1)} kWh"


def _pct(share: object, t: Translator = ENGLISH) -> str:
    """A share as a percentage. The report keeps exact decimal strings; a reader wants "81.2 %"."""
    if share is None or share == "":
        return "-"
    try:
        return f"{t.number(float(Decimal(str(share)) * 100), 1)} %"
    except (ArithmeticError, ValueError):
        return _t(share)


def _local(iso: str, tz: str) -> str:
    """A report timestamp (UTC, ISO) in the site's time zone: the month a reader thinks of is local."""
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    return at.strftime("%Y-%m-%d %H:%M")


def _fit(doc: _Doc, text: str, width: float) -> str:
    """Shorten `text` with an ellipsis until it fits `width` mm in the current font: a cell never spills
    over its border or the page margin, whatever a channel or device is called."""
    text = doc.tx(text)
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
    """The page, its font (DejaVu Sans when present, else the Latin-1 core font) and its footer."""

    def __init__(self, t: Translator, sha: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.t = t
        self.sha = sha
        self.family = "Helvetica"
        self.unicode = False
        for regular, bold in UNICODE_FONTS:
            if regular.is_file() and bold.is_file():
                self.add_font("DejaVu", "", str(regular))
                self.add_font("DejaVu", "B", str(bold))
                self.family, self.unicode = "DejaVu", True
                break

    def tx(self, text: object) -> str:
        return str(text) if self.unicode else _latin1(text)

    def font(self, style: str = "", size: float = 9) -> None:
        self.set_font(self.family, style, size)

    def line_of(self, height: float, text: object, *, width: float = 0) -> None:
        self.multi_cell(width, height, self.tx(text), new_x="LMARGIN", new_y="NEXT")

    def footer(self) -> None:
        self.set_y(-12)
        self.font(size=7)
        self.set_text_color(120, 0, 0)
        self.cell(
            0,
            5,
            self.tx(
                self.t(
                    "NON-AUTHORITATIVE summary. The signed report.json (SHA-256 {sha}...) is the record.  Page {page}",
                    sha=self.sha[:16],
                    page=self.page_no(),
                )
            ),
            align="C",
        )
        self.set_text_color(0, 0, 0)


def render_pdf(
    report: dict[str, Any], results: Sequence[ChannelResult], report_sha256: str, t: Translator = ENGLISH
) -> bytes:
    """The summary of `report` in `t`'s language; byte-identical for the same report, language and fonts."""
    doc = _Doc(t, report_sha256)
    # dated by the report, not by the clock: the PDF of a stored report is byte-identical on every fetch
    doc.set_creation_date(datetime.fromisoformat(str(report["generated_at"]).replace("Z", "+00:00")))
    doc.set_auto_page_break(auto=True, margin=15)
    doc.set_lang(t.lang)
    doc.add_page()
    site, per, ind, q = report["site"], report["period"], report["indicators"], report["quality"]
    doc.font("B", 15)
    doc.line_of(8, t("GIA monthly report - {site} - {month}", site=site["id"], month=per["month"]))
    doc.font("B", 10)
    doc.set_text_color(170, 0, 0)
    doc.line_of(
        5,
        t(
            "NON-AUTHORITATIVE: this PDF is a reading aid. Certify from the signed report.json and its evidence"
            " bundle (gia verify). Report SHA-256: {sha}",
            sha=report_sha256,
        ),
    )
    doc.set_text_color(0, 0, 0)
    doc.font(size=9)
    tz = str(per["timezone"])
    period = t(
        "Period {start} to {end} local time ({tz}, {hours} h)",
        start=_local(per["start"], tz),
        end=_local(per["end"], tz),
        tz=tz,
        hours=per["hours"],
    )
    if not per["complete"] and per.get("as_of"):
        period += t(", open month as of {as_of}", as_of=_local(per["as_of"], tz))
    doc.line_of(5, period)
    sig = report.get("signature") or {}
    doc.line_of(
        5,
        t(
            "Signed by key {key} ({alg}); check it with gia verify.",
            key=sig.get("key_id", t("(unsigned)")),
            alg=sig.get("alg", "-"),
        ),
    )
    doc.font("B", 11)
    doc.line_of(7, t("Grade: {grade}", grade=t(str(q["grade"])).upper()))
    claims = q.get("claims") or {}
    if claims:
        doc.font(size=8)
        doc.line_of(4, t("Claims: {claims}", claims=", ".join(f"{k.replace('_', ' ')} {v}" for k, v in claims.items())))
    doc.font(size=8)
    for reason in q["reasons"][:8]:
        doc.line_of(4, f"- {reason}")  # the signed report's own words (English), as the record has them
    if len(q["reasons"]) > 8:
        doc.line_of(4, t("... and {n} more (see report.json)", n=len(q["reasons"]) - 8))

    doc.ln(2)
    doc.font("B", 10)
    doc.line_of(6, t("Site indicators"))
    doc.font(size=9)
    co2 = ind["co2_factors"]["location"]
    rows = [
        (t("Consumption"), _kwh(ind["consumption_wh"], t)),
        (t("Grid import / export"), f"{_kwh(ind['grid_import_wh'], t)} / {_kwh(ind['grid_export_wh'], t)}"),
        (t("Generation (renewable)"), f"{_kwh(ind['generation_wh'], t)} ({_kwh(ind['renewable_generation_wh'], t)})"),
        (t("Self-consumption"), _kwh(ind["self_consumption_wh"], t)),
        (t("Renewable share physical / market / hourly"),
         f"{_pct(ind['renewable_share'], t)} / {_pct(ind['renewable_share_market'], t)}"
         f" / {_pct(ind['hourly_matched_share'], t)}"),
        (t("Threshold"), t("{share} on {basis}: met = {met}", share=_pct(ind["renewable_share_threshold"], t),
                           basis=ind["threshold_basis"], met=ind["threshold_met"])),
        (t("CO2 location / market (kg)"), f"{ind['co2_location_kg']} / {ind['co2_market_kg']}"),
        (t("Location factor"), f"{co2['value']} t CO2/MWh, {co2['year']}, {co2['source']}"),
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
    doc.font("B", 10)
    doc.line_of(6, t("Daily energy (kWh): consumption (grey), generation (green)"))
    axis = 12.0  # room left of the plot for the y-axis labels
    x0, y0, h = doc.l_margin + axis, doc.get_y() + 4, 50.0
    w = doc.w - doc.r_margin - x0
    top = _nice_top(max([*cons, *gen, 1]) / 1000)
    doc.set_draw_color(0, 0, 0)
    doc.line(x0, y0 + h, x0 + w, y0 + h)  # x axis
    doc.line(x0, y0, x0, y0 + h)  # y axis
    doc.font(size=6)
    doc.set_draw_color(210, 210, 210)
    for i in range(5):  # y ticks and grid at quarters of a round maximum
        val = top * i / 4
        y = y0 + h - h * i / 4
        if i:
            doc.line(x0, y, x0 + w, y)
        label = doc.tx(t.number(val, 2).rstrip("0").rstrip(".,") if val % 1 else t.number(val))
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
    day_label = doc.tx(t("day of month"))
    doc.text(x0 + w - doc.get_string_width(day_label), y0 + h + 6, day_label)
    doc.set_y(y0 + h + 8)

    doc.font("B", 10)
    doc.line_of(6, t("Channels"))
    doc.font("B", 7)
    widths = (34, 20, 22, 22, 20, 16, 12, 17, 17)
    head = (
        t("channel"), t("role"), t("energy"), t("measured"), t("estimated"), t("coverage"), t("gaps"),
        t("open/close"), t("grade (int.)"),
    )  # fmt: skip
    for wd, text in zip(widths, head, strict=True):
        doc.cell(wd, 5, _fit(doc, text, wd), border=1)
    doc.ln()
    doc.font(size=7)
    for ch in report["channels"]:
        cells = (
            ch["id"], ch["role"], _kwh(ch["energy_wh"], t), _kwh(ch["measured_wh"], t),
            _kwh(ch["estimated_wh"], t), _pct(ch["coverage"]["time"], t),
            str(ch.get("gaps_total", len(ch.get("gaps", [])))),
            f"{ch['opening']['method'][:4]}/{ch['closing']['method'][:4]}",
            f"{t(str(ch['grade']))} ({ch.get('interval_grade', '-')})",
        )  # fmt: skip
        for wd, text in zip(widths, cells, strict=True):
            doc.cell(wd, 5, _fit(doc, text, wd), border=1)
        doc.ln()
    gaps = [(ch["id"], g) for ch in report["channels"] for g in ch.get("gaps", [])]
    if gaps:
        doc.ln(2)
        doc.font("B", 10)
        doc.line_of(6, t("Gaps (local time)"))
        doc.font(size=7)
        for cid, g in gaps[:20]:
            span = t("{start} to {end}", start=_local(g["from"], tz), end=_local(g["to"], tz))
            treatment = g["treatment"] or t("not counted")
            doc.line_of(4, f"- {cid}: {span}, {g['cause']}; {_kwh(g['energy_wh'], t)} ({treatment})")
        if len(gaps) > 20:
            doc.line_of(4, t("... and {n} more (see report.json)", n=len(gaps) - 20))
    return bytes(doc.output())
