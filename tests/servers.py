"""Real servers for integration tests: Mosquitto, InfluxDB 1.x and VictoriaMetrics as native processes.

Why native processes and not mocks: the gateway's promises (nothing lost across a broker outage,
idempotent InfluxDB writes, TLS and auth that really refuse) only mean something against the real
thing. Each server runs on a free loopback port in its own temp dir, is waited for with a deadline and
is always stopped (terminate, then kill after a bound). Every server object can be taken DOWN and
brought back UP on the same port and data dir (`stop()` / `start()`), which outage tests need.

Fixtures (registered by tests/conftest.py):

* ``mosquitto`` (session) / ``mosquitto_fresh`` (function): anonymous plain broker.
* ``mosquitto_auth`` (function): ``allow_anonymous false`` + password file (``username``/``password``).
* ``mosquitto_tls`` (function): TLS listener (mqtts://) with a throwaway CA, anonymous allowed.
* ``mosquitto_mtls`` (function): TLS listener that requires a client certificate.
* ``mosquitto_persistent`` (function): persistence on; QoS 1 sessions survive ``stop()``/``start()``.
* ``mosquitto_factory`` (function): ``mosquitto_factory(auth=..., tls=..., require_certificate=...,
  persistence=...)`` for any other combination; all are stopped at test end.
* ``tls_material`` (session): the CA, server and client certificates (``TlsMaterial``).
* ``influxdb`` (session) / ``influxdb_fresh`` (function): InfluxDB 1.x; ``influxdb_factory(auth=True,
  tls=True)`` gives one with ``auth-enabled`` and an admin user and/or https with the test CA.
* ``victoriametrics`` (session) / ``victoriametrics_fresh`` / ``victoriametrics_tls`` (function):
  VictoriaMetrics, the available real server for the InfluxDB v2 *write* API.
* ``postgres`` (session): PostgreSQL 15 with password (SCRAM) auth; ``postgres_db`` (function) gives a
  fresh database on it (``PostgresDatabase``: url without password, password_file, dsn());
  ``postgres_factory`` (function) a server of one's own, for stop()/start() (restart) tests.
* ``opcua_sim_factory`` (function): ``make(node_map, roots=(...))`` runs ``gia sim NODE_MAP`` as its own
  process, an asyncua OPC UA server on a free port (``url``); ``stop()``/``start()`` restart it on the
  same port, as a real server restart does (sessions and subscriptions gone).
* ``make_opcua_certificates(dir)``: RSA application certificates for OPC UA Basic256Sha256 (server,
  client, and a client the server does not trust), generated with ``cryptography``.

A missing binary fails the test when the environment variable CI is set, and skips it otherwise with
the apt-get command that installs it.

`start()`/`stop()` block for up to a few seconds; from async tests call them through
``await asyncio.to_thread(server.stop)`` when the event loop must keep running meanwhile.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

START_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 5.0
HOST: Final = "127.0.0.1"

_APT: Final = {
    "mosquitto": "mosquitto",
    "mosquitto_passwd": "mosquitto",
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
    "influxd": "influxdb",
    "victoria-metrics": "victoria-metrics",
    "initdb": "postgresql",
    "postgres": "postgresql",
}


# -- helpers ----------------------------------------------------------------------------------------
def find_binary(name: str) -> str:
    """Path of a server binary; fail (CI) or skip (elsewhere) with the install command when missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path:
        return path
    msg = f"{name} not found; install it: apt-get install -y {_APT.get(name, name)}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def free_port(host: str = HOST) -> int:
    """A port nobody uses right now, outside the ephemeral range (the server binds it next)."""
    from drivers.sim.server import free_tcp_port

    return free_tcp_port(host)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    ca_file: Path | None = None,
) -> tuple[int, bytes]:
    """A tiny stdlib HTTP call for the harness (status, body); never raises on HTTP status codes."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def signal_child(proc: Any, sig: int) -> None:
    """Signal an asyncio child process without reaping it.

    `asyncio.subprocess.Process.send_signal` goes through `Popen.send_signal`, which first polls the
    child with `waitpid(WNOHANG)`: when the child has just exited, that poll reaps it behind the back of
    asyncio's child watcher, which then reports exit code 255 ("Unknown child process"). `os.kill` does
    not reap; a zombie takes the signal harmlessly, a reaped child raises ProcessLookupError (ignored).
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when its parent goes away."""
    import ctypes

    pr_set_pdeathsig, sigkill = 1, 9
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sigkill)


class ServerProcess:
    """One native server process: start with a readiness deadline, stop with terminate-then-kill."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        #: CA that signed the server certificate when the server speaks TLS, else None.
        self.ca_file: Path | None = None

    def _http(self, method: str, url: str, **kw: Any) -> tuple[int, bytes]:
        return http(method, url, ca_file=self.ca_file, **kw)

    # subclasses provide the command line and the readiness probe
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start (again, same port and data dir) and return once the server answers."""
        if self.running:
            return
        log = self.log_path.open("ab")
        # Started from the main thread, the server gets SIGKILL if pytest itself dies (kill -9, timeout),
        # so no server outlives its test run. Not from other threads: PR_SET_PDEATHSIG fires when the
        # starting *thread* exits, which for asyncio.to_thread would be mid-test.
        main = threading.current_thread() is threading.main_thread()
        try:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if main and sys.platform == "linux" else None,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode} while starting:\n{self.log_tail()}"
                )
            if self.ready():
                time.sleep(0.05)  # another process on our port answers the probe; ours has then exited
                if self._proc.poll() is None:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout} s:\n{self.log_tail()}")

    def stop(self, *, kill: bool = False, timeout: float = STOP_TIMEOUT_S) -> None:
        """Take the server down: SIGTERM (clean shutdown; `kill=True` sends SIGKILL, a crash)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- TLS material -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsMaterial:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and a client cert (PEM files)."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: A second CA that signed nothing here: a client trusting it must fail to verify the broker.
    other_ca_file: Path


