"""Bundled device maps: one YAML file per product, `<vendor>-<model>.yaml` (stub, see drivers/modbus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class MapError(Exception):
    """A device map that cannot be used; the message names the file, line and field."""


def load_map(name: str, *, base_dir: Path | None = None) -> Any:
    raise MapError(f"map {name!r}: map loading not implemented yet")
