"""A simulated OPC UA server serving a node map (`gia sim MAP` for node maps, and the tests' device).

It builds the address space the map describes (objects along each browse path under each root,
variables at the ends, absolute node ids where the map gives them), and writes fresh values every
`update_interval_s` from the same daily-profile generator the Modbus simulator uses, converted back
into the server's units (the inverse of the map's scale, offset and status map).

Security as a real server offers it: with `SimSecurity` the endpoint is Basic256Sha256 (Sign and
SignAndEncrypt; None only when asked), only the listed client certificates are trusted, and `users`
turns anonymous access off in favour of user names with passwords.

Fault injection for tests and demos: `set_status` (serve a Bad or Uncertain status instead of the
value), `set_raw` (serve any raw value: NaN, a string, a huge number), `delete` (remove a node while
clients are subscribed, with or without the Bad_NodeIdUnknown notification the specification asks
for).
"""

from __future__ import annotations

import asyncio
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.cancel import cancel_and_wait
from drivers.model import QUANTITIES, QuantityKind
from drivers.opcua.nodemap import NodeMap, NodeSpec, SimType, is_node_id, split_path
from drivers.opcua.session import application_uri_of, key_material, ns0
from drivers.sim.generators import ProfileValues

log = logging.getLogger(__name__)

Values = Callable[[], Mapping[str, float | int | None]]

SIM_NAMESPACE: Final = "urn:gia-gateway:sim"
_CURRENT_TIME: Final = ns0(ObjectIds.Server_ServerStatus_CurrentTime)
_INT_TYPES: Final = frozenset({"Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"})


@dataclass(frozen=True)
class SimSecurity:
    """The simulated server's certificate and whom it trusts."""

    certificate: Path
    private_key: Path
    trusted: tuple[Path, ...] = ()  # client certificates accepted; empty: any
    allow_none: bool = False  # also offer the unsecured endpoint


@dataclass
class _Points:
    """The map's nodes as the value generator sees them (quantity, example)."""

    device_class: str
    registers: list[NodeSpec]


def sim_type(spec: NodeSpec) -> SimType:
    """The data type served for a node: the map's `sim_type`, else what the quantity suggests."""
    if spec.sim_type is not None:
        return spec.sim_type
    kind = QUANTITIES[spec.quantity].kind
    if kind is QuantityKind.STATE:
        if spec.status_map and any(isinstance(k, str) and not k.lstrip("-").isdigit() for k in spec.status_map):
            return "String"
        return "Int32"
    if kind is QuantityKind.COUNTER and (spec.scale is None or float(spec.scale).is_integer()):
        return "UInt64"
    return "Double"


def raw_value(spec: NodeSpec, value: float | int | None) -> object:
    """What a device holds for `value` (in the quantity's unit): the inverse of the map's arithmetic."""
    if value is None:
        return None
    if spec.status_map:
        for key, code in spec.status_map.items():
            if code == value:
                return key
        return next(iter(spec.status_map))
    v = float(value)
    if spec.invert:
        v = -v
    if spec.offset is not None:
        v -= spec.offset
    if spec.scale is not None:
        v /= spec.scale
    kind = sim_type(spec)
    if kind in _INT_TYPES:
        return max(0, round(v)) if kind.startswith("U") else round(v)
    if kind == "Boolean":
        return bool(v)
    if kind == "String":
        return f"{v:g}"
    return v


def variant(spec: NodeSpec, raw: object) -> ua.Variant:
    kind = sim_type(spec)
    if isinstance(raw, str) and kind != "String":
        return ua.Variant(raw, ua.VariantType.String)
    if isinstance(raw, float) and kind in _INT_TYPES:
        return ua.Variant(raw, ua.VariantType.Double)
    return ua.Variant(raw, getattr(ua.VariantType, kind))


