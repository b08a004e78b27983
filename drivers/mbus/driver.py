"""The M-Bus driver: one meter (primary address) on a shared line, read by request like a Modbus unit.

Each `read` sends REQ_UD2 through the line (drivers/mbus/bus.py), checks and parses the answer with
pyMeterBus and maps its records (drivers/mbus/decode.py). A checksum error or an answer that does not
parse is counted in `stats` and fails that read (`TransientError`); nothing of it is stored. An answer
from another meter (a wrong address, two meters sharing one) is refused the same way when the
configured `serial` does not match the meter's identification number.

Multi-telegram meters (EN 13757-3: an answer ending in DIF 1F has more records in the next one): the
read asks again, FCB toggled, until an answer without 1F (at most `MAX_TELEGRAMS`), and numbers the
records on across the answers (`records: {quantity: index}` counts over all of them). Once a meter has
shown it answers in several telegrams, every read starts with a link reset (SND_NKE): the meter's
next answer is then its first telegram, so a read interrupted half-way (a lost answer, a timeout)
cannot make the next one start in the middle and map the wrong records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from drivers.base import SharedConnection, TransientError
from drivers.mbus.bus import MbusLine, MbusPool
from drivers.mbus.config import MbusDeviceConfig, link_of
from drivers.mbus.decode import Answer, MbusChecksumError, MbusContentError, Medium, parse_answer, quantities
from drivers.model import Sample
from drivers.pushed import checked_sample

#: answers one read may take: a meter that never stops saying "more records follow" is refused
MAX_TELEGRAMS = 16


@dataclass
class MeterStats:
    reads: int = 0
    good: int = 0
    #: answers read (more than `good` for a multi-telegram meter)
    telegrams: int = 0
    crc_errors: int = 0
    undecodable: int = 0
    wrong_meter: int = 0
    last_error: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class MbusDriver(SharedConnection):
    """A wired M-Bus meter; the line belongs to the pool."""

    def __init__(
        self,
        *,
        device_id: str,
        line: MbusLine,
        address: int,
        records: Mapping[str, int] | None = None,
        medium: Medium = "auto",
        serial: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.line = line
        self.address = address
        self.records = dict(records or {})
        self.medium: Medium = medium
        self.serial = serial
        self.stats = MeterStats()
        self.last_answer: Answer | None = None
        #: the meter has answered in several telegrams: start each read with a link reset
        self.multi_telegram = False

    @classmethod
    def from_config(cls, cfg: MbusDeviceConfig, pool: MbusPool) -> MbusDriver:
        line = pool.line(link_of(cfg.connection), timeout_s=cfg.timeout_s)
        return cls(
            device_id=cfg.id,
            line=line,
            address=cfg.address,
            records=cfg.records,
            medium=cfg.medium,
            serial=cfg.serial,
        )

    async def read(self, ts: datetime) -> Sequence[Sample]:
        self.stats.reads += 1
        answer = await self._telegram(reset=self.multi_telegram)
        count = 1
        while answer.more:
            self.multi_telegram = True
            if count >= MAX_TELEGRAMS:
                self.stats.undecodable += 1
                self.stats.last_error = f"more than {MAX_TELEGRAMS} answers for one read (DIF 1F in every one)"
                raise TransientError(f"{self.device_id}: {self.stats.last_error}")
            answer = answer.then(await self._telegram(reset=False))
            count += 1
        self.last_answer = answer
        values = quantities(answer, records=self.records, medium=self.medium)
        if not values:
            self.stats.undecodable += 1
            self.stats.last_error = f"medium 0x{answer.medium:02x} has no default mapping and no records are configured"
            raise TransientError(f"{self.device_id}: {self.stats.last_error}; set records: {{quantity: index}}")
        self.stats.good += 1
        return [checked_sample(self.device_id, q, v, ts) for q, v in values.items()]

    async def _telegram(self, *, reset: bool) -> Answer:
        """One answer of the meter, checked: checksum, parse, identification."""
        frame = await self.line.request(self.address, reset=reset)
        try:
            answer = parse_answer(frame)
        except MbusChecksumError as exc:
            self.stats.crc_errors += 1
            self.line.stats.crc_errors += 1
            self.stats.last_error = f"answer with a bad checksum: {exc}"
            raise TransientError(f"{self.device_id}: {self.stats.last_error}") from None
        except MbusContentError as exc:
            self.stats.undecodable += 1
            self.stats.last_error = f"answer not understood: {exc}"
            raise TransientError(f"{self.device_id}: {self.stats.last_error}") from None
        if self.serial is not None and answer.serial.lstrip("0") != self.serial.lstrip("0"):
            self.stats.wrong_meter += 1
            self.stats.last_error = f"address {self.address} answered as meter {answer.serial}, not {self.serial}"
            raise TransientError(f"{self.device_id}: {self.stats.last_error}; check the primary address")
        self.stats.telegrams += 1
        return answer
