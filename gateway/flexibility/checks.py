"""Cross-checks of the `flexibility:` section against the rest of the configuration.

`check_flexibility(settings, base_dir)` has the `CrossCheck` signature of gateway/settings.py: add it
to `CROSS_CHECKS` (or pass it as `extra_checks`) and `gia check-config` reports every asset that names
an unknown device or quantity, one line each. `gateway.settings` is imported lazily inside the
function, because settings imports our config module: a module-level import would be circular.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.model import QUANTITIES

if TYPE_CHECKING:
    from gateway.settings import Problem, Settings


def check_flexibility(settings: Settings, base_dir: Path) -> list[Problem]:
    """Device ids and quantities named by flexibility assets must exist; forecasts must be configured."""
    from gateway.settings import Problem

    flex = settings.flexibility
    problems: list[Problem] = []
    if not flex.assets and not flex.enabled:
        return problems
    device_ids = [d.id for d in settings.devices]
    known = ", ".join(device_ids) or "none configured"

    def device(path: str, dev: str | None) -> None:
        if dev is not None and dev not in device_ids:
            problems.append(
                Problem(path, f"unknown device {dev!r} (devices: {known})", "use the id of a device under devices:")
            )

    for i, asset in enumerate(flex.assets):
        base = f"flexibility.assets[{i}]"
        level: Any = getattr(asset, "soc", None) or getattr(asset, "fill", None)
        if level is not None:
            field = "soc" if getattr(asset, "soc", None) is not None else "fill"
            device(f"{base}.{field}.device", level.device)
            if level.quantity not in QUANTITIES:
                problems.append(
                    Problem(
                        f"{base}.{field}.quantity",
                        f"unknown quantity {level.quantity!r}",
                        "use a canonical quantity name such as soc_pct or temperature_c",
                    )
                )
        device(f"{base}.device", getattr(asset, "device", None))
    if flex.enabled:
        fc = settings.forecasting
        needed = ["load", *flex.generation]
        if not fc.enabled:
            problems.append(
                Problem(
                    "flexibility.enabled",
                    "flexibility needs forecasts, but forecasting is disabled",
                    "set forecasting.enabled: true with targets " + ", ".join(needed),
                )
            )
        else:
            missing = [t for t in needed if t not in fc.targets]
            if missing:
                problems.append(
                    Problem(
                        "flexibility.generation",
                        f"no forecasting target for {', '.join(missing)}",
                        "add them under forecasting.targets, or remove them from flexibility.generation",
                    )
                )
    return problems
