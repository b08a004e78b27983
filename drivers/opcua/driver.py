"""The OPC UA driver: one device's nodes, read by subscription or by polling, through a shared session.

* Subscription (the default): on every new connection the device creates its own subscription with
  the configured sampling interval; the server reports changes and keep-alives, and `read` returns the
  latest value of every node at once. Values are *fresh* while the subscription is alive (any publish
  response, data or keep-alive, within `stale_after_intervals` poll intervals) and `stale` after that;
  a subscription that only reports changes must not make a constant value look old, so freshness is
  the subscription's, not the value's.
* Polling: one batched Read of every node per poll (split only where the server's MaxNodesPerRead
  demands).

A node that is missing or goes bad (Bad_NodeIdUnknown after the server deleted it, Bad_NoMatch for a
browse path that leads nowhere, a Bad status on the value) gives an `invalid` sample for its quantity
with the reason logged once, while the other nodes keep flowing. Servers are asked to report a deleted
node to subscribers (10000-4, 5.7.4.1) but not all do (asyncua's own server does not): in
subscription mode every node is therefore also re-read every `verify_interval_s`. When no node of the
map exists at all the read fails with `PermanentError` naming the fix (root or map wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStringParsingError

from drivers.base import PermanentError, TransientError
from drivers.cancel import cancel_and_wait
from drivers.maps import MapError
from drivers.model import QUANTITIES, Quality, Sample
from drivers.opcua.config import OpcuaDeviceConfig, resolve
from drivers.opcua.convert import Converted, Converter, apply_status, compile_node
from drivers.opcua.nodemap import NodeMap, NodeSpec, is_node_id, load_node_map, split_path
from drivers.opcua.session import Endpoint, OpcuaPool, OpcuaSession, Security, describe_error, ns0, status_name

log = logging.getLogger(__name__)

Mode = Literal["subscription", "polling"]

_HIERARCHICAL: Final = ns0(ObjectIds.HierarchicalReferences)
_OBJECTS: Final = ns0(ObjectIds.ObjectsFolder)
# asyncua types Boolean fields with a marker class that cannot be instantiated; plain bools go on the wire.
_FALSE: Final = cast(ua.Boolean, False)
_TRUE: Final = cast(ua.Boolean, True)
_MISSING: Final = frozenset({StatusCodes.BadNodeIdUnknown, StatusCodes.BadNoMatch})


class ResolveError(PermanentError):
    """A node id or browse path that does not lead to a node; the message is the reason."""


@dataclass
class _Latest:
    converted: Converted
    status: int = 0


@dataclass
class DriverStats:
    polls: int = 0
    notifications: int = 0
    verifications: int = 0
    setups: int = 0
    invalid_values: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # quantity -> why it is invalid now


def parse_node_id(text: str, session: OpcuaSession) -> ua.NodeId:
    """A node id string, with `nsu=URI;` turned into the server's index for that namespace."""
    text = text.strip()
    if text.startswith("nsu="):
        uri, _, rest = text[4:].partition(";")
        index = session.namespace_index(uri)
        if index is None:
            raise ResolveError(f"namespace {uri!r} is not on the server")
        text = f"ns={index};{rest}"
    try:
        return ua.NodeId.from_string(text)
    except UaStringParsingError:
        raise ResolveError(f"{text!r} is not a node id") from None


def relative_path(path: str, default_ns: int | None) -> ua.RelativePath:
    elements = []
    for ns, name in split_path(path):
        index = ns if ns is not None else default_ns
        if index is None:
            raise ResolveError(f"browse name {name!r} has no namespace on the server")
        elements.append(
            ua.RelativePathElement(
                ReferenceTypeId=_HIERARCHICAL,
                IsInverse=_FALSE,
                IncludeSubtypes=_TRUE,
                TargetName=ua.QualifiedName(name, index),
            )
        )
    return ua.RelativePath(Elements=elements)


