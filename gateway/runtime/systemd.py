"""systemd integration without a dependency: sd_notify READY/WATCHDOG/STATUS over $NOTIFY_SOCKET.

With `Type=notify` systemd considers the service started only after READY=1 (sent once every part is
running), and with `WatchdogSec=` it restarts the agent when the WATCHDOG=1 pings stop. The pings come
from a task on the event loop, so a blocked or wedged loop stops them: exactly what the watchdog is for.
Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable


def notify(message: str) -> bool:
    """Send one sd_notify message; returns False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd gave us (WATCHDOG_USEC), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def watchdog(status: Callable[[], str]) -> None:
    """Ping the watchdog (and update STATUS=) until cancelled; returns at once without a watchdog."""
    interval = watchdog_interval_s()
    while True:
        notify(f"WATCHDOG=1\nSTATUS={status()}")
        if interval is None:
            await asyncio.sleep(30)  # still refresh STATUS= for `systemctl status`
        else:
            await asyncio.sleep(interval)