def make_tls_material(directory: Path) -> TlsMaterial:
    """Generate the certificates with `cryptography` (EC P-256: fast to generate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def make_leaf(
        ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, *, server: bool
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("GIA test CA")
    _, other_ca = make_ca("GIA other CA")
    srv_key, srv_cert = make_leaf(ca_key, ca_cert, "localhost", server=True)
    cli_key, cli_cert = make_leaf(ca_key, ca_cert, "gia-test-client", server=False)

    m = TlsMaterial(
        ca_file=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca_file=directory / "other-ca.crt",
    )
    pem = serialization.Encoding.PEM
    m.ca_file.write_bytes(ca_cert.public_bytes(pem))
    m.other_ca_file.write_bytes(other_ca.public_bytes(pem))
    m.server_cert.write_bytes(srv_cert.public_bytes(pem))
    m.client_cert.write_bytes(cli_cert.public_bytes(pem))
    write_key(srv_key, m.server_key)
    write_key(cli_key, m.client_key)
    return m


# -- Mosquitto --------------------------------------------------------------------------------------
class MosquittoBroker(ServerProcess):
    """A Mosquitto broker on 127.0.0.1:port.

    Attributes: host, port, url (mqtt:// or mqtts://), username/password (None unless auth),
    tls (bool), ca_file, cert_file/key_file (client certificate, None without TLS), require_certificate,
    persistence, workdir, log_path. Methods: start(), stop(kill=False), restart(), running, log_tail().
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        auth: bool = False,
        username: str = "gia",
        password: str = "gia-test-password",
        tls: TlsMaterial | None = None,
        require_certificate: bool = False,
        persistence: bool = False,
    ) -> None:
        super().__init__(workdir)
        self.binary = find_binary("mosquitto")
        self.host = HOST
        self.port = port or free_port()
        self.auth = auth
        self.username: str | None = username if auth else None
        self.password: str | None = password if auth else None
        self.tls = tls is not None
        self.tls_material = tls
        self.ca_file = tls.ca_file if tls else None
        self.cert_file: Path | None = tls.client_cert if tls else None
        self.key_file: Path | None = tls.client_key if tls else None
        self.require_certificate = require_certificate
        self.persistence = persistence
        self.config_path = workdir / "mosquitto.conf"
        self._write_config()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def _write_config(self) -> None:
        lines = [f"listener {self.port} {self.host}"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto', which cannot read our files
        lines += [f"log_dest file {self.workdir / 'broker.log'}", "log_type all", "connection_messages true"]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self.auth:
            pwfile = self.workdir / "passwords"
            assert self.username is not None
            assert self.password is not None
            subprocess.run(
                [find_binary("mosquitto_passwd"), "-c", "-b", str(pwfile), self.username, self.password],
                check=True,
                capture_output=True,
            )
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls_material is not None:
            t = self.tls_material
            lines += [
                f"cafile {t.ca_file}",
                f"certfile {t.server_cert}",
                f"keyfile {t.server_key}",
                "tls_version tlsv1.2",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def ready(self) -> bool:
        return port_open(self.host, self.port)

    def log_tail(self, n: int = 30) -> str:
        broker_log = self.workdir / "broker.log"
        text = super().log_tail(n)
        with contextlib.suppress(OSError):
            text += "\n" + "\n".join(broker_log.read_text(errors="replace").splitlines()[-n:])
        return text

    def client_args(self) -> list[str]:
        """Arguments for mosquitto_pub/mosquitto_sub to reach this broker (auth and TLS included)."""
        args = ["-h", self.host, "-p", str(self.port)]
        if self.username is not None and self.password is not None:
            args += ["-u", self.username, "-P", self.password]
        if self.ca_file is not None:
            args += ["--cafile", str(self.ca_file)]
        if self.require_certificate and self.cert_file is not None and self.key_file is not None:
            args += ["--cert", str(self.cert_file), "--key", str(self.key_file)]
        return args


# -- InfluxDB 1.x -----------------------------------------------------------------------------------
class InfluxDB1(ServerProcess):
    """InfluxDB 1.x (`influxd run -config FILE`) on 127.0.0.1:port.

    Attributes: host, port, url (https:// with `tls`), username/password (None unless auth), tls (bool),
    ca_file (None without TLS), workdir, log_path.
    Methods: query(influxql, db=None) -> dict, create_db(name), write(lines, db, precision="ms"),
    points(measurement, db) -> list[dict], start(), stop(kill=False), restart(), running.
    """

    name = "influxd"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        auth: bool = False,
        username: str = "admin",
        password: str = "gia-test-password",
        tls: TlsMaterial | None = None,
    ) -> None:
        super().__init__(workdir)
        self.binary = find_binary("influxd")
        self.tls = tls is not None
        self.ca_file = tls.ca_file if tls else None
        https = (
            f'  https-enabled = true\n  https-certificate = "{tls.server_cert}"\n'
            f'  https-private-key = "{tls.server_key}"\n'
            if tls
            else ""
        )
        self.host = HOST
        self.port = port or free_port()
        self.rpc_port = free_port()
        self.auth = auth
        self.username: str | None = username if auth else None
        self.password: str | None = password if auth else None
        self.config_path = workdir / "influxdb.conf"
        self._user_created = False
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{workdir / "meta"}"
[data]
  dir = "{workdir / "data"}"
  wal-dir = "{workdir / "wal"}"
  query-log-enabled = false
[http]
  bind-address = "{self.host}:{self.port}"
  auth-enabled = {"true" if auth else "false"}
  log-enabled = false
{https}[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"""
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "run", "-config", str(self.config_path)]

    def ready(self) -> bool:
        try:
            status, _ = self._http("GET", f"{self.url}/ping", timeout=0.5)
        except OSError:
            return False
        return status == 204

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        super().start(timeout)
        if self.auth and not self._user_created:
            # The first admin user may be created without credentials; it persists in the meta dir.
            self._query_raw(
                f"CREATE USER \"{self.username}\" WITH PASSWORD '{self.password}' WITH ALL PRIVILEGES",
                db=None,
                method="POST",
                credentials=False,
            )
            self._user_created = True

    def _query_raw(self, q: str, *, db: str | None, method: str, credentials: bool = True) -> dict[str, Any]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        if credentials and self.username is not None and self.password is not None:
            params["u"], params["p"] = self.username, self.password
        url = f"{self.url}/query?{urllib.parse.urlencode(params)}"
        status, body = self._http(method, url)
        if status != 200:
            raise RuntimeError(f"InfluxDB query {q!r} -> HTTP {status}: {body.decode(errors='replace')}")
        result: dict[str, Any] = json.loads(body)
        for r in result.get("results", []):
            if "error" in r:
                raise RuntimeError(f"InfluxDB query {q!r} failed: {r['error']}")
        return result

    def query(self, influxql: str, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL (times as epoch ms); raises RuntimeError on any error. Returns the JSON."""
        method = "GET" if influxql.lstrip().upper().startswith(("SELECT", "SHOW")) else "POST"
        return self._query_raw(influxql, db=db, method=method)

    def create_db(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def write(self, lines: str | bytes, db: str, precision: str = "ms") -> None:
        body = lines.encode() if isinstance(lines, str) else lines
        params = {"db": db, "precision": precision}
        if self.username is not None and self.password is not None:
            params["u"], params["p"] = self.username, self.password
        status, resp = self._http("POST", f"{self.url}/write?{urllib.parse.urlencode(params)}", body=body)
        if status != 204:
            raise RuntimeError(f"InfluxDB write -> HTTP {status}: {resp.decode(errors='replace')}")

    def points(self, measurement: str, db: str, where: str = "") -> list[dict[str, Any]]:
        """Every point of a measurement as dicts of column -> value (tags included, time in ms)."""
        q = f'SELECT * FROM "{measurement}"' + (f" WHERE {where}" if where else "") + " ORDER BY time"
        result = self.query(q, db=db)
        out: list[dict[str, Any]] = []
        for series in result["results"][0].get("series", []):
            cols = series["columns"]
            out.extend(dict(zip(cols, row, strict=True)) for row in series["values"])
        return out


# -- VictoriaMetrics --------------------------------------------------------------------------------
class VictoriaMetrics(ServerProcess):
    """VictoriaMetrics single node on 127.0.0.1:port: accepts InfluxDB line protocol on /api/v2/write.

    Attributes: host, port, url (https:// with `tls`), tls (bool), ca_file (None without TLS), data_dir,
    workdir, log_path. Methods: export(match, *, start_ms=None,
    wait_for=None, timeout=10) -> list[dict] (the /api/v1/export JSON lines: metric, values,
    timestamps), flush(), start(), stop(kill=False), restart(), running.

    Runs with `-dedup.minScrapeInterval=1ms`: like InfluxDB, one sample per series and timestamp is
    kept, so a replayed write reads back once (without it VictoriaMetrics keeps raw duplicates).
    """

    name = "victoria-metrics"

    def __init__(
        self, workdir: Path, *, port: int | None = None, dedup: bool = True, tls: TlsMaterial | None = None
    ) -> None:
        super().__init__(workdir)
        self.tls = tls is not None
        self.tls_material = tls
        self.ca_file = tls.ca_file if tls else None
        self.binary = find_binary("victoria-metrics")
        self.host = HOST
        self.port = port or free_port()
        self.data_dir = workdir / "data"
        self.dedup = dedup

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            self.binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-loggerLevel=WARN",
        ]
        if self.dedup:
            cmd.append("-dedup.minScrapeInterval=1ms")
        if self.tls_material is not None:
            t = self.tls_material
            cmd += ["-tls", f"-tlsCertFile={t.server_cert}", f"-tlsKeyFile={t.server_key}"]
        return cmd

    def ready(self) -> bool:
        try:
            status, body = self._http("GET", f"{self.url}/health", timeout=0.5)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def flush(self) -> None:
        """Make recent writes searchable now (they are otherwise buffered for about a second)."""
        status, body = self._http("GET", f"{self.url}/internal/force_flush")
        if status != 200:
            raise RuntimeError(f"force_flush -> HTTP {status}: {body.decode(errors='replace')}")

    def export_once(self, match: str, *, start_ms: int | None = None) -> list[dict[str, Any]]:
        params = [("match[]", match)]
        if start_ms is not None:
            params.append(("start", str(start_ms / 1000)))
        status, body = self._http("GET", f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}")
        if status != 200:
            raise RuntimeError(f"export {match!r} -> HTTP {status}: {body.decode(errors='replace')}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def export(
        self,
        match: str,
        *,
        start_ms: int | None = 0,
        wait_for: Callable[[list[dict[str, Any]]], bool] | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Series matching a selector, e.g. '{__name__=~"meter_.*",site="s1"}', after a flush.

        Polls with a deadline until `wait_for(result)` holds (default: at least one series) and
        returns the last result; the caller's assertions then decide (an empty list is returned on
        timeout, so a test of "nothing was written" can pass `wait_for=lambda r: True`).
        """
        wait_for = wait_for or bool
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            result = self.export_once(match, start_ms=start_ms)
            if wait_for(result) or time.monotonic() >= deadline:
                return result
            time.sleep(0.1)


# -- PostgreSQL -------------------------------------------------------------------------------------
PG_BIN: Final = Path("/usr/lib/postgresql/15/bin")


def find_pg_binary(name: str) -> str:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/15/bin."""
    path = PG_BIN / name
    if path.is_file():
        return str(path)
    return find_binary(name)


@dataclass(frozen=True)
class PostgresDatabase:
    """One database on a test server: `url` never holds the password (it is in `password_file`)."""

    host: str
    port: int
    name: str
    user: str
    password: str
    password_file: Path

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"

    def dsn(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.name} user={self.user} password={self.password}"


class PostgresServer(ServerProcess):
    """PostgreSQL (Debian's `postgresql`, 15) in its own data dir on 127.0.0.1:port, never the machine's own.

    `initdb` makes a cluster whose superuser `gia` logs in with a password (scram-sha-256, also on
    loopback), so the hub's password handling is exercised. PostgreSQL refuses to run as root: as root,
    initdb and the server run as the `postgres` user (`setpriv`, which execs, so signals reach the server
    itself) in a data dir that user owns. `stop()` is a fast shutdown (SIGINT: clients disconnected,
    clean checkpoint); `stop(kill=True)` a crash (SIGKILL; crash recovery at the next start).
    Methods: create_database(name) -> PostgresDatabase, execute(sql, dbname="postgres").
    """

    name = "postgres"
    user = "gia"

    def __init__(self, workdir: Path, *, port: int | None = None, password: str = "gia-test-pg-password") -> None:
        super().__init__(workdir)
        self.initdb = find_pg_binary("initdb")
        self.binary = find_pg_binary("postgres")
        self.host = HOST
        self.port = port or free_port()
        self.password = password
        self.password_file = workdir / "db-password"
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        # pytest's temp dirs are private to root; the server user needs a directory of its own.
        import tempfile

        self.data_root = Path(tempfile.mkdtemp(prefix="gia-pg-"))
        self.data_dir = self.data_root / "data"
        self._initialised = False

    def _as_server_user(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]

    def _init_cluster(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.data_root, "postgres", "postgres")
        pwfile = self.data_root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            subprocess.run(
                self._as_server_user(
                    [
                        self.initdb,
                        "-D",
                        str(self.data_dir),
                        "-U",
                        self.user,
                        f"--pwfile={pwfile}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--no-sync",
                        "--locale=C",
                    ]
                ),
                check=True,
                capture_output=True,
                timeout=60,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from None
        finally:
            pwfile.unlink()
        self._initialised = True

    def command(self) -> list[str]:
        return self._as_server_user(
            [
                self.binary,
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-h",
                self.host,
                "-k",
                "",  # no Unix socket: TCP on loopback only
                "-c",
                "fsync=off",  # a test cluster: speed over durability across power cuts (not across kills)
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=50",
            ]
        )

    def ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        try:
            self.execute("SELECT 1")
        except Exception:
            return False
        return True

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if not self._initialised:
            self._init_cluster()
        super().start(timeout)

    def stop(self, *, kill: bool = False, timeout: float = STOP_TIMEOUT_S) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(9 if kill else 2)  # SIGKILL: a crash; SIGINT: PostgreSQL's fast shutdown
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def remove(self) -> None:
        """Stop and delete the data dir (it lives outside pytest's temp dirs)."""
        self.stop()
        shutil.rmtree(self.data_root, ignore_errors=True)

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            connect_timeout=2,
            autocommit=True,
        ) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type,unused-ignore]  # psycopg < 3.3 types execute() narrower
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> PostgresDatabase:
        self.execute(f'CREATE DATABASE "{name}"')
        return PostgresDatabase(self.host, self.port, name, self.user, self.password, self.password_file)


# -- fixtures ---------------------------------------------------------------------------------------
_S = TypeVar("_S", bound=ServerProcess)


def _running(server: _S) -> Iterator[_S]:
    """Start, hand over, and always stop (even when the test or the start itself failed)."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A shared anonymous broker for the whole session: do not stop it (use mosquitto_fresh)."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    yield from _running(broker)


MosquittoFactory = Callable[..., MosquittoBroker]


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial
) -> Iterator[MosquittoFactory]:
    """`make(auth=False, tls=False, require_certificate=False, persistence=False, port=None)`."""
    made: list[MosquittoBroker] = []

    def make(
        *,
        auth: bool = False,
        tls: bool = False,
        require_certificate: bool = False,
        persistence: bool = False,
        port: int | None = None,
        start: bool = True,
    ) -> MosquittoBroker:
        broker = MosquittoBroker(
            tmp_path_factory.mktemp("mosquitto"),
            port=port,
            auth=auth,
            tls=tls_material if tls or require_certificate else None,
            require_certificate=require_certificate,
            persistence=persistence,
        )
        made.append(broker)
        if start:
            broker.start()
        return broker

    try:
        yield make
    finally:
        for b in made:
            b.stop()


@pytest.fixture
def mosquitto_fresh(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    return mosquitto_factory()


@pytest.fixture
def mosquitto_auth(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    return mosquitto_factory(auth=True)


@pytest.fixture
def mosquitto_tls(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    return mosquitto_factory(tls=True)


@pytest.fixture
def mosquitto_mtls(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    return mosquitto_factory(tls=True, require_certificate=True)


@pytest.fixture
def mosquitto_persistent(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    return mosquitto_factory(persistence=True)


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """A shared InfluxDB 1.x for the session: create your own database, do not stop it."""
    server = InfluxDB1(tmp_path_factory.mktemp("influxdb"))
    yield from _running(server)


InfluxFactory = Callable[..., InfluxDB1]


@pytest.fixture
def influxdb_factory(tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial) -> Iterator[InfluxFactory]:
    """`make(auth=False, tls=False, port=None, start=True)`: fresh InfluxDB 1.x, stopped at test end."""
    made: list[InfluxDB1] = []

    def make(*, auth: bool = False, tls: bool = False, port: int | None = None, start: bool = True) -> InfluxDB1:
        server = InfluxDB1(tmp_path_factory.mktemp("influxdb"), port=port, auth=auth, tls=tls_material if tls else None)
        made.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        for s in made:
            s.stop()


@pytest.fixture
def influxdb_fresh(influxdb_factory: InfluxFactory) -> InfluxDB1:
    return influxdb_factory()


@pytest.fixture(scope="session")
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A shared VictoriaMetrics for the session: use distinct tags per test, do not stop it."""
    server = VictoriaMetrics(tmp_path_factory.mktemp("victoriametrics"))
    yield from _running(server)


@pytest.fixture
def victoriametrics_fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path_factory.mktemp("victoriametrics"))
    yield from _running(server)


