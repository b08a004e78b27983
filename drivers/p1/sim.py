"""A simulated P1/HAN port: DSMR 5 or Swedish/Finnish HAN telegrams written onto a pty.

The telegram layouts follow the documents' formats (DSMR 5.0.2 P1 Companion Standard §6.12 example;
Energiföretagen lokalt kundgränssnitt v2.0 §5 example); the content is generated here from canonical
quantities, and the CRC is computed by this module's own CRC16 (not dsmr-parser's), so the driver's
check is tested against an independent implementation. Never imported by the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from drivers.sim.pushed import PushSim

Values = Callable[[], Mapping[str, float | int]]


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC (polynomial x^16+x^15+x^2+1, reflected 0xA001, init 0): the P1 telegram CRC."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def seal(lines: list[str]) -> bytes:
    """Join the lines (first '/...', CRLF endings), append '!' and the CRC over '/'..'!' inclusive."""
    body = ("\r\n".join(lines) + "\r\n!").encode("ascii")
    return body + f"{crc16_arc(body):04X}\r\n".encode("ascii")


def corrupt(telegram: bytes) -> bytes:
    """Change one digit of the first energy value after the CRC was computed (line noise)."""
    i = telegram.index(b"1.8.") + 6
    while not chr(telegram[i]).isdigit():
        i += 1
    digit = b"1" if telegram[i : i + 1] != b"1" else b"2"
    return telegram[:i] + digit + telegram[i + 1 :]


def _kwh(wh: float | int, width: int = 10) -> str:
    return f"{Decimal(int(wh)) / 1000:0{width}.3f}*kWh"


def _kw(w: float | int, width: int = 6) -> str:
    return f"{Decimal(round(w)) / 1000:0{width}.3f}*kW"


def _stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%y%m%d%H%M%S") + "W"


_PHASES: Final = ((1, 21, 22, 31, 32), (2, 41, 42, 51, 52), (3, 61, 62, 71, 72))


def dsmr5_telegram(v: Mapping[str, float | int], ts: datetime | None = None) -> bytes:
    """DSMR 5 layout: tariffs 1 and 2 (import split 40/60), 1.7.0/2.7.0, per-phase lines, a gas meter."""
    imp, exp = int(v.get("energy_import_wh", 0)), int(v.get("energy_export_wh", 0))
    p = float(v.get("power_w", 0.0))
    lines = [
        "/ISK5\\2M550T-1012",
        "",
        "1-3:0.2.8(50)",
        f"0-0:1.0.0({_stamp(ts or datetime.now(UTC))})",
        "0-0:96.1.1(4530303434303037313331363530363137)",
        f"1-0:1.8.1({_kwh(imp * 2 // 5)})",
        f"1-0:1.8.2({_kwh(imp - imp * 2 // 5)})",
        f"1-0:2.8.1({_kwh(exp // 2)})",
        f"1-0:2.8.2({_kwh(exp - exp // 2)})",
        "0-0:96.14.0(0002)",
        f"1-0:1.7.0({_kw(max(p, 0.0), 6)})",
        f"1-0:2.7.0({_kw(max(-p, 0.0), 6)})",
        "0-0:96.7.21(00010)",
        "0-0:96.7.9(00002)",
        "1-0:99.97.0(1)(0-0:96.7.19)(190101120000W)(0000000240*s)",
        "1-0:32.32.0(00001)",
        "1-0:32.36.0(00000)",
        "0-0:96.13.0()",
    ]
    for n, *_ in _PHASES:
        lines.append(f"1-0:{(12 + 20 * n)}.7.0({float(v.get(f'voltage_l{n}_v', 230.0)):05.1f}*V)")
    for n, *_ in _PHASES:
        lines.append(f"1-0:{(11 + 20 * n)}.7.0({round(float(v.get(f'current_l{n}_a', 0))):03d}*A)")
    for n, pos, _neg, *_ in _PHASES:
        lines.append(f"1-0:{pos}.7.0({_kw(max(float(v.get(f'power_l{n}_w', 0.0)), 0.0))})")
    for n, _pos, neg, *_ in _PHASES:
        lines.append(f"1-0:{neg}.7.0({_kw(max(-float(v.get(f'power_l{n}_w', 0.0)), 0.0))})")
    lines += [
        "0-1:24.1.0(003)",
        "0-1:96.1.0(4730303339303031363532303530323136)",
        f"0-1:24.2.1({_stamp(ts or datetime.now(UTC))})(01234.567*m3)",
    ]
    return seal(lines)


def han_telegram(v: Mapping[str, float | int], ts: datetime | None = None) -> bytes:
    """Swedish/Finnish HAN layout: totals 1.8.0/2.8.0, reactive registers, per-phase values."""
    p = float(v.get("power_w", 0.0))
    lines = [
        "/ELL5\\253833635_A",
        "",
        f"0-0:1.0.0({_stamp(ts or datetime.now(UTC))})",
        f"1-0:1.8.0({_kwh(v.get('energy_import_wh', 0), 12)})",
        f"1-0:2.8.0({_kwh(v.get('energy_export_wh', 0), 12)})",
        "1-0:3.8.0(00000021.000*kvarh)",
        "1-0:4.8.0(00000543.210*kvarh)",
        f"1-0:1.7.0({_kw(max(p, 0.0), 8)})",
        f"1-0:2.7.0({_kw(max(-p, 0.0), 8)})",
        "1-0:3.7.0(0000.000*kvar)",
        "1-0:4.7.0(0000.120*kvar)",
    ]
    for n, pos, neg, *_ in _PHASES:
        pw = float(v.get(f"power_l{n}_w", 0.0))
        lines.append(f"1-0:{pos}.7.0({_kw(max(pw, 0.0), 8)})")
        lines.append(f"1-0:{neg}.7.0({_kw(max(-pw, 0.0), 8)})")
    for n, *_ in _PHASES:
        lines.append(f"1-0:{(12 + 20 * n)}.7.0({float(v.get(f'voltage_l{n}_v', 230.0)):05.1f}*V)")
    for n, *_ in _PHASES:
        lines.append(f"1-0:{(11 + 20 * n)}.7.0({float(v.get(f'current_l{n}_a', 0.0)):05.1f}*A)")
    return seal(lines)


def p1_sim(path: str, *, variant: str, values: Values, period_s: float = 1.0) -> PushSim:
    """A meter writing `values()` as telegrams of `variant` to the pty end `path` every `period_s`."""
    layout = han_telegram if variant in ("sweden", "finland") else dsmr5_telegram
    return PushSim(path, frame=lambda: layout(values()), corrupt=corrupt, period_s=period_s)
