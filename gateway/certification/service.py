"""`ReportService`: what the HTTP API, the agent and the CLI call to get reports, exports and keys.

Synchronous on purpose (SQLite reads, hashing, PDF rendering are CPU/IO work): the API calls it with
`await asyncio.to_thread(service.report_json, site, month)` so the event loop never blocks.

Closed months are built once, signed and stored under `<data_dir>/reports/<site>/<YYYY-MM>.json`; every
later call returns the stored bytes (immutable, byte-identical), so `previous_report_sha256` chains stay
valid. The current month is computed fresh on each call up to the last full interval and graded
provisional. A closed month with no readings at all is not stored, so a later backfill is not locked out.

Exceptions (all `ReportError`): `UnknownSite` and `MonthNotCovered` -> 404, `MalformedMonth` and
`MonthInFuture` -> 400, `LedgerUnavailable` -> 503.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from drivers.errors import GiaError
from gateway import __version__
from gateway.certification import bundle
from gateway.certification.compute import ChannelResult, Params, Series, compute_channel, night_flags
from gateway.certification.exact import iso_ms
from gateway.certification.periods import BadMonth, Period, month_period, shift_month
from gateway.certification.report import assemble, evidence_summary, period_json
from gateway.certification.signing import KeyStore, canonical, public_pem
from gateway.certification.source import LedgerSource
from gateway.settings import Settings

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


@dataclass(slots=True)
class Built:
    report: dict[str, Any]
    data: bytes
    results: list[ChannelResult]
    start_ms: int
    end_ms: int


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
        self.keys = KeyStore(Path(keys_dir) if keys_dir is not None else settings.data_dir / "keys")
        cfg_dir = settings.certification.reports_dir
        self.reports_dir = (
            Path(reports_dir)
            if reports_dir is not None
            else Path(cfg_dir)
            if cfg_dir is not None
            else settings.data_dir / "reports"
        )
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
            latitude=str(loc.latitude) if loc is not None else None,
            longitude=str(loc.longitude) if loc is not None else None,
        )

    # -- public interface -------------------------------------------------------------------------
    def report_json(self, site: str, month: str) -> bytes:
        """Signed report as canonical JSON bytes (closed months: the stored, immutable bytes)."""
        period = self._check(site, month)
        if period.end_ms <= self._now_ms():
            stored = self._stored(month)
            if stored is not None:
                return stored
        return self._get(site, month).data

    def report(self, site: str, month: str) -> dict[str, Any]:
        return dict(json.loads(self.report_json(site, month)))

    def report_csv(self, site: str, month: str) -> bytes:
        """Channel totals, one row per channel (integer Wh), plus the report's hash for reference."""
        b = self._get(site, month)
        rep = b.report
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "site", "month", "channel", "role", "device", "quantity", "serial", "multiplier",
                "opening_ts", "opening_register_wh", "opening_method",
                "closing_ts", "closing_register_wh", "closing_method",
                "energy_wh", "measured_wh", "interpolated_wh", "estimated_wh",
                "time_coverage", "energy_coverage", "grade", "report_sha256",
            ]
        )  # fmt: skip
        sha = hashlib.sha256(b.data).hexdigest()
        for ch in rep["channels"]:
            o, c = ch["opening"], ch["closing"]
            w.writerow(
                [
                    rep["site"]["id"], rep["period"]["month"], ch["id"], ch["role"], ch["device"],
                    ch["quantity"], ch["meter"]["serial"] or "", ch["meter"]["multiplier"],
                    o["ts"], "" if o["register_wh"] is None else o["register_wh"], o["method"],
                    c["ts"], "" if c["register_wh"] is None else c["register_wh"], c["method"],
                    ch["energy_wh"], ch["measured_wh"], ch["interpolated_wh"], ch["estimated_wh"],
                    ch["coverage"]["time"], ch["coverage"]["energy"], ch["grade"], sha,
                ]
            )  # fmt: skip
        return buf.getvalue().encode()

    def report_pdf(self, site: str, month: str) -> bytes:
        """Human-readable, NON-AUTHORITATIVE summary with a chart (CPU work: call it in a thread)."""
        from gateway.certification.pdf import render_pdf

        b = self._get(site, month)
        return render_pdf(b.report, b.results, hashlib.sha256(b.data).hexdigest())

    def _evidence_parts(self, site: str, month: str) -> Iterator[tuple[str, Iterable[bytes]]]:
        """(file name, chunks) of the bundle, in bundle order. Readings are produced line by line: a
        month of 10-s register readings is millions of lines, which must never sit in memory at once."""
        b = self._get(site, month)
        rep = b.report
        yield bundle.REPORT, [b.data]
        prev = self._stored(shift_month(month, -1))
        if prev is not None:
            yield bundle.PREVIOUS, [prev]
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

        def intervals() -> Iterator[bytes]:
            yield bundle.INTERVALS_HEADER.encode()
            interval_s = rep["method"]["interval_s"]
            for r in b.results:
                for line in bundle.intervals_csv_lines(
                    r.spec.id, b.start_ms, interval_s, b.end_ms, r.interval_wh, r.interval_quality
                ):
                    yield line.encode()

        yield bundle.INTERVALS, intervals()
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
        yield bundle.PUBLIC_KEY, [public_pem(self.keys.public_key()).encode()]
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
            with (directory / name).open("wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            out.append(directory / name)
        return out

    def public_keys(self) -> list[dict[str, str]]:
        """The site's public signing key(s): alg, key_id (= fingerprint), PEM. Never the private key."""
        return [{"site": self.settings.site.id, **self.keys.public_info()}]

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

    def _stored(self, month: str) -> bytes | None:
        p = self._path(month)
        return p.read_bytes() if p.is_file() else None

    def _source(self) -> LedgerSource:
        try:
            return LedgerSource(self.ledger_path)
        except (FileNotFoundError, OSError) as exc:
            raise LedgerUnavailable(str(exc)) from None

    def _get(self, site: str, month: str) -> Built:
        period = self._check(site, month)
        now = self._now_ms()
        complete = period.end_ms <= now
        stored = self._stored(month) if complete else None
        if stored is not None:
            rep = json.loads(stored)
            ev = rep["evidence"]
            return self._build(
                period,
                complete=True,
                max_seq=int(ev["chain_head_seq"]),
                head_hash=bytes.fromhex(ev["chain_head"]),
                events_head=(int(ev["events_head_id"]), bytes.fromhex(ev["events_head"]))
                if "events_head_id" in ev
                else None,
                generated_at=rep["generated_at"],
                previous_sha=rep["previous_report_sha256"],
                stored=stored,
            )
        src = self._source()
        try:
            first = src.first_counter_ms()
        finally:
            src.close()
        if first is None or first >= period.end_ms:
            since = "" if first is None else f"; the first month with readings is {self.first_month(first)}"
            raise MonthNotCovered(f"the ledger has no energy-register reading before the end of {month}{since}")
        previous_sha = self._previous_sha(period)
        src = self._source()
        try:
            head_seq, head_hash = src.head()
            events_head = src.events_head()
        finally:
            src.close()
        built = self._build(
            period,
            complete=complete,
            max_seq=head_seq,
            head_hash=head_hash,
            events_head=events_head,
            generated_at=iso_ms(now),
            previous_sha=previous_sha,
            stored=None,
        )
        if complete and built.report["evidence"]["entries"] > 0:
            self._store(month, built.data)
        return built

    def _previous_sha(self, period: Period) -> str | None:
        prev_month = shift_month(period.month, -1)
        data = self._stored(prev_month)
        if data is None:
            src = self._source()
            try:
                first = src.first_counter_ms()
            finally:
                src.close()
            if first is None or first >= period.start_ms:
                return None
            data = self._get(self.settings.site.id, prev_month).data
            if self._stored(prev_month) is None:  # not storable (no readings): no chain link
                return None
        return hashlib.sha256(data).hexdigest()

    def _store(self, month: str, data: bytes) -> None:
        path = self._path(month)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)  # fails if another builder stored it first: theirs wins, immutably
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def _build(
        self,
        period: Period,
        *,
        complete: bool,
        max_seq: int,
        head_hash: bytes,
        events_head: tuple[int, bytes] | None,
        generated_at: str,
        previous_sha: str | None,
        stored: bytes | None,
    ) -> Built:
        p = self.params
        step = p.interval_s * 1000
        if complete:
            end = period.end_ms
            as_of = None
        else:
            now = self._now_ms()
            end = max(period.start_ms + step, period.start_ms + (now - period.start_ms) // step * step)
            as_of = end
        margin = (p.max_interpolation_s + p.boundary_tolerance_s) * 1000
        night = night_flags(p, period.start_ms, end) if any(x.source == "pv" for x in self.specs) else None
        results: list[ChannelResult] = []
        src = self._source()
        try:
            all_reps = src.replacements()
            for spec in self.specs:
                # one channel at a time, keeping only its intervals and Merkle roots: a month of 10-s
                # readings is ~270 k rows per channel, and a Pi should not hold 20 of them at once
                series, bad = src.series(
                    spec.device, spec.quantity, period.start_ms, end, margin_ms=margin, max_seq=max_seq
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
                )
                del series
                result.used = Series()
                results.append(result)
        finally:
            src.close()
        if stored is not None:
            return Built(json.loads(stored), stored, results, period.start_ms, end)
        c = self.settings.certification
        site = self.settings.site
        factors = {"location": c.emission_factors.location.model_dump(), "market": self._market_factor()}
        gos = [g.model_dump() for g in c.guarantees_of_origin if g.month == period.month and g.site in (None, site.id)]
        body = assemble(
            site={
                "id": site.id,
                "name": site.name,
                "area": site.area,
                "timezone": site.timezone,
                "location": {"latitude": p.latitude, "longitude": p.longitude} if p.latitude else None,
            },
            period=period_json(
                period.month, period.timezone, period.start_ms, period.end_ms, complete=complete, as_of_ms=as_of
            ),
            params=p,
            threshold=c.renewable_share_threshold,
            threshold_basis=c.threshold_basis,
            factors=factors,
            guarantees=gos,
            results=results,
            evidence=evidence_summary(
                [r.day_roots for r in results], head_seq=max_seq, head_hash=head_hash, events_head=events_head
            ),
            previous_sha256=previous_sha,
            generated_at=generated_at,
            generator=f"gia-gateway {__version__}",
        )
        signed = self.keys.sign_report(body)
        return Built(signed, canonical(signed), results, period.start_ms, end)

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
