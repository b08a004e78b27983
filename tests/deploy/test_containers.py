"""deploy/compose.yaml, deploy/Dockerfile and .dockerignore, checked structurally (no container engine
runs here): services, volumes, secrets and ports agree with each other and with the agent's config;
nothing has a default password; the image runs as a non-root user with a /healthz health check."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, REPO

COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$", re.I)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def _secret_names(service: dict[str, Any]) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"gia", "mosquitto", "influxdb", "grafana"}
    for name, svc in compose["services"].items():
        assert svc.get("restart") == "unless-stopped", name
        assert "image" in svc, name
        for dep in svc.get("depends_on", {}):
            assert dep in compose["services"], f"{name} depends on unknown {dep}"
    assert compose["services"]["gia"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY.parent / "deploy/Dockerfile").is_file()


def test_named_volumes_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                used.add(src)
    assert used == declared


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    """Relative mounts point at files in deploy/; gia.yaml is the operator's copy of the example and
    grafana/ is provisioned by its own owner, so those two are only checked for being referenced."""
    operator_made = {"./gia.yaml", "./grafana"}
    refs = set()
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                refs.add(src)
                if src not in operator_made:
                    assert (DEPLOY / src).exists(), src
    assert operator_made <= refs


def test_secrets_come_from_files_and_nothing_has_a_default_password(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    used = set()
    for name, svc in compose["services"].items():
        used |= set(_secret_names(svc))
        for key, value in _env(svc).items():
            if SECRET_WORDS.search(key):
                assert key.endswith(("_FILE", "__FILE")), f"{name}: {key} must point at a secret file"
                assert value.startswith("/run/secrets/"), f"{name}: {key}={value}"
                assert value.removeprefix("/run/secrets/") in _secret_names(svc), f"{name}: {key} not mounted"
            assert not re.search(r"\$\{[^}]*:-[^}]*(pass|secret|token)", value, re.I), f"{name}: default secret"
    assert used == set(declared)
    for spec in declared.values():
        assert set(spec) == {"file"}
        assert spec["file"].startswith("./secrets/")
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "deploy/secrets" in ignore


def test_ports_are_loopback_and_distinct(compose: dict[str, Any]) -> None:
    host_ports = []
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            ip, host, _container = port.split(":")
            assert ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            host_ports.append(host)
    assert len(host_ports) == len(set(host_ports))
    gia = compose["services"]["gia"]
    assert gia["ports"] == ["127.0.0.1:8080:8080"]
    assert _env(gia)["GIA_HTTP__LISTEN"].endswith(":8080")


def test_grafana_provisioning_path(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert "./grafana:/etc/gia-grafana:ro" in grafana["volumes"]
    assert _env(grafana)["GF_PATHS_PROVISIONING"] == "/etc/gia-grafana/provisioning"
    assert _env(grafana)["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")


def test_gia_service_environment_is_a_valid_config(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example config + the compose service's GIA_ variables (secret paths mapped to temp files)
    load as a valid configuration with the sinks pointing at the compose services."""
    from gateway.settings import load_settings

    gia = compose["services"]["gia"]
    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir()
    mapping: dict[str, Path] = {}
    for entry in gia["secrets"]:
        src, target = (entry, f"/run/secrets/{entry}") if isinstance(entry, str) else (entry["source"], entry["target"])
        f = secrets_dir / src
        f.write_text("0123456789abcdef" * 4 + "\n")
        mapping[target] = f
    example = (DEPLOY / "gia.example.yaml").read_text().replace("/var/lib/gia", str(tmp_path / "data"))
    for target, f in mapping.items():
        example = example.replace(target, str(f))
    config = tmp_path / "gia.yaml"
    config.write_text(example)
    for key in [k for k in os.environ if k.startswith("GIA_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for key, value in _env(gia).items():
        value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
        monkeypatch.setenv(key, str(mapping.get(value, value)))
    settings = load_settings(config)
    assert settings.http.listen == "0.0.0.0:8080"
    assert settings.influxdb is not None
    assert settings.influxdb.url == "http://influxdb:8086"
    assert settings.influxdb.token_value() == "0123456789abcdef" * 4
    assert settings.mqtt is not None
    assert settings.mqtt.url == "mqtt://mosquitto:1883"
    assert settings.mqtt.password_value() == "0123456789abcdef" * 4


def test_mosquitto_service_builds_its_password_file_from_the_secret(compose: dict[str, Any]) -> None:
    mosq = compose["services"]["mosquitto"]
    script = "\n".join(mosq["command"])
    assert "mosquitto_passwd -c -b /mosquitto/data/passwd gia" in script
    assert "$$(cat /run/secrets/mqtt_password)" in script, "$$ keeps compose from interpolating it"
    assert "./mosquitto/compose.conf:/mosquitto/config/mosquitto.conf:ro" in mosq["volumes"]
    conf = (DEPLOY / "mosquitto/compose.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "password_file /mosquitto/data/passwd" in conf


# -- Dockerfile --------------------------------------------------------------------------------------
def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def test_dockerfile_base_user_and_healthcheck(dockerfile: list[tuple[str, str]]) -> None:
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for word, rest in dockerfile if word == "ARG" and "=" in rest}
    froms = [rest for word, rest in dockerfile if word == "FROM"]
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), "one base, so buildx picks each platform's"
    users = [rest for word, rest in dockerfile if word == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    health = [rest for word, rest in dockerfile if word == "HEALTHCHECK"]
    assert len(health) == 1
    assert "http://127.0.0.1:8080/healthz" in health[0]
    assert ("EXPOSE", "8080") in dockerfile
    entry = [rest for word, rest in dockerfile if word == "ENTRYPOINT"]
    cmd = [rest for word, rest in dockerfile if word == "CMD"]
    assert yaml.safe_load(entry[-1]) == ["gia"]
    assert yaml.safe_load(cmd[-1])[:3] == ["run", "--config", "/etc/gia/gia.yaml"]


def test_dockerfile_bakes_in_no_secret(dockerfile: list[tuple[str, str]]) -> None:
    for word, rest in dockerfile:
        if word in ("ENV", "ARG"):
            for token in shlex.split(rest):
                key = token.split("=")[0]
                assert not SECRET_WORDS.search(key), f"{word} {token}: secrets come from mounted files"
        if word in ("COPY", "ADD"):
            assert "secret" not in rest.lower()
            assert ".env" not in rest


def test_dockerfile_copies_only_what_exists(dockerfile: list[tuple[str, str]]) -> None:
    for word, rest in dockerfile:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for src in sources:
                assert (REPO / src).exists(), src


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "deploy/secrets", "deploy/.env", "deploy/gia.yaml", "gia-demo"):
        assert entry in ignore