async def translate(client: Client, requests: Sequence[tuple[ua.NodeId, ua.RelativePath]]) -> list[ua.NodeId | str]:
    """Resolve (start node, browse path) pairs in one request: a node id, or the reason it failed."""
    if not requests:
        return []
    results = await client.uaclient.translate_browsepaths_to_nodeids(
        [ua.BrowsePath(StartingNode=start, RelativePath=p) for start, p in requests]
    )
    out: list[ua.NodeId | str] = []
    for res in results:
        if res.StatusCode.is_good() and res.Targets:
            target = res.Targets[0].TargetId
            out.append(ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType))
        else:
            out.append(status_name(res.StatusCode.value))
    return out


class OpcuaDriver:
    """Reads one OPC UA device through its node map (see the module docstring)."""

    def __init__(
        self,
        *,
        device_id: str,
        node_map: NodeMap,
        endpoint: Endpoint,
        root: str | None = None,
        namespace: str | None = None,
        mode: Mode = "subscription",
        poll_interval_s: float = 10.0,
        sampling_interval_s: float | None = None,
        stale_after_intervals: int = 3,
        verify_interval_s: float = 60.0,
        pool: OpcuaPool | None = None,
    ) -> None:
        self.device_id = device_id
        self.map = node_map
        self.endpoint = endpoint
        self.root = node_map.root if root is None else root
        self.namespace = namespace or node_map.namespace
        self.mode = mode
        self.poll_interval_s = poll_interval_s
        self.sampling_interval_s = sampling_interval_s or poll_interval_s
        self.stale_after_s = poll_interval_s * stale_after_intervals
        self.verify_interval_s = verify_interval_s
        self.stats = DriverStats()
        self._pool = pool
        self._own_pool: OpcuaPool | None = None
        self._session: OpcuaSession | None = None
        self._convert: dict[str, Converter] = {n.quantity: compile_node(n) for n in node_map.nodes}
        self._units = {n.quantity: QUANTITIES[n.quantity].unit for n in node_map.nodes}
        # Per connection (reset by `lost`): what each quantity resolved to, or why it did not.
        self._resolved: dict[str, ua.NodeId] = {}
        self._unresolved: dict[str, str] = {}
        self._by_node: dict[ua.NodeId, list[str]] = {}
        self._latest: dict[str, _Latest] = {}
        self._subscription: Subscription | None = None
        self._start: ua.NodeId = _OBJECTS  # the resolved root on this connection
        self._alive_at: float | None = None  # monotonic: last sign of life of the subscription
        self._last_verify = time.monotonic()  # the subscription's first notifications are fresh enough
        self._verify_task: asyncio.Task[None] | None = None
        self._setup_error = ""

    # -- context -----------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        pool = self._pool
        if pool is None:
            pool = self._own_pool = await OpcuaPool().__aenter__()
        self._session = await pool.acquire(self.endpoint)
        self._session.attach(self)
        # Readiness, bounded: a read right after entering (gia read) should find the nodes resolved.
        await self._session.wait_ready(self, self.endpoint.timeout_s * 2)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        task, self._verify_task = self._verify_task, None
        if task is not None:
            await cancel_and_wait(task)
        session.detach(self)
        sub, self._subscription = self._subscription, None
        if sub is not None and session.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.endpoint.timeout_s):
                    await sub.delete()
        pool = self._pool or self._own_pool
        assert pool is not None
        await pool.release(session)
        if self._own_pool is not None:
            await self._own_pool.__aexit__(None, None, None)
            self._own_pool = None

    # -- session callbacks -------------------------------------------------------------------------------
    def lost(self) -> None:
        self._subscription = None
        self._resolved.clear()
        self._by_node.clear()

    async def setup(self, session: OpcuaSession, client: Client) -> None:
        """Resolve the map's nodes on this connection and, in subscription mode, subscribe to them."""
        self.stats.setups += 1
        self._resolved, self._unresolved, self._by_node = {}, {}, {}
        self._setup_error = ""
        try:
            await self._resolve(session, client)
        except ResolveError as exc:
            self._setup_error = str(exc)
            return
        for quantity, nid in self._resolved.items():
            self._by_node.setdefault(nid, []).append(quantity)
        for quantity, reason in self._unresolved.items():
            self._store(quantity, (None, Quality.INVALID, reason))
        if self.mode == "subscription":
            await self._subscribe(client)

    async def _resolve(self, session: OpcuaSession, client: Client) -> None:
        default_ns = session.namespace_index(self.namespace) if self.namespace else None
        if self.namespace and default_ns is None and (any(n.path for n in self.map.nodes) or self.root):
            raise ResolveError(
                f"the server has no namespace {self.namespace!r}; set the device's 'namespace:'"
                " to the URI the server uses (gia scan prints it)"
            )
        start = _OBJECTS
        if self.root and is_node_id(self.root):
            start = parse_node_id(self.root, session)
        elif self.root:
            (found,) = await translate(client, [(_OBJECTS, relative_path(self.root, default_ns))])
            if isinstance(found, str):
                raise ResolveError(f"root {self.root!r} not found under Objects ({found}); check 'root'")
            start = found
        self._start = start
        paths: list[tuple[str, ua.RelativePath]] = []
        for spec in self.map.nodes:
            try:
                if spec.node is not None:
                    self._resolved[spec.quantity] = parse_node_id(spec.node, session)
                else:
                    assert spec.path is not None
                    paths.append((spec.quantity, relative_path(spec.path, default_ns)))
            except ResolveError as exc:
                self._unresolved[spec.quantity] = str(exc)
        for (quantity, _), found in zip(paths, await translate(client, [(start, p) for _, p in paths]), strict=True):
            if isinstance(found, str):
                path = self.map.node(quantity).path
                self._unresolved[quantity] = f"browse path {self.root or 'Objects'}/{path}: {found}"
            else:
                self._resolved[quantity] = found

    def _subscription_parameters(self) -> ua.CreateSubscriptionParameters:
        publishing_s = min(self.sampling_interval_s, self.poll_interval_s)
        # A keep-alive at least once per poll interval keeps "alive" meaningful for constant values.
        keepalive = max(1, int(self.poll_interval_s / publishing_s))
        return ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_s * 1000,
            RequestedLifetimeCount=max(30, 10 * keepalive),
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )

    async def _subscribe(self, client: Client) -> None:
        old, self._subscription = self._subscription, None
        if old is not None:  # set up again on the same connection: one subscription per device, always
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.endpoint.timeout_s):
                    await old.delete()
        sub = await client.create_subscription(self._subscription_parameters(), self)
        self._alive_at = time.monotonic()
        nodes = [client.get_node(nid) for nid in self._by_node]
        results = (
            await sub.subscribe_data_change(
                nodes, queuesize=1, sampling_interval=ua.Double(self.sampling_interval_s * 1000)
            )
            if nodes
            else []
        )
        for nid, result in zip(self._by_node, results, strict=True):
            if isinstance(result, ua.StatusCode):
                reason = f"cannot monitor {nid.to_string()}: {status_name(result.value)}"
                for quantity in self._by_node[nid]:
                    self._store(quantity, (None, Quality.INVALID, reason), result.value)
        self._subscription = sub

    # asyncua calls these from the subscription's publish loop (a task per notification).
    def datachange_notification(self, node: Node, val: object, data: DataChangeNotif) -> None:
        self.stats.notifications += 1
        self._alive_at = time.monotonic()
        dv = data.monitored_item.Value
        status = int(dv.StatusCode.value) if dv is not None and dv.StatusCode is not None else 0
        self._update(node.nodeid, val, status)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        """The server ended or suspended the subscription: create it again."""
        if not status.Status.is_good() and self._session is not None:
            log.warning("OPC UA device %s: subscription status %s", self.device_id, status_name(status.Status.value))
            self._session.request_setup(self)

    # -- values ------------------------------------------------------------------------------------------
    def _update(self, nid: ua.NodeId, raw: object, status: int) -> None:
        for quantity in self._by_node.get(nid, ()):
            converted = apply_status(self._convert[quantity](raw), status, status_name(status) if status else "")
            self._store(quantity, converted, status)

    def _store(self, quantity: str, converted: Converted, status: int = 0) -> None:
        self._latest[quantity] = _Latest(converted, status)
        reason = converted[2] if converted[1] is not Quality.GOOD else ""
        before = self.stats.problems.get(quantity, "")
        if reason and not before:
            log.warning("OPC UA device %s: %s %s: %s", self.device_id, quantity, converted[1], reason)
        elif before and not reason:
            log.info("OPC UA device %s: %s readable again", self.device_id, quantity)
        if reason:
            self.stats.problems[quantity] = reason
        else:
            self.stats.problems.pop(quantity, None)

    async def _read_nodes(self, session: OpcuaSession) -> None:
        """One batched Read of every resolved node, into the latest values."""
        nids = list(self._by_node)
        if not nids:
            return
        for nid, dv in zip(nids, await session.read(nids), strict=True):
            status = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
            raw = dv.Value.Value if dv.Value is not None else None
            self._update(nid, raw, status)

    async def _verify(self, session: OpcuaSession) -> None:
        """Subscription mode: re-read every node (deleted nodes), re-subscribe when a bad one came back."""
        self.stats.verifications += 1
        missing_before = {q for q, latest in self._latest.items() if latest.status in _MISSING}
        try:
            await self._read_nodes(session)
        except TransientError:
            return  # the connection is in trouble: the session notices, the subscription's state decides
        back = {q for q in missing_before if q not in self._unresolved and self._latest[q].status not in _MISSING}
        if back or await self._paths_found(session):
            session.request_setup(self)  # monitor the returned nodes: set up again on this connection

    async def _paths_found(self, session: OpcuaSession) -> bool:
        """Whether a browse path that led nowhere leads to a node now (one request, only when needed)."""
        paths = [q for q in self._unresolved if self.map.node(q).path is not None]
        if not paths or not session.connected:
            return False
        default_ns = session.namespace_index(self.namespace) if self.namespace else None
        start = self._start
        try:
            rel = [relative_path(self.map.node(q).path or "", default_ns) for q in paths]
            found = await translate(session.client, [(start, r) for r in rel])
        except (ResolveError, OSError, TimeoutError, UaError):
            return False
        return any(not isinstance(f, str) for f in found)

    def _missing(self, quantity: str) -> bool:
        latest = self._latest.get(quantity)
        return quantity in self._unresolved or (latest is not None and latest.status in _MISSING)

    def _check_any_exists(self) -> None:
        total = len(self.map.nodes)
        if all(self._missing(q) for q in self.map.quantities()):
            first = self.map.nodes[0].quantity
            why = self._unresolved.get(first) or self.stats.problems.get(first, "")
            raise PermanentError(
                f"{self.device_id}: none of the {total} nodes of map {self.map.name!r} exists on"
                f" {self.endpoint.url} ({why}); check 'root' and that the map fits the server"
            )

    async def read(self, ts: datetime) -> Sequence[Sample]:
        """The device's values now; TransientError/PermanentError when there is nothing to believe.

        Never waits for a connection: the session reconnects in the background, and a read that waited
        would only run into the poller's deadline.
        """
        session = self._session
        if session is None:
            raise TransientError(f"{self.device_id}: read outside 'async with'")
        self.stats.polls += 1
        if self._setup_error and session.is_ready(self):
            session.request_setup(self)  # retried on this connection, at the poll rate
            raise PermanentError(f"{self.device_id}: {self._setup_error}")
        fresh = True
        if self.mode == "polling":
            if not session.is_ready(self):
                raise (
                    session.not_connected()
                    if not session.connected
                    else TransientError(f"{self.device_id}: resolving nodes on {self.endpoint.url}")
                )
            await self._read_nodes(session)
        else:
            due = self.verify_interval_s > 0 and time.monotonic() - self._last_verify >= self.verify_interval_s
            idle = self._verify_task is None or self._verify_task.done()
            if due and idle and session.is_ready(self):
                # In the background: a read in subscription mode answers at once, whatever the network does.
                self._last_verify = time.monotonic()
                self._verify_task = asyncio.create_task(self._verify(session), name=f"opcua-verify {self.device_id}")
            fresh = self._fresh()
            if not fresh and not session.connected:
                raise session.not_connected()
        self._check_any_exists()
        samples: list[Sample] = []
        for spec in self.map.nodes:
            sample = self._sample(spec, ts, fresh)
            if sample is not None:
                samples.append(sample)
        if not samples:
            raise TransientError(f"{self.device_id}: no value received yet from {self.endpoint.url}")
        return samples

    def _fresh(self) -> bool:
        """The server answered lately: a notification of ours, or any Publish response (a keep-alive)
        on the connection our subscription lives on."""
        alive = self._alive_at
        session = self._session
        publish = session.last_publish if session is not None and self._subscription is not None else None
        if publish is not None:
            alive = max(alive or 0.0, publish)
        return alive is not None and time.monotonic() - alive <= self.stale_after_s

    def _sample(self, spec: NodeSpec, ts: datetime, fresh: bool) -> Sample | None:
        latest = self._latest.get(spec.quantity)
        if latest is None:
            return None  # subscribed, first notification not here yet: no sample rather than a guess
        value, quality, _ = latest.converted
        if quality is Quality.INVALID:
            self.stats.invalid_values += 1
            return Sample(self.device_id, spec.quantity, None, self._units[spec.quantity], ts, Quality.INVALID)
        if not fresh:
            quality = Quality.STALE
        return Sample(self.device_id, spec.quantity, value, self._units[spec.quantity], ts, quality)


