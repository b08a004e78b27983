"""The control loop: every `interval_s`, each actuator gets its setpoint from the plan, through its
safety envelope, written and read back, every command recorded in the ledger's events chain.

Why each piece is here:

* **dry run first** — with `dry_run: true` (the default) every decision is made and recorded
  (`control.dry_run`) and nothing is written, so an operator can read what the agent *would* have done
  against what the site did before letting it act;
* **the device's own watchdog** — every round re-sends the setpoint, which restarts the device's timeout
  (Huawei's forcible period, Victron's 60 s ESS setpoint timeout, a Shelly's toggle_after, Tasmota's
  PulseTime). If the agent dies — killed, the Pi loses power, the network goes — the device returns to
  its autonomous mode by itself within that timeout: nothing depends on the agent being alive to stop;
* **revert on stop** — a graceful stop hands every device back at once (`release`), bounded by
  `stop_timeout_s`;
* **read-back** — after each write the setpoint is read back; a mismatch or a failed write counts
  against the device, and after `lost_after_failures` rounds it is reported lost (health) until a
  round succeeds again;
* **manual override and stop** — the admin API (gateway/control/api.py) can pin an actuator to a value
  for a while, or stop all control (every device released, no command until resumed).

Events (kind, device, detail as canonical JSON): control.command (value sent, target, plan, reasons,
read-back), control.dry_run, control.refused (out of range / device refusal), control.failed,
control.release, control.lost, control.override, control.stop, control.resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drivers.base import BatteryActuator, DriverError, OutOfRange, PermanentError, SwitchActuator
from drivers.cancel import raise_if_cancelling
from drivers.model import iso_utc
from gateway.control.config import BatteryActuatorConfig, ControlConfig, RelayActuatorConfig
from gateway.control.envelope import Decision, Envelope, EnvelopeState, apply
from gateway.control.law import PlanPoint, battery_target, plan_point, relay_target

log = logging.getLogger(__name__)

#: record(kind, device, detail) -> stored in the ledger's events chain
Recorder = Callable[[str, str | None, dict[str, Any]], Awaitable[None]]
#: the latest reading of (device, quantity), or None
Reader = Callable[[str, str], float | None]


@dataclass
class Override:
    value: float | bool
    until: datetime
    by: str


@dataclass
class ActuatorState:
    """What the API and health show of one actuator."""

    id: str
    kind: str
    device: str
    mode: str = "autonomous"  # autonomous | following | override | stopped | dry_run
    target: float | bool | None = None
    sent: float | bool | None = None
    read_back: float | bool | None = None
    reason: str = "not started"
    failures: int = 0
    lost: bool = False
    last_command: str | None = None
    override: Override | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "device": self.device,
            "mode": self.mode,
            "target": self.target,
            "sent": self.sent,
            "read_back": self.read_back,
            "reason": self.reason,
            "failures": self.failures,
            "lost": self.lost,
            "last_command": self.last_command,
            "override": None
            if self.override is None
            else {"value": self.override.value, "until": iso_utc(self.override.until), "by": self.override.by},
        }


@dataclass
class BatteryLoop:
    cfg: BatteryActuatorConfig
    actuator: BatteryActuator
    state: ActuatorState
    envelope: Envelope
    memory: EnvelopeState = field(default_factory=EnvelopeState)
    commanded: bool = False


@dataclass
class RelayLoop:
    cfg: RelayActuatorConfig
    actuator: SwitchActuator
    state: ActuatorState
    asset_power_w: float
    last_switch_s: float | None = None
    commanded: bool = False


class Controller:
    """All actuators of the site under one loop (one supervised part)."""

    def __init__(
        self,
        config: ControlConfig,
        *,
        batteries: Sequence[tuple[BatteryActuatorConfig, BatteryActuator]],
        relays: Sequence[tuple[RelayActuatorConfig, SwitchActuator, float]],
        plan: Callable[[], Mapping[str, Any] | None],
        reading: Reader,
        record: Recorder,
        now: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.plan = plan
        self.reading = reading
        self.record = record
        self.now = now
        self.monotonic = monotonic
        self.stopped = False
        self.rounds = 0
        self.batteries: dict[str, BatteryLoop] = {}
        for cfg, act in batteries:
            env = Envelope(
                max_charge_w=min(cfg.max_charge_w, act.max_charge_w),
                max_discharge_w=min(cfg.max_discharge_w, act.max_discharge_w),
                min_soc_pct=cfg.min_soc_pct,
                max_soc_pct=cfg.max_soc_pct,
                deadband_w=cfg.deadband_w,
                min_dwell_s=cfg.min_dwell_s,
                ramp_w_per_s=cfg.ramp_w_per_s,
            )
            self.batteries[cfg.id] = BatteryLoop(cfg, act, ActuatorState(cfg.id, "battery", cfg.device), env)
        self.relays: dict[str, RelayLoop] = {
            cfg.id: RelayLoop(cfg, act, ActuatorState(cfg.id, "relay", cfg.topic), power) for cfg, act, power in relays
        }
        self._lock = asyncio.Lock()

    # -- what the API and health read ---------------------------------------------------------------
    def states(self) -> list[ActuatorState]:
        return [b.state for b in self.batteries.values()] + [r.state for r in self.relays.values()]

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "dry_run": self.config.dry_run,
            "stopped": self.stopped,
            "rounds": self.rounds,
            "actuators": [s.as_json() for s in self.states()],
        }

    def reasons(self) -> list[str]:
        return [f"control: {s.id} ({s.device}) lost: {s.reason}" for s in self.states() if s.lost]

    # -- the loop -------------------------------------------------------------------------------------
    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Rounds until cancelled; on the way out every commanded device is handed back."""
        try:
            while True:
                # a command's driver may have swallowed the stop (3.11's wait_for, drivers/cancel.py): seen
                # as a demo whose control loop went on sleeping after SIGINT until the 10-s shutdown bound
                raise_if_cancelling()
                await self.round()
                raise_if_cancelling()
                await sleep(self.config.interval_s)
        finally:
            await asyncio.shield(self._release_all_bounded("the agent is stopping"))

    async def _release_all_bounded(self, why: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.stop_timeout_s):
                await self.release_all(why)

    async def round(self) -> None:
        async with self._lock:
            payload = None if self.stopped else self.plan()
            now = self.now()
            for b in self.batteries.values():
                await self._battery_round(b, payload, now)
            for r in self.relays.values():
                await self._relay_round(r, payload, now)
            self.rounds += 1

    def _soc(self, b: BatteryLoop) -> float | None:
        src = b.cfg.soc
        return self.reading(src.device, src.quantity) if src is not None else self.reading(b.cfg.device, "soc_pct")

    def _surplus(self, b: BatteryLoop) -> float | None:
        """Renewable surplus without the battery: -(grid power) - battery power (+ discharge)."""
        if b.cfg.grid is None:
            return None
        grid = self.reading(b.cfg.grid.device, b.cfg.grid.quantity)
        battery = self.reading(b.cfg.device, "power_w")
        if grid is None:
            return None
        return -grid - (battery or 0.0)

    async def _battery_round(self, b: BatteryLoop, payload: Mapping[str, Any] | None, now: datetime) -> None:
        st = b.state
        if self.stopped:
            st.mode, st.reason = "stopped", "control stopped through the API"
            return
        ov = st.override
        if ov is not None and now >= ov.until:
            st.override = ov = None
            await self.record("control.override_end", b.cfg.device, {"actuator": b.cfg.id})
        plan_info: dict[str, Any] = {}
        if ov is not None:
            target, how = float(ov.value), f"override by {ov.by}"
        else:
            point = plan_point(payload, b.cfg.id, now, max_age_s=self.config.max_plan_age_s)
            if isinstance(point, str):
                st.target, st.reason = None, point
                await self._release_battery(b, point)
                return
            plan_info = {"plan_w": point.power_w, "interval": iso_utc(point.start)}
            target, how = battery_target(
                point.power_w, follow=b.cfg.follow, surplus_w=self._surplus(b), max_charge_w=b.envelope.max_charge_w
            )
        decision = apply(b.envelope, b.memory, target, now_s=self.monotonic(), soc_pct=self._soc(b))
        st.target = target
        st.reason = "; ".join([how, *decision.reasons])
        detail = {"actuator": b.cfg.id, "target_w": round(target, 1), "power_w": round(decision.power_w, 1)}
        detail |= {"mode": how, "reasons": list(decision.reasons), **plan_info}
        if self.config.dry_run:
            st.mode = "dry_run"
            if st.sent != decision.power_w:
                await self.record("control.dry_run", b.cfg.device, detail)
            st.sent = decision.power_w
            return
        await self._send_battery(b, decision, detail, override=ov is not None)

    async def _send_battery(
        self, b: BatteryLoop, decision: Decision, detail: dict[str, Any], *, override: bool
    ) -> None:
        st = b.state
        try:
            await b.actuator.set_power(decision.power_w, watchdog_s=self.config.watchdog_s)
        except OutOfRange as exc:
            st.reason = str(exc)
            await self.record("control.refused", b.cfg.device, {**detail, "error": str(exc)})
            await self._fail(b.state, str(exc))
            return
        except (DriverError, OSError) as exc:
            kind = "control.refused" if isinstance(exc, PermanentError) else "control.failed"
            await self.record(kind, b.cfg.device, {**detail, "error": str(exc)})
            await self._fail(st, str(exc))
            return
        b.commanded = True
        st.sent, st.mode = decision.power_w, "override" if override else "following"
        st.last_command = iso_utc(self.now())
        try:
            back = await b.actuator.read_back()
        except (DriverError, OSError) as exc:
            back = None
            detail["read_back_error"] = str(exc)
        st.read_back = back
        ok = back is not None and abs(back - decision.power_w) <= b.cfg.readback_tolerance_w
        detail |= {"read_back_w": None if back is None else round(back, 1), "read_back_ok": ok}
        await self.record("control.command", b.cfg.device, detail)
        if ok:
            if st.lost:
                await self.record("control.recovered", b.cfg.device, {"actuator": b.cfg.id})
            st.failures, st.lost = 0, False
        else:
            await self._fail(st, f"read-back {back} W differs from the {decision.power_w:g} W sent")

    async def _fail(self, st: ActuatorState, why: str) -> None:
        st.failures += 1
        st.reason = why
        if st.failures >= self.config.lost_after_failures and not st.lost:
            st.lost = True
            log.error("control: %s (%s) lost after %d failed rounds: %s", st.id, st.device, st.failures, why)
            await self.record("control.lost", st.device, {"actuator": st.id, "error": why, "failures": st.failures})

    async def _release_battery(self, b: BatteryLoop, why: str) -> None:
        b.state.mode = "autonomous"
        b.memory = EnvelopeState()
        if not b.commanded or self.config.dry_run:
            return
        try:
            await b.actuator.release()
            b.commanded = False
            b.state.sent = None
            await self.record("control.release", b.cfg.device, {"actuator": b.cfg.id, "why": why})
        except (DriverError, OSError) as exc:
            await self.record("control.failed", b.cfg.device, {"actuator": b.cfg.id, "why": why, "error": str(exc)})
            await self._fail(b.state, f"could not hand back ({exc}); the device's own watchdog will")

    async def _relay_round(self, r: RelayLoop, payload: Mapping[str, Any] | None, now: datetime) -> None:
        st = r.state
        if self.stopped:
            st.mode, st.reason = "stopped", "control stopped through the API"
            return
        ov = st.override
        if ov is not None and now >= ov.until:
            st.override = ov = None
        if ov is not None:
            on, how = bool(ov.value), f"override by {ov.by}"
        else:
            point = plan_point(payload, r.cfg.id, now, max_age_s=self.config.max_plan_age_s)
            if isinstance(point, str):
                st.target, st.reason = None, point
                await self._release_relay(r, point)
                return
            on, how = relay_target(point.power_w, r.asset_power_w, r.cfg.on_fraction), "plan"
        mono = self.monotonic()
        if (
            ov is None
            and st.sent is not None
            and on != st.sent
            and r.last_switch_s is not None
            and mono - r.last_switch_s < r.cfg.min_dwell_s
        ):
            on, how = bool(st.sent), f"{how}; held {r.cfg.min_dwell_s:g} s before switching"
        st.target, st.reason = on, how
        detail: dict[str, Any] = {"actuator": r.cfg.id, "on": on, "mode": how}
        if self.config.dry_run:
            st.mode = "dry_run"
            if st.sent != on:
                await self.record("control.dry_run", r.cfg.topic, detail)
            st.sent = on
            return
        try:
            await r.actuator.set_on(on, watchdog_s=self.config.watchdog_s)
        except (DriverError, OSError) as exc:
            await self.record("control.failed", r.cfg.topic, {**detail, "error": str(exc)})
            await self._fail(st, str(exc))
            return
        if st.sent != on:
            r.last_switch_s = mono
        r.commanded = True
        st.sent, st.mode, st.last_command = on, "override" if ov else "following", iso_utc(self.now())
        back = await r.actuator.read_back()
        st.read_back = back
        detail |= {"read_back": back, "read_back_ok": back == on}
        await self.record("control.command", r.cfg.topic, detail)
        if back == on:
            st.failures, st.lost = 0, False
        else:
            await self._fail(st, f"relay reads {back}, {on} was sent")

    async def _release_relay(self, r: RelayLoop, why: str) -> None:
        r.state.mode = "autonomous"
        if not r.commanded or self.config.dry_run:
            return
        try:
            await r.actuator.release()
            r.commanded = False
            r.state.sent = None
            await self.record("control.release", r.cfg.topic, {"actuator": r.cfg.id, "why": why})
        except (DriverError, OSError) as exc:
            await self._fail(r.state, f"could not hand back ({exc}); the relay's own timer will")

    async def release_all(self, why: str) -> None:
        for b in self.batteries.values():
            await self._release_battery(b, why)
        for r in self.relays.values():
            await self._release_relay(r, why)

    # -- the admin API's verbs ------------------------------------------------------------------------
    async def set_override(self, actuator: str, value: float | bool, duration_s: float, by: str) -> ActuatorState:
        """Pin `actuator` to `value` for `duration_s` (still inside the envelope); applied at once."""
        st = self._state(actuator)
        if isinstance(value, bool) != (st.kind == "relay"):
            raise OutOfRange(f"{actuator}: a {st.kind} takes {'on/off' if st.kind == 'relay' else 'a power in W'}")
        if st.kind == "battery":
            b = self.batteries[actuator]
            lo, hi = -b.envelope.max_charge_w, b.envelope.max_discharge_w
            if not lo <= float(value) <= hi:
                raise OutOfRange(f"{actuator}: {value:g} W is outside [{lo:g}, {hi:g}] W (configured limits)")
        st.override = Override(value, self.now() + timedelta(seconds=duration_s), by)
        await self.record(
            "control.override", st.device, {"actuator": actuator, "value": value, "duration_s": duration_s, "by": by}
        )
        await self.round()
        return st

    async def clear_override(self, actuator: str, by: str) -> ActuatorState:
        st = self._state(actuator)
        st.override = None
        await self.record("control.override_end", st.device, {"actuator": actuator, "by": by})
        await self.round()
        return st

    async def stop(self, by: str) -> None:
        """Stop all control: every device handed back, nothing commanded until `resume`."""
        async with self._lock:
            self.stopped = True
            await self.record("control.stop", None, {"by": by})
            await self.release_all(f"stopped by {by}")
            for st in self.states():
                st.mode = "stopped"

    async def resume(self, by: str) -> None:
        self.stopped = False
        await self.record("control.resume", None, {"by": by})
        await self.round()

    def _state(self, actuator: str) -> ActuatorState:
        for st in self.states():
            if st.id == actuator:
                return st
        raise KeyError(actuator)


def event_detail(detail: Mapping[str, Any]) -> str:
    """Canonical JSON for the events chain (sorted keys, no spaces): the same command, the same bytes."""
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


__all__ = ["ActuatorState", "Controller", "PlanPoint", "event_detail"]
