"""The one generic Modbus driver: reads any device described by a `RegisterMap`.

Per poll it chooses the registers due (fast: every poll; slow: every `slow_every` polls; static: until
read once), plans merged reads (drivers/modbus/plan.py), reads them through the shared bus, and turns
each value into a `Sample` with a quality. It never returns a number it does not believe: a 'not
implemented' sentinel, NaN, a value outside the map's range, or an unreadable register becomes
`quality=invalid`; a whole-device failure raises a `DriverError` subclass instead.

A device that answers "illegal data address" to a merged read (it has holes the manual did not
mention) is re-read one value at a time, once; values it still refuses are reported invalid on every
poll and not requested again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from drivers.base import PermanentError, SharedConnection
from drivers.modbus.bus import ILLEGAL_ADDRESS, DeviceException, ModbusBus
from drivers.modbus.decode import FLOATS, DataType, compile_decoder, decode, is_not_implemented, raw_int
from drivers.modbus.plan import Field, ReadRequest, plan_reads
from drivers.modbus.registermap import PollClass, Quirks, Register, RegisterMap
from drivers.model import MAX_SAFE_INT, QUANTITIES, Quality, QuantityKind, Sample, Value, checked_sample


def sf_key(name: str) -> str:
    return f"sf:{name}"


def part_key(quantity: str, index: int) -> str:
    return f"part:{quantity}:{index}"


def _is_aux(key: str) -> bool:
    """A field read only to complete another value (a scale factor or a counter's part)."""
    return key.startswith(("sf:", "part:"))


Converter = Callable[[Sequence[int], int | None], tuple[Value, Quality]]


def _decimals(x: float) -> int:
    """Decimal places of a scale such as 0.1 or 0.001 (0 for 1, 10, 1000)."""
    exponent = Decimal(repr(x)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _decode_bit(words: Sequence[int]) -> tuple[int | float, bool]:
    return (1 if words[0] else 0), False


def compile_register(reg: Register) -> Converter:
    """The map's whole arithmetic for one register, prepared once: (words, sf) -> (value, quality).

    Order: sentinel check, decode, mask, scale factor (10^sf) and fixed scale, the register's `parts`
    (each decoded and scaled, then added), offset, sign flip, then range check and the quantity's type
    (integer Wh for counters, integer codes for status). Integer registers are rounded to the decimals
    their scale implies (2302 x 0.1 is 230.2, not 230.20000000000002). A register with parts gets its
    own words followed by each part's words, in the order the map lists them.
    """
    dt = reg.dt
    kind = QUANTITIES[reg.quantity].kind
    check_sentinel = reg.sentinel is not False and dt is not DataType.BOOL
    decode_words: Callable[[Sequence[int]], tuple[int | float, bool]] = (
        _decode_bit if dt is DataType.BOOL else compile_decoder(dt, reg.order)
    )
    custom = reg.sentinel_bits
    if custom is not None:
        # The map names the device's own 'not available' pattern, replacing the data type's.
        typed = compile_decoder(dt, reg.order)
        order, n_words = reg.order, reg.words

        def decode_words(words: Sequence[int]) -> tuple[int | float, bool]:
            value, _ = typed(words)
            return value, raw_int(words[:n_words], dt, order) == custom

    if dt in (DataType.ENUM, DataType.BITFIELD, DataType.BOOL):
        mask = reg.mask if reg.mask is not None else 0xFFFFFFFF

        def code(words: Sequence[int], sf: int | None) -> tuple[Value, Quality]:
            raw, missing = decode_words(words)
            if check_sentinel and missing:
                return None, Quality.INVALID
            return int(raw) & mask, Quality.GOOD

        return code

    scale, offset, invert, rng = reg.scale, reg.offset, bool(reg.invert), reg.range
    uses_sf = reg.scale_factor is not None
    integer_raw = dt not in FLOATS
    scale_decimals = _decimals(scale) if scale is not None else 0
    counter, state = kind is QuantityKind.COUNTER, kind is QuantityKind.STATE
    n = reg.words
    parts = [(n * (i + 1), p.scale) for i, p in enumerate(reg.parts or ())]
    if parts:
        scale_decimals = max([scale_decimals, *(_decimals(p_scale) for _, p_scale in parts)])

    def convert(words: Sequence[int], sf: int | None) -> tuple[Value, Quality]:
        raw, missing = decode_words(words)
        if check_sentinel and missing:
            return None, Quality.INVALID
        value = float(raw)
        decimals = scale_decimals
        if uses_sf:
            if sf is None:
                return None, Quality.INVALID
            value *= 10.0**sf
            decimals += max(0, -sf)
        if scale is not None:
            value *= scale
        for start, p_scale in parts:
            p_words = words[start : start + n]
            if len(p_words) < n:
                return None, Quality.INVALID
            p_raw, p_missing = decode_words(p_words)
            if check_sentinel and p_missing:
                return None, Quality.INVALID
            value += float(p_raw) * p_scale
        if integer_raw and decimals:
            value = round(value, decimals)
        if offset is not None:
            value += offset
        if invert:
            value = -value
        if not math.isfinite(value):
            return None, Quality.INVALID
        if counter or state:
            number = round(value)
            # A count beyond 2**53 is no meter reading (a 64-bit register holding something else,
            # e.g. float bits at a guessed address during `gia scan`); JSON could not carry it exactly.
            if abs(number) > MAX_SAFE_INT:
                return None, Quality.INVALID
            if state:
                return number, Quality.GOOD
            if number < 0:
                return None, Quality.INVALID
            if rng is not None and not rng[0] <= number <= rng[1]:
                return number, Quality.INVALID
            return number, Quality.GOOD
        if rng is not None and not rng[0] <= value <= rng[1]:
            return value, Quality.INVALID
        return value, Quality.GOOD

    return convert


def register_value(reg: Register, words: Sequence[int], sf_exponent: int | None = None) -> tuple[Value, Quality]:
    """Convert one register's words to its quantity's unit (see `compile_register`)."""
    return compile_register(reg)(words, sf_exponent)


def sf_exponent(words: Sequence[int]) -> int | None:
    """A SunSpec scale factor (int16); 0x8000 means 'not implemented'."""
    if is_not_implemented(words, DataType.INT16):
        return None
    v = decode(words, DataType.INT16)
    assert isinstance(v, int)
    return v if -10 <= v <= 10 else None


@dataclass
class DriverStats:
    polls: int = 0
    requests: int = 0
    invalid_values: int = 0
    last_invalid: str = ""  # the latest value the rule table refused, and why
    counter_decreases: int = 0
    split_requests: int = 0
    unsupported: set[str] = field(default_factory=set)


def build_fields(register_map: RegisterMap, registers: Sequence[Register], *, offset: int = 0) -> list[Field]:
    """Planner fields for `registers`, each tied to its scale-factor register."""
    out: list[Field] = []
    for reg in registers:
        needs: tuple[Field, ...] = ()
        if reg.scale_factor is not None:
            sf = register_map.scale_factor(reg.scale_factor)
            needs = (Field(sf_key(sf.name), sf.type, register_map.protocol_address(sf.address, offset=offset), 1),)
        for i, part in enumerate(reg.parts or ()):
            address = register_map.protocol_address(part.address, offset=offset)
            needs += (Field(part_key(reg.quantity, i), reg.rtype, address, reg.words),)
        out.append(
            Field(
                reg.quantity,
                reg.rtype,
                register_map.protocol_address(reg.address, offset=offset),
                reg.words,
                needs,
            )
        )
    return out


class ModbusDriver(SharedConnection):
    """Reads one Modbus device (one unit id on a shared bus) through its register map."""

    def __init__(
        self,
        *,
        device_id: str,
        register_map: RegisterMap,
        bus: ModbusBus,
        unit_id: int,
        quirks: Quirks | None = None,
    ) -> None:
        self.device_id = device_id
        self.map = register_map
        self.bus = bus
        self.quirks = quirks or register_map.options
        self.unit_id = 0 if self.quirks.unit_id_zero else unit_id
        self.stats = DriverStats()
        self._plans: dict[tuple[PollClass, ...], list[ReadRequest]] = {}
        self._static_done = False
        self._poll = 0
        self._last_counter: dict[str, int] = {}
        self._compiled = [
            (r, QUANTITIES[r.quantity].unit, QUANTITIES[r.quantity].kind is QuantityKind.COUNTER, compile_register(r))
            for r in register_map.registers
        ]

    def _due(self) -> tuple[PollClass, ...]:
        classes: list[PollClass] = ["fast"]
        if self._poll % self.quirks.slow_every == 0:
            classes.append("slow")
        if not self._static_done:
            classes.append("static")
        return tuple(classes)

    def _plan(self, classes: tuple[PollClass, ...]) -> list[ReadRequest]:
        plan = self._plans.get(classes)
        if plan is None:
            regs = [r for r in self.map.by_poll(*classes) if r.quantity not in self.stats.unsupported]
            plan = plan_reads(
                build_fields(self.map, regs, offset=self.quirks.address_offset),
                max_registers=self.quirks.max_registers_per_read,
                max_gap=self.quirks.max_gap_registers,
                one_request_per_field=self.quirks.one_request_per_field,
            )
            self._plans[classes] = plan
        return plan

    async def _read_request(self, req: ReadRequest, words: dict[str, Sequence[int]]) -> None:
        try:
            values = await self.bus.read(req.rtype, req.address, req.count, unit=self.unit_id)
            self.stats.requests += 1
        except DeviceException as exc:
            if exc.code != ILLEGAL_ADDRESS:
                raise
            values_fields = [f for f in req.fields if not _is_aux(f.key)]
            if len(values_fields) <= 1:
                for f in values_fields:
                    self.stats.unsupported.add(f.key)
                self._plans.clear()
                return
            # A hole in the device's address space: read each value on its own, once, then re-plan.
            self.stats.split_requests += 1
            for sub in plan_reads(values_fields, one_request_per_field=True):
                await self._read_request(sub, words)
            self._plans.clear()
            return
        for f in req.fields:
            words[f.key] = req.slice(values, f)

    async def read(self, ts: datetime) -> Sequence[Sample]:
        """Read all registers due now; raises TransientError/BusyError/PermanentError on failure."""
        classes = self._due()
        words: dict[str, Sequence[int]] = {}
        for req in self._plan(classes):
            await self._read_request(req, words)
        if self.stats.unsupported and all(r.quantity in self.stats.unsupported for r in self.map.by_poll(*classes)):
            raise PermanentError(
                f"{self.device_id}: unit {self.unit_id} answers 'illegal data address' for every register"
                f" of map {self.map.name!r}; check the unit id and that the map fits the device"
            )
        self._poll += 1
        if "static" in classes:
            self._static_done = True
        samples: list[Sample] = []
        for reg, _unit, counter, convert in self._compiled:
            if reg.poll not in classes:
                continue  # slow/static values not due this poll: no sample rather than a repeated one
            reg_words = words.get(reg.quantity)
            if reg_words is None:
                value: Value = None
                quality = Quality.INVALID
            else:
                exp = None
                if reg.scale_factor is not None:
                    sf_words = words.get(sf_key(reg.scale_factor))
                    exp = sf_exponent(sf_words) if sf_words is not None else None
                if reg.parts:
                    pieces = [words.get(part_key(reg.quantity, i)) for i in range(len(reg.parts))]
                    reg_words = [*reg_words, *(w for piece in pieces if piece is not None for w in piece)]
                value, quality = convert(reg_words, exp)
            # The map's conversion and range first, then the one per-quantity rule table every driver
            # applies (drivers/model.py VALID_RANGES); never raises, whatever the device answers.
            why = "outside the map's range" if quality is Quality.INVALID and value is not None else None
            sample = checked_sample(self.device_id, reg.quantity, value, ts, quality, why)
            value, quality = sample.value, sample.quality
            if quality is Quality.INVALID:
                self.stats.invalid_values += 1
                if sample.reason:
                    self.stats.last_invalid = f"{reg.quantity}: {sample.reason}"
            elif counter and isinstance(value, int):
                last_count = self._last_counter.get(reg.quantity)
                if last_count is not None and value < last_count and reg.modulus is None:
                    self.stats.counter_decreases += 1
                self._last_counter[reg.quantity] = value
            samples.append(sample)
        self.stats.polls += 1
        return samples