def _der(path: Path) -> bytes:
    """A certificate file (PEM or DER) as DER bytes, the form certificates are compared in."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


class _Users(UserManager):
    """asyncua user manager: the configured user names and passwords, nobody else."""

    def __init__(self, users: Mapping[str, str], *, anonymous: bool) -> None:
        self._users = dict(users)
        self._anonymous = anonymous

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:  # anonymous (asyncua passes the channel's client certificate along)
            return User(role=UserRole.User) if self._anonymous else None
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class _Served:
    spec: NodeSpec
    root: str
    node: Node
    values: Values


@dataclass
class SimStats:
    writes: int = 0
    deleted: list[str] = field(default_factory=list)


class OpcuaSimServer:
    """Serve one node map on `listen` (opc.tcp://HOST:PORT[/PATH]) under one or more roots."""

    def __init__(
        self,
        node_map: NodeMap,
        *,
        listen: str,
        roots: Sequence[str] | None = None,
        values: Values | None = None,
        now: Callable[[], datetime] | None = None,
        update_interval_s: float = 0.5,
        security: SimSecurity | None = None,
        users: Mapping[str, str] | None = None,
        anonymous: bool | None = None,
    ) -> None:
        """`users`: user names and passwords; anonymous access stays open only when `anonymous` (default:
        when there are no users)."""
        self.map = node_map
        self.listen = listen
        self.roots = list(roots) if roots else [node_map.root]
        self.update_interval_s = update_interval_s
        self.security = security
        self.users = dict(users or {})
        self.anonymous = not self.users if anonymous is None else anonymous
        self.stats = SimStats()
        self._now = now or (lambda: datetime.now(UTC))
        self._values = values
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._served: list[_Served] = []
        self._status: dict[tuple[str, str], int] = {}
        self._raw: dict[tuple[str, str], object] = {}
        self._folders: dict[tuple[ua.NodeId, int, str], Node] = {}
        self._any: set[ua.NodeId] = set()
        self._vtype: dict[ua.NodeId, ua.VariantType] = {}  # the type each variable holds now

    # -- control ---------------------------------------------------------------------------------------
    def set_status(self, quantity: str, status: int | None, *, root: str | None = None) -> None:
        """Serve `status` (Bad: instead of the value; Uncertain: with it); None serves plain values again."""
        key = (self._root(root), quantity)
        if status is None:
            self._status.pop(key, None)
        else:
            self._status[key] = status

    def set_raw(self, quantity: str, raw: object, *, root: str | None = None) -> None:
        """Serve this raw value (NaN, text, a huge number...) instead of the generated one."""
        self._raw[(self._root(root), quantity)] = raw

    def clear_raw(self, quantity: str, *, root: str | None = None) -> None:
        self._raw.pop((self._root(root), quantity), None)

    async def delete(self, quantity: str, *, root: str | None = None, notify: bool = False) -> None:
        """Delete a quantity's node while clients may be subscribed to it.

        `notify=True` first reports Bad_NodeIdUnknown to subscribers, as OPC UA 10000-4, 5.7.4.1 asks of
        a server; without it the node just disappears, as asyncua's own server does: its deletion
        callback is a coroutine it never awaits, hence the silenced RuntimeWarning below.
        """
        server = self._require()
        served = self._find(quantity, root)
        if notify:
            await server.write_attribute_value(
                served.node.nodeid, ua.DataValue(StatusCode=ua.StatusCode(ua.UInt32(StatusCodes.BadNodeIdUnknown)))
            )
            await asyncio.sleep(max(0.2, self.update_interval_s))  # let the notification go out first
        self._served.remove(served)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
            await server.delete_nodes([served.node])
        self.stats.deleted.append(f"{served.root}/{quantity}")

    def _root(self, root: str | None) -> str:
        return self.roots[0] if root is None else root

    def _find(self, quantity: str, root: str | None) -> _Served:
        r = self._root(root)
        for s in self._served:
            if s.spec.quantity == quantity and s.root == r:
                return s
        raise KeyError(f"{r}/{quantity}")

    def _require(self) -> Server:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return self._server

    def node_id(self, quantity: str, *, root: str | None = None) -> ua.NodeId:
        return self._find(quantity, root).node.nodeid

    # -- address space ---------------------------------------------------------------------------------
    async def _namespace(self, server: Server, index: int | None = None, uri: str | None = None) -> int:
        """The index of `uri` (registered if new), or make sure index `index` exists."""
        if uri is not None:
            return int(await server.register_namespace(uri))
        assert index is not None
        array = await server.get_namespace_array()
        while len(array) <= index:
            await server.register_namespace(f"{SIM_NAMESPACE}:ns{len(array)}")
            array = await server.get_namespace_array()
        return index

    async def _folder(self, parent: Node, ns: int, name: str) -> Node:
        key = (parent.nodeid, ns, name)
        node = self._folders.get(key)
        if node is None:
            node = self._folders[key] = await parent.add_object(ns, name)
        return node

    async def _walk(self, server: Server, start: Node, path: str, default_ns: int) -> tuple[Node, int, str]:
        """Create the objects along `path` below `start`; return (parent of the last, its ns, its name)."""
        parts = split_path(path)
        node = start
        for ns, name in parts[:-1]:
            index = await self._namespace(server, ns) if ns is not None else default_ns
            node = await self._folder(node, index, name)
        ns, name = parts[-1]
        return node, (await self._namespace(server, ns) if ns is not None else default_ns), name

    async def _build(self, server: Server) -> None:
        default_ns = await self._namespace(server, uri=self.map.namespace or SIM_NAMESPACE)
        objects = server.nodes.objects
        for i, root in enumerate(self.roots):
            values = self._values or ProfileValues(
                _Points(self.map.device_class, self.map.nodes), now=self._now, seed=i + 1
            )
            start = objects
            if root and is_node_id(root):
                start = await objects.add_object(await self._node_id(server, root), root.rsplit("=", 1)[-1])
            elif root:
                parent, ns, name = await self._walk(server, objects, root, default_ns)
                start = await self._folder(parent, ns, name)
            for spec in self.map.nodes:
                if spec.path is not None:
                    parent, ns, name = await self._walk(server, start, spec.path, default_ns)
                    var = await parent.add_variable(
                        ua.NodeId(ua.String(f"{root}/{spec.path}"), ua.Int16(ns)),
                        ua.QualifiedName(name, ns),
                        self._initial(spec),
                    )
                else:
                    assert spec.node is not None
                    if i > 0:
                        continue  # an absolute node id exists once, whatever the roots
                    nid = await self._node_id(server, spec.node)
                    # A string id's last dotted part is its browse name ("Feeder1.ActivePower" -> ActivePower).
                    name = str(nid.Identifier).rsplit(".", 1)[-1] if isinstance(nid.Identifier, str) else spec.quantity
                    var = await start.add_variable(nid, ua.QualifiedName(name, nid.NamespaceIndex), self._initial(spec))
                self._served.append(_Served(spec, root, var, values))

    async def _node_id(self, server: Server, text: str) -> ua.NodeId:
        if text.startswith("nsu="):
            uri, _, rest = text[4:].partition(";")
            text = f"ns={await self._namespace(server, uri=uri)};{rest}"
        nid = ua.NodeId.from_string(text)
        await self._namespace(server, int(nid.NamespaceIndex))
        return nid

    def _initial(self, spec: NodeSpec) -> ua.Variant:
        return variant(spec, raw_value(spec, spec.example if spec.example is not None else 0))

    # -- serving ---------------------------------------------------------------------------------------
    async def _configure(self, server: Server) -> None:
        server.set_endpoint(self.listen)
        server.set_server_name(f"GIA simulator: {self.map.product.brand} {self.map.product.model}")
        await server.set_build_info(
            "urn:gia-gateway:sim", "GIA", f"simulator ({self.map.name})", "1", "1", datetime(2026, 1, 1, tzinfo=UTC)
        )
        sec = self.security
        if sec is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            cert, cert_format = key_material(sec.certificate)
            key, key_format = key_material(sec.private_key)
            await server.load_certificate(cert, format=cert_format)
            await server.load_private_key(key, format=key_format)
            uri = application_uri_of(sec.certificate)
            if uri:
                await server.set_application_uri(uri)
            policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, ua.SecurityPolicyType.Basic256Sha256_Sign]
            if sec.allow_none:
                policies.append(ua.SecurityPolicyType.NoSecurity)
            server.set_security_policy(policies)
            if sec.trusted:
                ders = {_der(path) for path in sec.trusted}

                async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
                    if cert.public_bytes(Encoding.DER) not in ders:
                        raise ServiceError(StatusCodes.BadCertificateUntrusted)

                server.set_certificate_validator(validate)
        tokens: list[type] = [ua.UserNameIdentityToken] if self.users else []
        if self.anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)

    async def start(self) -> None:
        """Build the address space and listen; returns once the server accepts connections."""
        server = Server(user_manager=_Users(self.users, anonymous=self.anonymous)) if self.users else Server()
        await server.init()
        # The server clock is written by the update loop: asyncio's own clock task makes stop() wait 1 s.
        server.disable_clock()
        await self._configure(server)
        await self._build(server)
        await self._write_all(server)
        await server.start()
        self._server = server
        self._task = asyncio.create_task(self._update_loop(), name=f"opcua-sim {self.listen}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
        self._served.clear()
        self._folders.clear()
        self._any.clear()
        self._vtype.clear()

    async def __aenter__(self) -> OpcuaSimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _update_loop(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval_s)
            server = self._server
            if server is None:
                return
            try:
                await self._write_all(server)
            except Exception:  # a broken value generator must not stop the server
                log.exception("OPC UA simulator: writing values failed")

    async def _retype(self, server: Server, nid: ua.NodeId) -> None:
        """Let a variable take a value of another type (fault injection: text where a number belongs).

        asyncua refuses a value whose type differs from the current one, unless the current value is
        null and the declared data type is not a built-in one: so declare Number (i=26, abstract) and
        null the value with a Bad status first (subscribers see that status for one sampling interval).
        """
        if nid not in self._any:
            self._any.add(nid)
            number = ua.Variant(ua.NodeId(ua.Int32(26)), ua.VariantType.NodeId)
            await server.write_attribute_value(nid, ua.DataValue(Value=number), AttributeIds.DataType)
        waiting = ua.StatusCode(ua.UInt32(StatusCodes.BadWaitingForInitialData))
        await server.write_attribute_value(nid, ua.DataValue(StatusCode=waiting))

    async def _write_all(self, server: Server) -> None:
        now = ua.Variant(datetime.now(UTC), ua.VariantType.DateTime)
        await server.write_attribute_value(_CURRENT_TIME, ua.DataValue(Value=now))
        generated: dict[int, Mapping[str, float | int | None]] = {}
        for served in list(self._served):
            key = (served.root, served.spec.quantity)
            status = self._status.get(key)
            if status is not None and status & 0x80000000:  # Bad: servers send no value with it
                dv = ua.DataValue(StatusCode=ua.StatusCode(ua.UInt32(status)))
            else:
                if key in self._raw:
                    raw = self._raw[key]
                else:
                    values = generated.get(id(served.values))
                    if values is None:
                        values = generated[id(served.values)] = served.values()
                    raw = raw_value(served.spec, values.get(served.spec.quantity, served.spec.example))
                if raw is None or (isinstance(raw, float) and math.isnan(raw) and sim_type(served.spec) in _INT_TYPES):
                    raw = float("nan")
                value = variant(served.spec, raw)
                nid = served.node.nodeid
                if value.VariantType != self._vtype.get(nid, value.VariantType):
                    await self._retype(server, nid)
                self._vtype[nid] = value.VariantType
                dv = ua.DataValue(Value=value, StatusCode=ua.StatusCode(ua.UInt32(status or 0)))
            await server.write_attribute_value(served.node.nodeid, dv)
            self.stats.writes += 1
