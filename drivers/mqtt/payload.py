"""MQTT device payloads: JSON paths per quantity, and the bundled profiles (Tasmota SML, Shelly Gen2 EM).

Pure functions (no broker): a payload and a field table in, values in SI units out. A field is
`[SUBTOPIC:]PATH[*FACTOR]`: a dot path into the JSON object (list indices allowed: `emeters.0.power`),
an optional factor to reach the SI unit (`ENERGY.Total*1000` turns kWh into Wh), and for devices that
publish several topics, the subtopic appended to the device's topic (`status/emdata:0:total_act`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

#: Bundled payload profiles: quantity -> field. The device's `topic:` is the prefix for subtopics.
PROFILES: Final[dict[str, dict[str, str]]] = {
    # Tasmota with an SML script (smart meter optical head); the usual script names its values
    # Total_in / Total_out (kWh) and Power_curr (W), published on tele/<device>/SENSOR.
    "tasmota-sml": {
        "power_w": "SML.Power_curr",
        "energy_import_wh": "SML.Total_in*1000",
        "energy_export_wh": "SML.Total_out*1000",
    },
    # Tasmota's built-in energy monitoring (ENERGY object; Total in kWh).
    "tasmota-energy": {
        "power_w": "ENERGY.Power",
        "voltage_l1_v": "ENERGY.Voltage",
        "current_l1_a": "ENERGY.Current",
        "power_factor": "ENERGY.Factor",
        "energy_import_wh": "ENERGY.Total*1000",
    },
    # Shelly Pro 3EM (Gen2 RPC over MQTT): <topic>/status/em:0 and <topic>/status/emdata:0 (Wh).
    "shelly-gen2-em": {
        "power_w": "status/em:0:total_act_power",
        "power_l1_w": "status/em:0:a_act_power",
        "power_l2_w": "status/em:0:b_act_power",
        "power_l3_w": "status/em:0:c_act_power",
        "voltage_l1_v": "status/em:0:a_voltage",
        "voltage_l2_v": "status/em:0:b_voltage",
        "voltage_l3_v": "status/em:0:c_voltage",
        "current_l1_a": "status/em:0:a_current",
        "current_l2_a": "status/em:0:b_current",
        "current_l3_a": "status/em:0:c_current",
        "apparent_power_va": "status/em:0:total_aprt_power",
        "energy_import_wh": "status/emdata:0:total_act",
        "energy_export_wh": "status/emdata:0:total_act_ret",
    },
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    subtopic: str  # "" for the device topic itself
    path: tuple[str, ...]
    factor: float

    @staticmethod
    def parse(text: str) -> FieldSpec:
        body, star, factor = text.partition("*")
        sub, colon, path = body.rpartition(":")
        if not colon:
            sub, path = "", body
        if not path or any(not p for p in path.split(".")):
            raise ValueError(f"{text!r}: write a dot path such as ENERGY.Power or SML.Total_in*1000")
        try:
            f = float(factor) if star else 1.0
        except ValueError:
            raise ValueError(f"{text!r}: the factor after '*' must be a number") from None
        return FieldSpec(sub.strip("/"), tuple(path.split(".")), f)


def topic_for(device_topic: str, spec: FieldSpec) -> str:
    return f"{device_topic.rstrip('/')}/{spec.subtopic}" if spec.subtopic else device_topic


def extract(obj: Any, path: tuple[str, ...]) -> Any:
    """Walk a dot path; None when any step is missing."""
    for step in path:
        if isinstance(obj, Mapping):
            obj = obj.get(step)
        elif isinstance(obj, list) and step.isascii() and step.isdigit() and int(step) < len(obj):
            obj = obj[int(step)]
        else:
            return None
    return obj


#: Larger payloads are not parsed: no meter publishes this much, and anyone may publish to a topic.
MAX_PAYLOAD_BYTES: Final = 256 * 1024


def parse_json(payload: bytes) -> Any:
    """The payload as JSON, or None when it is not JSON (counted, never raised).

    Hostile input is expected (any client of the broker may publish on a device's topic): nesting
    deep enough to exhaust the recursion limit and oversized payloads are "not JSON" too.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def field_value(obj: Any, spec: FieldSpec) -> tuple[float | None, str | None]:
    """The field's number, scaled, or (None, why): absent, not a JSON number, or not finite.

    Only JSON numbers count: a string such as `"1e3"` or `"NaN"` is not a reading (before issue 15
    `float()` turned `"1e3"` into 1000), and a boolean is not either."""
    raw = extract(obj, spec.path)
    if raw is None:
        return None, f"no {'.'.join(spec.path)} in the payload"
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None, f"{'.'.join(spec.path)} is {type(raw).__name__} {str(raw)[:40]!r}, not a JSON number"
    try:
        value = float(raw) * spec.factor
    except OverflowError:  # an integer too large for a float (e.g. 400 digits)
        return None, f"{'.'.join(spec.path)} is too large"
    if not math.isfinite(value):
        return None, f"{'.'.join(spec.path)} is not finite after scaling"
    return value, None
