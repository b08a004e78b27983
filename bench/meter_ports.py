"""Decode cost of the meter-port drivers per frame, against the cheapest possible baseline in the same run.

A DSMR 5 meter sends a telegram every second, an SML meter every 1-4 s, and every frame is checked and
decoded even when the poll interval is longer (bad CRCs must be counted). This prints the cost per
frame of our decode path (framing + library CRC check + parse + mapping) and, as a same-run baseline,
the cost of computing the frame's CRC alone in Python, so the ratio is comparable across machines.

Run: .venv/bin/python bench/meter_ports.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.mbus.decode import parse_answer, quantities
from drivers.mbus.sim import SimMeter
from drivers.p1.decode import P1Decoder
from drivers.p1.driver import p1_framer
from drivers.p1.sim import crc16_arc, dsmr5_telegram, han_telegram
from drivers.sml.decode import SmlDecoder
from drivers.sml.driver import sml_framer
from drivers.sml.sim import crc16_x25, sml_frame

V = {"energy_import_wh": 12_345_678, "energy_export_wh": 4321, "power_w": 1234.0, "power_l1_w": 400.0}


def per_call(fn: Callable[[], object], seconds: float = 0.5) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> None:
    dsmr, han, sml = dsmr5_telegram(V), han_telegram(V), sml_frame(V)
    p1d, p1s, smd = P1Decoder("dsmr5"), P1Decoder("sweden"), SmlDecoder()
    mframe = SimMeter(5, 1, "electricity", lambda: V).answer()
    rows = [
        ("P1 DSMR 5", len(dsmr), lambda: p1d(p1_framer().feed(dsmr)[0]), lambda: crc16_arc(dsmr)),  # type: ignore[arg-type]
        ("P1 HAN (SE/FI)", len(han), lambda: p1s(p1_framer().feed(han)[0]), lambda: crc16_arc(han)),  # type: ignore[arg-type]
        ("SML", len(sml), lambda: smd(sml_framer().feed(sml)[0]), lambda: crc16_x25(sml)),  # type: ignore[arg-type]
        ("M-Bus RSP_UD", len(mframe), lambda: quantities(parse_answer(mframe), records={}), lambda: sum(mframe)),
    ]
    print(f"{'frame':16} {'bytes':>6} {'decode us':>10} {'CRC-only us':>12} {'ratio':>7}")
    for name, size, decode, baseline in rows:
        d, b = per_call(decode), per_call(baseline)
        print(f"{name:16} {size:6d} {d * 1e6:10.0f} {b * 1e6:12.1f} {d / b:7.1f}")


if __name__ == "__main__":
    main()
