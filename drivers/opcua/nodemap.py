"""OPC UA node maps: a device's address space described as data (YAML), validated before any I/O.

A node map says where each canonical quantity lives on the server and how to turn the server's value
into SI units, exactly as a Modbus register map does for registers:

* `node:` an absolute node id in the OPC UA string form (`ns=2;s=Turbine.W`, `i=2258`, or with the
  namespace named by its URI, `nsu=urn:vendor:turbines;s=Turbine.W`, which survives a server that
  renumbers its namespaces), or
* `path:` a browse path relative to the device's root node (`WTUR/TotWh`), each element a browse name
  in the map's `namespace` (URI) unless written with an explicit index (`3:WTUR`). One map then serves
  every turbine of a park controller: the site's config gives each device its own `root:` (`WTG01`).

Arithmetic, in this order: status mapping (status quantities only), scale, offset, sign flip, range
check, the quantity's type (integer Wh for counters, integer codes for status). Whatever does not fit
becomes `quality=invalid` with a reason (drivers/opcua/convert.py), never a guessed number.

Bundled node maps live in `drivers/maps/opcua/<name>.yaml`; `load_node_map` is the only way one enters
the program, so every error names the file, the line and the field (`MapError`, as for Modbus maps).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.maps import MAPS_DIR, MapError, _field_path, _node_line
from drivers.modbus.registermap import Product
from drivers.model import QUANTITIES, DeviceClass, QuantityKind

NODE_MAPS_DIR: Final = MAPS_DIR / "opcua"

#: OPC UA node id string forms (Part 6, 5.3.1.10) with the namespace as an index or a URI.
_NODE_ID = re.compile(
    r"^(?:ns=(?P<ns>\d+);|nsu=(?P<nsu>[^;]+);)?"
    r"(?:i=(?P<i>\d+)|s=(?P<s>.+)|g=(?P<g>[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12})|b=(?P<b>[A-Za-z0-9+/=]+))$",
    re.DOTALL,
)
#: One browse-path element: `Name` (in the map's namespace) or `<index>:Name`.
_ELEMENT = re.compile(r"^(?:(?P<ns>\d+):)?(?P<name>[^/]+)$")

#: Data types the simulator serves (and scan reports); what a real server holds is read, not assumed.
SimType = Literal["Double", "Float", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Boolean", "String"]


def check_node_id(text: str) -> str:
    """Validate a node id string; the message shows the accepted forms."""
    if not _NODE_ID.match(text.strip()):
        raise ValueError(
            f"{text!r} is not an OPC UA node id; write ns=2;s=Name, ns=2;i=1001, i=2258"
            " or nsu=urn:your:namespace;s=Name"
        )
    return text.strip()


def split_path(text: str) -> list[tuple[int | None, str]]:
    """'WTUR/TotWh' or '2:Park/3:WTUR' -> [(namespace index or None, browse name), ...]."""
    out: list[tuple[int | None, str]] = []
    for raw in text.strip().strip("/").split("/"):
        m = _ELEMENT.match(raw.strip())
        if not raw.strip() or m is None:
            raise ValueError(f"browse path {text!r} has an empty element; write e.g. WTUR/TotWh or 2:WTUR/2:TotWh")
        ns = m.group("ns")
        out.append((int(ns) if ns is not None else None, m.group("name")))
    return out


def is_node_id(text: str) -> bool:
    """True for a node id string, False for a browse path (a root may be either)."""
    return bool(_NODE_ID.match(text.strip()))


class NodeSpec(BaseModel):
    """One value on the server, mapped to a canonical quantity."""

    model_config = ConfigDict(extra="forbid")

    quantity: str = Field(description="a canonical quantity name, e.g. power_w or energy_export_wh")
    node: str | None = Field(default=None, description="absolute node id: ns=2;s=Name or nsu=URI;s=Name")
    path: str | None = Field(default=None, description="browse path from the device's root, e.g. WTUR/TotWh")
    scale: float | None = Field(default=None, description="multiply the server's value (e.g. 1000 for kW -> W)")
    offset: float | None = Field(default=None, description="added after scaling")
    invert: bool = Field(default=False, description="flip the sign (the device's sign convention differs)")
    range: tuple[float, float] | None = Field(
        default=None, description="plausible [min, max] after scaling; outside -> quality invalid"
    )
    unit: str | None = Field(default=None, description="unit after scaling; must equal the quantity's unit")
    status_map: dict[int | str, int] | None = Field(
        default=None,
        description="status quantities: the server's state (number or text) -> the code stored;"
        " a state not listed is stored as invalid",
    )
    example: float | None = Field(default=None, description="a typical value in SI units (simulator, docs)")
    sim_type: SimType | None = Field(default=None, description="the OPC UA data type the simulator serves")

    @field_validator("quantity")
    @classmethod
    def _known_quantity(cls, v: str) -> str:
        if v not in QUANTITIES:
            raise ValueError(f"unknown quantity {v!r}; use one of {', '.join(sorted(QUANTITIES))}")
        return v

    @field_validator("node")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        return None if v is None else check_node_id(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            split_path(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> NodeSpec:
        if (self.node is None) == (self.path is None):
            raise ValueError(f"{self.quantity}: give exactly one of 'node' (a node id) or 'path' (a browse path)")
        spec = QUANTITIES[self.quantity]
        if self.unit is not None and self.unit != spec.unit:
            raise ValueError(
                f"{self.quantity}: unit {self.unit!r} differs from the quantity's unit {spec.unit!r};"
                " convert with 'scale' (e.g. 1000 for kW -> W)"
            )
        if self.scale == 0:
            raise ValueError(f"{self.quantity}: scale 0 would erase the value")
        if self.range is not None and self.range[0] >= self.range[1]:
            raise ValueError(f"{self.quantity}: range must be [min, max] with min < max")
        if self.status_map is not None and spec.kind is not QuantityKind.STATE:
            raise ValueError(f"{self.quantity}: status_map is only for status quantities")
        return self

    @property
    def key(self) -> str:
        """How the map names this node: its node id or its browse path."""
        return self.node if self.node is not None else f"{{root}}/{self.path}"


class NodeMap(BaseModel):
    """A whole OPC UA device map. Build it with `load_node_map`, which adds file/line to errors."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", description="map name (the file name without .yaml)")
    device_class: DeviceClass
    product: Product
    namespace: str | None = Field(
        default=None, description="namespace URI of browse names written without an index (e.g. urn:vendor:wind)"
    )
    root: str = Field(
        default="",
        description="default root of the browse paths: a browse path from the Objects folder or a node id;"
        " a device's 'root:' overrides it",
    )
    nodes: list[NodeSpec] = Field(min_length=1)

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        check_root(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> NodeMap:
        seen: set[str] = set()
        for i, spec in enumerate(self.nodes):
            if spec.quantity in seen:
                raise ValueError(f"nodes[{i}]: quantity {spec.quantity!r} appears twice")
            seen.add(spec.quantity)
            if spec.path is not None and self.namespace is None:
                bare = [name for ns, name in split_path(spec.path) if ns is None]
                if bare:
                    raise ValueError(
                        f"nodes[{i}]: browse name {bare[0]!r} has no namespace; set the map's 'namespace:'"
                        " (a URI) or write it as INDEX:NAME"
                    )
        bare_root = self.root and not is_node_id(self.root) and any(ns is None for ns, _ in split_path(self.root))
        if self.namespace is None and bare_root:
            raise ValueError("root: browse names without an index need the map's 'namespace:' (a URI)")
        return self

    def quantities(self) -> list[str]:
        return [n.quantity for n in self.nodes]

    def node(self, quantity: str) -> NodeSpec:
        for n in self.nodes:
            if n.quantity == quantity:
                return n
        raise KeyError(quantity)


_LOOKS_LIKE_NODE_ID = re.compile(r"^(?:nsu?=[^;/]*;|[isgb]=)")


def check_root(v: str) -> str:
    """A root is empty (the Objects folder), a node id or a browse path from the Objects folder."""
    if v and not is_node_id(v):
        if _LOOKS_LIKE_NODE_ID.match(v.strip()):
            check_node_id(v)  # a node id with a typo: say so, rather than browse for a strange name
        split_path(v)
    return v


def bundled_node_maps() -> list[str]:
    """Names of the node maps shipped with the package (what an OPC UA device's `map:` accepts)."""
    return sorted(p.stem for p in NODE_MAPS_DIR.glob("*.yaml"))


def resolve_node_map_path(name_or_path: str, *, base_dir: Path | None = None) -> Path:
    """A bundled name ('iec61400-25-wind-turbine') or a path (relative to `base_dir`, default the cwd)."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = NODE_MAPS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(bundled_node_maps())
            raise MapError(f"no bundled OPC UA node map named {name_or_path!r}; bundled: {known}", file=name_or_path)
        return path
    path = Path(name_or_path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise MapError("node map file not found", file=str(path))
    return path


def parse_node_map(text: str, *, source: str = "<node map>", name: str = "") -> NodeMap:
    """Validate node-map YAML text (also used by tests on inline maps)."""
    try:
        root = yaml.compose(text)
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise MapError(
            f"not valid YAML: {getattr(exc, 'problem', exc)}",
            file=source,
            line=mark.line + 1 if mark is not None else None,
        ) from None
    if not isinstance(raw, dict):
        raise MapError("a node map is a YAML mapping (device_class:, product:, nodes: ...)", file=source)
    if "registers" in raw and "nodes" not in raw:
        raise MapError("this is a Modbus register map; an OPC UA device needs a node map (nodes:)", file=source)
    raw.setdefault("name", name)
    try:
        return NodeMap.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not loc and (m := re.match(r"nodes\[(\d+)\]", msg)):
            loc = ("nodes", int(m.group(1)))  # model-level checks name the entry in the message
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise MapError(msg, file=source, line=_node_line(root, loc), field=_field_path(loc)) from None


def load_node_map(name_or_path: str, *, base_dir: Path | None = None) -> NodeMap:
    """Load and validate a node map by bundled name or path; raise MapError naming file, line and field."""
    path = resolve_node_map_path(name_or_path, base_dir=base_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"cannot read: {exc}", file=str(path)) from None
    return parse_node_map(text, source=str(path), name=path.stem)


def is_node_map_file(path: Path) -> bool:
    """True when a YAML file is an OPC UA node map (has `nodes:`), for `gia sim FILE`."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "nodes" in raw
