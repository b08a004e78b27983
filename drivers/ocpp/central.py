"""The OCPP 1.6J central system: one websocket server per listen address, shared by the chargers.

Like the MQTT hub (drivers/mqtt/driver.py), the chargers push and the devices read: each connected
charger gets a `_Connection` (the `ocpp` library's ChargePoint, which validates every message against
the OCPP 1.6 JSON schemas and answers CallErrors) that writes into that charger's `ChargerState`:
the latest meter value per connector and quantity (bounded: a dictionary), connector status and
transactions. The drivers read that state and never touch the socket, except for the two calls the
gateway makes itself: TriggerMessage (fresh meter values from an idle charger) and
SetChargingProfile / ClearChargingProfile (the limit API for the control loop).

Who may connect (OCPP 1.6 security whitepaper, profile 1): the URL's last path segment is the charge
point identity; an identity that is not configured gets HTTP 404 before the websocket opens, and
with a password configured the HTTP Basic credentials must be that identity and its password
(compared in constant time), else 401. Passwords never appear in logs or health output.

A charger that sends something that is not an OCPP-J message (not JSON, not a CALL/CALLRESULT/
CALLERROR array, a binary frame) is disconnected (close code 1002) and counted; other chargers on the
same server are unaffected, each connection being its own task. Messages are capped at 64 KiB.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import ssl
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import unquote, urlsplit

from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint as _OcppChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, DataTransferStatus, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from drivers.base import PermanentError, TransientError
from drivers.model import QUANTITIES, QuantityKind

log = logging.getLogger(__name__)

SUBPROTOCOL: Final = "ocpp1.6"
MAX_MESSAGE: Final = 64 * 1024
MIN_PASSWORD: Final = 16

#: OCPP 1.6 ChargePointStatus -> the `status` code stored for a connector
STATUS_CODES: Final[dict[str, int]] = {
    "Available": 0,
    "Preparing": 1,
    "Charging": 2,
    "SuspendedEVSE": 3,
    "SuspendedEV": 4,
    "Finishing": 5,
    "Reserved": 6,
    "Unavailable": 7,
    "Faulted": 8,
}

#: (measurand, phase) -> quantity; a missing measurand means Energy.Active.Import.Register (OCPP 1.6 §7.31)
_MEASURANDS: Final[dict[tuple[str, str | None], str]] = {
    ("Energy.Active.Import.Register", None): "energy_import_wh",
    ("Energy.Active.Export.Register", None): "energy_export_wh",
    ("Power.Active.Import", None): "power_w",
    ("SoC", None): "soc_pct",
    ("Frequency", None): "frequency_hz",
    **{("Power.Active.Import", f"L{n}"): f"power_l{n}_w" for n in (1, 2, 3)},
    **{("Current.Import", f"L{n}"): f"current_l{n}_a" for n in (1, 2, 3)},
    **{("Voltage", f"L{n}-N"): f"voltage_l{n}_v" for n in (1, 2, 3)},
    **{("Voltage", f"L{n}"): f"voltage_l{n}_v" for n in (1, 2, 3)},
}
#: unit -> factor to the quantity's unit; the OCPP default unit is Wh (energy) / W (power)
_UNITS: Final[dict[str, dict[str | None, Decimal]]] = {
    "Wh": {None: Decimal(1), "Wh": Decimal(1), "kWh": Decimal(1000)},
    "W": {None: Decimal(1), "W": Decimal(1), "kW": Decimal(1000)},
    "A": {None: Decimal(1), "A": Decimal(1)},
    "V": {None: Decimal(1), "V": Decimal(1)},
    "%": {None: Decimal(1), "Percent": Decimal(1)},
    "Hz": {None: Decimal(1)},
}


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass
class Reading:
    value: float | int | None  # None: the charger sent something that is not a number in a known unit
    charger_ts: datetime | None  # the charger's timestamp of the value
    received: float  # monotonic


@dataclass
class ConnectorState:
    status: str | None = None
    readings: dict[str, Reading] = field(default_factory=dict)
    transaction: int | None = None  # the transaction in progress
    session_start_wh: int | None = None  # meter_start of the transaction in progress or the last one
    session_end_wh: int | None = None  # meter_stop of the last finished transaction
    updated: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class ChargerStats:
    connects: int = 0
    disconnects: int = 0
    messages: int = 0
    garbage: int = 0  # frames that are not OCPP-J: the connection was closed
    call_errors: int = 0  # messages the library refused (schema violations, unknown actions)
    refused_auth: int = 0
    last_error: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class ChargerState:
    """Everything the central system knows about one charger; the drivers read it."""

    def __init__(self, charge_point_id: str, password: str | None) -> None:
        self.id = charge_point_id
        self._password = password
        self.connectors: dict[int, ConnectorState] = {}
        self.stats = ChargerStats()
        self.vendor: str | None = None
        self.model: str | None = None
        self.connection: _Connection | None = None
        self.last_seen: float | None = None  # monotonic

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def password_ok(self, username: str, password: str) -> bool:
        if self._password is None:
            return True
        name_ok = hmac.compare_digest(username.encode(), self.id.encode())
        return hmac.compare_digest(password.encode(), self._password.encode()) and name_ok

    def same_password(self, password: str | None) -> bool:
        if self._password is None or password is None:
            return self._password is None and password is None
        return hmac.compare_digest(self._password.encode(), password.encode())

    def connector(self, connector_id: int) -> ConnectorState:
        return self.connectors.setdefault(connector_id, ConnectorState())

    def take(self, connector_id: int, meter_value: Any) -> None:
        """Store the sampled values of a MeterValues / StopTransaction message (newest charger time wins)."""
        if not isinstance(meter_value, list):
            return
        con = self.connector(connector_id)
        now = time.monotonic()
        for mv in meter_value:
            if not isinstance(mv, dict):
                continue
            ts = _parse_ts(mv.get("timestamp"))
            for sv in mv.get("sampled_value") or ():
                if not isinstance(sv, dict):
                    continue
                measurand = sv.get("measurand") or "Energy.Active.Import.Register"
                quantity = _MEASURANDS.get((measurand, sv.get("phase")))
                if quantity is None:
                    continue
                held = con.readings.get(quantity)
                if held is not None and ts is not None and held.charger_ts is not None and ts < held.charger_ts:
                    continue  # a value queued while offline, older than the one we hold
                con.readings[quantity] = Reading(_convert(quantity, sv.get("value"), sv.get("unit")), ts, now)
        con.updated.set()

    def set_register(self, connector_id: int, wh: int, ts: datetime | None) -> None:
        con = self.connector(connector_id)
        held = con.readings.get("energy_import_wh")
        if held is None or ts is None or held.charger_ts is None or ts >= held.charger_ts:
            con.readings["energy_import_wh"] = Reading(wh, ts, time.monotonic())
        con.updated.set()


def _convert(quantity: str, text: Any, unit: Any) -> float | int | None:
    spec = QUANTITIES[quantity]
    factors = _UNITS.get(spec.unit, {})
    factor = factors.get(unit if isinstance(unit, str) else None)
    if factor is None or not isinstance(text, str):
        return None
    try:
        number = Decimal(text) * factor
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    if spec.kind is QuantityKind.COUNTER:
        return int(number.to_integral_value()) if number >= 0 else None
    return float(number)


class _WireLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The library logs every message at INFO and every refused one with a traceback: demote both."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("exc_info", None)
        super().log(logging.DEBUG if level <= logging.WARNING else logging.WARNING, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)


class _Connection(_OcppChargePoint):  # type: ignore[misc]
    """One charger's websocket: the library routes and validates; the handlers write its state."""

    def __init__(self, state: ChargerState, ws: ServerConnection, central: CentralSystem) -> None:
        super().__init__(state.id, ws, response_timeout=central.response_timeout_s, logger=_WireLog(log, {}))
        self.state = state
        self.ws = ws
        self.central = central

    async def serve(self) -> None:
        """Route messages until the charger leaves; anything that is not OCPP-J ends the connection."""
        async for raw in self.ws:
            self.state.stats.messages += 1
            self.state.last_seen = time.monotonic()
            if isinstance(raw, bytes):
                await self._garbage("a binary frame")
                return
            try:
                msg = unpack(raw)
            except OCPPError as exc:
                await self._garbage(type(exc).__name__)
                return
            if msg.message_type_id in (MessageType.CallResult, MessageType.CallError) and not self._call_lock.locked():
                # The library queues answers until a call collects them: unsolicited ones would pile up.
                self.state.stats.call_errors += 1
                continue
            await self.route_message(raw)

    async def _garbage(self, what: str) -> None:
        self.state.stats.garbage += 1
        self.state.stats.last_error = f"sent {what}, not an OCPP-J message: disconnected"
        log.warning("charger %s %s", self.state.id, self.state.stats.last_error)
        await self.ws.close(code=1002, reason="not an OCPP-J message")

    async def _send(self, message: str) -> None:
        if message.startswith("[4,"):  # a CALLERROR we answer: the charger's message was refused
            self.state.stats.call_errors += 1
        await super()._send(message)

    @on(Action.boot_notification)  # type: ignore[untyped-decorator]
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **_: Any) -> Any:
        self.state.vendor, self.state.model = charge_point_vendor, charge_point_model
        return call_result.BootNotification(
            current_time=_now_iso(),
            interval=self.central.heartbeat_s(self.state.id),
            status=RegistrationStatus.accepted,
        )

    @on(Action.heartbeat)  # type: ignore[untyped-decorator]
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=_now_iso())

    @on(Action.status_notification)  # type: ignore[untyped-decorator]
    def on_status(self, connector_id: int, status: str, **_: Any) -> Any:
        con = self.state.connector(connector_id)
        con.status = status
        con.updated.set()
        return call_result.StatusNotification()

    @on(Action.authorize)  # type: ignore[untyped-decorator]
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        # Authorising drivers is the operator's back office's job; the site gateway accepts every tag.
        return call_result.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action.start_transaction)  # type: ignore[untyped-decorator]
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any) -> Any:
        tx = self.central.next_transaction_id()
        con = self.state.connector(connector_id)
        con.transaction = tx
        con.session_start_wh = meter_start
        con.session_end_wh = None
        self.state.set_register(connector_id, meter_start, _parse_ts(timestamp))
        return call_result.StartTransaction(transaction_id=tx, id_tag_info={"status": "Accepted"})

    @on(Action.stop_transaction)  # type: ignore[untyped-decorator]
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any) -> Any:
        for cid, con in self.state.connectors.items():
            if con.transaction == transaction_id:
                con.transaction = None
                con.session_end_wh = meter_stop
                self.state.set_register(cid, meter_stop, _parse_ts(timestamp))
                self.state.take(cid, kw.get("transaction_data"))
                break
        tag = {"id_tag_info": {"status": "Accepted"}} if kw.get("id_tag") else {}
        return call_result.StopTransaction(**tag)

    @on(Action.meter_values)  # type: ignore[untyped-decorator]
    def on_meter_values(self, connector_id: int, meter_value: list[Any], **_: Any) -> Any:
        self.state.take(connector_id, meter_value)
        return call_result.MeterValues()

    @on(Action.data_transfer)  # type: ignore[untyped-decorator]
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.diagnostics_status_notification)  # type: ignore[untyped-decorator]
    def on_diagnostics(self, **_: Any) -> Any:
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)  # type: ignore[untyped-decorator]
    def on_firmware(self, **_: Any) -> Any:
        return call_result.FirmwareStatusNotification()

    async def request(self, payload: Any) -> Any:
        """A call from the gateway to the charger: the result payload, or TransientError."""
        try:
            result = await self.call(payload, suppress=False)
        except TimeoutError:
            raise TransientError(f"charger {self.state.id}: no answer within {self._response_timeout:g} s") from None
        except OCPPError as exc:
            raise TransientError(f"charger {self.state.id} refused {type(payload).__name__}: {exc}") from None
        except ConnectionClosed:
            raise TransientError(f"charger {self.state.id} disconnected") from None
        return result


