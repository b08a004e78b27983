"""Project-wide test setup: the real-server fixtures of tests/servers.py, and no silent skips in CI.

With `CI` set, a skipped test fails with its skip reason: a missing server, binary or package must stop
the run, never quietly shrink it (individual tests already do this for the servers they start; this
hook makes it hold for every skip, `importorskip` included).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

pytest_plugins = ["tests.servers"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (a missing dependency must fail the run): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:  # a module-level importorskip
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (a missing dependency must fail the run): {reason}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Spread the suite over pytest-xdist workers (`make test`: `-n 3 --dist loadgroup`) by file, and keep the
    tests marked `cpu` (model training, whole-month reports) on one worker: two of them at once on a 2-core
    machine turned their generous deadlines into timeouts, while the rest of the suite mostly waits on servers.
    A file stays on one worker, so its module fixtures (a browser, an agent) start once.

    Tests marked `arm64` (the installer under qemu emulation, minutes long) are opt-in: without GIA_ARM64=1
    they are deselected, not skipped, so a CI run (where a skip is a failure) does not stumble on them. Tests
    marked `quarantine` (failing for a cause not yet found; the marker says which) likewise
    run only with GIA_QUARANTINE=1."""
    for marker, env in (("arm64", "GIA_ARM64"), ("quarantine", "GIA_QUARANTINE")):
        if os.environ.get(env) == "1":
            continue
        opted_out = [item for item in items if item.get_closest_marker(marker)]
        if opted_out:
            config.hook.pytest_deselected(items=opted_out)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]
    for item in items:
        group = "cpu" if item.get_closest_marker("cpu") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
