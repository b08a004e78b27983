"""One OPC UA client connection per server, shared by every device on it; the only module that connects.

A wind-park controller serves twenty turbines and accepts a handful of sessions, so devices on one
endpoint (same URL, security and user) share one `OpcuaSession`, handed out by `OpcuaPool` (like
`BusPool` for Modbus and `MqttHub` for MQTT). A session is a named background task that connects,
runs every attached device's `setup` (resolve its nodes, create its subscription) on each new
connection, and waits for the connection to be lost; then it tears down and reconnects with the
shared capped, jittered backoff. A server restart therefore ends in fresh sessions and subscriptions
re-created from scratch, never in half-restored state. asyncua's own auto-reconnect stays off: one
owner of reconnects, with our backoff and our once-per-outage logging.

asyncua errors are translated at this edge: `TransientError` (retry), `PermanentError` (certificate
rejected, wrong password, no such security policy: the message names the fix).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies, uacrypto
from asyncua.observer import Observer
from asyncua.ua import uaerrors
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from drivers.backoff import Backoff
from drivers.base import PermanentError, TransientError
from drivers.cancel import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


def ns0(identifier: int) -> ua.NodeId:
    """A node of the standard namespace (0) by its numeric id."""
    return ua.NodeId(ua.Int32(identifier))


#: Status codes that reconnecting will not cure: the configuration (or the server's trust list) must change.
_PERMANENT: Final = frozenset(
    {
        StatusCodes.BadIdentityTokenInvalid,
        StatusCodes.BadIdentityTokenRejected,
        StatusCodes.BadUserAccessDenied,
        StatusCodes.BadCertificateInvalid,
        StatusCodes.BadCertificateUntrusted,
        StatusCodes.BadCertificateUriInvalid,
        StatusCodes.BadCertificateTimeInvalid,
        StatusCodes.BadCertificateRevoked,
        StatusCodes.BadCertificateUseNotAllowed,
        StatusCodes.BadSecurityPolicyRejected,
        StatusCodes.BadSecurityModeRejected,
        StatusCodes.BadSecurityChecksFailed,
        StatusCodes.BadApplicationSignatureInvalid,
    }
)
#: Service results that mean the session is gone: reconnect rather than retry the request.
_SESSION_GONE: Final = frozenset(
    {
        StatusCodes.BadSessionIdInvalid,
        StatusCodes.BadSessionClosed,
        StatusCodes.BadSessionNotActivated,
        StatusCodes.BadSecureChannelIdInvalid,
        StatusCodes.BadSecureChannelClosed,
        StatusCodes.BadConnectionClosed,
        StatusCodes.BadServerHalted,
        StatusCodes.BadShutdown,
    }
)
_FIX: Final = {
    StatusCodes.BadIdentityTokenInvalid: "check 'username' and the password in 'password_file'",
    StatusCodes.BadIdentityTokenRejected: "check 'username' and the password in 'password_file'",
    StatusCodes.BadUserAccessDenied: "check 'username' and the password in 'password_file'",
    StatusCodes.BadCertificateUntrusted: "trust the gateway's certificate on the server (its trust list)",
    StatusCodes.BadSecurityChecksFailed: "check security.server_certificate is the server's current"
    " certificate and that the server trusts the gateway's",
    StatusCodes.BadSecurityPolicyRejected: "the server does not offer this policy; check its endpoints",
    StatusCodes.BadSecurityModeRejected: "the server does not offer this mode; check its endpoints",
}
_NAMESPACE_ARRAY: Final = ns0(ObjectIds.Server_NamespaceArray)
_MAX_NODES_PER_READ: Final = ns0(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
DEFAULT_READ_CHUNK: Final = 500


def status_name(code: int) -> str:
    """'BadNodeIdUnknown' for 0x80340000 (the names of OPC UA 10000-4, 7.39)."""
    try:
        return str(ua.StatusCode(ua.UInt32(code)).name)
    except Exception:
        return f"0x{code:08X}"


def describe_error(exc: BaseException) -> tuple[str, bool]:
    """(message, permanent) for an exception from asyncua or the network."""
    if isinstance(exc, uaerrors.UaStatusCodeError):
        code = int(exc.code)
        message = status_name(code)
        fix = _FIX.get(code)
        return (f"{message}: {fix}" if fix else message), code in _PERMANENT
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        return f"cannot read {exc.filename}: {exc.strerror}", True
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (server down or wrong port?)", False
    if isinstance(exc, TimeoutError):
        return "no answer in time", False
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__, False
    if isinstance(exc, ValueError):  # an unreadable certificate or key
        return f"{exc}", True
    if isinstance(exc, uaerrors.UaError) and "No matching endpoints" in str(exc):
        return (
            "the server offers no endpoint with this security policy and mode; set 'security:' to one it offers",
            True,
        )
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, False


@dataclass(frozen=True)
class Security:
    """Resolved message security: file paths already made absolute by the factory."""

    certificate: Path
    private_key: Path
    server_certificate: Path
    mode: str = "SignAndEncrypt"
    application_uri: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect; equal endpoints share one session. The password never prints."""

    url: str
    timeout_s: float = 5.0
    security: Security | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        mode = f"Basic256Sha256/{self.security.mode}" if self.security else "no security"
        user = f", user {self.username}" if self.username else ""
        return f"{self.url} ({mode}{user})"