@pytest.fixture
def victoriametrics_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial
) -> Iterator[VictoriaMetrics]:
    """VictoriaMetrics serving https:// with the throwaway CA (`ca_file`)."""
    server = VictoriaMetrics(tmp_path_factory.mktemp("victoriametrics"), tls=tls_material)
    yield from _running(server)


# -- OPC UA -----------------------------------------------------------------------------------------
class OpcuaSim(ServerProcess):
    """`gia sim NODE_MAP --listen opc.tcp://127.0.0.1:PORT` (asyncua server) as a process."""

    name = "opcua-sim"

    def __init__(self, workdir: Path, node_map: str, *, roots: tuple[str, ...] = (), port: int | None = None) -> None:
        super().__init__(workdir)
        self.node_map = node_map
        self.roots = roots
        self.port = port or free_port()
        self.url = f"opc.tcp://{HOST}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gateway", "sim", self.node_map, "--listen", self.url]
        for root in self.roots:
            cmd += ["--root", root]
        return cmd

    def ready(self) -> bool:
        return port_open(HOST, self.port)


OpcuaSimFactory = Callable[..., OpcuaSim]


@pytest.fixture
def opcua_sim_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpcuaSimFactory]:
    """`make(node_map, roots=(), start=True)`: an OPC UA simulator process, stopped at test end."""
    made: list[OpcuaSim] = []

    def make(node_map: str, *, roots: tuple[str, ...] = (), start: bool = True) -> OpcuaSim:
        server = OpcuaSim(tmp_path_factory.mktemp("opcua"), node_map, roots=roots)
        made.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        for s in made:
            s.stop()


