"""`gia forecast ...` through the real Typer app, the backtest protocol and the accuracy tracker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from forecasting import cli
from forecasting.backtest import parse_horizon, rolling_accuracy, run_backtest
from forecasting.physics import PowerCurve, clear_sky_ghi
from forecasting.types import Forecast, ForecastPoint

from .conftest import make_load

pytestmark = [pytest.mark.cpu]


def app() -> typer.Typer:
    a = typer.Typer()
    cli.register(a)

    @a.command("noop")
    def _noop() -> None:  # a second command so `forecast` stays a sub-group
        pass

    return a


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    out = frame.copy()
    out.insert(0, "ts", pd.DatetimeIndex(out.index).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out.to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "load.csv", make_load(60))


@pytest.fixture
def fast_yaml(tmp_path: Path) -> Path:
    """Small models keep the CLI tests fast; everything else is the default configuration."""
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(
        "site: {id: t, timezone: Europe/Riga}\nforecasting:\n  enabled: true\n  max_iter: 20\n"
        "  min_history_days: 14\n  targets: {load: {horizon_h: 24}}\n"
    )
    return cfg


def test_backtest_json_on_a_generated_csv(small_csv: Path, fast_yaml: Path) -> None:
    r = CliRunner().invoke(
        app(),
        [
            "forecast",
            "backtest",
            "--target",
            "load",
            "--data",
            str(small_csv),
            "--horizon",
            "24h",
            "--json",
            "--config",
            str(fast_yaml),
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"nmae", "mae", "baselines", "weather_kind", "by_lead", "skill_vs_best_naive"} <= set(out)
    names = {"last_value", "persistence", "same_hour_last_week", "same_hour_mean_4w", "climatology"}
    assert set(out["baselines"]) == names | {"best_naive"}
    assert set(out["baselines"]["persistence"]) == {"nmae", "mae"}  # no "coverage": a point has no band
    best = out["baselines"]["best_naive"]
    assert set(best) == {"name", "nmae", "mae"} and best["name"] in names
    assert best["mae"] == min(out["baselines"][n]["mae"] for n in names)
    assert out["method"] == "model" and out["weather_columns"] == ["temperature_c"]
    assert out["weather_kind"] == "observed"  # a CSV's weather is taken as observed unless said otherwise
    assert 0 < out["nmae"] < best["nmae"]  # the model must beat the best naive forecast
    assert out["origins"] == 11 and out["points"] == 11 * 24  # local midnights with a full day after them
    assert out["issued_at"] == "00:00" and out["steps"] == [1, 24]
    assert [b["lead_h"] for b in out["by_lead"]] == ["1-6", "7-12", "13-18", "19-24"]
    assert sum(b["points"] for b in out["by_lead"]) == out["points"]


def test_backtest_noon_issued_day_ahead_states_its_weather(small_csv: Path, fast_yaml: Path) -> None:
    """The market protocol: issued at 12:00 local for the next day (steps 13-36); the weather kind is in
    the JSON and in the text output."""
    base = ["forecast", "backtest", "--data", str(small_csv), "--config", str(fast_yaml), "--issued-at", "12:00"]
    r = CliRunner().invoke(app(), [*base, "--weather-kind", "perturbed(1, 0.9)", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["issued_at"] == "12:00" and out["steps"] == [13, 36]
    assert out["weather_kind"] == "perturbed(1, 0.9)"
    assert [b["lead_h"] for b in out["by_lead"]] == ["13-18", "19-24", "25-30", "31-36"]
    assert all(0 <= b["coverage_p10_p90"] <= 1 and b["best_naive"]["name"] for b in out["by_lead"])
    r = CliRunner().invoke(app(), [*base, "--weather-kind", "forecast", "--split", "validation"])
    assert r.exit_code == 0, r.output
    assert "weather: forecast (temperature_c)" in r.stdout and "validation window" in r.stdout
    assert "steps 13-36" in r.stdout and "best naive" in r.stdout
    r = CliRunner().invoke(app(), [*base, "--weather-kind", "guessed"])
    assert r.exit_code == 2 and "perturbed(SIGMA, RHO)" in r.output


def test_short_history_baseline_is_chosen_on_the_training_part_only() -> None:
    """Training part: a daily cycle (same hour yesterday is exact); test part: a ramp (the last value is
    best). The baseline must be chosen on the training part, as a forecaster would have to: before, it
    was chosen by its error on the test part's actuals. Its band comes from its training-part errors."""
    idx = pd.date_range("2024-01-01", periods=10 * 24, freq="h", tz="UTC")
    hours = np.arange(len(idx))
    cycle = 100.0 + (30.0 + 3.0 * hours / 24) * np.sin(2 * np.pi * hours / 24)  # a growing daily swing
    ramp = np.linspace(0.0, 400.0, len(idx))
    test_start = int(len(idx) * 0.7)
    values = pd.Series(np.where(np.arange(len(idx)) < test_start, cycle, cycle[test_start] + ramp), index=idx)
    res = run_backtest(values, target="load", test_fraction=0.3, holidays_country=None)
    assert res.method == "persistence" and "chosen on the training part" in res.note
    assert res.best_naive["name"] == "last_value"  # on the test part, with hindsight
    assert 0 <= res.coverage < 0.5  # a real band, and the ramp leaves it


