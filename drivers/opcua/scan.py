"""`gia scan opc.tcp://...`: browse a server, recognise bundled node maps, propose a config (or a map).

The address space is browsed from the Objects folder down to `depth` levels (standard-namespace nodes
such as the Server object are skipped). Every object found is a candidate root for every bundled node
map; a map *matches* a root when each of its browse paths resolves from it (one TranslateBrowsePaths
request for all candidates), which is how a park controller's twenty turbines become twenty devices.
Browse names are matched in the namespace the server actually uses, which the snippet then names
(`namespace:`) when it differs from the map's. Maps written with absolute node ids match when every
node exists.

When nothing matches, the numeric variables found are offered as a proposed node map: quantities
guessed from their browse names (IEC 61400-25 data names first, then common words), every guess
marked for checking, units left to the operator. The snippet is a complete gia.yaml that
`gia check-config` accepts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import yaml
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError

from drivers.opcua.driver import relative_path, translate
from drivers.opcua.nodemap import NodeMap
from drivers.opcua.session import Endpoint, close_client, new_client, ns0
from drivers.proposal import ROLES_NOTE, default_channels, site_document

MAX_NODES: Final = 5000  # browsing stops here: a scan must finish on a huge SCADA server too

#: Data names of IEC 61400-25-2 as public sources print them (see the bundled map), then common words.
_EXACT: Final = {
    "W": "power_w",
    "TotW": "power_w",
    "TotWh": "energy_export_wh",
    "SupWh": "energy_export_wh",
    "DmdWh": "energy_import_wh",
    "HorWdSpd": "wind_speed_ms",
    "WdSpd": "wind_speed_ms",
    "HorWdDir": "wind_direction_deg",
    "RotSpd": "rotor_speed_rpm",
    "EnvTmp": "temperature_c",
    "TurSt": "status",
    "Hz": "frequency_hz",
    "VAr": "reactive_power_var",
    "VA": "apparent_power_va",
    "PF": "power_factor",
}
_WORDS: Final = [
    (re.compile(r"active.?power|^power$|power.?total|total.?power"), "power_w"),
    (
        re.compile(r"(export|produc|generat|deliver).*(energy|wh)|(energy|wh).*(export|produc|generat|deliver)"),
        "energy_export_wh",
    ),
    (re.compile(r"(import|consum).*(energy|wh)|(energy|wh).*(import|consum)"), "energy_import_wh"),
    (re.compile(r"wind.?speed"), "wind_speed_ms"),
    (re.compile(r"wind.?dir"), "wind_direction_deg"),
    (re.compile(r"rotor.?(speed|rpm)"), "rotor_speed_rpm"),
    (re.compile(r"frequency"), "frequency_hz"),
    (re.compile(r"state.?of.?charge|^soc$"), "soc_pct"),
    (re.compile(r"temperature|^temp$"), "temperature_c"),
    (re.compile(r"^(status|state)$"), "status"),
]
_NUMERIC: Final = frozenset(
    int(getattr(ObjectIds, t))
    for t in ("Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double")
)


def guess_quantity(browse_name: str) -> str | None:
    """The canonical quantity a variable's browse name suggests, or None."""
    if browse_name in _EXACT:
        return _EXACT[browse_name]
    lowered = browse_name.lower()
    for pattern, quantity in _WORDS:
        if pattern.search(lowered):
            return quantity
    return None


@dataclass
class Found:
    """One node of the browsed address space."""

    node_id: ua.NodeId
    ns: int
    name: str
    node_class: int
    path: list[tuple[int, str]]  # browse names from Objects down to this node
    data_type: int | None = None


@dataclass
class Match:
    map: str
    root: Found | None  # None: the Objects folder (maps with absolute node ids)
    namespace: str | None  # the URI the server files the map's names under
    device_class: str


@dataclass
class ScanResult:
    url: str
    product: str = ""
    namespaces: list[str] = field(default_factory=list)
    nodes: list[Found] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)
    proposed: NodeMap | None = None
    truncated: bool = False


def node_id_text(nid: ua.NodeId, namespaces: Sequence[str]) -> str:
    """A node id in the `nsu=URI;...` form, which survives a server renumbering its namespaces."""
    text = nid.to_string()
    if nid.NamespaceIndex and nid.NamespaceIndex < len(namespaces):
        text = f"nsu={namespaces[nid.NamespaceIndex]};" + text.split(";", 1)[1]
    return text