@dataclass(frozen=True)
class OpcuaCertificates:
    """PEM files: the server's pair, a trusted client's pair, an untrusted client's pair."""

    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def make_opcua_certificates(directory: Path) -> OpcuaCertificates:
    """Self-signed RSA-2048/SHA-256 application certificates as OPC UA 10000-6, 6.2.2 describes them:
    the application URI in subjectAltName, key usages for signing and key encipherment."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def make(stem: str, cn: str, uri: str, *, server: bool) -> tuple[Path, Path]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=True,
                    data_encipherment=True,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(uri),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address(HOST)),
                    ]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    server = make("server", "GIA test OPC UA server", "urn:gia-test:opcua-server", server=True)
    client = make("client", "GIA gateway", "urn:gia-test:gateway", server=False)
    stranger = make("stranger", "Unknown client", "urn:gia-test:stranger", server=False)
    return OpcuaCertificates(*server, *client, *stranger)


__all__ = [
    "InfluxDB1",
    "MosquittoBroker",
    "OpcuaCertificates",
    "OpcuaSim",
    "PostgresDatabase",
    "PostgresServer",
    "ServerProcess",
    "TlsMaterial",
    "VictoriaMetrics",
    "find_binary",
    "free_port",
    "http",
    "make_opcua_certificates",
    "make_tls_material",
    "port_open",
]


# -- PostgreSQL fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A shared PostgreSQL for the session: use `postgres_db` for a database of your own; do not stop it."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        yield from _running(server)
    finally:
        server.remove()


@pytest.fixture
def postgres_db(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[PostgresDatabase]:
    """A fresh, empty database on the shared server, dropped at test end."""
    import re
    import uuid

    name = ("t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()))[:40] + "_" + uuid.uuid4().hex[:8]
    db = postgres.create_database(name)
    try:
        yield db
    finally:
        with contextlib.suppress(Exception):
            postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


PostgresFactory = Callable[..., PostgresServer]


@pytest.fixture
def postgres_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresFactory]:
    """`make(port=None, start=True)`: a PostgreSQL server of the test's own (restart tests), removed at end."""
    made: list[PostgresServer] = []

    def make(*, port: int | None = None, start: bool = True) -> PostgresServer:
        server = PostgresServer(tmp_path_factory.mktemp("postgres"), port=port)
        made.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        for s in made:
            s.remove()
