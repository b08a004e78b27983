"""Security review as tests: HTTPS, token handling in logs, rate limit, path traversal, file modes,
secrets in check-config output, the API under schemathesis, and a dependency audit.

The threat model these check is in SECURITY.md.
"""

from __future__ import annotations

import http.client
import os
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.servers import TlsMaterial
from tests.support.faults import AgentProcess, Meters, wait_for, write_config

pytestmark = [pytest.mark.fault]

TOKEN = "s3cr3t-certifier-token-0123456789abcdef"
VIEWER = "viewer-token-abcdef0123456789abcdef"


def _request(url: str, *, token: str | None = None, ca: Path | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
async def https_agent(tmp_path: Path, tls_material: TlsMaterial) -> Any:
    meters = await Meters(["m"]).start()
    http = {
        "anonymous_viewer_on_loopback": False,
        "tls_cert_file": str(tls_material.server_cert),
        "tls_key_file": str(tls_material.server_key),
        "tokens": [
            {"name": "cert", "roles": ["certifier"], "sites": ["sec"], "token": TOKEN},
            {"name": "view", "roles": ["viewer"], "token": VIEWER},
        ],
    }
    config, port = write_config(
        tmp_path, site="sec", devices=meters.device_configs(), http=http, extra={"log_level": "debug"}
    )
    agent = AgentProcess(config, port)
    await agent.start(wait_http=False)
    base = f"https://127.0.0.1:{port}"
    await wait_for(lambda: _request(base + "/healthz", ca=tls_material.ca_file)[0] in (200, 503), 30, "https")
    try:
        yield agent, base, tls_material
    finally:
        assert await agent.stop() == 0
        await meters.stop()


@pytest.mark.modbus
async def test_https_tokens_rate_limit_traversal_and_logs(https_agent: Any) -> None:
    agent, base, tls = https_agent
    ca = tls.ca_file

    def run() -> None:
        # TLS: verified against the test CA; a client trusting another CA refuses the server.
        assert _request(base + "/healthz", ca=ca)[0] in (200, 503)
        with pytest.raises(urllib.error.URLError):
            _request(base + "/healthz", ca=tls.other_ca_file)
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):  # no plain HTTP
            urllib.request.urlopen(base.replace("https", "http") + "/healthz", timeout=3)
        # Tokens and roles.
        assert _request(base + "/api/v1/live", ca=ca)[0] == 401
        assert _request(base + "/api/v1/live", token=VIEWER, ca=ca)[0] == 200
        assert _request(base + "/api/v1/sites/sec/reports/2026-01", token=VIEWER, ca=ca)[0] == 403
        assert _request(base + "/api/v1/sites/other/reports/2026-01", token=TOKEN, ca=ca)[0] == 403
        # Path traversal: static files and report paths never leave their data.
        for path in (
            "/static/..%2f..%2fsettings.py",
            "/static/%2e%2e/app.py",
            "/static/../../../../etc/passwd",
            "/static/app.js%00.css",
            "/api/v1/sites/sec/reports/..%2f..%2f..%2fetc%2fpasswd",
            "/api/v1/sites/sec/reports/2026-01%2f..%2f..%2fgia",
            "/api/v1/sites/..%2f..%2fdata/reports/2026-01",
            "/api/v1/sites/sec/evidence/..%2fledger",
        ):
            status, body = _request(base + path, token=TOKEN, ca=ca)
            assert status in (400, 403, 404), (path, status)
            assert b"root:" not in body and b"BEGIN" not in body and b"SQLite" not in body, path
        # Rate limit on authentication failures, end to end: 429 after repeated bad tokens.
        codes = [_request(base + "/api/v1/live", token=f"wrong-{i}", ca=ca)[0] for i in range(25)]
        assert codes[0] == 401 and codes[-1] == 429, codes
        # ... wrong tokens only: a good token from that client still works (issue 15: behind a proxy all
        # visitors share one address). Guessing stays hopeless because every token has >= 128 bits.
        assert _request(base + "/api/v1/live", token=VIEWER, ca=ca)[0] == 200
        assert _request(base + "/api/v1/live", token="wrong-again", ca=ca)[0] == 429

    await __import__("asyncio").to_thread(run)
    log = agent.log()
    assert TOKEN not in log and VIEWER not in log and "wrong-1" not in log, "a token reached the log"


