"""Descriptor budget and the accept-error log limit (issue #15, finding 2).

The flood test (tests/agent/test_connection_flood.py) shows that the bounds keep the agent below its
descriptor limit; these check the two pieces it does not reach: the limits are lowered when the
descriptor limit cannot hold them, and if accepts do fail, asyncio's report is logged once a minute,
not once per failed accept (63 000 lines in ten seconds before the fix).
"""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from gateway.runtime.fdbudget import FDS_PER_DEVICE, RESERVED_FDS, QuietAcceptErrors, listener_budget


def test_configured_limits_stand_when_they_fit() -> None:
    budget = listener_budget(soft_limit=4096, devices=50, http_wanted=100, proxies=2, proxy_wanted=8)
    assert (budget.http, budget.proxy, budget.lowered) == (100, 8, ())


def test_limits_are_lowered_below_a_small_descriptor_limit_and_say_which_field() -> None:
    soft = 1024
    budget = listener_budget(soft_limit=soft, devices=100, http_wanted=1000, proxies=1, proxy_wanted=64)
    reserve = RESERVED_FDS + FDS_PER_DEVICE * 100
    assert budget.http + budget.proxy <= soft - reserve, budget
    assert budget.http >= 4 and budget.proxy >= 4
    assert any(line.startswith("http.max_connections 1000 -> ") for line in budget.lowered), budget.lowered
    assert any("proxy_max_clients" in line for line in budget.lowered), budget.lowered


async def test_failed_accepts_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    quiet = QuietAcceptErrors(interval_s=60.0, now=lambda: t[0])
    loop = asyncio.get_running_loop()
    quiet.install(loop)
    try:
        with caplog.at_level(logging.ERROR):
            for i in range(1000):
                t[0] = i * 0.01  # 1000 failed accepts in 10 s
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
            t[0] = 61.0
            loop.call_exception_handler({"message": "socket.accept() out of system resource"})
    finally:
        quiet.uninstall(loop)
    lines = [r.getMessage() for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "999 more since the last report" in lines[1]
    assert "LimitNOFILE" in lines[0]


async def test_other_loop_errors_still_reach_the_previous_handler() -> None:
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(str(ctx["message"])))
    quiet = QuietAcceptErrors()
    quiet.install(loop)
    try:
        loop.call_exception_handler({"message": "Task exception was never retrieved"})
    finally:
        quiet.uninstall(loop)
        loop.set_exception_handler(previous)
    assert seen == ["Task exception was never retrieved"]
