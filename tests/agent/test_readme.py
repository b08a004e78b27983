"""Every shell line of the README is exercised: run here, or covered by a named test (issue 8).

`README_LINES` classifies each line; a README line that matches no entry fails
`test_every_readme_line_is_covered`, so a new command in the README needs a test before it lands.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.servers import InfluxDB1, MosquittoBroker, find_binary, free_port

ROOT = Path(__file__).resolve().parents[2]

#: (regex on the README line, where it is exercised: "this file::test" or another test file::test)
README_LINES: list[tuple[str, str]] = [
    (r"make demo", "tests/agent/test_demo.py::test_demo_runs_and_stops_cleanly (gia demo, what the target runs)"),
    (r"make demo DEMO_ARGS=\"--backfill 62\"", "tests/agent/test_readme.py::test_backfill_gives_a_verified_last_month"),
    (r"make demo DEMO_ARGS=\"--speed 60\"", "tests/agent/test_readme.py::test_demo_speed_mqtt_and_influx"),
    (r"make demo DEMO_ARGS=\"--mqtt .*\"", "tests/agent/test_readme.py::test_demo_speed_mqtt_and_influx"),
    (r"make demo DEMO_ARGS=\"--influx .*\"", "tests/agent/test_readme.py::test_demo_speed_mqtt_and_influx"),
    (r"make test", "CI: .ci/run runs it"),
    (r"make check", "tests/agent/test_readme.py::test_make_check"),
    (
        r"make bench",
        "not in the suite: the benchmarks run minutes each; every script is run by hand and its"
        " figures are in the README's Measured table",
    ),
    (r"MONTH=\$\(TZ=Europe/Riga date .*", "tests/agent/test_readme.py::test_backfill_gives_a_verified_last_month"),
    (
        r"\.venv/bin/gia (report|keys export|evidence|verify) .*",
        "tests/agent/test_readme.py::test_backfill_gives_a_verified_last_month",
    ),
    (
        r"gia scan tcp://\S+ opc\.tcp://\S+ --p1-port .*",
        "tests/drivers/test_scan_mixed.py::test_one_scan_of_a_mixed_site_gives_one_config_check_config_accepts",
    ),
    (
        r"gia (scan|read) tcp://192\.0\.2\.10.*",
        "tests/drivers/test_cli.py::test_scan_prints_a_config_check_config_accepts,"
        " tests/drivers/test_cli.py::test_read_json (against a simulator)",
    ),
    (r"gia sim eastron-sdm630 .*", "tests/drivers/test_cli.py::sim_process (fixture runs gia sim)"),
    (
        r"gia (report|evidence|verify|keys show) .*",
        "tests/certification/test_area_cli.py::test_cli_report_evidence_verify_keys",
    ),
    (
        r"gia (report .* --reissue --reason .*|keys rotate --reason .*|verify .* --trusted-keys .* --policy .*)",
        "tests/certification/test_area_cli.py::test_cli_report_evidence_verify_keys",
    ),
    (r"gia area-report .*", "tests/certification/test_area_cli.py::test_cli_meter_replacement_and_area_report"),
    (r"gia meter-replacement .*", "tests/certification/test_area_cli.py::test_cli_meter_replacement_and_area_report"),
    (r"gia forecast backtest .*", "tests/forecasting/test_cli_backtest.py::test_backtest_json_on_a_generated_csv"),
    (r"gia forecast train .*", "tests/forecasting/test_cli_backtest.py::test_train_and_show"),
    (
        r"make demo-area DEMO_ARGS=\"--backfill 62\"",
        "tests/hub/test_portal_browser.py::test_the_demo_builds_and_verifies_the_last_closed_months_area_report"
        " (gia demo --area --backfill 62, what the target runs)",
    ),
    (
        r"gia hub enroll .*",
        "tests/hub/test_cli_config.py::test_enroll_sites_log_proof_and_revoke_from_the_command_line",
    ),
    (
        r"gia hub area-report .*",
        "tests/hub/test_area_reports.py::test_gia_hub_area_report_pin_and_area_proof_from_the_command_line",
    ),
    (
        r"gia verify area\.json .* --log-head .* --hub-key .*",
        "tests/hub/test_area_reports.py::test_area_report_when_every_site_is_in_adds_up_and_verifies_offline",
    ),
]


def readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_every_readme_line_is_covered() -> None:
    lines = readme_lines()
    assert len(lines) > 15
    uncovered = [line for line in lines if not any(re.fullmatch(rx, line) for rx, _ in README_LINES)]
    assert not uncovered, f"README lines no test exercises: {uncovered}"
    for _, where in README_LINES:
        for ref in re.findall(r"(tests/[\w/]+\.py)::(\w+)", where):
            path, name = ref
            assert re.search(rf"def {name}\b", (ROOT / path).read_text()), f"{path}::{name} does not exist"


def gia(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--http", f"127.0.0.1:{port}", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float = 90) -> dict[str, object]:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                health: dict[str, object] = json.loads(r.read())
                return health
        except OSError:
            time.sleep(0.5)
    raise AssertionError("demo did not come up")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def _certifier_block() -> list[str]:
    """The shell lines of the README block that starts with `MONTH=` (the certifier's steps)."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        if block.startswith("MONTH="):
            return [re.split(r"\s+#\s", line)[0].strip() for line in block.splitlines() if line.strip()]
    raise AssertionError("no certifier block (MONTH=...) in the README")


@pytest.mark.slow
@pytest.mark.cpu  # 62 days of backfill and a month report: CPU-bound for ~40 s
@pytest.mark.modbus
def test_backfill_gives_a_verified_last_month(tmp_path: Path) -> None:
    """README: make demo DEMO_ARGS="--backfill 62", then report / keys export / evidence / verify of the last
    closed month (closed 48 h after its end: on the 1st and 2nd of a month, the month before)."""
    riga = ZoneInfo("Europe/Riga")
    now = datetime.now(riga)
    first_of_this = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if now - first_of_this < timedelta(hours=49):  # the settlement delay, plus the backfill's own time
        first_of_this = (first_of_this - timedelta(days=1)).replace(day=1)
    last_month = (first_of_this - timedelta(days=1)).strftime("%Y-%m")
    start_of_last = (first_of_this - timedelta(days=1)).replace(day=1)
    days = (datetime.now(UTC) - start_of_last.astimezone(UTC)).days + 2  # the whole month
    proc, base = start_demo(tmp_path, "--backfill", str(days))
    try:
        wait_healthy(base, proc, timeout=120)
    finally:
        stop(proc)
    # Done-when 3 of issue 21: the README's certifier block, verbatim, in its order and with the key first
    block = _certifier_block()
    for order in (block, [block[0], block[2], block[3], block[1], block[4]]):
        res = subprocess.run(
            [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                "\n".join(order).replace(".venv/bin/gia", f"{sys.executable} -m gateway"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith("GIA_")},
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert "grade verified" in res.stderr, res.stderr
    cfg = "gia-demo/gia.yaml"
    res = gia("report", "demo", last_month, "--config", cfg, "-o", "report.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["period"]["complete"] is True
    assert report["quality"]["grade"] == "verified", report["quality"]
    res = gia("keys", "export", "site-key.pem", "--config", cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    fingerprint = report["signature"]["key_id"]
    assert fingerprint in res.stdout
    res = gia("evidence", "demo", last_month, "-o", "evidence", "--config", cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "evidence" / "public_key.pem").exists()
    res = gia("verify", "report.json", "--public-key", "site-key.pem", "--evidence", "evidence", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (
        f"OK demo {last_month}: signature valid, key {fingerprint}, evidence recomputed, grade verified" in res.stdout
    )


@pytest.mark.slow
@pytest.mark.modbus
@pytest.mark.mosquitto
@pytest.mark.influxdb
def test_demo_speed_mqtt_and_influx(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker, influxdb_fresh: InfluxDB1
) -> None:
    """README: --speed 60, --mqtt URL, --influx URL/DB (the database must exist, as the README says)."""
    influxdb_fresh.create_db("gia")
    proc, base = start_demo(
        tmp_path, "--speed", "60", "--mqtt", mosquitto_fresh.url, "--influx", f"{influxdb_fresh.url}/gia"
    )
    t0 = time.monotonic()
    try:
        wait_healthy(base, proc)
        time.sleep(8)
        state = subprocess.run(
            [
                find_binary("mosquitto_sub"),
                *mosquitto_fresh.client_args(),
                "-t",
                "gia/demo/grid/state",
                "-C",
                "1",
                "-W",
                "5",
            ],
            capture_output=True,
            text=True,
        )
        assert "energy_import_wh" in json.loads(state.stdout)
    finally:
        stop(proc)
    wall = time.monotonic() - t0
    points = influxdb_fresh.points("meter", db="gia", where="\"device\" = 'grid'")
    assert len(points) > 3
    times = sorted(p["time"] for p in points)
    simulated_s = (times[-1] - times[0]) / 1000
    assert simulated_s > 20 * min(wall, 10), (simulated_s, wall)  # time ran far faster than the wall


@pytest.mark.slow
def test_make_check() -> None:
    """README: make check (format, lint, types) passes on the tree."""
    venv_bin = Path(sys.executable).parent
    for cmd in (
        [venv_bin / "ruff", "format", "--check", "gateway", "drivers", "forecasting", "tests", "bench"],
        [venv_bin / "ruff", "check", "gateway", "drivers", "forecasting", "tests", "bench"],
        [venv_bin / "mypy"],
    ):
        res = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{' '.join(map(str, cmd))}:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"
