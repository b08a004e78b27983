"""The agent as S2 CEM (EN 50491-12-2) over WebSocket, built on s2-python's connection.

Resource managers (a battery's, a heat pump's) connect to `ws://<listen>`; for each, an
`S2AsyncConnection` from s2-python runs on a small server-side medium (s2-python 0.11 ships only the
client side of the WebSocket transport: `WebsocketClientMedium`, which RMs use). The session follows
the standard: both sides send `Handshake`; the CEM answers the RM's with `HandshakeResponse`; the RM sends
`ResourceManagerDetails`; the CEM selects a control type the RM offers (`SelectControlType`: PEBC by
default, FRBC where configured); then it instructs from the flexibility plan:

* PEBC — on `PEBC.PowerConstraints` the CEM sends a `PEBC.Instruction` with one envelope per plan
  interval: upper limit the RM's own, lower limit minus the planned discharge (S2 sign: + consumption),
  clipped to the RM's allowed ranges — the same envelope gateway/flexibility/s2.py publishes. Without a
  usable plan the envelope spans the RM's whole range: "no constraint", never an old plan.
* FRBC — on `FRBC.SystemDescription` the CEM picks, for the first actuator, the operation mode whose
  power range holds the planned power (S2 sign) and the factor within it, and sends `FRBC.Instruction`.

Every message the RM sends gets a ReceptionStatus (s2-python's connection answers OK after a handler; a
message type without a handler would be left unanswered, so all are handled). A malformed message is
rejected with the reason: not JSON or not an object -> INVALID_DATA, failing the S2 schema ->
INVALID_MESSAGE with the validation error as diagnostic label (s2-python's own answer). Rejections are
recorded in the events chain (`s2.rejected`), sessions too (`s2.session`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.control.config import S2Config

log = logging.getLogger(__name__)

Recorder = Callable[[str, str | None, dict[str, Any]], Awaitable[None]]


@dataclass
class Session:
    peer: str
    resource_id: str | None = None
    name: str | None = None
    control_types: list[str] = field(default_factory=list)
    selected: str | None = None
    instructions: int = 0
    rejected: int = 0
    last_measurement_w: float | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _medium_class() -> Any:
    from s2python.connection.async_.medium.s2_medium import MediumClosedConnectionError, S2AsyncMediumConnection
    from websockets.asyncio.server import ServerConnection
    from websockets.exceptions import ConnectionClosed

    class ServerMedium(S2AsyncMediumConnection):
        """The CEM's end of one WebSocket (what s2-python's WebsocketClientMedium is for the RM)."""

        def __init__(self, ws: ServerConnection, reject: Callable[..., Awaitable[None]]) -> None:
            self.ws = ws
            self.reject = reject
            self.closed = False

        async def is_connected(self) -> bool:
            return not self.closed

        async def messages(self) -> AsyncGenerator[str | bytes, None]:
            from s2python.s2_parser import S2Parser
            from s2python.s2_validation_error import S2ValidationError

            try:
                async for raw in self.ws:
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        await self.reject("", "not JSON")
                        continue
                    if not isinstance(obj, dict):
                        await self.reject("", f"a message is a JSON object, not {type(obj).__name__}")
                        continue
                    try:
                        S2Parser.parse_as_any_message(obj)
                    except S2ValidationError as exc:
                        await self.reject(str(obj.get("message_id") or ""), _reason(exc), invalid_message=True)
                        continue
                    yield raw
            except ConnectionClosed:
                self.closed = True
                raise MediumClosedConnectionError("the resource manager closed the connection") from None
            self.closed = True

        async def send(self, message: str) -> None:
            try:
                await self.ws.send(message)
            except ConnectionClosed:
                self.closed = True
                raise MediumClosedConnectionError("the resource manager closed the connection") from None

    return ServerMedium


def _reason(exc: Exception) -> str:
    """What is wrong with a message, field by field (from pydantic's errors behind s2-python's)."""
    from pydantic import ValidationError

    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in cause.errors()[:5]]
        return "; ".join(parts)
    return str(getattr(exc, "msg", exc))


class S2Cem:
    """Serves S2 resource managers as their CEM (one part: `serve` until cancelled)."""

    def __init__(
        self,
        config: S2Config,
        *,
        plan: Callable[[], Mapping[str, Any] | None],
        record: Recorder,
        site: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.plan = plan
        self.record = record
        self.site = site
        self.now = now
        self.sessions: dict[str, Session] = {}
        self.port: int | None = None
        self.ready = asyncio.Event()

    def status(self) -> dict[str, Any]:
        return {"listen": self.config.listen, "sessions": [s.as_json() for s in self.sessions.values()]}

    async def serve(self) -> None:
        from websockets.asyncio.server import serve

        host, _, port = self.config.listen.rpartition(":")
        async with serve(self._session, host, int(port), max_size=2**20) as server:
            sock = next(iter(server.sockets), None)
            self.port = int(sock.getsockname()[1]) if sock is not None else int(port)
            self.ready.set()
            log.info("S2 CEM listening on ws://%s:%s", host, self.port)
            await asyncio.Future()  # until cancelled

    async def _session(self, ws: Any) -> None:
        from s2python.common import ReceptionStatus, ReceptionStatusValues
        from s2python.connection.async_ import S2AsyncConnection

        peer = f"{ws.remote_address[0]}:{ws.remote_address[1]}" if ws.remote_address else "?"
        session = Session(peer)
        self.sessions[peer] = session

        async def reject(message_id: str, reason: str, invalid_message: bool = False) -> None:
            """Answer a malformed message with the reason (s2-python's own answer says only that pydantic
            raised), and record it."""
            session.rejected += 1
            await self.record("s2.rejected", None, {"peer": peer, "message_id": message_id, "reason": reason[:500]})
            try:
                subject = uuid.UUID(message_id)
            except ValueError:
                subject, invalid_message = uuid.UUID(int=0), False
            status = ReceptionStatus(
                subject_message_id=subject,
                status=ReceptionStatusValues.INVALID_MESSAGE if invalid_message else ReceptionStatusValues.INVALID_DATA,
                diagnostic_label=reason[:500],
            )
            await ws.send(status.to_json())

        medium = _medium_class()(ws, reject)
        conn = S2AsyncConnection(medium, eventloop=asyncio.get_running_loop())
        self._register(conn, session)
        await self.record("s2.session", None, {"peer": peer, "event": "connected"})
        try:
            await conn.run()
        except Exception as exc:  # one RM's broken session must not end the CEM
            log.warning("S2 session with %s ended: %s: %s", peer, type(exc).__name__, exc)
        finally:
            self.sessions.pop(peer, None)
            await self.record("s2.session", session.resource_id, {"peer": peer, "event": "closed"})

    # -- the CEM's side of the protocol ----------------------------------------------------------------
    def _register(self, conn: Any, session: Session) -> None:
        from s2python import common, frbc, pebc
        from s2python.connection import ConnectionStarted, ConnectionStopped
        from s2python.version import S2_VERSION

        async def started(c: Any, _e: Any, _ok: Any) -> None:
            # not awaited: run() waits for this handler before it starts receiving, so waiting here for
            # the RM's ReceptionStatus would stall (and a silent RM would end the session with a timeout)
            await c.send_and_forget(
                common.Handshake(
                    message_id=uuid.uuid4(),
                    role=common.EnergyManagementRole.CEM,
                    supported_protocol_versions=[S2_VERSION],
                )
            )

        async def handshake(c: Any, msg: Any, ok: Any) -> None:
            await ok()
            versions = msg.supported_protocol_versions or [S2_VERSION]
            chosen = S2_VERSION if S2_VERSION in versions else versions[0]
            await c.send_msg_and_await_reception_status(
                common.HandshakeResponse(message_id=uuid.uuid4(), selected_protocol_version=chosen)
            )

        async def details(c: Any, msg: Any, ok: Any) -> None:
            await ok()
            session.resource_id = str(msg.resource_id)
            session.name = msg.name
            offered = {ct.value: ct for ct in msg.available_control_types}
            session.control_types = sorted(offered)
            wanted = "POWER_ENVELOPE_BASED_CONTROL" if self.config.control_type == "PEBC" else "FILL_RATE_BASED_CONTROL"
            for name in (wanted, "POWER_ENVELOPE_BASED_CONTROL", "FILL_RATE_BASED_CONTROL", "NOT_CONTROLABLE"):
                if name in offered:
                    session.selected = name
                    await self.record("s2.session", session.resource_id, {"event": "select", "control_type": name})
                    await c.send_msg_and_await_reception_status(
                        common.SelectControlType(message_id=uuid.uuid4(), control_type=offered[name])
                    )
                    return

        async def constraints(c: Any, msg: Any, ok: Any) -> None:
            await ok()
            instruction = self.pebc_instruction(msg)
            session.instructions += 1
            await self.record(
                "s2.instruction", session.resource_id, {"type": "PEBC.Instruction", "id": str(instruction.id)}
            )
            await c.send_msg_and_await_reception_status(instruction)

        async def system_description(c: Any, msg: Any, ok: Any) -> None:
            await ok()
            instruction = self.frbc_instruction(msg)
            if instruction is None:
                return
            session.instructions += 1
            await self.record(
                "s2.instruction", session.resource_id, {"type": "FRBC.Instruction", "id": str(instruction.id)}
            )
            await c.send_msg_and_await_reception_status(instruction)

        async def measurement(_c: Any, msg: Any, ok: Any) -> None:
            await ok()
            session.last_measurement_w = sum(v.value for v in msg.values)

        async def fine(_c: Any, _msg: Any, ok: Any) -> None:
            await ok()

        async def stopped(_c: Any, _e: Any, _ok: Any) -> None:
            return None

        conn.register_handler(ConnectionStarted, started)
        conn.register_handler(ConnectionStopped, stopped)
        conn.register_handler(common.Handshake, handshake)
        conn.register_handler(common.ResourceManagerDetails, details)
        conn.register_handler(common.PowerMeasurement, measurement)
        conn.register_handler(pebc.PEBCPowerConstraints, constraints)
        conn.register_handler(frbc.FRBCSystemDescription, system_description)
        for other in (
            common.PowerForecast,
            common.InstructionStatusUpdate,
            common.RevokeObject,
            common.SessionRequest,
            common.HandshakeResponse,
            pebc.PEBCEnergyConstraint,
            frbc.FRBCActuatorStatus,
            frbc.FRBCFillLevelTargetProfile,
            frbc.FRBCLeakageBehaviour,
            frbc.FRBCStorageStatus,
            frbc.FRBCTimerStatus,
            frbc.FRBCUsageForecast,
        ):
            conn.register_handler(other, fine)

    # -- instructions from the plan ---------------------------------------------------------------------
    def _planned(self) -> tuple[list[tuple[datetime, datetime, float]], str]:
        """(start, end, battery power W + discharge) per plan interval from now, or [] and why not."""
        from gateway.control.law import plan_point

        payload = self.plan()
        now = self.now()
        asset = self.config.battery
        if payload is not None and asset is None:
            assets = ((payload.get("plan") or {}).get("assets")) or {}
            asset = next((k for k, v in assets.items() if v.get("kind") == "battery"), None)
        if asset is None:
            return [], "no battery in the plan"
        first = plan_point(payload, asset, now, max_age_s=7200)
        if isinstance(first, str):
            return [], first
        assert payload is not None
        out = []
        values = payload["plan"]["assets"][asset]["power_w"]
        for iv, pw in zip(payload["intervals"], values, strict=False):
            start = datetime.fromisoformat(iv["start"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(iv["end"].replace("Z", "+00:00"))
            if end > now and pw is not None:
                out.append((max(start, now), end, float(pw)))
        return out, ""

    def pebc_instruction(self, constraints: Any) -> Any:
        """PEBC.Instruction for the RM's constraints: envelope per plan interval (see the docstring)."""
        from s2python.common import Duration
        from s2python.pebc import (
            PEBCInstruction,
            PEBCPowerEnvelope,
            PEBCPowerEnvelopeElement,
            PEBCPowerEnvelopeLimitType,
        )

        ranges: dict[Any, dict[str, tuple[float, float]]] = {}
        for lr in constraints.allowed_limit_ranges:
            kind = "upper" if lr.limit_type == PEBCPowerEnvelopeLimitType.UPPER_LIMIT else "lower"
            rb = lr.range_boundary
            ranges.setdefault(lr.commodity_quantity, {})[kind] = (rb.start_of_range, rb.end_of_range)
        planned, _why = self._planned()
        now = self.now()
        envelopes = []
        for quantity, r in ranges.items():
            _up_lo, up_hi = r.get("upper", (0.0, 0.0))
            lo_lo, lo_hi = r.get("lower", (0.0, 0.0))
            elements = []
            if not planned:
                elements.append(
                    PEBCPowerEnvelopeElement(
                        duration=Duration.from_timedelta(timedelta(hours=1)), upper_limit=up_hi, lower_limit=lo_lo
                    )
                )
            for start, end, pw in planned[:288]:
                lower = min(lo_hi, max(lo_lo, -max(0.0, pw))) + 0.0
                elements.append(
                    PEBCPowerEnvelopeElement(
                        duration=Duration.from_timedelta(end - start), upper_limit=up_hi, lower_limit=lower
                    )
                )
            envelopes.append(
                PEBCPowerEnvelope(id=str(uuid.uuid4()), commodity_quantity=quantity, power_envelope_elements=elements)
            )
        return PEBCInstruction(
            message_id=uuid.uuid4(),
            id=uuid.uuid4(),
            execution_time=now,
            abnormal_condition=False,
            power_constraints_id=constraints.id,
            power_envelopes=envelopes,
        )

    def frbc_instruction(self, description: Any) -> Any:
        """FRBC.Instruction: the first actuator's operation mode whose power range holds the planned power."""
        from s2python.frbc import FRBCInstruction

        if not description.actuators:
            return None
        planned, _why = self._planned()
        want = -planned[0][2] if planned else 0.0  # S2 sign: + consumption (charging)
        actuator = description.actuators[0]
        best: tuple[float, Any, float] | None = None
        for mode in actuator.operation_modes:
            if mode.abnormal_condition_only:
                continue
            for element in mode.elements:
                for pr in element.power_ranges:
                    a, b = pr.start_of_range, pr.end_of_range
                    lo, hi = min(a, b), max(a, b)
                    clipped = min(hi, max(lo, want))
                    factor = 0.0 if b == a else (clipped - a) / (b - a)
                    miss = abs(clipped - want)
                    if best is None or miss < best[0]:
                        best = (miss, mode, min(1.0, max(0.0, factor)))
        if best is None:
            return None
        _miss, mode, factor = best
        return FRBCInstruction(
            message_id=uuid.uuid4(),
            id=uuid.uuid4(),
            actuator_id=actuator.id,
            operation_mode=mode.id,
            operation_mode_factor=factor,
            execution_time=self.now(),
            abnormal_condition=False,
        )
