"""`gia hub ...` commands on a config file, the hub's config rules, and schema migrations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from gateway.certification.signing import load_public_pem
from gateway.cli import build_app
from gateway.hub import db, log
from gateway.hub.config import DatabaseConfig, load_hub_settings
from gateway.hub.ingest import Ingestor
from gateway.hub.store import HubStore
from gateway.settings import ConfigError
from tests.hub.conftest import SignedSite
from tests.servers import MosquittoBroker, free_port, http


def write_config(tmp_path: Path, database: str | None = None) -> Path:
    cfg = tmp_path / "hub.yaml"
    lines = ["hub:", "  data_dir: state", "  areas:", "    - {id: zemgale, name: Zemgale}"]
    if database is not None:
        lines.insert(2, f"  database: {database}")
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def gia(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(build_app(), list(args))
    return r.exit_code, r.output


def test_enroll_sites_log_proof_and_revoke_from_the_command_line(tmp_path: Path, mill: SignedSite) -> None:
    cfg = write_config(tmp_path)
    pem = tmp_path / "mill.pem"
    pem.write_bytes(mill.public_pem)
    code, out = gia("hub", "log", "head", "--config", str(cfg))
    assert code == 1  # empty log
    code, out = gia(
        "hub", "enroll", "mill", "--area", "zemgale", "--public-key", str(pem), "--token-file",
        str(tmp_path / "tok"), "--config", str(cfg),
    )  # fmt: skip
    assert code == 0, out
    fingerprint = json.loads(mill.reports["2025-02"])["signature"]["key_id"]
    assert f"key fingerprint (key_id): {fingerprint}" in out
    assert os.stat(tmp_path / "tok").st_mode & 0o777 == 0o600
    assert tmp_path.joinpath("tok").read_text().strip() not in out
    code, out = gia("hub", "enroll", "bakery", "--area", "nowhere", "--public-key", str(pem), "--config", str(cfg))
    assert code == 1 and "not configured" in out
    # a report arrives (through the store the running hub uses), then the CLI proves it
    store = HubStore.open(load_hub_settings(cfg).hub)
    try:
        assert (
            Ingestor(store, max_bytes=1 << 21).submit_report("mill", mill.reports["2025-02"], via="http").log_index == 0
        )
    finally:
        store.close()
    code, out = gia("hub", "sites", "--config", str(cfg))
    assert code == 0 and "mill\tarea zemgale\tenrolled" in out and "reports 1\tlast 2025-02" in out
    assert gia("hub", "keys", "export", str(tmp_path / "hub.pem"), "--config", str(cfg))[0] == 0
    code, out = gia("hub", "log", "head", "--config", str(cfg))
    head = json.loads(out)
    assert gia("hub", "log", "proof", "mill", "2025-02", "-o", str(tmp_path / "p.json"), "--config", str(cfg))[0] == 0
    proof = json.loads((tmp_path / "p.json").read_text())
    hub_key = load_public_pem((tmp_path / "hub.pem").read_bytes())
    assert log.check_report_inclusion(mill.reports["2025-02"], proof, head, hub_key) == []
    assert gia("hub", "log", "proof", "mill", "2025-03", "--config", str(cfg))[0] == 1
    assert gia("hub", "revoke", "mill", "--reason", "sold", "--config", str(cfg))[0] == 0
    code, out = gia("hub", "sites", "--json", "--config", str(cfg))
    assert json.loads(out)[0]["status"] == "revoked"
    code, out = gia("hub", "quarantine", "--json", "--config", str(cfg))
    assert json.loads(out) == {"quarantine": [], "conflicts": []}


def test_a_password_in_the_database_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "postgresql://gia:s3cret-pw@db.example:5432/hub")
    with pytest.raises(ConfigError) as exc:
        load_hub_settings(cfg)
    text = str(exc.value)
    assert "hub.database" in text and "password_file" in text and "s3cret-pw" not in text
    code, out = gia("hub", "sites", "--config", str(cfg))
    assert code == 2 and "s3cret-pw" not in out


def test_database_defaults_relative_paths_and_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_hub_settings(write_config(tmp_path))
    assert s.hub.database_config.url == f"sqlite:///{tmp_path / 'state' / 'hub.db'}"
    s = load_hub_settings(write_config(tmp_path, "sqlite:///rel/hub.db"))
    assert s.hub.database_config.url == f"sqlite:///{tmp_path / 'rel' / 'hub.db'}"
    monkeypatch.setenv("GIA_HUB__DATABASE__PASSWORD", "from-env")
    s = load_hub_settings(write_config(tmp_path, "{url: 'postgresql://gia@127.0.0.1:5432/hub'}"))
    url = db.database_url(s.hub.database_config)
    assert url.password == "from-env" and "from-env" not in str(url) and url.drivername == "postgresql+psycopg"
    with pytest.raises(ConfigError):
        load_hub_settings(write_config(tmp_path, "mysql://gia@db/hub"))


def test_migrations_are_idempotent_and_a_newer_schema_is_refused(tmp_path: Path, hub_db: DatabaseConfig) -> None:
    engine = db.create_hub_engine(hub_db)
    try:
        assert db.migrate(engine) == db.SCHEMA_VERSION
        assert db.migrate(engine) == db.SCHEMA_VERSION
        with db.write_transaction(engine) as conn:
            conn.execute(update(db.hub_meta).where(db.hub_meta.c.key == "schema_version").values(value="99"))
        with pytest.raises(db.DatabaseError, match="newer than this release"):
            db.migrate(engine)
    finally:
        engine.dispose()


def test_gia_hub_run_serves_healthz_and_stops_cleanly_on_sigterm(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker
) -> None:
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    cfg = write_config(tmp_path)
    cfg.write_text(
        cfg.read_text()
        # the anonymous loopback viewer sees /healthz in detail (without a token: status and reason classes)
        + f"  http: {{listen: '127.0.0.1:{port}', anonymous_viewer_on_loopback: true}}\n"
        + f"  mqtt: {{url: '{mosquitto_fresh.url}'}}\n"
    )
    with (tmp_path / "hub.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "hub", "run", "--config", str(cfg)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        status, body = 0, b""
        while time.monotonic() < deadline:
            try:
                status, body = http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200, (body, (tmp_path / "hub.log").read_text())
        report = json.loads(body)
        assert report["parts"]["hub-mqtt"]["state"] == "running" and report["mqtt"]["connected"]
        assert report["database"]["backend"] == "sqlite"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_example_config_loads() -> None:
    s = load_hub_settings(Path(__file__).parents[2] / "deploy" / "hub.example.yaml")
    assert s.hub.areas[0].id == "zemgale" and s.hub.database_config.url.startswith("postgresql://")


def test_the_area_file_format_in_docs_loads(tmp_path: Path) -> None:
    """#21 finding 8: the area file format is documented — and the documented example is a valid config."""
    text = (Path(__file__).parents[2] / "docs" / "hub.md").read_text()
    start = text.index("The area file format")
    block = text[text.index("```yaml\n", start) + 8 : text.index("```", text.index("```yaml\n", start) + 8)]
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(block.replace("hub:\n", "hub:\n  data_dir: state\n", 1))
    area = load_hub_settings(cfg).hub.areas[0]
    assert area.id == "zemgale" and area.shared_generators[0].allocation == "hourly_pro_rata"
    assert [c.name for c in area.criteria] == [
        "renewable_share", "co2_intensity", "verified_consumption_share", "data_completeness",
    ]  # fmt: skip