class SessionUser(Protocol):
    """A device on a session: set up on every new connection, told when the connection is gone."""

    device_id: str

    async def setup(self, session: OpcuaSession, client: Client) -> None: ...

    def lost(self) -> None: ...


@dataclass
class SessionStats:
    connects: int = 0
    errors: int = 0
    last_error: str = ""
    permanent: bool = False
    reads: int = 0


def application_uri_of(cert_path: Path) -> str | None:
    """The URI in a certificate's subjectAltName (OPC UA clients must present it as their identity)."""
    from cryptography import x509

    data = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


class Liveness(Observer):
    """asyncua observer: when the last Publish response (data or keep-alive) arrived on this client.

    Publish requests wait at the server until it has something to say; their answers are the proof
    that the server still serves the session's subscriptions. (asyncua's own `last_publish_at` is
    reset when it recreates a subscription, before any answer: it cannot prove liveness.)
    """

    def __init__(self) -> None:
        self.last_publish: float | None = None

    def on_request(self, request_type: str, duration: float, error: BaseException | None) -> None:
        if request_type == "PublishRequest" and error is None:
            self.last_publish = time.monotonic()


def key_material(path: Path) -> tuple[bytes, str]:
    """A certificate or key file's bytes and format ('pem' or 'der', by content: asyncua goes by the file
    name and would read a PEM 'gw.key' as DER).

    asyncua is handed the bytes, never the path: it opens a path in a worker thread (anyio), and a
    connect cancelled meanwhile leaves that file open for the garbage collector (a ResourceWarning
    seen in CI)."""
    data = path.read_bytes()
    return data, "pem" if b"-----BEGIN" in data[:4096] else "der"


def _cert_file(path: Path) -> uacrypto.CertProperties:
    data, fmt = key_material(path)
    return uacrypto.CertProperties(data, extension=fmt)


async def new_client(endpoint: Endpoint) -> Client:
    """An asyncua client configured for `endpoint`, not yet connected (no auto-reconnect: ours)."""
    client = Client(
        endpoint.url,
        timeout=endpoint.timeout_s,
        watchdog_intervall=max(1.0, min(5.0, endpoint.timeout_s)),
        auto_reconnect=False,
    )
    client.uaclient.observer = Liveness()
    client.session_timeout = 600_000  # ms; what servers commonly grant (asyncua asks for an hour)
    client.name = client.description = "GIA Gateway"
    client.product_uri = "urn:gia-gateway"
    client.application_uri = "urn:gia-gateway:opcua-client"
    sec = endpoint.security
    if sec is not None:
        uri = sec.application_uri or await asyncio.to_thread(application_uri_of, sec.certificate)
        if uri:
            client.application_uri = uri
        certificate, private_key, server_certificate = await asyncio.to_thread(
            lambda: (_cert_file(sec.certificate), _cert_file(sec.private_key), _cert_file(sec.server_certificate))
        )
        await client.set_security(
            security_policies.SecurityPolicyBasic256Sha256,
            certificate=certificate,
            private_key=private_key,
            server_certificate=server_certificate,
            mode=getattr(ua.MessageSecurityMode, sec.mode),
        )
    if endpoint.username is not None:
        client.set_user(endpoint.username)
        client.set_password(endpoint.password or "")
    return client


