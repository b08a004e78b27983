"""A cancellation that was swallowed must still stop a loop.

Python 3.11's `asyncio.wait_for` (used inside pymodbus and aiomqtt) returns the inner result when the
cancellation of the waiting task arrives in the same loop iteration as that result (fixed in 3.12), or
turns it into TimeoutError when it coincides with the timeout. The task then carries on, although
`Task.cancelling()` still counts the request: a poller went on polling after SIGTERM until the agent's
shutdown bound killed the process. Long-running loops call `raise_if_cancelling()` once per round.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task has a cancellation request that was not honoured."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
