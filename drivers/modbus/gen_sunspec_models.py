"""Regenerate drivers/modbus/sunspec_models.json from the SunSpec model definitions (developer tool).

The SunSpec Alliance publishes its information models as JSON (github.com/sunspec/models, Apache-2.0);
pysunspec2 ships a copy. The agent does not depend on pysunspec2: this script extracts the layout of
the models GIA reads (point names, types, sizes, scale-factor names, units, repeating groups) into a
compact file bundled with the package. Run: .venv/bin/python -m drivers.modbus.gen_sunspec_models
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

MODELS = (1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 160, 201, 202, 203, 204, 211, 212, 213, 214, 802)
OUT = Path(__file__).with_name("sunspec_models.json")


def _points(group: dict[str, Any]) -> list[list[Any]]:
    return [[p["name"], p["type"], int(p.get("size", 1)), p.get("sf"), p.get("units")] for p in group["points"]]


def main() -> None:
    spec = importlib.util.find_spec("sunspec2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install pysunspec2 to regenerate the SunSpec model table")
    src = Path(spec.origin).parent / "models" / "json"
    models: dict[str, Any] = {}
    for mid in MODELS:
        group = json.loads((src / f"model_{mid}.json").read_text())["group"]
        models[str(mid)] = {
            "name": group["name"],
            "label": group.get("label", ""),
            "points": _points(group),
            "groups": [
                {"name": g["name"], "count": g.get("count", 1), "points": _points(g)} for g in group.get("groups", [])
            ],
        }
    doc = {
        "source": "SunSpec Alliance information models, github.com/sunspec/models (Apache-2.0),"
        " extracted from pysunspec2's copy by drivers/modbus/gen_sunspec_models.py",
        "models": models,
    }
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
