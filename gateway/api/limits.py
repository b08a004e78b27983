"""A per-client limit on the API's expensive endpoints (issue #15, finding 7).

History, trends, reports and evidence bundles read months of the ledger. They run on the ledger's
reader threads or the report builders, never on the writer's thread, but those are few by design
(a Raspberry Pi has four cores and the pollers need one): a single viewer firing requests in parallel
could queue them full and keep every other viewer waiting. So each client (its address) may have
`per_client` such requests in flight; one more is answered at once with 429 and `Retry-After`, before
any work is done. Cheap endpoints (`/healthz`, `/api/v1/live`, the page) are not limited.

A plain ASGI middleware rather than a dependency so a refused request costs no routing, no
authentication and no thread, and the slot is held until the response is sent (a streamed evidence zip
counts while it downloads).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from starlette.types import ASGIApp, Receive, Scope, Send

#: paths whose work is proportional to the history they cover
EXPENSIVE: Final = re.compile(
    r"^/api/v1/(history(/.*)?|summary|devices/[^/]+/trend|sites/[^/]+/(reports|evidence)/[^/]+)$"
)


class ExpensiveRequestLimit:
    """ASGI middleware: at most `per_client` expensive requests in flight per client address."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        per_client: int,
        retry_after_s: int = 2,
        client_key: Callable[[Scope], str] | None = None,
    ) -> None:
        self.app = app
        #: who a request is from: the peer, or behind a trusted proxy the forwarded client
        #: (`Authenticator.client_address`), so viewers behind one proxy do not share one limit
        self.client_key = client_key
        self.per_client = per_client
        self.retry_after_s = retry_after_s
        self.in_flight: Counter[str] = Counter()
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not EXPENSIVE.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self.client_key is not None:
            key = self.client_key(scope)
        else:
            client = scope.get("client")
            key = str(client[0]) if client else ""
        if self.in_flight[key] >= self.per_client:
            self.refused += 1
            await self._too_many(send)
            return
        self.in_flight[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[key] -= 1
            if self.in_flight[key] <= 0:
                del self.in_flight[key]

    async def _too_many(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": "too_many_requests",
                "detail": f"at most {self.per_client} history, report or evidence requests at once per client "
                f"(http.expensive_per_client); retry after {self.retry_after_s} s",
            }
        ).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
        ]
        start: dict[str, Any] = {"type": "http.response.start", "status": 429, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": body})
