"""The shipped Mosquitto configs, run by a real Mosquitto: the hardened local broker refuses anonymous
and wrong-password clients and confines the agent's user to gia/#, and the bridge config forwards one
site's gia/<site>/# to a central broker over mutual TLS and nothing else.

The configs are used as shipped; only what must differ in a test is rewritten: ports, file paths,
the central broker's address and certificates, and `user root` (so the broker can read temp files).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY
from tests.servers import (
    MosquittoBroker,
    MosquittoFactory,
    ServerProcess,
    TlsMaterial,
    find_binary,
    free_port,
    port_open,
)

pytestmark = pytest.mark.mosquitto

PASSWORD = "a-generated-password-0123456789abcdef"
WATCHER_PASSWORD = "watcher-password-0123456789"


class ShippedBroker(ServerProcess):
    """Mosquitto running one of deploy/mosquitto/*.conf, adapted to a temp dir and a free port."""

    name = "mosquitto"

    def __init__(self, workdir: Path, shipped: str, *, extra: str = "") -> None:
        super().__init__(workdir)
        self.port = free_port()
        acl = workdir / "gia.acl"
        # The shipped ACL plus a test user that may read everything, to observe what gia can publish.
        acl.write_text((DEPLOY / "mosquitto/gia.acl").read_text() + "\nuser watcher\ntopic read #\n")
        pwfile = workdir / "passwd"
        passwd = find_binary("mosquitto_passwd")
        subprocess.run([passwd, "-c", "-b", str(pwfile), "gia", PASSWORD], check=True, capture_output=True)
        subprocess.run([passwd, "-b", str(pwfile), "watcher", WATCHER_PASSWORD], check=True, capture_output=True)
        pwfile.chmod(0o600)
        acl.chmod(0o600)
        text = (DEPLOY / "mosquitto" / shipped).read_text()
        text = re.sub(r"^listener 1883.*$", f"listener {self.port} 127.0.0.1", text, flags=re.M)
        text = re.sub(r"^password_file .*$", f"password_file {pwfile}", text, flags=re.M)
        text = re.sub(r"^acl_file .*$", f"acl_file {acl}", text, flags=re.M)
        text = re.sub(r"^persistence_location .*$", f"persistence_location {workdir}/", text, flags=re.M)
        assert f"listener {self.port} 127.0.0.1" in text, "the shipped config lost its listener line"
        lines = [text, extra, f"log_dest file {workdir / 'broker.log'}", "log_type all"]
        if os.geteuid() == 0:
            lines.append("user root")
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [find_binary("mosquitto"), "-c", str(self.config_path)]

    def ready(self) -> bool:
        return port_open("127.0.0.1", self.port)

    def log_tail(self, n: int = 30) -> str:
        try:
            return (self.workdir / "broker.log").read_text(errors="replace")[-4000:]
        except OSError:
            return super().log_tail(n)


def _pub(port: int, topic: str, message: str, *auth: str, retain: bool = True) -> subprocess.CompletedProcess[str]:
    args = [find_binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-m", message]
    return subprocess.run(args + (["-r"] if retain else []) + list(auth), capture_output=True, text=True, timeout=10)


def _sub(port: int, topic: str, *auth: str, count: int = 1, wait_s: int = 3) -> subprocess.CompletedProcess[str]:
    args = [find_binary("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", str(count)]
    return subprocess.run([*args, "-W", str(wait_s), "-v", *auth], capture_output=True, text=True, timeout=wait_s + 10)


GIA = ("-u", "gia", "-P", PASSWORD)
WATCHER = ("-u", "watcher", "-P", WATCHER_PASSWORD)


@pytest.fixture(params=["gia.conf", "compose.conf"])
def hardened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShippedBroker]:
    broker = ShippedBroker(tmp_path, request.param)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_hardened_broker_refuses_anonymous_and_wrong_passwords(hardened: ShippedBroker) -> None:
    anonymous = _pub(hardened.port, "gia/site/status", "online")
    assert anonymous.returncode != 0
    assert "not authorised" in (anonymous.stderr + anonymous.stdout).lower()
    wrong = _pub(hardened.port, "gia/site/status", "online", "-u", "gia", "-P", "guess")
    assert wrong.returncode != 0


def test_agent_user_is_confined_to_its_topics(hardened: ShippedBroker) -> None:
    assert _pub(hardened.port, "gia/site/status", "online", *GIA).returncode == 0
    # Publishing outside gia/# and homeassistant/# is accepted by the protocol but dropped by the ACL.
    assert _pub(hardened.port, "other/topic", "x", *GIA).returncode == 0
    seen = _sub(hardened.port, "gia/#", *WATCHER)
    assert seen.stdout.strip() == "gia/site/status online"
    dropped = _sub(hardened.port, "other/#", *WATCHER, wait_s=1)
    assert dropped.stdout.strip() == ""
    # The agent's user reads its own retained topics back (the agent re-reads nothing else).
    assert _sub(hardened.port, "gia/site/status", *GIA).stdout.strip() == "gia/site/status online"


def test_bridge_forwards_only_this_site_over_mutual_tls(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, tls_material: TlsMaterial
) -> None:
    central: MosquittoBroker = mosquitto_factory(tls=True, require_certificate=True)
    bridge = (DEPLOY / "mosquitto/bridge.conf").read_text()
    assert not re.search(r"^bridge_insecure\s+true", bridge, flags=re.M)
    bridge = bridge.replace("SITE_ID", "site-a").replace("central.example.org:8883", f"127.0.0.1:{central.port}")
    bridge = bridge.replace("/etc/mosquitto/certs/central-ca.crt", str(tls_material.ca_file))
    bridge = bridge.replace("/etc/mosquitto/certs/site-a.crt", str(tls_material.client_cert))
    bridge = bridge.replace("/etc/mosquitto/certs/site-a.key", str(tls_material.client_key))
    directives = [ln for ln in bridge.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert not [ln for ln in directives if "/etc/mosquitto" in ln], "a path the test did not rewrite"
    local = ShippedBroker(tmp_path / "local", "gia.conf", extra=bridge)
    local.start()
    try:
        central_args = central.client_args()
        sub = subprocess.Popen(
            [find_binary("mosquitto_sub"), *central_args, "-t", "gia/#", "-v", "-W", "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The bridge announces itself on the central broker...
            up = _central_sub(central, "gia/site-a/bridge")
            assert up == "gia/site-a/bridge 1", local.log_tail()
            # ...then carries this site's topics, and not another site's.
            assert _pub(local.port, "gia/site-b/status", "online", *GIA).returncode == 0
            assert _pub(local.port, "gia/site-a/grid/state", '{"power_w": 1200}', *GIA).returncode == 0
            got = _central_sub(central, "gia/site-a/grid/state")
            assert got == 'gia/site-a/grid/state {"power_w": 1200}'
        finally:
            sub.terminate()
            out, _ = sub.communicate(timeout=10)
        assert "gia/site-b" not in out
    finally:
        local.stop()


def _central_sub(central: MosquittoBroker, topic: str) -> str:
    args = [find_binary("mosquitto_sub"), *central.client_args(), "-t", topic, "-C", "1", "-W", "10", "-v"]
    return subprocess.run(args, capture_output=True, text=True, timeout=20).stdout.strip()
