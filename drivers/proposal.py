"""What `gia scan` proposes, whatever the protocol: channel roles per device class and the site around them.

One place for both, so that the Modbus snippet, the OPC UA snippet and a scan of a whole site (several
URLs and P1 ports, gateway/cli_scan.py) propose the same roles and the same working `site`, `data_dir`
and `http` sections, which `gia check-config` accepts as printed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

#: A device class's usual channels: (role, quantity, extra). A first guess the snippet marks as such.
CLASS_CHANNELS: Final[dict[str, list[tuple[str, str, dict[str, Any]]]]] = {
    "meter": [("consumption", "energy_import_wh", {})],
    "inverter": [("generation", "energy_export_wh", {"source": "pv", "renewable": True})],
    "wind_turbine": [("generation", "energy_export_wh", {"source": "wind", "renewable": True})],
    "battery": [("storage_charge", "energy_import_wh", {}), ("storage_discharge", "energy_export_wh", {})],
}

#: A P1/HAN port belongs to the utility's grid meter: these roles are what it is, not a guess.
GRID_CHANNELS: Final[list[dict[str, Any]]] = [
    {"role": "grid_import", "quantity": "energy_import_wh"},
    {"role": "grid_export", "quantity": "energy_export_wh"},
]

ROLES_NOTE: Final = "# channel roles are a first guess from each device's class: check them (grid meter? sub-meter?)"


def default_channels(device_class: str, provided: Iterable[str]) -> list[dict[str, Any]]:
    """The class's usual channels whose energy register the device actually provides."""
    have = set(provided)
    return [
        {"role": role, "quantity": q, **extra} for role, q, extra in CLASS_CHANNELS.get(device_class, []) if q in have
    ]


def site_document(site_id: str, devices: list[dict[str, Any]]) -> dict[str, Any]:
    """A minimal, valid gia.yaml around `devices`: the data directory and the page on loopback."""
    return {
        "site": {"id": site_id, "timezone": "Europe/Riga"},
        "data_dir": "/var/lib/gia",
        "devices": devices,
        # the page on this machine only, viewable without a token; add tokens before listening wider
        "http": {"listen": "127.0.0.1:8080", "anonymous_viewer_on_loopback": True},
    }
