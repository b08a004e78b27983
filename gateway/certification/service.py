"""`ReportService`: what the HTTP API, the agent and the CLI call to get reports, exports and keys.

Synchronous on purpose (SQLite reads, hashing, PDF rendering are CPU/IO work): the API calls it with
`await asyncio.to_thread(service.report_json, site, month)` so the event loop never blocks.

A month's life:

* *open* (it has not ended): computed fresh on each call up to the last full interval, provisional;
* *ended, not settled*: computed to its end, provisional, **not stored** — until `settlement_delay_h`
  after its end *and* every channel has a reading after the end (so the closing boundary is measured
  or interpolated from real readings, never left missing by an outage at midnight), or until
  `settlement_max_wait_h`; and its previous month must be closed first (the chain of months);
* *closed*: built once, signed, archived in the ledger (`archive.ReportArchive`, with a
  `report_closed` event in the events chain) and copied to `<reports_dir>/<site>/<YYYY-MM>.json`.
  Every later call returns those bytes; CSV, PDF and the evidence bundle are rebuilt from what the
  stored report says it used (its channels, method parameters, chain and events heads), never from
  today's configuration, so they are byte-identical on every fetch. A closed month changes only by a
  **reissue** (`reissue`), a new version naming the one it replaces and why.

A month with no readings at all is not stored, so a later backfill is not locked out. Reports are signed
with the site key, which is never created here (`sitekeys`): a missing key is `SigningKeyMissing`.

Exceptions (all `ReportError`): `UnknownSite` and `MonthNotCovered` -> 404, `MalformedMonth` and
`MonthInFuture` -> 400, `LedgerUnavailable`, `SigningKeyMissing`, `StoredReportLost` -> 503, `NotClosed` -> 409.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from drivers.errors import GiaError
from gateway import __version__
from gateway.certification import bundle
from gateway.certification.archive import Archived, ReportArchive
from gateway.certification.certificates import certificates_for_period, factors_for_period
from gateway.certification.compute import ChannelResult, Params, Series, compute_channel, night_flags
from gateway.certification.exact import iso_ms, parse_iso_ms
from gateway.certification.keys import transitions_from_events
from gateway.certification.periods import BadMonth, Period, month_period, shift_month
from gateway.certification.report import MatchingOutcome, assemble, compute_matching, evidence_summary, period_json
from gateway.certification.signing import KeyMissing, KeyStore, canonical
from gateway.certification.source import LedgerSource
from gateway.i18n import Translator
from gateway.settings import Settings
from gateway.site.channels import ChannelSpec

if TYPE_CHECKING:
    from gateway.site.resolve import Site


class ReportError(GiaError):
    """Base of every error the service raises; the message is fit for an API `detail`."""

    http_status = 500
    error_code = "report_error"


class UnknownSite(ReportError):
    """The site id is not this gateway's site (HTTP 404)."""

    exit_code = 2
    http_status = 404
    error_code = "unknown_site"


class MalformedMonth(ReportError, ValueError):
    """The month is not YYYY-MM (HTTP 400)."""

    exit_code = 2
    http_status = 400
    error_code = "bad_month"


class MonthInFuture(ReportError):
    """The month has not started yet (HTTP 400)."""

    exit_code = 2
    http_status = 400
    error_code = "month_in_future"


class MonthNotCovered(ReportError):
    """The ledger holds no energy-register reading before the month's end (HTTP 404): no report, not an
    all-zero `unverified` one stored for a month before the gateway existed."""

    exit_code = 2
    http_status = 404
    error_code = "no_data"


class LedgerUnavailable(ReportError):
    """The ledger file is missing or unreadable (HTTP 503)."""

    http_status = 503
    error_code = "ledger_unavailable"


class SigningKeyMissing(ReportError):
    """The site key is missing: `gia keys rotate --reason TEXT` (HTTP 503)."""

    http_status = 503
    error_code = "signing_key_missing"


class StoredReportLost(ReportError):
    """The ledger says a month was closed, its report is gone and a rebuild differs (HTTP 503)."""

    http_status = 503
    error_code = "stored_report_lost"


class NotClosed(ReportError):
    """A reissue was asked for a month that has no closed report (HTTP 409)."""

    exit_code = 2
    http_status = 409
    error_code = "month_not_closed"


