"""The PDF summary a human reads beside the signed report (#21 finding 11): the period in the site's local
time, shares as percentages, the key fingerprint, coverage and gaps, a chart with axes, and no text outside
the page margins — checked on the rendered PDF with poppler's `pdftotext` (a real reader, not fpdf2 again)."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.certification.pdf import UNICODE_FONTS
from gateway.i18n import Catalogues

from .helpers import (
    MARCH_START,
    channel,
    constant_400w,
    device,
    make_ledger,
    register_samples,
    service,
    settings,
)

T0 = MARCH_START - timedelta(hours=2)
T1 = datetime(2025, 4, 1, tzinfo=UTC)
GAP = (datetime(2025, 3, 10, 8, tzinfo=UTC), datetime(2025, 3, 10, 14, tzinfo=UTC))
LONG_NAME = "main-incomer-of-the-north-hall-transformer-station-number-two"


def _pdftotext(*args: str) -> str:
    exe = shutil.which("pdftotext")
    if exe is None:
        pytest.fail("pdftotext (Debian poppler-utils) is missing: make deps-system installs it")
    return subprocess.run([exe, *args], capture_output=True, text=True, check=True, timeout=60).stdout


class _Words(html.parser.HTMLParser):
    """Word boxes from `pdftotext -bbox`: (xMin, xMax, text) per word and the page width."""

    def __init__(self) -> None:
        super().__init__()
        self.page_w = 0.0
        self.words: list[tuple[float, float, str]] = []
        self._box: tuple[float, float] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: float(v or 0) for k, v in attrs if k in ("width", "xmin", "xmax")}
        if tag == "page":
            self.page_w = a["width"]
        elif tag == "word":
            self._box = (a["xmin"], a["xmax"])

    def handle_data(self, data: str) -> None:
        if self._box is not None:
            self.words.append((*self._box, data))
            self._box = None


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pdf")

    def with_gap(k: int, ts: datetime) -> int | None:
        return None if GAP[0] < ts < GAP[1] else constant_400w(k, ts)

    samples = register_samples(LONG_NAME, "energy_import_wh", T0, T1, value=with_gap)
    samples += register_samples(LONG_NAME, "energy_export_wh", T0, T1, value=lambda k, ts: 7 + k // 3)
    make_ledger(d / "ledger.db", samples).close()
    s = settings(
        d,
        [device(LONG_NAME, channel("grid_import"), channel("grid_export", "energy_export_wh"), serial="LV-001")],
    )
    svc = service(s)
    out = d / "2025-03.pdf"
    out.write_bytes(svc.report_pdf("s1", "2025-03"))
    (d / "2025-03.lv.pdf").write_bytes(svc.report_pdf("s1", "2025-03", Catalogues().get("lv")))
    (d / "key_id").write_text(svc.report("s1", "2025-03")["signature"]["key_id"])
    return out


def test_pdf_reads_in_local_time_with_percentages_fingerprint_coverage_and_gaps(pdf: Path) -> None:
    text = _pdftotext("-layout", str(pdf), "-")
    key_id = (pdf.parent / "key_id").read_text()
    # March in Riga starts at 00:00 local (22:00 UTC the day before): the reader sees local time
    assert "2025-03-01 00:00 to 2025-04-01 00:00 local time (Europe/Riga" in text, text[:800]
    assert key_id in text.replace("\n", "")
    assert " %" in text and "coverage" in text
    # the six-hour gap of 10 March (08:00-14:00 UTC = 10:00-16:00 Riga) is listed in local time
    assert "2025-03-10 10:" in text, text
    assert "Gaps (local time)" in text
    assert "kWh" in text and "day of month" in text  # the chart has labelled axes


def test_pdf_keeps_text_inside_the_margins(pdf: Path) -> None:
    words = _Words()
    words.feed(_pdftotext("-bbox", str(pdf), "-"))
    assert words.words, "no words read from the PDF"
    margin_pt = 10 / 25.4 * 72 - 1  # fpdf2's default 10 mm margin, less a point of rounding
    outside = [w for w in words.words if w[0] < margin_pt or w[1] > words.page_w - margin_pt]
    assert not outside, outside[:10]


def test_pdf_in_latvian_keeps_its_letters_numbers_and_margins(pdf: Path) -> None:
    """Finding 6: the PDF summary in Latvian, with ā, ē, ī, ū, š... (a Unicode font, not Latin-1's '?')
    and Latvian number formats (decimal comma, space-grouped thousands), inside the margins too."""
    if not any(regular.is_file() for regular, _bold in UNICODE_FONTS):
        pytest.fail("DejaVu Sans is missing: make deps-system installs fonts-dejavu-core")
    lv = pdf.parent / "2025-03.lv.pdf"
    text = _pdftotext("-layout", str(lv), "-")
    assert "GIA mēneša pārskats - s1 - 2025-03" in text, text[:600]
    assert "Periods no 2025-03-01 00:00 līdz 2025-04-01 00:00 pēc vietējā laika" in text
    assert "Pārtraukumi (vietējais laiks)" in text and "mēneša diena" in text
    assert "?" not in text.replace("(gia", ""), "a letter the font could not show"
    english = _pdftotext("-layout", str(pdf), "-")
    assert re.search(r"\d,\d %", text) and not re.search(r"\d\.\d %", text)  # 12,3 %: the decimal comma
    assert re.search(r"\d,\d kWh", text) and re.search(r"\d\.\d kWh", english)
    assert "Objekta rādītāji" in text and "Site indicators" in english
    words = _Words()
    words.feed(_pdftotext("-bbox", str(lv), "-"))
    margin_pt = 10 / 25.4 * 72 - 1
    assert not [w for w in words.words if w[0] < margin_pt or w[1] > words.page_w - margin_pt]