def test_model_and_baselines_are_scored_on_the_same_points() -> None:
    """Gaps make some baselines undefined at some points; the model is scored on the same points only."""
    f = make_load(60)
    values = f["value"].copy()
    test = values.index >= values.index[int(len(values) * 0.8)]
    values[test & (np.arange(len(values)) % 17 == 0)] = np.nan  # a missing hour now and then
    res = run_backtest(values, target="load", timezone="Europe/Riga", max_iter=20)
    assert res.points < 11 * 24 - int((test & values.isna()).sum())  # fewer than all measured points
    assert res.points == len(res.actual) == len(res.baseline_p50["last_value"])
    actual = np.asarray(res.actual)
    for name, b in res.baselines.items():
        pred = np.asarray(res.baseline_p50[name])
        assert np.isfinite(pred).all()
        assert b["mae"] == pytest.approx(float(np.mean(np.abs(pred - actual))))


def test_backtest_text_output_and_plot(small_csv: Path, tmp_path: Path, fast_yaml: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "bt.png"
    r = CliRunner().invoke(
        app(),
        [
            "forecast",
            "backtest",
            "-t",
            "load",
            "--data",
            str(small_csv),
            "--plot",
            str(png),
            "--config",
            str(fast_yaml),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "persistence" in r.stdout and "coverage" in r.stdout
    assert png.stat().st_size > 1000


def test_backtest_short_history_scores_a_labelled_baseline(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "short.csv", make_load(6))
    r = CliRunner().invoke(app(), ["forecast", "backtest", "--data", str(csv), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["method"] != "model" and "too short" in out["note"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "missing column"),
        ("ts,value\nyesterday,1\n", "ISO 8601"),
        ("", "cannot read"),
    ],
)
def test_backtest_bad_csv_exits_2_with_a_fix(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(content)
    r = CliRunner().invoke(app(), ["forecast", "backtest", "--data", str(p)])
    assert r.exit_code == 2
    assert message in r.output


def test_train_and_show(tmp_path: Path, fast_yaml: Path) -> None:
    models = tmp_path / "m"
    with_weather = write_csv(tmp_path / "w.csv", make_load(60))
    no_weather = write_csv(tmp_path / "nw.csv", make_load(60)[["value"]])
    base = ["--config", str(fast_yaml), "--artifacts", str(models), "--json"]
    r = CliRunner().invoke(app(), ["forecast", "train", "--data", str(no_weather), *base])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["trained"] is True
    r = CliRunner().invoke(app(), ["forecast", "show", "--data", str(no_weather), *base])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["metadata"]["kind"] == "model" and len(payload["points"]) == 24
    # a CSV's weather ends with its data: no weather forecast for the horizon -> labelled baseline
    CliRunner().invoke(app(), ["forecast", "train", "--data", str(with_weather), *base])
    r = CliRunner().invoke(app(), ["forecast", "show", "--data", str(with_weather), *base])
    payload = json.loads(r.stdout)
    assert payload["metadata"]["kind"] == "baseline" and "weather" in payload["metadata"]["reason"]
    r = CliRunner().invoke(
        app(), ["forecast", "show", "--data", str(with_weather), "--config", str(fast_yaml), "--artifacts", str(models)]
    )
    assert r.exit_code == 0 and "baseline" in r.stdout


def test_backtest_has_no_look_ahead() -> None:
    """Poison the test part after each origin... by poisoning *everything* after the first test origin:
    the first day's forecast must not change."""
    f = make_load(60)
    clean = run_backtest(f["value"], target="load", timezone="Europe/Riga", max_iter=20)
    poisoned = f["value"].copy()
    first_origin = clean.ts[0]
    poisoned[poisoned.index >= first_origin] = 1e9
    bad = run_backtest(poisoned, target="load", timezone="Europe/Riga", max_iter=20)
    np.testing.assert_allclose(clean.p50[:24], bad.p50[:24])


def test_parse_horizon() -> None:
    assert parse_horizon("24h") == timedelta(hours=24)
    assert parse_horizon("90m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="48h"):
        parse_horizon("3d")


def test_rolling_accuracy_against_the_best_naive_on_the_same_points() -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    actuals = [(t0 + timedelta(hours=h), 100.0 + (h % 24)) for h in range(24 * 4)]
    gen = t0 + timedelta(days=2)
    perfect = Forecast(
        "load",
        gen,
        3600,
        "W",
        tuple(ForecastPoint(gen + timedelta(hours=h), 90.0, 100.0 + (h % 24) + 1.0, 130.0) for h in range(24)),
        "model",
        "test",
    )
    acc = rolling_accuracy([perfect], actuals, now=t0 + timedelta(days=4))
    assert acc.points == 24
    assert acc.mae == pytest.approx(1.0)
    # a periodic series: same hour yesterday is exact, so it is the best naive and the model has no skill
    assert acc.best_naive["name"] == "persistence" and acc.best_naive["mae"] == 0.0
    assert acc.baselines["last_value"]["mae"] > 0
    assert np.isnan(acc.baselines["same_hour_last_week"]["mae"])  # four days of history: not scored
    assert acc.coverage == 1.0
    out = acc.to_json()
    assert set(out) >= {"window_days", "points", "nmae", "best_naive", "skill_vs_best_naive", "coverage_p10_p90"}
    json.dumps(out)
    assert rolling_accuracy([], actuals, now=t0).points == 0
    # a zero-width band (a baseline without error history) is not "coverage 1.0"
    flat = Forecast(
        "load",
        gen,
        3600,
        "W",
        tuple(ForecastPoint(p.ts, p.p50, p.p50, p.p50) for p in perfect.points),
        "baseline",
        "last_value",
    )
    assert np.isnan(rolling_accuracy([flat], actuals, now=t0 + timedelta(days=4)).coverage)


def test_power_curve_respects_cut_out_and_capacity() -> None:
    pc = PowerCurve.from_points([(3, 0), (12, 2e6), (14, 2.1e6)], cut_out_ms=25, capacity=2e6)
    p = pc.power(np.array([0, 3, 7.5, 13, 20, 25, 30, np.nan]))
    assert p[0] == 0 and p[1] == 0 and 0 < p[2] < 2e6
    assert p[3] == 2e6 and p[4] == 2e6 and p[5] == 0 and p[6] == 0 and np.isnan(p[7])
    emp = PowerCurve.empirical(
        np.linspace(0, 20, 500), np.clip(np.linspace(0, 20, 500) ** 3 * 300, 0, 2e6), capacity=2e6
    )
    assert (np.diff(emp.powers) >= 0).all() and max(emp.powers) <= 2e6


def test_clear_sky_is_zero_at_night_and_peaks_near_solar_noon_in_riga() -> None:
    idx = pd.date_range("2024-06-21", periods=24, freq="h", tz="UTC")
    ghi = clear_sky_ghi(idx, 56.95, 24.1)
    assert ghi[0] == 0 and ghi[22] == 0
    assert 700 < ghi.max() < 1000
    assert int(np.argmax(ghi)) in (9, 10)  # solar noon in Riga ~ 10:25 UTC