def driver_from_config(
    cfg: OpcuaDeviceConfig, *, base_dir: Path, pool: OpcuaPool | None = None, node_map: NodeMap | None = None
) -> OpcuaDriver:
    """Build the driver for a configured device; configuration errors raise PermanentError naming the fix.

    `node_map`: the device's map as loaded at start (the agent loads each map once); read here if None."""
    if node_map is None:
        try:
            node_map = load_node_map(cfg.map, base_dir=base_dir)
        except MapError as exc:
            raise PermanentError(f"{cfg.id}: {exc}") from None
    security = None
    if cfg.security is not None:
        s = cfg.security
        security = Security(
            certificate=resolve(s.certificate, base_dir),
            private_key=resolve(s.private_key, base_dir),
            server_certificate=resolve(s.server_certificate, base_dir),
            mode=s.mode,
            application_uri=s.application_uri,
        )
        for name, path in (
            ("certificate", security.certificate),
            ("private_key", security.private_key),
            ("server_certificate", security.server_certificate),
        ):
            if not path.is_file():
                raise PermanentError(f"{cfg.id}: security.{name}: file {str(path)!r} does not exist")
    password = None
    if cfg.password_file is not None:
        path = resolve(cfg.password_file, base_dir)
        try:
            password = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise PermanentError(
                f"{cfg.id}: password_file: cannot read {str(path)!r}: {describe_error(exc)[0]}"
            ) from None
        if not password:
            raise PermanentError(f"{cfg.id}: password_file: {str(path)!r} is empty; write the password in it")
    endpoint = Endpoint(
        url=cfg.endpoint, timeout_s=cfg.timeout_s, security=security, username=cfg.username, password=password
    )
    return OpcuaDriver(
        device_id=cfg.id,
        node_map=node_map,
        endpoint=endpoint,
        root=cfg.root,
        namespace=cfg.namespace,
        mode=cfg.mode,
        poll_interval_s=cfg.poll_interval_s,
        sampling_interval_s=cfg.sampling_interval_s,
        stale_after_intervals=cfg.stale_after_intervals,
        verify_interval_s=cfg.verify_interval_s,
        pool=pool,
    )