async def browse(client: Client, depth: int) -> tuple[list[Found], bool]:
    """Objects and variables below the Objects folder, breadth first, skipping namespace 0."""
    found: list[Found] = []
    level: list[tuple[ua.NodeId, list[tuple[int, str]]]] = [(ns0(ObjectIds.ObjectsFolder), [])]
    truncated = False
    for _ in range(depth):
        if not level:
            break
        params = ua.BrowseParameters()
        params.NodesToBrowse = [
            ua.BrowseDescription(
                NodeId=nid,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=ns0(ObjectIds.HierarchicalReferences),
                IncludeSubtypes=True,
                NodeClassMask=ua.UInt32(int(ua.NodeClass.Object) | int(ua.NodeClass.Variable)),
                ResultMask=ua.UInt32(int(ua.BrowseResultMask.All)),
            )
            for nid, _ in level
        ]
        results = await client.uaclient.browse(params)
        nxt: list[tuple[ua.NodeId, list[tuple[int, str]]]] = []
        for (_, path), result in zip(level, results, strict=True):
            for ref in result.References or []:
                bn = ref.BrowseName
                if bn.NamespaceIndex == 0:
                    continue
                target = ref.NodeId
                nid = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                here = [*path, (int(bn.NamespaceIndex), str(bn.Name))]
                found.append(Found(nid, int(bn.NamespaceIndex), str(bn.Name), int(ref.NodeClass), here))
                if ref.NodeClass == ua.NodeClass.Object:
                    nxt.append((nid, here))
                if len(found) >= MAX_NODES:
                    return found, True
        level = nxt
    return found, truncated


async def _data_types(client: Client, variables: Sequence[Found]) -> None:
    if not variables:
        return
    params = ua.ReadParameters()
    params.NodesToRead = [ua.ReadValueId(NodeId=v.node_id, AttributeId=AttributeIds.DataType) for v in variables]
    for v, dv in zip(variables, await client.uaclient.read(params), strict=True):
        value = dv.Value.Value if dv.Value is not None else None
        if isinstance(value, ua.NodeId) and value.NamespaceIndex == 0 and isinstance(value.Identifier, int):
            v.data_type = int(value.Identifier)


def _path_text(path: Sequence[tuple[int, str]], ns: int) -> str | None:
    """'WTG01' or 'Park/WTG01' when every element is in namespace `ns`; None otherwise."""
    if any(n != ns for n, _ in path):
        return None
    return "/".join(name for _, name in path)


async def match_maps(client: Client, result: ScanResult, maps: dict[str, NodeMap]) -> list[Match]:
    """Which bundled maps fit which objects (see the module docstring)."""
    objects = [f for f in result.nodes if f.node_class == int(ua.NodeClass.Object)]
    matches: list[Match] = []
    for name, node_map in sorted(maps.items()):
        paths = [n.path for n in node_map.nodes if n.path is not None]
        if paths:
            # Unprefixed browse names are tried in each candidate's own namespace (where a server files them).
            wanted = [(obj, p) for obj in objects for p in paths]
            found: list[ua.NodeId | str] = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                found.extend(await translate(client, [(obj.node_id, relative_path(p, obj.ns)) for obj, p in chunk]))
            by_obj: dict[int, int] = {}
            for (obj, _), f in zip(wanted, found, strict=True):
                if not isinstance(f, str):
                    by_obj[id(obj)] = by_obj.get(id(obj), 0) + 1
            for obj in objects:
                if by_obj.get(id(obj), 0) == len(paths):
                    uri = result.namespaces[obj.ns] if obj.ns < len(result.namespaces) else None
                    matches.append(Match(name, obj, uri, node_map.device_class))
        else:
            params = ua.ReadParameters()
            ids: list[ua.NodeId] = []
            for n in node_map.nodes:
                assert n.node is not None
                text = n.node
                if text.startswith("nsu="):
                    uri, _, rest = text[4:].partition(";")
                    if uri not in result.namespaces:
                        break
                    text = f"ns={result.namespaces.index(uri)};{rest}"
                ids.append(ua.NodeId.from_string(text))
            else:
                params.NodesToRead = [ua.ReadValueId(NodeId=i, AttributeId=AttributeIds.NodeClass) for i in ids]
                values = await client.uaclient.read(params)
                if all(dv.StatusCode is None or dv.StatusCode.is_good() for dv in values):
                    matches.append(Match(name, None, node_map.namespace, node_map.device_class))
    return _outermost(matches)


def _outermost(matches: list[Match]) -> list[Match]:
    """Keep one match per root, preferring the map that explains the most (maps are few: by order)."""
    seen: set[int] = set()
    out = []
    for m in matches:
        key = id(m.root) if m.root is not None else 0
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def propose_map(result: ScanResult) -> NodeMap | None:
    """A node map from the numeric variables whose names suggest a quantity (one node per quantity)."""
    nodes: list[dict[str, Any]] = []
    taken: set[str] = set()
    for v in result.nodes:
        if v.node_class != int(ua.NodeClass.Variable) or v.data_type not in _NUMERIC:
            continue
        quantity = guess_quantity(v.name)
        if quantity is None or quantity in taken:
            continue
        taken.add(quantity)
        nodes.append({"quantity": quantity, "node": node_id_text(v.node_id, result.namespaces)})
    if not nodes:
        return None
    quantities = {n["quantity"] for n in nodes}
    device_class = (
        "wind_turbine"
        if quantities & {"wind_speed_ms", "rotor_speed_rpm"}
        else "battery"
        if "soc_pct" in quantities
        else "meter"
    )
    return NodeMap.model_validate(
        {
            "name": "proposed",
            "device_class": device_class,
            "product": {
                "brand": "unknown",
                "model": result.product or "OPC UA server",
                "manual": f"proposed by gia scan {result.url} on {datetime.now(UTC):%Y-%m-%d}; check every"
                " quantity, unit and scale against the server's documentation",
            },
            "nodes": nodes,
        }
    )


