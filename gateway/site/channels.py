"""The metering channel: one type for the report, the live balance, forecasting history and the sinks.

A channel is an energy register of one device with a role in the site's balance. Its rules live here
and nowhere else: the id defaults to '<device>.<role>'; a channel's own register modulus wins over its
map's (a wrapping counter must not be read as a meter reset); CT/VT multipliers and the rated power
(for the capacity rule) come along. Standard library only: `gia verify` rebuilds channels from a report.

Role signs are written once too (`ROLE_FLOW`): which site flow a role belongs to and its sign there —
grid + import, storage + discharge, as drivers/model.py defines power signs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

Flow = Literal["grid", "generation", "consumption", "storage", "auxiliary"]

#: A channel's role -> the site flow it belongs to and its sign in that flow.
ROLE_FLOW: Final[dict[str, tuple[Flow, int]]] = {
    "grid_import": ("grid", 1),
    "grid_export": ("grid", -1),
    "generation": ("generation", 1),
    "consumption": ("consumption", 1),
    "storage_discharge": ("storage", 1),
    "storage_charge": ("storage", -1),
    "auxiliary": ("auxiliary", 1),
}

#: A role's sign in the site load at the connection point (load = import - export + generation +
#: discharge - charge); roles not listed do not enter it.
LOAD_SIGN: Final[dict[str, int]] = {
    "grid_import": 1,
    "grid_export": -1,
    "generation": 1,
    "storage_discharge": 1,
    "storage_charge": -1,
}


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A metering channel (built from the config by `channel_specs`, or from a report by `from_report`)."""

    id: str
    role: str
    device: str
    quantity: str
    serial: str | None = None
    multiplier: int = 1
    register_modulus_wh: int | None = None
    rated_power_w: int | None = None
    source: str | None = None
    renewable: bool | None = None

    def meter_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "multiplier": self.multiplier,
            "register_modulus_wh": self.register_modulus_wh,
            "rated_power_w": self.rated_power_w,
        }

    @staticmethod
    def from_report(ch: dict[str, Any]) -> ChannelSpec:
        m = ch["meter"]
        return ChannelSpec(
            id=ch["id"],
            role=ch["role"],
            device=ch["device"],
            quantity=ch["quantity"],
            serial=m.get("serial"),
            multiplier=int(m["multiplier"]),
            register_modulus_wh=m.get("register_modulus_wh"),
            rated_power_w=m.get("rated_power_w"),
            source=ch.get("source"),
            renewable=ch.get("renewable"),
        )


def normalise_serial(serial: str | None) -> str | None:
    """One spelling per meter serial: surrounding and inner whitespace dropped, letters upper-case
    ('sn-123 ' and 'SN-123' are one meter). Empty means no serial."""
    if serial is None:
        return None
    text = "".join(str(serial).split()).upper()
    return text or None


def channel_specs(devices: Sequence[Any], moduli: Mapping[tuple[str, str], int]) -> list[ChannelSpec]:
    """The channels of configured devices (`devices[].channels`); `moduli` maps (device, quantity) to
    the register's wrap value from the device's map. Serials are normalised (`normalise_serial`), so
    'sn-123 ' and 'SN-123' are one meter."""
    out = []
    for dev in devices:
        for ch in dev.channels:
            rated = getattr(ch, "rated_power_w", None)
            out.append(
                ChannelSpec(
                    id=ch.id or f"{dev.id}.{ch.role}",
                    role=ch.role,
                    device=dev.id,
                    quantity=ch.quantity,
                    serial=normalise_serial(getattr(dev, "serial", None)),
                    multiplier=ch.multiplier,
                    register_modulus_wh=getattr(ch, "register_modulus_wh", None) or moduli.get((dev.id, ch.quantity)),
                    rated_power_w=round(rated) if rated is not None else None,
                    source=ch.source,
                    renewable=ch.renewable,
                )
            )
    return out
