"""deploy/compose.hub.yaml, checked structurally (no container engine runs here): two hub replicas on one
PostgreSQL and one Mosquitto; each replica's environment is read by the hub's real settings loader over
deploy/hub.example.yaml (so a misspelt GIA_HUB__ variable, which pydantic would silently ignore, fails
here); the replicas share the key volume, differ in client id, publish only on 127.0.0.1; no default
passwords."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.hub.config import load_hub_settings
from tests.deploy.helpers import DEPLOY

COMPOSE = DEPLOY / "compose.hub.yaml"
HUBS = ("hub-a", "hub-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_services_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"hub-a", "hub-b", "postgres", "mosquitto"}
    for name, svc in services.items():
        assert svc.get("restart") == "unless-stopped", name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    assert services["hub-a"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # hub-b waits for hub-a's key: two replicas creating keys at once would sign with two keys
    assert services["hub-b"]["depends_on"]["hub-a"] == {"condition": "service_healthy"}
    for hub in HUBS:
        assert services[hub]["command"][:2] == ["hub", "run"]
        assert "healthcheck" in services[hub]
        assert (DEPLOY.parent / services[hub]["build"]["dockerfile"]).is_file()


def test_replicas_share_the_key_volume_and_differ_in_client_id(compose: dict[str, Any]) -> None:
    a, b = (compose["services"][h] for h in HUBS)
    assert a["volumes"] == b["volumes"]
    data_dir = a["environment"]["GIA_HUB__DATA_DIR"]
    assert any(v.split(":")[1] == data_dir and not v.startswith(".") for v in a["volumes"]), a["volumes"]
    assert a["environment"]["GIA_HUB__MQTT__CLIENT_ID"] != b["environment"]["GIA_HUB__MQTT__CLIENT_ID"]


def test_ports_only_on_loopback_and_no_default_passwords(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        for key, value in svc.get("environment", {}).items():
            if "PASSWORD" in key:
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
    declared = set(compose["secrets"])
    for name, svc in compose["services"].items():
        assert set(svc.get("secrets", [])) <= declared, name
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    used = {v.split(":")[0] for svc in compose["services"].values() for v in svc.get("volumes", [])}
    assert {u for u in used if not u.startswith(".")} == set(compose["volumes"])


@pytest.mark.parametrize("hub", HUBS)
def test_each_replicas_environment_is_read_by_the_hub(
    hub: str, compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: str(v) for k, v in compose["services"][hub]["environment"].items()}
    for key, value in env.items():
        if value.startswith("/run/secrets/"):  # the secret files, where the test can create them
            secret = tmp_path / Path(value).name
            secret.write_text("s3cret\n")
            value = str(secret)
        monkeypatch.setenv(key, value)
    settings = load_hub_settings(DEPLOY / "hub.example.yaml")
    h = settings.hub
    assert str(h.data_dir) == env["GIA_HUB__DATA_DIR"]
    assert h.database is not None and h.database.url == env["GIA_HUB__DATABASE__URL"]
    assert h.database.password_value() == "s3cret"
    assert h.mqtt is not None and h.mqtt.url == env["GIA_HUB__MQTT__URL"]
    assert h.mqtt.username == env["GIA_HUB__MQTT__USERNAME"]
    assert h.mqtt.client_id == env["GIA_HUB__MQTT__CLIENT_ID"]
    assert h.http.listen == env["GIA_HUB__HTTP__LISTEN"]
    assert h.areas, "the example's areas survive the environment overrides"
    # the URL in the environment names the compose service and the POSTGRES_USER/DB it creates
    pg = compose["services"]["postgres"]["environment"]
    assert h.database.url == f"postgresql://{pg['POSTGRES_USER']}@postgres:5432/{pg['POSTGRES_DB']}"