@dataclass(slots=True)
class Built:
    report: dict[str, Any]
    data: bytes
    results: list[ChannelResult]
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class _Cut:
    """What a build reads: the ledger up to these heads, and how it is dated and chained."""

    max_seq: int
    head_hash: bytes
    events_head: tuple[int, bytes] | None
    generated_at: str
    previous_sha: str | None
    reissue_of: str | None = None
    reissue_reason: str | None = None


class ReportService:
    def __init__(
        self,
        settings: Settings,
        site: Site,
        ledger_path: Path | None = None,
        keys_dir: Path | None = None,
        *,
        reports_dir: Path | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger_path = Path(ledger_path) if ledger_path is not None else settings.ledger_path
        self.keys_dir = Path(keys_dir) if keys_dir is not None else settings.data_dir / "keys"
        self.keys = KeyStore(self.keys_dir, create=False)
        cfg_dir = settings.certification.reports_dir
        self.reports_dir = (
            Path(reports_dir)
            if reports_dir is not None
            else Path(cfg_dir)
            if cfg_dir is not None
            else settings.data_dir / "reports"
        )
        self.archive = ReportArchive(self.ledger_path)
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self.specs = list(site.channels)
        c = settings.certification
        loc = settings.site.location
        self.params = Params(
            interval_s=c.interval_minutes * 60,
            boundary_tolerance_s=c.boundary_tolerance_s,
            max_interpolation_s=c.max_interpolation_s,
            gap_min_s=c.gap_min_s,
            min_energy_coverage=c.min_energy_coverage,
            max_estimated_share=c.max_estimated_share,
            capacity_factor=c.capacity_factor,
            frozen_after_h=c.frozen_after_h,
            pv_night_elevation_deg=c.pv_night_elevation_deg,
            pv_night_tolerance_wh=c.pv_night_tolerance_wh,
            min_time_coverage=c.min_time_coverage,
            min_interval_energy_share=c.min_interval_energy_share,
            balance_tolerance=c.balance_tolerance,
            settlement_delay_h=c.settlement_delay_h,
            replacement_late_after_h=c.replacement_late_after_h,
            latitude=str(loc.latitude) if loc is not None else None,
            longitude=str(loc.longitude) if loc is not None else None,
            hourly_profiles=c.hourly_profiles,
        )

    # -- public interface -------------------------------------------------------------------------
    def report_json(self, site: str, month: str) -> bytes:
        """Signed report as canonical JSON bytes (closed months: the archived, immutable bytes)."""
        period = self._check(site, month)
        if period.end_ms <= self._now_ms():
            arch = self._archived(period)
            if arch is not None:
                return arch.data
        return self._get(site, month).data

    def report(self, site: str, month: str) -> dict[str, Any]:
        return dict(json.loads(self.report_json(site, month)))

    def settles_at_ms(self, month: str) -> int:
        """When `month` may close at the earliest (its end + settlement_delay_h)."""
        period = month_period(month, self.settings.site.timezone)
        return period.end_ms + self.settings.certification.settlement_delay_h * 3_600_000

    def now_ms(self) -> int:
        """The time this service decides by (in the agent: the clock guard's trusted time)."""
        return self._now_ms()

    def recent_months(self) -> tuple[str, str]:
        """The two months before the current one, by this service's time in the site's time zone: the
        ones that may close now (what the report publisher and the hub pusher look at)."""
        this = self.first_month(self._now_ms())  # the civil month holding now
        return shift_month(this, -2), shift_month(this, -1)

    def closed_report_json(self, site: str, month: str) -> bytes | None:
        """The month's authoritative report if it is closed (closing it now if it has settled), else None.
        What the agent publishes: never a provisional figure for an ended month."""
        period = self._check(site, month)
        if period.end_ms > self._now_ms():
            return None
        arch = self._archived(period)
        if arch is not None:
            return arch.data
        built = self._get(site, month)
        return built.data if built.report["period"]["complete"] else None

    def reissue(self, site: str, month: str, reason: str) -> bytes:
        """A new authoritative report for a closed month, from today's ledger and configuration, naming
        the report it replaces (`reissue_of`) and why (`reissue_reason`); archived as the next version."""
        if not reason.strip():
            raise ReportError("a reissue needs a reason (--reason TEXT): certifiers read it")
        period = self._check(site, month)
        arch = self._archived(period) if period.end_ms <= self._now_ms() else None
        if arch is None:
            raise NotClosed(f"{month} has no closed report to reissue (it closes after the settlement delay)")
        src = self._source()
        try:
            head_seq, head_hash = src.head()
            events_head = src.events_head()
        finally:
            src.close()
        prev = self._closed_data(shift_month(month, -1))
        cut = _Cut(
            head_seq,
            head_hash,
            events_head,
            iso_ms(self._now_ms()),
            hashlib.sha256(prev).hexdigest() if prev is not None else None,
            reissue_of=arch.sha256,
            reissue_reason=reason,
        )
        built = self._build(period, specs=self.specs, params=self.params, cut=cut, complete=True, prev=prev)
        done = self.archive.close(
            self.settings.site.id, month, built.data, expect_version=arch.version, ts_ms=self._now_ms()
        )
        self._write_copy(month, done.data)
        return done.data

    def report_csv(self, site: str, month: str) -> bytes:
        """Channel totals, one row per channel (integer Wh), plus the report's hash for reference."""
        b = self._get(site, month)
        rep = b.report
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "site", "month", "channel", "role", "device", "quantity", "serial", "multiplier",
                "opening_ts", "opening_register", "opening_method",
                "closing_ts", "closing_register", "closing_method",
                "energy_wh", "measured_wh", "interpolated_wh", "estimated_wh",
                "time_coverage", "energy_coverage", "grade", "interval_grade", "report_sha256",
            ]
        )  # fmt: skip
        sha = hashlib.sha256(b.data).hexdigest()
        for ch in rep["channels"]:
            o, c = ch["opening"], ch["closing"]
            w.writerow(
                [
                    rep["site"]["id"], rep["period"]["month"], ch["id"], ch["role"], ch["device"],
                    ch["quantity"], ch["meter"]["serial"] or "", ch["meter"]["multiplier"],
                    o["ts"], "" if o["register_value"] is None else o["register_value"], o["method"],
                    c["ts"], "" if c["register_value"] is None else c["register_value"], c["method"],
                    ch["energy_wh"], ch["measured_wh"], ch["interpolated_wh"], ch["estimated_wh"],
                    ch["coverage"]["time"], ch["coverage"]["energy"], ch["grade"], ch["interval_grade"], sha,
                ]
            )  # fmt: skip
        return buf.getvalue().encode()

    def report_pdf(self, site: str, month: str, t: Translator | None = None) -> bytes:
        """Human-readable, NON-AUTHORITATIVE summary with a chart, in `t`'s language (English when None).
        CPU work: call it in a thread."""
        from gateway.certification.pdf import ENGLISH, render_pdf

        b = self._get(site, month)
        return render_pdf(b.report, b.results, hashlib.sha256(b.data).hexdigest(), t or ENGLISH)

    def _evidence_parts(self, site: str, month: str) -> Iterator[tuple[str, Iterable[bytes]]]:
        """(file name, chunks) of the bundle, in bundle order. Readings are produced line by line: a
        month of 10-s register readings is millions of lines, which must never sit in memory at once."""
        b = self._get(site, month)
        rep = b.report
        yield bundle.REPORT, [b.data]
        prev_sha = rep.get("previous_report_sha256")
        if prev_sha:
            prev = self.archive.by_sha(prev_sha)
            if prev is not None:
                yield bundle.PREVIOUS, [prev]
        replaced = rep.get("reissue_of")
        while replaced:
            old = self.archive.by_sha(replaced)
            if old is None:
                break
            yield f"{bundle.REPLACED_DIR}/{replaced}.json", [old]
            replaced = json.loads(old).get("reissue_of")
        max_seq = int(rep["evidence"]["chain_head_seq"])

        def readings() -> Iterator[bytes]:
            src = self._source()
            try:
                for r in b.results:
                    rows = src.evidence_rows(r.spec.device, r.spec.quantity, r.used_bounds, max_seq=max_seq)
                    for seq, ts_ms, value, unit, quality, h, prev_h in rows:
                        line = bundle.reading_line(
                            channel=r.spec.id,
                            seq=seq,
                            ts_ms=ts_ms,
                            device=r.spec.device,
                            quantity=r.spec.quantity,
                            value=value,
                            unit=unit,
                            quality=quality,
                            hash_=h,
                            prev_hash=prev_h,
                        )
                        yield (line + "\n").encode()
            finally:
                src.close()

        yield bundle.READINGS, readings()

        def serials() -> Iterator[bytes]:
            src = self._source()
            try:
                for r in b.results:
                    for seq, ts_ms, value, unit, quality, h, prev_h in src.serial_rows(
                        r.spec.device, b.start_ms, b.end_ms, max_seq=max_seq
                    ):
                        line = bundle.reading_line(
                            channel=r.spec.id, seq=seq, ts_ms=ts_ms, device=r.spec.device, quantity="serial_number",
                            value=value, unit=unit, quality=quality, hash_=h, prev_hash=prev_h,
                        )  # fmt: skip
                        yield (line + "\n").encode()
            finally:
                src.close()

        if any(ch["meter"].get("serial_read") for ch in rep["channels"]):
            yield bundle.SERIALS, serials()

        def intervals() -> Iterator[bytes]:
            yield bundle.INTERVALS_HEADER.encode()
            interval_s = rep["method"]["interval_s"]
            for r in b.results:
                for line in bundle.intervals_csv_lines(
                    r.spec.id, b.start_ms, interval_s, b.end_ms, r.interval_wh, r.interval_quality
                ):
                    yield line.encode()

        yield bundle.INTERVALS, intervals()
        if rep["method"].get("hourly_matching"):
            chain: list[dict[str, Any]] = []
            if "events_head_id" in rep["evidence"]:
                src = self._source()
                try:
                    chain = src.events_json(int(rep["evidence"]["events_head_id"]))
                finally:
                    src.close()
            outcome = self._matching(
                b.results,
                params=Params.from_json(rep["method"]),
                start_ms=b.start_ms,
                events=chain,
                factors=rep["indicators"]["co2_factors"],
            )
            if outcome.allocation_csv is not None:
                yield bundle.STORAGE_ALLOCATION, [outcome.allocation_csv.encode()]
            if outcome.cancellation_csv is not None:
                yield bundle.CERTIFICATES, [outcome.cancellation_csv.encode()]
        if "events_head_id" in rep["evidence"]:
            max_event = int(rep["evidence"]["events_head_id"])

            def events() -> Iterator[bytes]:
                src = self._source()
                try:
                    for eid, ts_ms, kind, device, detail, h in src.events_rows(max_event):
                        line = bundle.event_line(
                            event_id=eid, ts_ms=ts_ms, kind=kind, device=device, detail=detail, hash_=h
                        )
                        yield (line + "\n").encode()
                finally:
                    src.close()

            yield bundle.EVENTS, events()
        yield bundle.README, [bundle.README_TEXT.encode()]

    def write_evidence_zip(self, site: str, month: str, out: IO[bytes]) -> None:
        """Write the bundle as a reproducible zip to `out`, streaming (bounded memory)."""
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, chunks in self._evidence_parts(site, month):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible archive
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w", force_zip64=True) as f:
                    for chunk in chunks:
                        f.write(chunk)

    def evidence_zip(self, site: str, month: str) -> bytes:
        buf = io.BytesIO()
        self.write_evidence_zip(site, month, buf)
        return buf.getvalue()

    def write_evidence(self, site: str, month: str, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for name, chunks in self._evidence_parts(site, month):
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            out.append(path)
        return out

    def key_transitions_json(self) -> bytes:
        """Every key-transition statement in the events chain, in chain order, as canonical JSON
        `{site, transitions: [{event_id, statement, new_signature, old_signature}]}` (what the agent
        publishes, retained, for the area hub)."""
        src = self._source()
        try:
            head = src.events_head()
            events = src.events_json(head[0]) if head is not None else []
        finally:
            src.close()
        transitions = [{"event_id": eid, **detail} for eid, detail in transitions_from_events(events)]
        return canonical({"site": self.settings.site.id, "transitions": transitions})

    def public_keys(self) -> list[dict[str, str]]:
        """The site's public signing key(s): alg, key_id (= fingerprint), PEM. Never the private key."""
        try:
            info = self.keys.public_info()
        except KeyMissing as exc:
            raise SigningKeyMissing(str(exc)) from None
        return [{"site": self.settings.site.id, **info}]

    def first_month(self, first_ms: int) -> str:
        """The civil month (site time zone) holding `first_ms`."""
        from datetime import UTC, datetime
        from zoneinfo import ZoneInfo

        local = datetime.fromtimestamp(first_ms / 1000, UTC).astimezone(ZoneInfo(self.settings.site.timezone))
        return f"{local.year:04d}-{local.month:02d}"

    # -- internals --------------------------------------------------------------------------------
    def _check(self, site: str, month: str) -> Period:
        if site != self.settings.site.id:
            raise UnknownSite(f"unknown site {site!r}; this gateway serves {self.settings.site.id!r}")
        try:
            period = month_period(month, self.settings.site.timezone)
        except BadMonth as exc:
            raise MalformedMonth(str(exc)) from None
        if period.start_ms > self._now_ms():
            raise MonthInFuture(f"{month} has not started yet in {self.settings.site.timezone}")
        return period

    def _path(self, month: str) -> Path:
        return self.reports_dir / self.settings.site.id / f"{month}.json"

    def _write_copy(self, month: str, data: bytes) -> None:
        """The readable copy under reports_dir (the archive in the ledger is the record)."""
        path = self._path(month)
        try:
            if path.is_file() and path.read_bytes() == data:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError:
            pass  # a read-only copy location must not stop reports

    def _archived(self, period: Period) -> Archived | None:
        """The month's authoritative report, if it was closed: from the archive; a report file from
        before the archive is adopted; a row deleted by hand is rebuilt from its `report_closed` event and
        must come out identical."""
        site, month = self.settings.site.id, period.month
        arch = self.archive.latest(site, month)
        if arch is not None:
            self._write_copy(month, arch.data)
            return arch
        closings = self.archive.closings(month) if self.ledger_path.exists() else []
        if closings:
            last = closings[-1]
            src = self._source()
            try:
                head_hash = src.hash_at(int(last["chain_head_seq"]))
                eh = last.get("events_head_id")
                events_head = (int(eh), src.event_hash_at(int(eh))) if eh is not None else None
            finally:
                src.close()
            prev_sha = last.get("previous_report_sha256")
            prev = self.archive.by_sha(prev_sha) if prev_sha else None
            cut = _Cut(
                int(last["chain_head_seq"]),
                head_hash,
                events_head,
                str(last["generated_at"]),
                prev_sha,
                last.get("reissue_of"),
                last.get("reissue_reason"),
            )
            built = self._build(period, specs=self.specs, params=self.params, cut=cut, complete=True, prev=prev)
            if hashlib.sha256(built.data).hexdigest() != last["report_sha256"]:
                raise StoredReportLost(
                    f"{month} was closed as report {last['report_sha256']} (ledger event {last['event_id']}), that"
                    " report is missing from the archive and a rebuild with today's configuration differs: restore"
                    " the ledger and reports from a backup, or issue a reissue (gia report --reissue --reason)"
                )
            arch = self.archive.close(site, month, built.data, expect_version=len(closings) - 1, ts_ms=self._now_ms())
            self._write_copy(month, arch.data)
            return arch
        legacy = self._path(month)
        if legacy.is_file() and self.ledger_path.exists():
            data = legacy.read_bytes()
            return self.archive.close(site, month, data, expect_version=0, ts_ms=self._now_ms())
        return None

    def _closed_data(self, month: str) -> bytes | None:
        """The authoritative report of `month` when it is closed (closing it if it has settled), else
        None (also when the month has no readings: nothing to chain to)."""
        period = month_period(month, self.settings.site.timezone)
        if period.end_ms > self._now_ms():
            return None
        arch = self._archived(period)
        if arch is not None:
            return arch.data
        src = self._source()
        try:
            first = src.first_counter_ms()
        finally:
            src.close()
        if first is None or first >= period.end_ms:
            return None
        built = self._get(self.settings.site.id, month)
        return built.data if built.report["period"]["complete"] else None

    def _source(self) -> LedgerSource:
        try:
            return LedgerSource(self.ledger_path)
        except (FileNotFoundError, OSError) as exc:
            raise LedgerUnavailable(str(exc)) from None

    def _has_readings_before(self, ms: int) -> bool:
        src = self._source()
        try:
            first = src.first_counter_ms()
        finally:
            src.close()
        return first is not None and first < ms

    def _get(self, site: str, month: str) -> Built:
        period = self._check(site, month)
        now = self._now_ms()
        if period.end_ms <= now:
            arch = self._archived(period)
            if arch is not None:
                return self._rebuild_stored(period, arch.data)
        src = self._source()
        try:
            first = src.first_counter_ms()
        finally:
            src.close()
        if first is None or first >= period.end_ms:
            since = "" if first is None else f"; the first month with readings is {self.first_month(first)}"
            raise MonthNotCovered(f"the ledger has no energy-register reading before the end of {month}{since}")
        src = self._source()
        try:
            head_seq, head_hash = src.head()
            events_head = src.events_head()
        finally:
            src.close()
        prev_month = shift_month(month, -1)
        prev = self._closed_data(prev_month)
        prev_pending = prev is None and self._has_readings_before(period.start_ms)
        cut = _Cut(
            head_seq,
            head_hash,
            events_head,
            iso_ms(now),
            hashlib.sha256(prev).hexdigest() if prev is not None else None,
        )
        if period.end_ms > now:
            return self._build(period, specs=self.specs, params=self.params, cut=cut, complete=False, prev=prev)
        settles_at = self.settles_at_ms(month)
        max_wait = period.end_ms + self.settings.certification.settlement_max_wait_h * 3_600_000

        def settled(results: list[ChannelResult]) -> bool:
            if now < settles_at or prev_pending:
                return False
            return now >= max_wait or all(r.json["closing"]["method"] != "missing" for r in results)

        built = self._build(period, specs=self.specs, params=self.params, cut=cut, complete=settled, prev=prev)
        if built.report["period"]["complete"] and built.report["evidence"]["entries"] > 0:
            arch = self.archive.close(site, month, built.data, expect_version=0, ts_ms=now)
            self._write_copy(month, arch.data)
            if arch.data != built.data:  # another builder closed it first: theirs is the record
                return self._rebuild_stored(period, arch.data)
        return built

    def _rebuild_stored(self, period: Period, data: bytes) -> Built:
        """Recompute what a stored report used, from the report itself: its channels and method, its
        chain and events heads, the previous report it names. Today's configuration plays no part."""
        rep = json.loads(data)
        specs = [ChannelSpec.from_report(ch) for ch in rep["channels"]]
        params = Params.from_json(rep["method"])
        ev = rep["evidence"]
        prev_sha = rep.get("previous_report_sha256")
        prev = self.archive.by_sha(prev_sha) if prev_sha else None
        results, end = self._compute(
            period,
            specs=specs,
            params=params,
            max_seq=int(ev["chain_head_seq"]),
            events_head_id=int(ev["events_head_id"]) if "events_head_id" in ev else None,
            to_end=True,
            prev=prev,
        )
        return Built(rep, data, results, period.start_ms, end)

    def _compute(
        self,
        period: Period,
        *,
        specs: Sequence[ChannelSpec],
        params: Params,
        max_seq: int,
        events_head_id: int | None,
        to_end: bool,
        prev: bytes | None,
    ) -> tuple[list[ChannelResult], int]:
        """Every channel's result, up to the period end (`to_end`) or to the last full interval before now."""
        p = params
        step = p.interval_s * 1000
        now = self._now_ms()
        if to_end:
            end = period.end_ms
        else:
            end = max(period.start_ms + step, period.start_ms + (now - period.start_ms) // step * step)
        margin = (p.max_interpolation_s + p.boundary_tolerance_s) * 1000
        night = night_flags(p, period.start_ms, end) if any(x.source == "pv" for x in specs) else None
        frozen: dict[str, tuple[int, int]] = {}
        if prev is not None:
            pr = json.loads(prev)
            head = int(pr["evidence"]["chain_head_seq"])
            for ch in pr.get("channels", []):
                last = ch.get("readings", {}).get("last_ts")
                if last:
                    frozen[ch["id"]] = (parse_iso_ms(last), head)
        results: list[ChannelResult] = []
        src = self._source()
        try:
            all_reps = src.replacements(max_event_id=events_head_id if events_head_id is not None else 0)
            for spec in specs:
                # one channel at a time, keeping only its intervals and Merkle roots: a month of 10-s
                # readings is ~270 k rows per channel, and a Pi should not hold 20 of them at once
                series, bad = src.series(
                    spec.device,
                    spec.quantity,
                    period.start_ms,
                    end,
                    margin_ms=margin,
                    max_seq=max_seq,
                    frozen=frozen.get(spec.id),
                )
                result = compute_channel(
                    spec,
                    series,
                    start_ms=period.start_ms,
                    end_ms=end,
                    params=p,
                    replacements=[r for r in all_reps if r.device == spec.device and r.quantity == spec.quantity],
                    bad_readings=bad,
                    night=night,
                    serials=[row[2] for row in src.serial_rows(spec.device, period.start_ms, end, max_seq=max_seq)],
                )
                del series
                result.used = Series()
                results.append(result)
        finally:
            src.close()
        return results, end

    def _build(
        self,
        period: Period,
        *,
        specs: Sequence[ChannelSpec],
        params: Params,
        cut: _Cut,
        complete: bool | Callable[[list[ChannelResult]], bool],
        prev: bytes | None,
    ) -> Built:
        ended = period.end_ms <= self._now_ms()
        results, end = self._compute(
            period,
            specs=specs,
            params=params,
            max_seq=cut.max_seq,
            events_head_id=cut.events_head[0] if cut.events_head is not None else None,
            to_end=ended,
            prev=prev,
        )
        done = complete(results) if callable(complete) else complete
        c = self.settings.certification
        site = self.settings.site
        p = params
        factors = {"location": c.emission_factors.location.model_dump(), "market": self._market_factor()}
        gos = [g.model_dump() for g in c.guarantees_of_origin if g.month == period.month and g.site in (None, site.id)]
        transitions: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        if cut.events_head is not None:
            src = self._source()
            try:
                events = src.events_json(cut.events_head[0])
            finally:
                src.close()
            transitions = [{"event_id": eid, **detail} for eid, detail in transitions_from_events(events)]
        matching = self._matching(results, params=p, start_ms=period.start_ms, events=events, factors=factors)
        body = assemble(
            site={
                "id": site.id,
                "name": site.name,
                "area": site.area,
                "timezone": site.timezone,
                "location": {"latitude": p.latitude, "longitude": p.longitude} if p.latitude else None,
            },
            period=period_json(
                period.month,
                period.timezone,
                period.start_ms,
                period.end_ms,
                complete=done,
                as_of_ms=None if done else end,
                settles_at_ms=self.settles_at_ms(period.month),
            ),
            params=p,
            threshold=c.renewable_share_threshold,
            threshold_basis=c.threshold_basis,
            factors=factors,
            guarantees=gos,
            results=results,
            evidence=evidence_summary(
                [r.day_roots for r in results],
                head_seq=cut.max_seq,
                head_hash=cut.head_hash,
                events_head=cut.events_head,
            ),
            previous_sha256=cut.previous_sha,
            generated_at=cut.generated_at,
            generator=f"gia-gateway {__version__}",
            reissue_of=cut.reissue_of,
            reissue_reason=cut.reissue_reason,
            key_transitions=transitions,
            matching=matching,
        )
        try:
            signed = self.keys.sign_report(body)
        except KeyMissing as exc:
            raise SigningKeyMissing(str(exc)) from None
        return Built(signed, canonical(signed), results, period.start_ms, end)

    @staticmethod
    def _matching(
        results: Sequence[ChannelResult],
        *,
        params: Params,
        start_ms: int,
        events: Sequence[dict[str, Any]],
        factors: dict[str, Any],
    ) -> MatchingOutcome:
        """The hourly matching (storage, certificates, hourly factors) from the results and the events
        chain up to the report's events head (imports recorded later play no part)."""
        hours = -(-max((len(r.interval_wh) for r in results), default=0) // max(1, 3600 // params.interval_s))
        return compute_matching(
            results,
            interval_s=params.interval_s,
            start_ms=start_ms,
            annual_factor=str(factors["location"]["value"]),
            certificates=certificates_for_period(events, max_id=None, start_ms=start_ms, hours=hours),
            factors=factors_for_period(events, max_id=None, start_ms=start_ms, hours=hours),
        )

    def _market_factor(self) -> dict[str, Any]:
        ef = self.settings.certification.emission_factors
        if ef.market is not None:
            return ef.market.model_dump()
        return {
            **ef.location.model_dump(),
            "basis": "market-based stand-in: no residual-mix or supplier factor configured, location factor"
            " used for grid energy not covered by Guarantees of Origin",
            "status": "provisional",
        }
