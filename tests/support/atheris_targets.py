"""atheris (libFuzzer) targets for the two parsers that take hostile bytes: MQTT device payloads and
the config file. Run by tests/agent/test_atheris.py in a subprocess for a bounded time:

    .venv/bin/python tests/support/atheris_targets.py payload -max_total_time=60
    .venv/bin/python tests/support/atheris_targets.py config -max_total_time=60
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]

# Only our packages are instrumented: coverage feedback is wanted for our parsers, and instrumenting
# pydantic, asyncio and friends too (~200 modules) cost ~15 s per run before fuzzing even started.
with atheris.instrument_imports(include=["drivers", "gateway", "forecasting"]):
    from drivers.mqtt.payload import PROFILES, FieldSpec, field_value, parse_json
    from gateway.settings import ConfigError, load_settings

SPECS = [FieldSpec.parse(f) for p in PROFILES.values() for f in p.values()]
CFG = Path(tempfile.mkdtemp(prefix="gia-atheris-")) / "gia.yaml"


def payload(data: bytes) -> None:
    obj = parse_json(data)
    for spec in SPECS:
        field_value(obj, spec)


def config(data: bytes) -> None:
    CFG.write_bytes(data)
    # The only acceptable failure is ConfigError (problem lines); anything else is a crash atheris reports.
    with contextlib.suppress(ConfigError):
        load_settings(CFG)


def main() -> None:
    target = {"payload": payload, "config": config}[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
