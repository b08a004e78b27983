"""Fuzzing the config loader: random YAML documents and mutations of a good config.

Property: `load_config` returns the settings or raises ConfigError whose problems each name a field path
and a fix: never another exception (the operator would get a traceback instead of `gia check-config`'s
one line per problem).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.settings import ConfigError, Settings, load_config
from tests.support.fuzz_budget import examples

pytestmark = [pytest.mark.fuzz]

GOOD: dict[str, Any] = {
    "site": {"id": "fuzz", "name": "Fuzz site", "timezone": "Europe/Riga"},
    "data_dir": "data",
    "devices": [
        {
            "id": "grid",
            "driver": "modbus",
            "connection": "tcp://127.0.0.1:5020",
            "map": "eastron-sdm630",
            "poll_interval_s": 1,
            "channels": [{"role": "grid_import", "quantity": "energy_import_wh"}],
        },
        {"id": "tas", "driver": "mqtt", "topic": "tele/m/SENSOR", "profile": "tasmota-sml"},
    ],
    "mqtt": {"url": "mqtt://127.0.0.1:1883", "username": "u", "password": "p"},
    "influxdb": {"url": "http://127.0.0.1:8086", "api": "v1", "database": "gia"},
    "http": {
        "listen": "127.0.0.1:8080",
        "tokens": [{"name": "c", "roles": ["certifier"], "token": "9c2e4a6b8d0f1357acef2468bdf97531"}],
    },
    "ledger": {"commit_interval_s": 1},
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["tcp://h:99999", "rtu:///dev/x?baud=abc", "../../etc/passwd", "*", "", "1e9", "-1"])
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return doc


def _load(tmp: Path, text: str, *, one_line: bool = False) -> None:
    cfg = tmp / "gia.yaml"
    cfg.write_text(text)
    problems = None
    try:
        settings = load_config(cfg).settings
    except ConfigError as exc:
        problems = exc.problems
    if problems is None:
        assert isinstance(settings, Settings)
        return
    assert problems, "a ConfigError names at least one problem"
    for p in problems:
        assert str(p).strip() and p.path, str(p)
        if one_line:
            assert "\n" not in str(p), repr(str(p))


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("GIA_") or k == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(k)


def test_the_good_config_loads(tmp_path: Path) -> None:
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(yaml.safe_dump(GOOD))
    assert load_config(cfg).site.id == "fuzz"


@examples(150)
@given(data=st.data())
def test_mutations_of_a_good_config(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    doc = copy.deepcopy(GOOD)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and path:
            parent = doc
            for p in path[:-1]:
                parent = parent[p]
            del parent[path[-1]]
        elif action == "add" and isinstance(_get(doc, path), dict):
            _get(doc, path)[data.draw(st.text(max_size=10))] = data.draw(values)
        else:
            doc = _set(doc, path, data.draw(values))
    try:
        text = yaml.safe_dump(doc)
    except (yaml.YAMLError, ValueError):
        return
    _load(tmp_path_factory.mktemp("cfg"), text)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@examples(100)
@given(text=st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_random_documents(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    _load(tmp_path_factory.mktemp("cfg"), text)


@pytest.mark.parametrize("text", ["1: 2\n", "null: x\nsite: {id: s}\n"])
def test_regression_top_level_key_not_text(tmp_path: Path, text: str) -> None:
    _load(tmp_path, text)


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2",  # broken YAML
        "- a\n- b\n",  # a list, not a mapping
        "a: &x [*x]\n",  # recursive alias
        "site: {id: x}\ndevices: [{id: d, driver: modbus, connection: 'tcp://h:1', map: '../../../../etc/passwd'}]\n",
        "\x00",
    ],
)
def test_regressions(tmp_path: Path, text: str) -> None:
    _load(tmp_path, text)


def test_a_problem_is_one_line_whatever_the_key(tmp_path: Path) -> None:
    doc = copy.deepcopy(GOOD)
    doc["0\nsite.id: looks fine"] = None
    _load(tmp_path, yaml.safe_dump(doc), one_line=True)


@pytest.mark.parametrize("channels", ["1", "[{id: [1], role: grid_import}]"])
def test_regression_channels_not_a_list(tmp_path: Path, channels: str) -> None:
    text = (
        "site: {id: s}\n"
        f"devices: [{{id: d, driver: modbus, connection: 'tcp://127.0.0.1:1', map: eastron-sdm630,"
        f" channels: {channels}}}]\n"
    )
    _load(tmp_path, text)


def test_regression_config_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "gia.yaml"
    cfg.write_bytes(b"site: {id: \xff\xfe}\n")
    problems = None
    try:
        load_config(cfg)
    except ConfigError as exc:
        problems = exc.problems
    assert problems
