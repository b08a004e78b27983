"""Coverage-guided fuzzing with atheris for a bounded time.

5 s per target after ~6 s of instrumenting; GIA_FUZZ=long: 300 s.

atheris 3.0 installs from PyPI wheels here; where it cannot be built the test skips (outside CI) and
the hypothesis tests in this folder cover the same parsers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fuzz_budget import atheris_seconds

pytestmark = [pytest.mark.fuzz]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", ["payload", "config"])
def test_atheris_finds_no_crash(target: str, tmp_path: Path) -> None:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        msg = "atheris is not installed (pip install atheris)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    seconds = atheris_seconds()
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "support" / "atheris_targets.py"),
            target,
            f"-max_total_time={seconds}",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    crashes = list(tmp_path.glob("crash-*"))
    assert res.returncode == 0 and not crashes, res.stderr[-3000:]