def test_check_config_output_redacts_secrets(tmp_path: Path) -> None:
    """Secrets in a config with problems must not be echoed by `gia check-config`."""
    secret = "hunter2-mqtt-password-xyz"
    (tmp_path / "gia.yaml").write_text(
        "site: {id: s}\n"
        "devices: []\n"
        f"mqtt: {{url: 'mqtt://127.0.0.1:1', password: '{secret}', bogus: 1}}\n"
        f"influxdb: {{url: 'http://127.0.0.1:1', api: v2, token: '{secret}', org: 5}}\n"
        f"http: {{tokens: [{{name: a, roles: [nobody], token: '{secret}'}}]}}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(tmp_path / "gia.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert secret not in res.stdout + res.stderr


@pytest.mark.modbus
async def test_key_and_ledger_files_are_private(tmp_path: Path) -> None:
    meters = await Meters(["m"]).start()
    config, port = write_config(tmp_path, site="perm", devices=meters.device_configs())
    agent = await AgentProcess(config, port).start()
    try:
        await wait_for(lambda: agent.ledger_path.exists(), 10, "ledger")
        subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "show", "--config", str(config)],
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            check=True,
        )
    finally:
        assert await agent.stop() == 0
        await meters.stop()
    keys = [
        p
        for p in (tmp_path / "data").rglob("*")
        if p.is_file() and ("key" in p.name or p.parent.name == "keys") and "pub" not in p.name
    ]
    assert keys, sorted(str(p) for p in (tmp_path / "data").rglob("*"))
    for p in keys:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is mode {oct(mode)}: the signing key must be readable by its owner only"
    mode = stat.S_IMODE(agent.ledger_path.stat().st_mode)
    assert mode & 0o002 == 0, f"ledger is world-writable ({oct(mode)})"


def test_dependency_audit() -> None:
    """pip-audit over the installed environment. Its vulnerability service (PyPI's JSON API / OSV) must
    be reachable; outside CI an unreachable service skips with the reason, in CI it fails."""
    exe = Path(sys.executable).parent / "pip-audit"
    if not exe.exists():
        msg = "pip-audit is not installed in the venv: .venv/bin/pip install pip-audit"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    res = subprocess.run(
        [str(exe), "--progress-spinner", "off", "--skip-editable", "--desc", "off"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = res.stdout + res.stderr
    if res.returncode != 0 and ("ConnectionError" in out or "Max retries" in out or "Temporary failure" in out):
        msg = f"pip-audit could not reach its vulnerability service: {out.strip().splitlines()[-1]}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    assert res.returncode == 0, out


@pytest.mark.modbus
@pytest.mark.mosquitto
async def test_mqtt_tls_verifies_the_broker_and_presents_a_client_certificate(
    tmp_path: Path, tls_material: TlsMaterial, mosquitto_factory: Any
) -> None:
    broker = mosquitto_factory(tls=True, require_certificate=True)
    meters = await Meters(["m"]).start()
    try:
        for ca, ok in ((tls_material.other_ca_file, False), (tls_material.ca_file, True)):
            d = tmp_path / ("ok" if ok else "bad")
            d.mkdir()
            mqtt = {
                "url": broker.url,
                "timeout_s": 2,
                "tls": {
                    "ca_file": str(ca),
                    "cert_file": str(tls_material.client_cert),
                    "key_file": str(tls_material.client_key),
                },
            }
            config, port = write_config(d, site="tls", devices=meters.device_configs(), mqtt=mqtt)
            agent = await AgentProcess(config, port).start()
            try:
                if ok:
                    await wait_for(lambda a=agent: a.health()["sinks"]["mqtt"]["cursor"] > 0, 20, "forwarding")
                else:
                    health = await wait_for(
                        lambda a=agent: (h := a.health())["sinks"]["mqtt"]["last_error"] and h, 20, "refusal"
                    )
                    err = health["sinks"]["mqtt"]["last_error"].lower()
                    assert "certificate" in err or "ssl" in err or "tls" in err, err
                    assert health["sinks"]["mqtt"]["cursor"] == 0
            finally:
                assert await agent.stop() == 0
    finally:
        await meters.stop()
