"""Bundled device maps: one YAML file per product, `<vendor>-<model>.yaml`, loaded and validated here.

`load_map` is the only way a map enters the program, so every error a map can have is reported the same
way: `MapError` naming the file, the line (when the YAML parser knows it) and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from drivers.errors import GiaError
from drivers.modbus.registermap import RegisterMap

MAPS_DIR = Path(__file__).resolve().parent


class MapError(GiaError):
    """A device map that cannot be used; the message names the file, line and field."""

    exit_code = 2
    http_status = 400
    error_code = "bad_map"

    def __init__(self, message: str, *, file: str = "", line: int | None = None, field: str = "") -> None:
        self.file = file
        self.line = line
        self.field = field
        where = file + (f":{line}" if line is not None else "")
        prefix = ": ".join(p for p in (where, field) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


def bundled_maps() -> list[str]:
    """Names of the maps shipped with the package (what `map:` accepts without a path)."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))


def resolve_map_path(name_or_path: str, *, base_dir: Path | None = None) -> Path:
    """A bundled name ('eastron-sdm630') or a path (relative to `base_dir`, default the cwd)."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = MAPS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(bundled_maps())
            raise MapError(f"no bundled map named {name_or_path!r}; bundled maps: {known}", file=name_or_path)
        return path
    path = Path(name_or_path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise MapError("map file not found", file=str(path))
    return path


def _node_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Line (1-based) of the YAML node at a pydantic error location, or of its nearest parent."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    nxt = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def parse_map(text: str, *, source: str = "<map>", name: str = "") -> RegisterMap:
    """Validate map YAML text (also used by tests on inline maps)."""
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
        raise MapError("a map is a YAML mapping (device_class:, product:, registers: ...)", file=source)
    raw.setdefault("name", name)
    try:
        return RegisterMap.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not loc and (m := re.match(r"(registers|identity|scale_factors)\[(\d+)\]", msg)):
            loc = (m.group(1), int(m.group(2)))  # model-level checks name the entry in the message
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise MapError(msg, file=source, line=_node_line(root, loc), field=_field_path(loc)) from None


def load_map(name_or_path: str, *, base_dir: Path | None = None) -> RegisterMap:
    """Load and validate a map by bundled name or path; raise MapError naming file, line and field."""
    path = resolve_map_path(name_or_path, base_dir=base_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MapError(f"cannot read: {exc.strerror}", file=str(path)) from None
    return parse_map(text, source=str(path), name=path.stem)
