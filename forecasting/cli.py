"""`gia forecast train|backtest|show`: the forecasting commands.

Heavy imports (pandas, scikit-learn) happen inside the commands, so `gia --help` stays instant. For now
`train` and `show` read history from a CSV (`--data`); the agent wires them to its ledger later.
Exit codes: 0 ok, 2 unusable input (one line saying what to fix).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from forecasting.config import TARGET_NAMES, ForecastingConfig, TargetName

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="load, wind or pv")]
DataOpt = Annotated[Path, typer.Option("--data", help="CSV: ts (UTC), value, optional weather columns")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="gia.yaml (its forecasting: and site: sections)")]
ArtifactOpt = Annotated[
    Path | None, typer.Option("--artifacts", help="model directory (default: config or ./gia-models)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _fail(msg: str) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(2)


def _target(name: str) -> TargetName:
    if name not in TARGET_NAMES:
        raise _fail(f"unknown target {name!r}; use one of {', '.join(TARGET_NAMES)}")
    return name


def _progress(quiet: bool) -> Any:
    start = time.monotonic()

    def say(msg: str) -> None:
        if not quiet:
            typer.echo(f"[{time.monotonic() - start:6.1f} s] {msg}", err=True)

    return say


def _load_config(path: Path | None) -> tuple[ForecastingConfig, str, float | None, float | None]:
    """The forecasting section plus the site's time zone and location (defaults without a file)."""
    if path is None:
        return ForecastingConfig(enabled=True), "UTC", None, None
    import yaml
    from pydantic import ValidationError

    try:
        raw = yaml.safe_load(path.read_text()) or {}
        cfg = ForecastingConfig.model_validate(raw.get("forecasting") or {})
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(f"{path}: cannot read ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _fail(f"{path}: forecasting.{where}: {first['msg']}") from None
    site = raw.get("site") or {}
    loc = site.get("location") or {}
    return cfg, str(site.get("timezone") or "UTC"), loc.get("latitude"), loc.get("longitude")


def _service(target: TargetName, data: Path, config: Path | None, artifacts: Path | None) -> Any:
    from forecasting.history import DataError, FrameHistory, FrameWeather, read_csv
    from forecasting.service import ForecastService

    cfg, tz, lat, lon = _load_config(config)
    try:
        sd = read_csv(data)
    except DataError as exc:
        raise _fail(str(exc)) from None
    tc = cfg.targets.get(target)
    series = (tc.series if tc is not None else None) or target
    weather = FrameWeather(sd.weather) if sd.weather is not None else None
    directory = artifacts or cfg.artifact_dir or Path("gia-models")
    svc = ForecastService(
        cfg,
        FrameHistory({series: sd.values}),
        artifact_dir=directory,
        weather=weather,
        timezone=tz,
        latitude=lat,
        longitude=lon,
    )
    return svc, sd


def _now(text: str | None, sd: Any) -> Any:
    import pandas as pd

    if text:
        try:
            t = pd.Timestamp(text)
        except ValueError:
            raise _fail(f"--now {text!r} is not ISO 8601") from None
        return (t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")).to_pydatetime()
    return (sd.values.index[-1] + pd.Timedelta(hours=1)).floor("h").to_pydatetime()


#: the running agent's current forecast payload of a target, given the agent's config (gateway's, injected
#: so that this package does not depend on the agent)
CurrentForecast = Callable[[Path | None, str], dict[str, Any]]


def register(app: typer.Typer, current: CurrentForecast | None = None) -> None:
    """Add `gia forecast ...` to `gia`. `current`: how `show` without `--data` reaches the running agent."""
    fc = typer.Typer(help="Load, wind and PV forecasts: train, evaluate against baselines, show.", no_args_is_help=True)

    @fc.command("train")
    def train(
        target: TargetOpt = "load",
        data: DataOpt = Path("history.csv"),
        config: ConfigOpt = None,
        artifacts: ArtifactOpt = None,
        now: Annotated[
            str | None, typer.Option(help="train on history before this UTC time (default: end of data)")
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Train the target's model from a history CSV and save it with its metadata."""
        t = _target(target)
        say = _progress(json_out)
        svc, sd = _service(t, data, config, artifacts)
        say(f"training {t} on {len(sd.values)} rows")
        res = svc.train(t, now=_now(now, sd))
        out = {
            "target": t,
            "trained": res.trained,
            "reason": res.reason,
            "metrics": res.metrics,
            "weather": list(res.weather_columns),
        }
        if json_out:
            typer.echo(json.dumps(out, indent=2))
        elif res.trained:
            say(f"trained in {res.metrics.get('fit_s', 0):.1f} s, weather: {', '.join(res.weather_columns) or 'none'}")
        else:
            typer.echo(f"not trained: {res.reason}")

    @fc.command("show")
    def show(
        target: TargetOpt = "load",
        data: Annotated[
            Path | None,
            typer.Option(
                "--data", help="CSV: compute a forecast from this history; without it, the running agent's current one"
            ),
        ] = None,
        config: ConfigOpt = None,
        artifacts: ArtifactOpt = None,
        now: Annotated[str | None, typer.Option(help="forecast origin, UTC (default: end of data)")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Print the agent's current forecast, or one computed from --data (model, or a labelled baseline)."""
        t = _target(target)
        if data is None and current is not None:
            payload = current(config, t)
        else:
            svc, sd = _service(t, data or Path("history.csv"), config, artifacts)
            payload = svc.predict(t, _now(now, sd)).to_payload()
        if json_out:
            typer.echo(json.dumps(payload, indent=2))
            return
        meta = payload.get("metadata") or {}
        reason = meta.get("reason") or ""
        typer.echo(f"{t}: {meta.get('kind')} ({meta.get('method')}){' - ' + reason if reason else ''}")
        typer.echo(f"{'ts (UTC)':22s} {'p10':>12s} {'p50':>12s} {'p90':>12s}  [{payload.get('unit', '')}]")
        for p in payload["points"]:
            typer.echo(f"{p['ts']:22s} {p['p10']:12.1f} {p['p50']:12.1f} {p['p90']:12.1f}")

    @fc.command("backtest")
    def backtest(
        target: TargetOpt = "load",
        data: DataOpt = Path("history.csv"),
        horizon: Annotated[
            str, typer.Option(help="hours scored from the first local midnight at or after the issue, e.g. 24h")
        ] = "24h",
        issued_at: Annotated[
            str,
            typer.Option(
                "--issued-at",
                help="local time of issue, HH:MM: 00:00 scores steps 1-24; 12:00 the next day (steps 13-36)",
            ),
        ] = "00:00",
        weather_kind: Annotated[
            str | None,
            typer.Option(
                "--weather-kind",
                help="what the CSV's weather columns are: observed, reanalysis, forecast or perturbed(SIGMA, RHO);"
                " default observed (scores are then optimistic)",
            ),
        ] = None,
        split: Annotated[
            str, typer.Option(help="test (the last rows) or validation (the window before them, for tuning)")
        ] = "test",
        json_out: JsonOpt = False,
        test_fraction: Annotated[float, typer.Option(help="last fraction of rows used as test set")] = 0.2,
        capacity: Annotated[float | None, typer.Option(help="installed capacity (wind/pv nMAE); default max")] = None,
        timezone: Annotated[str | None, typer.Option(help="calendar zone (default: config site or UTC)")] = None,
        holidays: Annotated[str | None, typer.Option(help="holiday country code (default: config or LV)")] = None,
        config: ConfigOpt = None,
        plot: Annotated[Path | None, typer.Option(help="write actual vs forecast to this PNG (matplotlib)")] = None,
    ) -> None:
        """Train on the first rows, forecast from every issue time in the test set, compare with baselines."""
        import pandas as pd

        from forecasting.backtest import parse_horizon, parse_issued_at, parse_weather_kind, run_backtest
        from forecasting.history import DataError, infer_resolution, read_csv

        t = _target(target)
        if not 0.05 <= test_fraction <= 0.8:
            raise _fail("--test-fraction must be between 0.05 and 0.8")
        if split not in ("test", "validation"):
            raise _fail("--split must be test or validation")
        cfg, tz, lat, lon = _load_config(config)
        try:
            hz = parse_horizon(horizon)
            parse_issued_at(issued_at)
            kind = parse_weather_kind(weather_kind) if weather_kind is not None else "observed"
            sd = read_csv(data)
        except (ValueError, DataError) as exc:
            raise _fail(str(exc)) from None
        res_s = infer_resolution(pd.DatetimeIndex(sd.values.dropna().index))
        # optional `availability` column (0..1): hours below 95 % are left out of training, still scored
        exclude = sd.extra["availability"] < 0.95 if "availability" in sd.extra else None
        steps = max(1, int(hz.total_seconds()) // res_s)
        tc = cfg.targets.get(t)
        say = _progress(json_out)
        say(f"{len(sd.values)} rows at {res_s} s, horizon {steps} steps, test = last {test_fraction:.0%}")
        if sd.weather is not None and weather_kind is None:
            say("weather columns taken as observed (pass --weather-kind forecast if they were forecast ahead)")
        try:
            res = run_backtest(
                sd.values,
                target=t,
                weather=sd.weather,
                weather_kind=kind,
                issued_at=issued_at,
                split="validation" if split == "validation" else "test",
                resolution_s=res_s,
                horizon_steps=steps,
                test_fraction=test_fraction,
                timezone=timezone or cfg.timezone or tz,
                holidays_country=holidays or cfg.holidays_country,
                holidays_subdiv=cfg.holidays_subdiv,
                capacity=capacity or (tc.capacity_w if tc else None),
                latitude=lat,
                longitude=lon,
                tilt_deg=tc.tilt_deg if tc is not None and t == "pv" else None,
                azimuth_deg=tc.azimuth_deg if tc is not None and t == "pv" else None,
                max_iter=cfg.max_iter,
                coverage=cfg.interval_coverage,
                progress=say,
                exclude=exclude,
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        if plot is not None:
            _plot(res, plot)
        if json_out:
            typer.echo(json.dumps(_clean(res.to_json()), indent=2))
            return
        _print_result(res)

    app.add_typer(fc, name="forecast")


def _clean(obj: Any) -> Any:
    """JSON has no NaN: print null instead."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _print_result(res: Any) -> None:
    def pct(x: float) -> str:
        return f"{x * 100:6.2f} %" if x is not None and math.isfinite(x) else "    n/a"

    typer.echo(
        f"target {res.target}: {res.origins} origins issued at {res.issued_at} local, steps {res.first_step}-"
        f"{res.last_step} of {res.resolution_s} s, {res.points} points; nMAE = MAE / {res.normaliser:.1f}"
    )
    typer.echo(
        f"weather: {res.weather_kind}{' (' + ', '.join(res.weather_columns) + ')' if res.weather_columns else ''}"
    )
    typer.echo(
        f"{res.split} window {res.scored_window[0]} .. {res.scored_window[1]}; "
        f"trained on {res.train_window[0]} .. {res.train_window[1]}"
    )
    if res.note:
        typer.echo(f"note: {res.note}")
    best = res.best_naive
    typer.echo(f"{'method':24s} {'MAE':>12s} {'nMAE':>9s} {'skill vs best naive':>20s}")
    typer.echo(f"{res.method:24s} {res.mae:12.2f} {pct(res.nmae)} {pct(res.skill('best_naive')):>20s}")
    for name, b in res.baselines.items():
        skill = 1 - b["mae"] / best["mae"] if best["mae"] else math.nan
        mark = "  <- best naive" if name == best["name"] else ""
        typer.echo(f"{name:24s} {b['mae']:12.2f} {pct(b['nmae'])} {pct(skill):>20s}{mark}")
    typer.echo(f"{'lead (h)':10s} {'points':>7s} {'nMAE':>9s} {'best naive':>9s} {'P10-P90 coverage':>17s}")
    for row in res.by_lead:
        typer.echo(
            f"{row['lead_h']:10s} {row['points']:7d} {pct(row['nmae'])} {pct(row['best_naive']['nmae'])} "
            f"{pct(row['coverage_p10_p90']):>17s}"
        )
    cov = f"{res.coverage:.1%}" if math.isfinite(res.coverage) else "n/a (no band)"
    typer.echo(
        f"pinball loss {pct(res.pinball)} of normaliser; P10-P90 coverage {cov}; "
        f"fit {res.fit_s:.1f} s; predict {res.predict_s * 1000:.1f} ms per origin"
    )


def _plot(res: Any, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise _fail("--plot needs matplotlib (pip install matplotlib)") from None
    import numpy as np

    order = np.argsort(np.asarray(res.ts, dtype=object))
    ts = [res.ts[i] for i in order]
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.fill_between(ts, [res.p10[i] for i in order], [res.p90[i] for i in order], alpha=0.3, label="P10-P90")
    ax.plot(ts, [res.p50[i] for i in order], lw=1, label="P50")
    ax.plot(ts, [res.actual[i] for i in order], lw=1, color="k", label="actual")
    ax.set_title(f"{res.target}: nMAE {res.nmae:.2%}, coverage {res.coverage:.0%}, weather: {res.weather_kind}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot written to {path}", file=sys.stderr)