async def close_client(client: Client, timeout_s: float) -> None:
    """Close session, channel and socket, bounded and quiet (the server may already be gone).

    `Client.close_session` first stops asyncua's watchdog tasks, then asks the server; on a dead
    connection that request fails at once and is ignored. `Client.disconnect` would log each failure
    with a traceback.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await client.close_session()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await client.close_secure_channel()
    client.disconnect_socket()


class OpcuaSession:
    """One connection to one endpoint; attach devices, read values. Use through `OpcuaPool`."""

    def __init__(self, endpoint: Endpoint, *, backoff: Backoff | None = None) -> None:
        self.endpoint = endpoint
        self.stats = SessionStats()
        self.namespaces: list[str] = []
        self.read_chunk = DEFAULT_READ_CHUNK
        self.generation = 0  # increments on every new connection
        self._backoff = backoff or Backoff(initial_s=0.5, max_s=30.0)
        self._users: list[SessionUser] = []
        self._ready: dict[int, int] = {}  # id(user) -> generation it was set up in
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._setup_done = asyncio.Condition()
        self._down_since: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"opcua-session {self.endpoint.url}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and self._client is not None

    @property
    def client(self) -> Client:
        if self._client is None or not self._connected.is_set():
            raise self.not_connected()
        return self._client

    def not_connected(self) -> TransientError | PermanentError:
        """The error a read raises while there is no connection (permanent when config must change)."""
        why = self.stats.last_error or "connecting"
        message = f"not connected to {self.endpoint.describe()}: {why}"
        return PermanentError(message) if self.stats.permanent else TransientError(message)

    # -- devices -----------------------------------------------------------------------------------------
    def attach(self, user: SessionUser) -> None:
        if user not in self._users:
            self._users.append(user)
            self._changed.set()

    def detach(self, user: SessionUser) -> None:
        if user in self._users:
            self._users.remove(user)
        self._ready.pop(id(user), None)

    def request_setup(self, user: SessionUser) -> None:
        """Set `user` up again on this connection (its subscription died, a node came back)."""
        self._ready.pop(id(user), None)
        self._changed.set()

    def is_ready(self, user: SessionUser) -> bool:
        return self.connected and self._ready.get(id(user)) == self.generation

    async def wait_ready(self, user: SessionUser, timeout_s: float) -> bool:
        """Wait (bounded) until `user` is set up on a live connection; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._setup_done:
                await self._setup_done.wait_for(lambda: self.is_ready(user) or self.stats.permanent)
        return self.is_ready(user)

    def connection_lost(self) -> None:
        """A request found the session gone (server restarted): reconnect now."""
        self._lost.set()

    # -- services ----------------------------------------------------------------------------------------
    @property
    def last_publish(self) -> float | None:
        """Monotonic time of the last Publish response on the current connection (None: none yet)."""
        client = self._client
        observer = client.uaclient.observer if client is not None and self.connected else None
        return observer.last_publish if isinstance(observer, Liveness) else None

    def namespace_index(self, uri: str) -> int | None:
        try:
            return self.namespaces.index(uri)
        except ValueError:
            return None

    async def read(self, node_ids: Sequence[ua.NodeId]) -> list[ua.DataValue]:
        """Read the Value attribute of every node, in as few Read requests as the server allows."""
        client = self.client
        out: list[ua.DataValue] = []
        try:
            for start in range(0, len(node_ids), self.read_chunk):
                params = ua.ReadParameters()
                params.TimestampsToReturn = ua.TimestampsToReturn.Neither
                params.NodesToRead = [
                    ua.ReadValueId(NodeId=nid, AttributeId=AttributeIds.Value)
                    for nid in node_ids[start : start + self.read_chunk]
                ]
                out.extend(await client.uaclient.read(params))
                self.stats.reads += 1
        except uaerrors.UaStatusCodeError as exc:
            if int(exc.code) in _SESSION_GONE:
                self.connection_lost()
            message, _ = describe_error(exc)
            raise TransientError(f"read from {self.endpoint.url}: {message}") from None
        except (OSError, TimeoutError, ConnectionError, uaerrors.UaError) as exc:
            message, _ = describe_error(exc)
            raise TransientError(f"read from {self.endpoint.url}: {message}") from None
        return out

    # -- the connection task -----------------------------------------------------------------------------
    async def _connect(self) -> Client:
        client = await new_client(self.endpoint)
        try:
            async with asyncio.timeout(max(10.0, 4 * self.endpoint.timeout_s)):
                await client.connect()
                self.namespaces = list(await client.get_node(_NAMESPACE_ARRAY).read_value())
                limit = await self._read_limit(client)
                self.read_chunk = limit if 0 < limit < DEFAULT_READ_CHUNK else DEFAULT_READ_CHUNK
        except BaseException:
            await close_client(client, self.endpoint.timeout_s)
            raise
        return client

    @staticmethod
    async def _read_limit(client: Client) -> int:
        """The server's MaxNodesPerRead (0: none declared)."""
        try:
            value = await client.get_node(_MAX_NODES_PER_READ).read_value()
        except uaerrors.UaStatusCodeError:
            return 0
        return int(value) if isinstance(value, int) else 0

    async def _run(self) -> None:
        while True:
            raise_if_cancelling()  # a swallowed cancellation must still stop the loop (drivers/cancel.py)
            client: Client | None = None
            try:
                client = await self._connect()
                self._lost.clear()

                async def on_lost(exc: Exception) -> None:
                    self._lost.set()

                client.connection_lost_callback = on_lost
                self._client = client
                self.generation += 1
                self.stats.connects += 1
                self.stats.permanent = False
                self._connected.set()
                if self._down_since is not None:
                    log.info(
                        "OPC UA %s: connected again after %.0f s",
                        self.endpoint.url,
                        time.monotonic() - self._down_since,
                    )
                self._down_since = None
                self._backoff.reset()
                await self._serve(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            finally:
                self._connected.clear()
                self._client = None
                for user in list(self._users):
                    user.lost()
                self._ready.clear()
                async with self._setup_done:
                    self._setup_done.notify_all()
                if client is not None:
                    await asyncio.shield(close_client(client, self.endpoint.timeout_s))
            delay = self._backoff.max_s if self.stats.permanent else self._backoff.next_delay()
            await asyncio.sleep(delay)

    def _failed(self, exc: BaseException) -> None:
        message, permanent = describe_error(exc)
        if isinstance(exc, TimeoutError) and self.endpoint.security is not None and self.stats.connects == 0:
            # A server that cannot decrypt our request (not the certificate we pinned) just stays silent.
            message += "; is security.server_certificate the server's current certificate?"
        self.stats.errors += 1
        self.stats.last_error = message
        self.stats.permanent = permanent
        if self._down_since is None:  # once per outage, not on every retry
            self._down_since = time.monotonic()
            log.error("OPC UA %s: %s", self.endpoint.describe(), message)

    async def _serve(self, client: Client) -> None:
        """Set devices up as they attach; return (raise) when the connection is lost."""
        while True:
            self._changed.clear()
            for user in list(self._users):
                if self._ready.get(id(user)) == self.generation:
                    continue
                try:
                    await user.setup(self, client)
                except (OSError, TimeoutError, ConnectionError):
                    raise
                except uaerrors.UaStatusCodeError as exc:
                    if int(exc.code) in _SESSION_GONE:
                        raise
                    log.error("OPC UA %s: setting up %s: %s", self.endpoint.url, user.device_id, describe_error(exc)[0])
                except Exception:
                    log.exception("OPC UA %s: setting up %s failed", self.endpoint.url, user.device_id)
                if user in self._users:
                    self._ready[id(user)] = self.generation
            async with self._setup_done:
                self._setup_done.notify_all()
            changed = asyncio.ensure_future(self._changed.wait())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                await asyncio.wait({changed, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                lost.cancel()
            if self._lost.is_set():
                raise ConnectionError("connection lost")


class OpcuaPool:
    """Sessions by endpoint, shared by the devices on one server; an async context manager.

    `acquire` starts a session on first use, `release` stops it when its last device leaves.
    """

    def __init__(self, *, reconnect_max_s: float = 30.0) -> None:
        self.reconnect_max_s = reconnect_max_s
        self._sessions: dict[Endpoint, OpcuaSession] = {}
        self._refs: dict[Endpoint, int] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._refs.clear()
        for s in sessions:
            await s.stop()

    async def acquire(self, endpoint: Endpoint) -> OpcuaSession:
        session = self._sessions.get(endpoint)
        if session is None:
            backoff = Backoff(initial_s=min(0.5, self.reconnect_max_s), max_s=self.reconnect_max_s)
            session = self._sessions[endpoint] = OpcuaSession(endpoint, backoff=backoff)
            await session.start()
        self._refs[endpoint] = self._refs.get(endpoint, 0) + 1
        return session

    async def release(self, session: OpcuaSession) -> None:
        key = session.endpoint
        refs = self._refs.get(key, 0) - 1
        if refs > 0:
            self._refs[key] = refs
            return
        self._refs.pop(key, None)
        if self._sessions.get(key) is session:
            del self._sessions[key]
        await session.stop()

    def sessions(self) -> list[OpcuaSession]:
        return list(self._sessions.values())
