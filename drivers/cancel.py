"""A cancellation that was swallowed must still stop a loop.

Python 3.11's `asyncio.wait_for` (used inside pymodbus and aiomqtt) returns the inner result when the
cancellation of the waiting task arrives in the same loop iteration as that result (fixed in 3.12), or
turns it into TimeoutError when it coincides with the timeout. The task then carries on, although
`Task.cancelling()` still counts the request: a poller went on polling after SIGTERM until the agent's
shutdown bound killed the process. Long-running loops call `raise_if_cancelling()` once per round.

Our own code therefore never uses `asyncio.wait_for`; it bounds waits with `async with asyncio.timeout()`,
which counts cancellation requests and never returns a result in place of the caller's cancellation.
A meter's reader task that used wait_for on its port went on reading after it was cancelled, so the
driver's `__aexit__`, awaiting it, never returned (tests/drivers/test_pushed_cancel.py).
"""

from __future__ import annotations

import asyncio
from typing import Any


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task has a cancellation request that was not honoured."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task we own and wait until it has ended, without swallowing the caller's cancellation.

    `task.cancel(); with suppress(CancelledError): await task` also suppresses a CancelledError meant for
    the *caller* (its shutdown, or the deadline of an `asyncio.timeout` around it, which then never
    fires): a driver's close cancelled at that moment returned as if nothing had happened. Here the
    task's own ending is absorbed and the caller's cancellation goes on. Any other exception the task
    ended with is the caller's to see, as before.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
