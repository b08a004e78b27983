"""Issue 15 against the area hub (`gia hub run`, real sockets): the hub takes its tokens, URL rules and
login through the same helper as the agent (gateway/credentials.py, gateway/api/auth.py), so the same
attacks must fail the same way.

* a weak portal token file (empty, short) stops `gia hub run` with the field named (finding 1);
* `/?token=` and `POST /login` set the `gia_token` cookie only for a token that authenticates, and an
  empty cookie opens nothing (finding 1);
* `hub.mqtt.url` with credentials is refused without being echoed (finding 6);
* `/healthz` without a token gives the status and reason classes only (finding 6);
* the portal sends CSP, X-Frame-Options and Referrer-Policy (finding 8).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.support.faults import agent_env

CERTIFIER = "5c0e7a9b3d1f8e2a4c6b0d9f7e5a3c1b8d2f4e6a0c9b7d5f3e1a2c4b6d8f0e9a"
GUESS = "b0b0b0b0c1c1c1c1d2d2d2d2e3e3e3e3f4f4f4f4a5a5a5a5968778695a4b3c2d"


def call(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def hub_config(directory: Path, port: int, token: str, extra: str = "") -> Path:
    (directory / "certifier-token").write_text(token + "\n")
    cfg = directory / "hub.yaml"
    cfg.write_text(
        "hub:\n"
        "  data_dir: state\n"
        "  areas:\n"
        "    - {id: zemgale, name: Zemgale}\n"
        f"  http:\n    listen: 127.0.0.1:{port}\n"
        "    tokens:\n"
        "      - {name: cert, token_file: certifier-token, roles: [certifier], areas: [zemgale]}\n" + extra
    )
    return cfg


def start_hub(cfg: Path) -> subprocess.Popen[bytes]:
    with (cfg.parent / "hub.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "hub", "run", "--config", str(cfg)],
            stdout=out,
            stderr=out,
            env=agent_env(),
            cwd=cfg.parent,
        )


def stop_hub(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_healthz(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if call(port, "/healthz")[0] in (200, 503):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the hub did not answer /healthz (exit {proc.poll()})")


@pytest.fixture
def running_hub(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = start_hub(hub_config(tmp_path, port, CERTIFIER))
    try:
        wait_healthz(port, proc)
        yield port
    finally:
        assert stop_hub(proc) == 0, (tmp_path / "hub.log").read_text()


@pytest.mark.parametrize("content", ["", "abc", "a" * 40], ids=["empty", "short", "one-character"])
def test_a_weak_portal_token_file_stops_the_hub(tmp_path: Path, content: str) -> None:
    """Before: the hub started with an empty token file and `Cookie: gia_token=` read the area's data."""
    port = free_port()
    proc = start_hub(hub_config(tmp_path, port, content))
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        status = call(port, "/api/v1/areas", {"Cookie": "gia_token="})[0]
        stop_hub(proc)
        pytest.fail(f"gia hub run started with a weak token file; Cookie: gia_token= got {status}")
    log = (tmp_path / "hub.log").read_text()
    assert code == 2 and "hub.http.tokens[0].token_file" in log, log


def test_the_portal_checks_a_token_before_it_becomes_a_cookie(running_hub: int) -> None:
    port = running_hub
    for status, headers, _ in (
        call(port, f"/?token={GUESS}"),
        call(port, "/?token="),
        call(
            port,
            "/login",
            {"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
            body=f"token={GUESS}",
        ),
        call(port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, method="POST", body="token="),
    ):
        assert "gia_token=" not in headers.get("set-cookie", ""), headers
        assert status == 401
    assert call(port, "/api/v1/areas", {"Cookie": "gia_token="})[0] == 401
    status, headers, _ = call(port, f"/?token={CERTIFIER}")
    assert status == 303 and f"gia_token={CERTIFIER}" in headers["set-cookie"]
    assert call(port, "/api/v1/areas", {"Cookie": f"gia_token={CERTIFIER}"})[0] == 200


def test_healthz_detail_and_page_headers(running_hub: int) -> None:
    port = running_hub
    status, _, body = call(port, "/healthz")
    assert status == 200 and set(json.loads(body)) == {"status", "reasons"}, body
    status, _, body = call(port, "/healthz", {"Authorization": f"Bearer {CERTIFIER}"})
    assert status == 200 and "database" in json.loads(body)
    status, headers, _ = call(port, "/")
    assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), headers
    assert headers.get("x-frame-options") == "DENY" and headers.get("referrer-policy") == "no-referrer"


def test_credentials_in_the_hubs_broker_url_are_refused(tmp_path: Path) -> None:
    port = free_port()
    cfg = hub_config(
        tmp_path, port, CERTIFIER, extra="  mqtt: {url: 'mqtts://hub:hunter2-in-url@broker.example:8883'}\n"
    )
    proc = start_hub(cfg)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        stop_hub(proc)
        pytest.fail("gia hub run started with a password in the broker URL")
    log = (tmp_path / "hub.log").read_text()
    assert code == 2 and "hub.mqtt.url" in log and "password_file" in log, log
    assert "hunter2-in-url" not in log
