"""Civil months in the site's time zone, as UTC millisecond bounds.

A certification period is a civil month where the site is (Europe/Riga for Latvia): start inclusive, end
exclusive, both local midnights converted to UTC, so March has 743 hours and October 745. Standard library
only (`zoneinfo`): `gia verify` recomputes periods with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from drivers.errors import GiaError

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class BadMonth(GiaError, ValueError):
    """The month is not YYYY-MM."""

    exit_code = 2
    http_status = 400
    error_code = "bad_month"


@dataclass(frozen=True, slots=True)
class Period:
    month: str
    timezone: str
    start_ms: int
    end_ms: int

    @property
    def hours(self) -> int:
        return (self.end_ms - self.start_ms) // 3_600_000

    def next(self) -> Period:
        return month_period(shift_month(self.month, 1), self.timezone)

    def previous(self) -> Period:
        return month_period(shift_month(self.month, -1), self.timezone)


def parse_month(month: str) -> tuple[int, int]:
    m = _MONTH.match(month)
    if m is None:
        raise BadMonth(f"{month!r} is not a month; write YYYY-MM, e.g. 2025-03")
    return int(m.group(1)), int(m.group(2))


def shift_month(month: str, delta: int) -> str:
    y, m = parse_month(month)
    idx = y * 12 + (m - 1) + delta
    return f"{idx // 12:04d}-{idx % 12 + 1:02d}"


def _local_midnight_ms(year: int, month: int, tz: ZoneInfo) -> int:
    local = datetime(year, month, 1, tzinfo=tz)
    return int(local.astimezone(UTC).timestamp()) * 1000


def month_period(month: str, timezone: str) -> Period:
    """The civil month `month` in `timezone` as [start, end) in UTC milliseconds."""
    y, m = parse_month(month)
    tz = ZoneInfo(timezone)
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return Period(month, timezone, _local_midnight_ms(y, m, tz), _local_midnight_ms(ny, nm, tz))