async def _product(client: Client) -> str:
    params = ua.ReadParameters()
    params.NodesToRead = [
        ua.ReadValueId(NodeId=ns0(i), AttributeId=AttributeIds.Value)
        for i in (
            ObjectIds.Server_ServerStatus_BuildInfo_ManufacturerName,
            ObjectIds.Server_ServerStatus_BuildInfo_ProductName,
        )
    ]
    try:
        values = await client.uaclient.read(params)
    except UaError:
        return ""
    parts = [str(dv.Value.Value) for dv in values if dv.Value is not None and dv.Value.Value]
    return " ".join(parts)


async def scan(endpoint: Endpoint, maps: dict[str, NodeMap], *, depth: int = 4) -> ScanResult:
    """Connect, browse, match; raises what the connection raises (the CLI reports it)."""
    client = await new_client(endpoint)
    result = ScanResult(url=endpoint.url)
    try:
        await client.connect()
        result.namespaces = list(await client.get_namespace_array())
        result.product = await _product(client)
        result.nodes, result.truncated = await browse(client, depth)
        await _data_types(client, [f for f in result.nodes if f.node_class == int(ua.NodeClass.Variable)])
        result.matches = await match_maps(client, result, maps)
        if not result.matches:
            result.proposed = propose_map(result)
    finally:
        await close_client(client, endpoint.timeout_s)
    return result


def _device_id(base: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-_") or "opcua"
    base = base[:50]
    name, n = base, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name


def proposed_devices(
    result: ScanResult, maps: dict[str, NodeMap], *, used: set[str], map_file: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The `devices:` entries for what the scan of one server found, with channel roles guessed from
    each map's device class, and comment lines for the operator (`used`: device ids taken so far)."""
    devices: list[dict[str, Any]] = []
    notes: list[str] = []
    for m in result.matches:
        dev: dict[str, Any] = {"driver": "opcua", "endpoint": result.url, "map": m.map}
        node_map = maps[m.map]
        if m.root is not None:
            root_path = _path_text(m.root.path, m.root.ns)
            dev["root"] = root_path if root_path is not None else node_id_text(m.root.node_id, result.namespaces)
            if m.namespace and m.namespace != node_map.namespace:
                dev["namespace"] = m.namespace
            dev = {"id": _device_id(m.root.name, used), **dev}
        else:
            dev = {"id": _device_id(m.map, used), **dev}
        if roles := default_channels(str(node_map.device_class), node_map.quantities()):
            dev["channels"] = roles
        devices.append(dev)
    if not result.matches and result.proposed is not None and map_file is not None:
        dev = {
            "id": _device_id(urlsplit(result.url).hostname or "opcua", used),
            "driver": "opcua",
            "endpoint": result.url,
            "map": map_file,
        }
        if roles := default_channels(str(result.proposed.device_class), result.proposed.quantities()):
            dev["channels"] = roles
        devices.append(dev)
        notes.append(f"# no bundled node map matched: {map_file} is a proposal; check its quantities and scales")
    elif not result.matches:
        notes.append("# no bundled node map matched and no variable name suggested a quantity: write a node map")
    if result.truncated:
        notes.append(f"# browsing stopped after {MAX_NODES} nodes; use --depth to look less deep")
    return devices, notes


def header(result: ScanResult) -> str:
    return f"# gia scan {result.url}: {result.product or 'OPC UA server'}, {len(result.nodes)} nodes browsed"


def config_snippet(
    result: ScanResult, maps: dict[str, NodeMap], *, site_id: str = "my-site", map_file: str | None = None
) -> str:
    """A minimal, valid gia.yaml for what the scan found (`map_file`: where the proposed map was written)."""
    devices, notes = proposed_devices(result, maps, used=set(), map_file=map_file)
    if any("channels" in d for d in devices):
        notes.append(ROLES_NOTE)
    lines = [header(result), *notes]
    return "\n".join(lines) + "\n" + yaml.safe_dump(site_document(site_id, devices), sort_keys=False)


def node_map_yaml(node_map: NodeMap) -> str:
    """The proposed map as a YAML file, with a header saying what to check."""
    doc = node_map.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    doc.pop("name", None)
    doc["device_class"] = node_map.device_class
    head = (
        "# Proposed by gia scan: quantities guessed from browse names. Check each one against the server's\n"
        "# documentation and add 'scale' where its unit is not the quantity's (kW -> W: scale 1000).\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False)


def describe(result: ScanResult) -> list[str]:
    lines = [f"{result.url}: {result.product or 'OPC UA server'}, {len(result.nodes)} nodes"]
    for m in result.matches:
        where = "/".join(n for _, n in m.root.path) if m.root is not None else "Objects"
        lines.append(f"  {where}: map {m.map} ({m.device_class})")
    if result.proposed is not None:
        qs = ", ".join(result.proposed.quantities())
        lines.append(f"  no bundled map matched; proposing a node map with {qs}")
    return lines
