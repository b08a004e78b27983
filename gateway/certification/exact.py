"""Exact arithmetic for signed data: integer Wh, decimal strings, UTC timestamps, no floats.

Why: RFC 8785 re-writes floats (shortest round-trip form), so a float in a signed payload makes the
signature depend on a float printer, and a certifier re-adding shares could disagree in the last digit.
Everything signed is an int, a str, a bool, None, or a list/dict of those; `assert_no_float` enforces it.
Ratios are computed from integers with `Decimal` under a fixed context, so the gateway and `gia verify`
print the same digits. Only the standard library is used: `gia verify` imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Final

SHARE_PLACES: Final = Decimal("0.000001")  # shares: 6 decimals (0.0001 %)
KG_PLACES: Final = Decimal("0.001")  # CO2: grams
_CTX: Final = Context(prec=50, rounding=ROUND_HALF_EVEN)


class FloatInSignedData(TypeError):
    """A float reached signed data: a bug, never a user error."""


def assert_no_float(obj: object, path: str = "$") -> None:
    """Raise if any float hides anywhere in `obj` (bool is fine, it is not a float)."""
    if isinstance(obj, float):
        raise FloatInSignedData(f"float {obj!r} at {path}: signed data holds integers and decimal strings")
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert_no_float(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            assert_no_float(v, f"{path}[{i}]")


def ratio(num: int, den: int, places: Decimal = SHARE_PLACES) -> str | None:
    """num/den as a decimal string rounded half-even; None when den is 0 (no meaningful share)."""
    if den == 0:
        return None
    q = _CTX.divide(Decimal(num), Decimal(den))
    return str(q.quantize(places, rounding=ROUND_HALF_EVEN, context=_CTX))


def wh_times_factor_kg(wh: int, factor_t_per_mwh: str) -> str:
    """kg CO2 = Wh x (t/MWh) / 1000 (1 t/MWh = 1 kg/kWh), as a decimal string to the gram."""
    kg = _CTX.divide(_CTX.multiply(Decimal(wh), Decimal(factor_t_per_mwh)), Decimal(1000))
    return str(kg.quantize(KG_PLACES, rounding=ROUND_HALF_EVEN, context=_CTX))


def wh_factors_kg(wh: Sequence[int], factors_t_per_mwh: Sequence[str]) -> str:
    """sum_h Wh_h x factor_h / 1000 kg, summed exactly and rounded once, to the gram."""
    total = Decimal(0)
    for e, f in zip(wh, factors_t_per_mwh, strict=True):
        if e:
            total = _CTX.add(total, _CTX.multiply(Decimal(e), Decimal(f)))
    kg = _CTX.divide(total, Decimal(1000))
    return str(kg.quantize(KG_PLACES, rounding=ROUND_HALF_EVEN, context=_CTX))


def dec_ge(a: str | None, b: str) -> bool:
    return a is not None and Decimal(a) >= Decimal(b)


def dec_le(a: str | None, b: str) -> bool:
    return a is not None and Decimal(a) <= Decimal(b)


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with `Z` (milliseconds only when present)."""
    ts = datetime.fromtimestamp(ms // 1000, UTC)
    base = ts.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ms % 1000:03d}Z" if ms % 1000 else f"{base}Z"


def parse_iso_ms(text: str) -> int:
    """Inverse of `iso_ms` (accepts any ISO 8601 with an offset or `Z`)."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; timestamps are UTC with Z")
    delta = ts.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
