"""Basic256Sha256 with certificates against a real asyncua server that trusts only the gateway's certificate
and knows one user: what works is read, every refusal is a clear permanent error, the password never leaks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from drivers.base import DriverError, PermanentError
from drivers.model import Quality
from drivers.opcua.config import OpcuaDeviceConfig
from drivers.opcua.driver import driver_from_config
from drivers.opcua.nodemap import load_node_map
from drivers.opcua.sim import OpcuaSimServer, SimSecurity
from tests.servers import OpcuaCertificates, free_port, make_opcua_certificates

pytestmark = [pytest.mark.opcua, pytest.mark.asyncio(loop_scope="module")]

PASSWORD = "correct horse battery staple"


@dataclass
class Secure:
    url: str
    certs: OpcuaCertificates
    dir: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secure]:
    directory = tmp_path_factory.mktemp("opcua-pki")
    certs = make_opcua_certificates(directory)
    (directory / "password").write_text(PASSWORD + "\n")
    (directory / "wrong-password").write_text("Tr0ub4dor&3\n")
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    sim = OpcuaSimServer(
        load_node_map("iec61400-25-wind-turbine"),
        listen=url,
        security=SimSecurity(certs.server_cert, certs.server_key, trusted=(certs.client_cert,)),
        users={"gia": PASSWORD},
        anonymous=True,  # for the Sign-only test: a password needs SignAndEncrypt
    )
    await sim.start()
    try:
        yield Secure(url, certs, directory)
    finally:
        await sim.stop()


def config(s: Secure, **kw: Any) -> OpcuaDeviceConfig:
    security = {
        "certificate": str(s.certs.client_cert),
        "private_key": str(s.certs.client_key),
        "server_certificate": str(s.certs.server_cert),
        **kw.pop("security", {}),
    }
    return OpcuaDeviceConfig.model_validate(
        {
            "id": "wtg01",
            "driver": "opcua",
            "endpoint": s.url,
            "map": "iec61400-25-wind-turbine",
            "mode": "polling",
            "timeout_s": 2,
            "security": security,
            "username": "gia",
            "password_file": "password",
            **kw,
        }
    )


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
async def test_a_trusted_gateway_reads(secure: Secure, mode: str) -> None:
    """With its user over SignAndEncrypt; anonymous over Sign (a password needs encryption: config check)."""
    user = {} if mode == "SignAndEncrypt" else {"username": None, "password_file": None}
    driver = driver_from_config(config(secure, security={"mode": mode}, **user), base_dir=secure.dir)
    async with driver:
        samples = await driver.read(datetime.now(UTC))
    assert len(samples) == 7 and all(s.quality is Quality.GOOD for s in samples)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"password_file": "wrong-password"}, "check 'username' and the password in 'password_file'"),
        ({"username": "admin"}, "check 'username' and the password in 'password_file'"),
        ({"security": {"certificate": "stranger.pem", "private_key": "stranger.key"}}, "BadCertificateUntrusted"),
    ],
)
async def test_each_refusal_is_a_permanent_error_naming_the_fix(
    secure: Secure, change: dict[str, Any], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = driver_from_config(config(secure, **change), base_dir=secure.dir)
    async with driver:
        with pytest.raises(PermanentError, match=message):
            await driver.read(datetime.now(UTC))
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("asyncua"))
    assert "BadUserAccessDenied" in ours or "BadCertificateUntrusted" in ours  # the refusal is logged ...
    assert PASSWORD not in ours and "Tr0ub4dor" not in ours  # ... never the password


async def test_a_server_that_is_not_the_pinned_one_is_not_trusted(secure: Secure) -> None:
    """The gateway encrypts for the pinned certificate: another server cannot even answer."""
    cfg = config(secure, security={"server_certificate": str(secure.certs.stranger_cert)}, timeout_s=0.5)
    driver = driver_from_config(cfg, base_dir=secure.dir)
    async with driver:
        with pytest.raises(DriverError, match=r"not connected to .*security.server_certificate"):
            await driver.read(datetime.now(UTC))


async def test_without_security_the_secure_server_refuses(secure: Secure) -> None:
    cfg = OpcuaDeviceConfig.model_validate(
        {"id": "x", "driver": "opcua", "endpoint": secure.url, "map": "iec61400-25-wind-turbine", "mode": "polling"}
    )
    driver = driver_from_config(cfg, base_dir=secure.dir)
    async with driver:
        with pytest.raises(PermanentError, match="offers no endpoint with this security policy"):
            await driver.read(datetime.now(UTC))


async def test_asyncua_gets_key_material_as_bytes_not_paths(secure: Secure, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncua opens a path in a worker thread; a connect cancelled meanwhile left client.pem open for the
    garbage collector (a ResourceWarning that failed an unrelated test in CI). It is handed bytes."""
    from asyncua.crypto import uacrypto

    from drivers.opcua.session import Endpoint, Security, close_client, new_client

    handed: list[type] = []
    real = uacrypto.get_content

    async def spy(path_or_content: Any) -> bytes:
        handed.append(type(path_or_content))
        return await real(path_or_content)

    monkeypatch.setattr(uacrypto, "get_content", spy)
    sec = Security(secure.certs.client_cert, secure.certs.client_key, secure.certs.server_cert)
    client = await new_client(Endpoint(secure.url, security=sec))
    async with asyncio.timeout(10):
        await client.connect()
    await close_client(client, 2)
    assert handed and set(handed) == {bytes}, handed
