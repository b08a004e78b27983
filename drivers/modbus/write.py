"""Writing setpoints over Modbus: a device's `writable:` registers and the battery rule of its map.

`ModbusWriter` is the `Writable` capability of one device: it encodes a value with the register's own
arithmetic (the inverse of reading: sign, scale, integer type), refuses it *before sending* when it is
outside the register's range (`OutOfRange`), writes it with the function the map names through the
shared bus (every pymodbus call stays in drivers/modbus/bus.py), and reads it back on request.

`ModbusBattery` turns a battery power (W, + discharge) into the writes the map's `control.battery`
rule says (see `BatteryControl`), sets the device's own watchdog where it has one, and hands the device
back to its autonomous mode on `release`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from drivers.base import CommandRefused, OutOfRange, SharedConnection
from drivers.modbus.bus import DeviceException, ModbusBus
from drivers.modbus.decode import FLOATS, DataType, decode, encode, int_range
from drivers.modbus.registermap import BatteryControl, RegisterMap, RegisterType, WritableRegister

#: a value this close outside a limit is rounding, not a violation (W, %, s)
_TOLERANCE = 1e-6


def encode_writable(reg: WritableRegister, value: float) -> list[int]:
    """The words that make the device hold `value`; OutOfRange when it lies outside `reg.range`."""
    if not math.isfinite(value):
        raise OutOfRange(f"{reg.name}: {value} is not a number")
    lo, hi = reg.range
    if value < lo - _TOLERANCE or value > hi + _TOLERANCE:
        unit = f" {reg.unit}" if reg.unit else ""
        raise OutOfRange(f"{reg.name}: {value:g}{unit} is outside the device's range [{lo:g}, {hi:g}]{unit}")
    if reg.data_type is DataType.BOOL:
        return [1 if value else 0]
    raw = (-value if reg.invert else value) / reg.scale
    if reg.data_type in FLOATS:
        return encode(raw, reg.data_type, reg.word_order)
    dt = DataType.UINT16 if reg.data_type is DataType.ENUM else reg.data_type
    t_lo, t_hi = int_range(dt)
    n = min(max(round(raw), t_lo), t_hi)
    if reg.enum is not None and reg.data_type is DataType.ENUM and n not in reg.enum:
        raise OutOfRange(f"{reg.name}: code {n} is not one of {sorted(reg.enum)}")
    return encode(n, dt, reg.word_order)


def decode_writable(reg: WritableRegister, words: Sequence[int]) -> float:
    """What the device holds, in the register's engineering units (inverse of `encode_writable`)."""
    if reg.data_type is DataType.BOOL:
        return 1.0 if words[0] else 0.0
    dt = DataType.UINT16 if reg.data_type is DataType.ENUM else reg.data_type
    raw = decode(words, dt, reg.word_order)
    assert not isinstance(raw, str)
    value = float(raw) * reg.scale
    return (-value if reg.invert else value) + 0.0


class ModbusWriter(SharedConnection):
    """The `Writable` capability of one Modbus device (one unit id on a shared bus)."""

    def __init__(self, *, device_id: str, register_map: RegisterMap, bus: ModbusBus, unit_id: int) -> None:
        self.device_id = device_id
        self.map = register_map
        self.bus = bus
        self.unit_id = unit_id
        self.writes = 0

    def register(self, name: str) -> WritableRegister:
        try:
            return self.map.writable_register(name)
        except KeyError:
            known = ", ".join(w.name for w in self.map.writable) or "none"
            raise OutOfRange(f"{self.device_id}: map {self.map.name!r} has no writable {name!r} ({known})") from None

    def _unit(self, reg: WritableRegister) -> int:
        return reg.unit_id if reg.unit_id is not None else self.unit_id

    async def write(self, name: str, value: float) -> None:
        reg = self.register(name)
        words = encode_writable(reg, value)  # before anything is sent
        assert reg.function is not None
        try:
            await self.bus.write(
                reg.type, self.map.protocol_address(reg.address), words, unit=self._unit(reg), function=reg.function
            )
        except DeviceException as exc:
            raise CommandRefused(f"{self.device_id}: {name} = {value:g}: {exc}") from None
        self.writes += 1

    async def read_back(self, name: str) -> float | None:
        reg = self.register(name)
        if not reg.readback:
            return None
        rtype: RegisterType = "coil" if reg.type == "coil" else "holding"
        words = await self.bus.read(rtype, self.map.protocol_address(reg.address), reg.words, unit=self._unit(reg))
        return decode_writable(reg, words)


