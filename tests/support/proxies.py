"""Small loopback proxies that put a fault between the agent and a real server.

* `TcpProxy`: forwards TCP both ways. `blackhole()` turns every *existing* connection half-open: bytes
  are swallowed, nothing is answered, no FIN or RST is sent (what a client sees when a Modbus TCP
  device or gateway reboots behind a switch); new connections are forwarded normally.
* `InfluxProxy`: an HTTP/1.1 reverse proxy in front of a real InfluxDB 1.x. In mode `pass` it forwards
  every request to the real server; the other modes answer the agent's writes without forwarding.
  It is a *stub only for the status codes no real InfluxDB produces on demand*: 500, 429 (as rate
  limiting proxies and InfluxDB Cloud send), 413 above a body size (as nginx's client_max_body_size
  sends), a slow answer (delay beyond the client's timeout) and a dropped connection. Everything that
  succeeds is written by the real server, so the test compares the real database with the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Literal

from tests.servers import free_port

Mode = Literal["pass", "500", "429", "slow", "drop"]


class TcpProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._conns: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[bool]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        alive = [True]
        self._conns.append((writer, up_writer, alive))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if alive[0]:
                        dst.write(data)
                        await dst.drain()

        for t in (pump(reader, up_writer), pump(up_reader, writer)):
            task = asyncio.ensure_future(t)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def blackhole(self) -> None:
        """Existing connections go silent (half-open); later connections work."""
        for _w, _u, alive in self._conns:
            alive[0] = False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w, u, _ in self._conns:
            w.close()
            u.close()
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


@dataclass
class InfluxProxy:
    target_port: int
    mode: Mode = "pass"
    #: Answer 413 to any write whose body is larger than this (None: no limit).
    max_body: int | None = None
    slow_s: float = 5.0
    port: int = field(default_factory=free_port)
    requests: dict[str, int] = field(default_factory=dict)
    largest_forwarded: int = 0

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> InfluxProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _count(self, what: str) -> None:
        self.requests[what] = self.requests.get(what, 0) + 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, resp_headers, resp_body = await self._answer(lines[0], headers, body)
                if status == 0:  # drop
                    writer.transport.abort()
                    return
                out = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in resp_headers.items()]
                out.append(f"Content-Length: {len(resp_body)}")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + resp_body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, request_line: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        is_write = " /write" in request_line
        mode = self.mode if is_write else "pass"
        self._count(f"{mode}")
        if mode == "500":
            return 500, {"Content-Type": "application/json"}, b'{"error":"internal error (stub)"}'
        if mode == "429":
            return 429, {"Retry-After": "1"}, b'{"error":"too many requests (stub)"}'
        if mode == "drop":
            return 0, {}, b""
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
            return 503, {}, b'{"error":"timeout (stub)"}'
        if is_write and self.max_body is not None and len(body) > self.max_body:
            self._count("413")
            return 413, {"Content-Type": "text/html"}, b"<html>413 Request Entity Too Large</html>"
        return await self._forward(request_line, headers, body)

    async def _forward(
        self, request_line: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            keep = {k: v for k, v in headers.items() if k not in ("connection", "host", "content-length")}
            hdrs = [request_line, f"Host: 127.0.0.1:{self.target_port}", "Connection: close"]
            hdrs += [f"{k}: {v}" for k, v in keep.items()] + [f"Content-Length: {len(body)}"]
            w.write(("\r\n".join(hdrs) + "\r\n\r\n").encode() + body)
            await w.drain()
            raw = await r.read()
        finally:
            w.close()
        head, _, resp_body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if " /write" in request_line and 200 <= status < 300:
            self.largest_forwarded = max(self.largest_forwarded, len(body))
        ctype = next(
            (
                ln.split(b":", 1)[1].strip().decode()
                for ln in head.split(b"\r\n")
                if ln.lower().startswith(b"content-type")
            ),
            "text/plain",
        )
        return status, {"Content-Type": ctype}, resp_body
