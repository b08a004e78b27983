"""Run the agent as a process: signals, bounded graceful shutdown, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_until_signal(
    main: Callable[[], Awaitable[None]], *, shutdown_timeout_s: float = 10.0, on_stop: Callable[[], None] | None = None
) -> None:
    """Run `main()` until it ends or SIGINT/SIGTERM arrives; then cancel it and wait a bounded time."""
    from gateway.runtime.fdbudget import QuietAcceptErrors

    loop = asyncio.get_running_loop()
    quiet = QuietAcceptErrors()  # a connection flood must not fill the log with failed accepts
    quiet.install(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.ensure_future(main())
    waiter = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            runner.result()
            return
        log.info("stopping (committing queued readings)...")
        if on_stop is not None:
            on_stop()
        runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=shutdown_timeout_s)
        if not done:
            # A part that will not stop must not keep the process alive (systemd would SIGKILL it
            # later anyway). Every committed reading is durable: this is no worse than a power cut.
            log.error("shutdown took longer than %.0f s; exiting anyway", shutdown_timeout_s)
            _log_what_is_stuck()
            logging.shutdown()
            os._exit(1)
        elif not runner.cancelled() and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
    finally:
        quiet.uninstall(loop)
        waiter.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            # Everything is committed and closed: a late signal must not turn a clean exit into a kill.
            signal.signal(sig, signal.SIG_IGN)


def _log_what_is_stuck() -> None:
    """Name the tasks still running with where each waits, and dump every thread's stack: the only clue
    to a stuck shutdown."""
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        log.error("still running: task %s at %s", task.get_name(), " -> ".join(_await_chain(task.get_coro())) or "?")
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no usable stderr (closed, not a file)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


def _await_chain(coro: object) -> list[str]:
    """file:line function of each coroutine down the chain of awaits (Task.get_stack shows only the top)."""
    out: list[str] = []
    while coro is not None and len(out) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out