class CentralSystem:
    """One listening websocket server and the chargers configured on it."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        response_timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.response_timeout_s = response_timeout_s
        self.chargers: dict[str, ChargerState] = {}
        self.refused_unknown = 0
        self._heartbeat: dict[str, int] = {}
        self._server: Server | None = None
        self._start_lock = asyncio.Lock()
        self._next_tx = int(time.time() * 1000) % 1_000_000_000  # unique across restarts (ms)

    def register(self, charge_point_id: str, *, password: str | None, heartbeat_s: int = 300) -> ChargerState:
        """The state of a configured charger (one per identity, however many connectors are devices)."""
        state = self.chargers.get(charge_point_id)
        if state is None:
            state = self.chargers[charge_point_id] = ChargerState(charge_point_id, password)
        elif not state.same_password(password):
            raise PermanentError(
                f"charger {charge_point_id}: its devices name different passwords; give every connector"
                " of one charger the same password_file"
            )
        self._heartbeat[charge_point_id] = heartbeat_s
        return state

    def heartbeat_s(self, charge_point_id: str) -> int:
        return self._heartbeat.get(charge_point_id, 300)

    def next_transaction_id(self) -> int:
        self._next_tx = (self._next_tx + 1) % 2_000_000_000
        return self._next_tx

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (idempotent: every driver on this server calls it when it enters)."""
        async with self._start_lock:
            if self._server is not None:
                return
            try:
                self._server = await serve(
                    self._handle,
                    self.host,
                    self.port,
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    process_request=self._process_request,
                    ssl=self.ssl_context,
                    max_size=MAX_MESSAGE,
                    logger=_WireLog(logging.getLogger(f"{__name__}.websockets"), {}),
                )
            except OSError as exc:
                raise TransientError(
                    f"OCPP central system cannot listen on {self.host}:{self.port} ({exc}); is the port in use?"
                ) from None
            if self.port == 0:  # tests: the port the OS chose
                self.port = self._server.sockets[0].getsockname()[1]
            log.info("OCPP central system listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Refuse unknown identities (404) and wrong credentials (401) before the websocket opens."""
        path = urlsplit(request.path).path.rstrip("/")
        cp_id = unquote(path.rsplit("/", 1)[-1]) if "/" in path else ""
        state = self.chargers.get(cp_id)
        if state is None:
            self.refused_unknown += 1
            log.warning("OCPP: refused unknown charge point id %r from %s", cp_id[:64], conn.remote_address)
            return conn.respond(HTTPStatus.NOT_FOUND, "unknown charge point\n")
        if state._password is None:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        username = password = ""
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(token, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                username = password = ""
        if not state.password_ok(username, password):
            state.stats.refused_auth += 1
            state.stats.last_error = "refused: wrong or missing basic-auth credentials"
            log.warning("OCPP: charger %s refused: wrong or missing credentials (%s)", cp_id, conn.remote_address)
            response = conn.respond(HTTPStatus.UNAUTHORIZED, "credentials needed\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path if ws.request is not None else "").path.rstrip("/")
        state = self.chargers.get(unquote(path.rsplit("/", 1)[-1]))
        if state is None:  # refused in _process_request; kept for safety
            await ws.close(code=1008)
            return
        if ws.subprotocol != SUBPROTOCOL:
            state.stats.last_error = "connected without the ocpp1.6 subprotocol: disconnected"
            await ws.close(code=1002, reason="subprotocol ocpp1.6 required")
            return
        old = state.connection
        connection = _Connection(state, ws, self)
        state.connection = connection
        state.stats.connects += 1
        state.last_seen = time.monotonic()
        if old is not None:  # the charger reconnected before we noticed the old socket died
            await old.ws.close(code=1000, reason="replaced by a new connection")
        log.info("charger %s connected", state.id)
        try:
            await connection.serve()
        except ConnectionClosed:
            pass
        finally:
            if state.connection is connection:
                state.connection = None
            state.stats.disconnects += 1
            log.info("charger %s disconnected", state.id)


def read_password(path: Path) -> str:
    """The charger's password from its secret file (PermanentError naming the fix when unusable)."""
    try:
        password = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PermanentError(f"password_file {str(path)!r}: {exc.strerror or exc}; create it (mode 600)") from None
    if len(password) < MIN_PASSWORD:
        raise PermanentError(
            f"password_file {str(path)!r}: the password has {len(password)} characters; use at least"
            f" {MIN_PASSWORD} (e.g. openssl rand -hex 20) and set the same AuthorizationKey on the charger"
        )
    return password


def server_ssl(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(f"tls_cert_file/tls_key_file: {exc}; give a PEM certificate and its key") from None
    return ctx


class CentralSystems:
    """The central systems of one agent, one per listen address; stops them all on exit."""

    def __init__(self) -> None:
        self._servers: dict[str, CentralSystem] = {}
        self._tls: dict[str, tuple[Path | None, Path | None]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def server(
        self,
        listen: str,
        *,
        tls_cert_file: Path | None = None,
        tls_key_file: Path | None = None,
        response_timeout_s: float = 10.0,
    ) -> CentralSystem:
        from drivers.ocpp.config import parse_listen

        scheme, host, port = parse_listen(listen)
        key = f"{host}:{port}"
        server = self._servers.get(key)
        if server is None:
            ctx = (
                server_ssl(tls_cert_file, tls_key_file) if scheme == "wss" and tls_cert_file and tls_key_file else None
            )
            server = self._servers[key] = CentralSystem(
                host=host, port=port, ssl_context=ctx, response_timeout_s=response_timeout_s
            )
            self._tls[key] = (tls_cert_file, tls_key_file)
        elif self._tls[key] != (tls_cert_file, tls_key_file):
            raise PermanentError(
                f"listen {listen}: chargers sharing it name different TLS files; give them the same"
                " tls_cert_file and tls_key_file"
            )
        return server

    async def aclose(self) -> None:
        for server in self._servers.values():
            await server.stop()
        self._servers.clear()


# The library's call payload classes, re-exported for the driver (one import site for `ocpp`).
TriggerMessage = call.TriggerMessage
SetChargingProfile = call.SetChargingProfile
ClearChargingProfile = call.ClearChargingProfile
