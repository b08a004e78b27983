"""Serial plumbing for RTU tests and benchmarks: socat pty pairs and a pacer with real line timing.

A pty pair carries bytes instantly whatever the baud rate, so RTU timing would be fiction. The pacer
sits between two pty pairs and releases each direction's bytes no faster than the line would: 11 bits
per byte (start, 8 data, parity or second stop, stop) at the configured baud rate:

    client --pty A--> [pacer: 11 bits/byte] --pty B--> simulated device

Used by the tests (tests/drivers/test_rtu.py) and bench/modbus_rtu.py; not by the agent.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import termios
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from drivers.cancel import cancel_and_wait

BITS_PER_BYTE = 11


class SocatMissing(RuntimeError):
    pass


@dataclass
class PtyPair:
    """`socat pty,raw,echo=0 pty,raw,echo=0`: two linked pseudo-terminals; stop() ends socat."""

    a: str = ""
    b: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 5.0) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise SocatMissing("socat not found; install it: apt-get install -y socat")
        self._proc = subprocess.Popen(
            [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert self._proc.stderr is not None
        names: list[str] = []
        deadline = time.monotonic() + timeout_s
        while len(names) < 2 and time.monotonic() < deadline:
            line = self._proc.stderr.readline().decode(errors="replace")
            if not line:
                break
            m = re.search(r"PTY is (\S+)", line)
            if m:
                names.append(m.group(1))
        if len(names) < 2:
            self.stop()
            raise RuntimeError("socat did not report two ptys")
        self.a, self.b = names
        # wait until both ends exist (socat creates them before reporting, but be sure)
        while not (Path(self.a).exists() and Path(self.b).exists()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None


def _open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd, termios.TCSANOW)
    return fd


class Pacer:
    """Relay between two ptys that delays each direction to `baud` with 11 bits per byte."""

    def __init__(self, left: str, right: str, *, baud: int) -> None:
        self.left, self.right, self.baud = left, right, baud
        self.byte_time = BITS_PER_BYTE / baud
        self._fds: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.bytes_relayed = 0

    async def start(self) -> Pacer:
        lfd, rfd = _open_raw(self.left), _open_raw(self.right)
        self._fds = [lfd, rfd]
        self._tasks = [
            asyncio.create_task(self._relay(lfd, rfd), name=f"pacer {self.left}->{self.right}"),
            asyncio.create_task(self._relay(rfd, lfd), name=f"pacer {self.right}->{self.left}"),
        ]
        return self

    async def _relay(self, src: int, dst: int) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(src, readable.set)
        line_free = 0.0  # monotonic time the line finishes sending what was already queued
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(src, 4096)
                except BlockingIOError:
                    continue
                if not data:
                    continue
                # Each byte occupies the line for 11 bit times; deliver byte by byte as a UART would
                # (a receiver sees the frame grow, and gaps between frames are preserved).
                now = time.monotonic()
                line_free = max(line_free, now)
                for i in range(len(data)):
                    line_free += self.byte_time
                    delay = line_free - time.monotonic()
                    if delay > 0.0005:
                        await asyncio.sleep(delay)
                    os.write(dst, data[i : i + 1])
                self.bytes_relayed += len(data)
        finally:
            loop.remove_reader(src)

    async def stop(self) -> None:
        for t in self._tasks:
            await cancel_and_wait(t)
        for fd in self._fds:
            os.close(fd)
        self._fds, self._tasks = [], []
