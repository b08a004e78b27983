"""`gia import certificates FILE` and `gia import grid-factors FILE`: recorded in the events chain, bad
files refused with the line and the fix, nothing recorded then."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from gateway.certification.certificates import CERTIFICATES, GRID_FACTORS
from gateway.ledger.store import Ledger

from .helpers import make_ledger
from .test_area_cli import _app, _yaml


def test_import_commands_record_files_and_refuse_bad_ones(tmp_path: Path) -> None:
    make_ledger(tmp_path / "ledger.db", []).close()
    cfg = _yaml(tmp_path)
    r, app = CliRunner(), _app()
    certs = tmp_path / "march.csv"
    certs.write_text("certificate_id,production_device,hour_start,energy_wh\nGC-1,park,2025-03-01T00:00:00Z,500\n")
    res = r.invoke(app, ["import", "certificates", str(certs), "--config", str(cfg)])
    assert res.exit_code == 0 and "imported 1 certificates from march.csv" in res.output, res.output
    res = r.invoke(app, ["import", "certificates", str(certs), "--config", str(cfg)])
    assert res.exit_code == 2 and "GC-1 (line 2, imported by event" in res.output, res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("certificate_id,production_device,hour_start,energy_wh\nGC-2,park,2025-03-01T00:30:00Z,1.5\n")
    res = r.invoke(app, ["import", "certificates", str(bad), "--config", str(cfg)])
    assert res.exit_code == 2 and "line 2: hour_start '2025-03-01T00:30:00Z' is not on the hour" in res.output
    factors = tmp_path / "f.csv"
    factors.write_text("hour_start,value\n2025-03-01T00:00:00Z,120\n2025-03-01T01:00:00Z,x\n")
    args = ["import", "grid-factors", str(factors), "--unit", "g CO2/kWh", "--source", "TSO", "--config", str(cfg)]
    res = r.invoke(app, args)
    assert res.exit_code == 2 and "line 3: value 'x' is not a decimal number" in res.output, res.output
    factors.write_text("hour_start,value\n2025-03-01T00:00:00Z,120\n2025-03-01T01:00:00Z,95.5\n")
    res = r.invoke(app, args)
    assert res.exit_code == 0 and "imported 2 hourly factors" in res.output, res.output
    led = Ledger(tmp_path / "ledger.db", readonly=True)
    try:
        assert [e.kind for e in led.events(kind=CERTIFICATES)] == [CERTIFICATES]
        assert len(led.events(kind=GRID_FACTORS)) == 1
    finally:
        led.close()