class ModbusBattery(SharedConnection):
    """A `BatteryActuator` over Modbus: the map's `control.battery` rule applied through a `ModbusWriter`."""

    def __init__(self, writer: ModbusWriter, rule: BatteryControl) -> None:
        self.device_id = writer.device_id
        self.writer = writer
        self.rule = rule
        self._taken = False
        if rule.strategy == "signed":
            assert rule.power is not None
            lo, hi = writer.register(rule.power).range
            self.max_charge_w, self.max_discharge_w = max(0.0, -lo), max(0.0, hi)
        else:
            assert rule.charge is not None and rule.discharge is not None
            self.max_charge_w = max(0.0, writer.register(rule.charge).range[1])
            self.max_discharge_w = max(0.0, writer.register(rule.discharge).range[1])
        if rule.fixed_timeout_s is not None:
            self.device_timeout_s = rule.fixed_timeout_s
        else:
            assert rule.timeout is not None
            self.device_timeout_s = writer.register(rule.timeout).range[1] * rule.timeout_unit_s

    @classmethod
    def from_map(cls, writer: ModbusWriter) -> ModbusBattery:
        control = writer.map.control
        if control is None or control.battery is None:
            raise OutOfRange(
                f"{writer.device_id}: map {writer.map.name!r} says nothing about battery control (control.battery)"
            )
        return cls(writer, control.battery)

    def timeout_value(self, watchdog_s: float) -> float | None:
        """What the timeout register gets for `watchdog_s`: rounded up to its unit, kept in its range."""
        rule = self.rule
        if rule.timeout is None:
            return None
        lo, hi = self.writer.register(rule.timeout).range
        return float(min(hi, max(lo, math.ceil(watchdog_s / rule.timeout_unit_s - 1e-9))))

    def writes_for(self, power_w: float, *, watchdog_s: float) -> list[tuple[str, float]]:
        """The (register, value) writes that command `power_w`, in order (pure: tests read it)."""
        rule = self.rule
        out: list[tuple[str, float]] = []
        if not self._taken:
            out += list(rule.take.items())
        timeout = self.timeout_value(watchdog_s)
        if rule.timeout is not None and timeout is not None:
            out.append((rule.timeout, timeout))
        if rule.strategy == "signed":
            assert rule.power is not None
            out.append((rule.power, power_w))
            return out
        assert rule.charge is not None and rule.discharge is not None and rule.mode is not None
        assert rule.modes is not None
        if power_w > 0:
            out.append((rule.discharge, power_w))
            if rule.window:
                out.append((rule.charge, -power_w))
            out.append((rule.mode, rule.modes["discharge"]))
        else:
            out.append((rule.charge, -power_w))
            if rule.window:
                out.append((rule.discharge, power_w))
            out.append((rule.mode, rule.modes["charge"]))
        return out

    async def set_power(self, power_w: float, *, watchdog_s: float) -> None:
        if power_w > self.max_discharge_w + _TOLERANCE or -power_w > self.max_charge_w + _TOLERANCE:
            raise OutOfRange(
                f"{self.device_id}: {power_w:g} W is outside the device's limits"
                f" (charge {self.max_charge_w:g} W, discharge {self.max_discharge_w:g} W)"
            )
        writes = self.writes_for(power_w, watchdog_s=watchdog_s)
        for name, value in writes:  # every value is checked before the first is sent
            encode_writable(self.writer.register(name), value)
        for name, value in writes:
            await self.writer.write(name, value)
        self._taken = True

    async def read_back(self) -> float | None:
        rule = self.rule
        if rule.strategy == "signed":
            assert rule.power is not None
            return await self.writer.read_back(rule.power)
        assert rule.charge is not None and rule.discharge is not None and rule.mode is not None
        assert rule.modes is not None
        mode = await self.writer.read_back(rule.mode)
        if mode is None:
            return None
        if rule.modes["charge"] == rule.modes["discharge"]:  # one code, the window decides the direction
            dis = await self.writer.read_back(rule.discharge)
            return dis if dis is not None and dis > 0 else -(await self.writer.read_back(rule.charge) or 0.0)
        if round(mode) == rule.modes["discharge"]:
            return await self.writer.read_back(rule.discharge)
        if round(mode) == rule.modes["charge"]:
            charge = await self.writer.read_back(rule.charge)
            return None if charge is None else -charge + 0.0
        return None  # the device is in its own mode (released, or its watchdog ran out)

    async def release(self) -> None:
        for name, value in self.rule.release.items():
            await self.writer.write(name, value)
        self._taken = False
