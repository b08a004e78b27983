"""Pushing to the area hub from a cursor over the ledger's events chain: nothing lost, nothing doubled.

What the hub must get is already an event in the site's events chain: every closed month (and every
reissue) is a `report_closed` event naming the archived report's SHA-256, every key change a
`key_transition` event. The pusher keeps the id of the last event the hub acknowledged in a small state
file (`<data_dir>/hub-push.json`, written atomically) and walks the chain from there:

* `report_closed` -> the archived bytes (`ReportArchive.by_sha`), POSTed to
  `/api/v1/hub/sites/{site}/reports`; with `evidence: true`, the bundle (zip) follows when the report is
  still the month's latest version;
* `key_transition` -> the site's announcement `{site, transitions}` (every transition, as on
  `gia/{site}/keys/transition`; the hub skips those it already follows).

The cursor moves only after the hub has decided (200: accepted, or rejected with reasons — a rejection is
the hub's answer, logged and shown, and retrying would not change it). A 422 (the hub cannot attribute it
yet: the site is not enrolled, its key not pinned), a 401/403 (the token), a 5xx or a network failure are
retried with capped, jittered backoff, the reason in `/healthz`; a 413 is skipped and counted (it can never
be accepted). The hub dedups, so an event pushed twice (a crash between the answer and the cursor) is a
replay there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from drivers.backoff import Backoff
from gateway.certification.archive import ReportArchive
from gateway.certification.events import REPORT_CLOSED
from gateway.certification.keys import EVENT_KIND as KEY_TRANSITION
from gateway.hubpush.config import HubPushConfig
from gateway.rooms import ReportProvider

log = logging.getLogger(__name__)

STATE_FILE: Final = "hub-push.json"


class Retry(Exception):
    """The hub has not acknowledged this event yet: try it again later (the message says why)."""


@dataclass
class PushHealth:
    cursor: int = 0
    pending: int = 0
    pushed: int = 0
    rejected: int = 0
    skipped: int = 0
    evidence: int = 0
    last_status: str | None = None
    last_error: str | None = None


class HubPusher:
    def __init__(
        self,
        cfg: HubPushConfig,
        *,
        site: str,
        ledger_path: Path,
        reports: ReportProvider | None,
        state_file: Path,
        base_dir: Path,
        closing: Callable[[], list[str]] = list,
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.ledger_path = Path(ledger_path)
        self.reports = reports
        self.state_file = state_file
        self.base_dir = base_dir
        self.archive = ReportArchive(self.ledger_path)
        #: the months that may have closed by now (a site without MQTT has no publisher to close them)
        self.closing = closing
        self.health = PushHealth()
        self._pool: Any = None

    # -- the cursor ------------------------------------------------------------------------------------
    def load_cursor(self) -> int:
        try:
            return int(json.loads(self.state_file.read_text())["events"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def save_cursor(self, event_id: int) -> None:
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"events": event_id, "url": self.cfg.url}) + "\n")
        os.replace(tmp, self.state_file)

    def pending(self, after: int) -> list[tuple[int, str, dict[str, Any]]]:
        """(event id, kind, detail) of the closings and key transitions after `after`, in chain order."""
        if not self.ledger_path.exists():
            return []
        db = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            rows = db.execute(
                "SELECT id, kind, detail FROM events WHERE id > ? AND kind IN (?, ?) ORDER BY id",
                (after, REPORT_CLOSED, KEY_TRANSITION),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()
        out = []
        for eid, kind, detail in rows:
            try:
                parsed = json.loads(detail)
            except ValueError:
                parsed = {}
            out.append((int(eid), str(kind), parsed if isinstance(parsed, dict) else {}))
        return out

    # -- HTTP ------------------------------------------------------------------------------------------
    def _http(self) -> Any:
        import urllib3

        if self._pool is None:
            kw: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
            if self.cfg.ca_file is not None:
                ca = self.cfg.ca_file if self.cfg.ca_file.is_absolute() else self.base_dir / self.cfg.ca_file
                kw["ca_certs"] = str(ca)
            self._pool = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=min(10.0, self.cfg.timeout_s), read=self.cfg.timeout_s),
                retries=False,
                **kw,
            )
        return self._pool

    def _post(self, path: str, body: Any, content_type: str, length: int | None = None) -> tuple[int, Any]:
        import urllib3

        headers = {
            "Authorization": f"Bearer {self.cfg.token_value(self.base_dir)}",
            "Content-Type": content_type,
            # a push is rare (a month's closing): no idle connection is kept to the hub, which serves
            # hundreds of sites and should not hold a socket for each between months
            "Connection": "close",
        }
        if length is not None:
            headers["Content-Length"] = str(length)
        try:
            resp = self._http().request("POST", self.cfg.url + path, body=body, headers=headers, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            # urllib3's message names the host, never the token (it is a header)
            raise Retry(f"hub unreachable: {type(exc).__name__}: {str(exc)[:200]}") from None
        try:
            answer = json.loads(resp.data) if resp.data else None
        except ValueError:
            answer = None
        return int(resp.status), answer

    @staticmethod
    def _detail(answer: Any) -> str:
        if isinstance(answer, dict):
            d = answer.get("detail", answer.get("reasons", ""))
            return "; ".join(map(str, d)) if isinstance(d, list) else str(d)
        return ""

    # -- one event -------------------------------------------------------------------------------------
    def push_one(self, kind: str, detail: dict[str, Any]) -> str:
        """Push one event; returns what the hub said (accepted / rejected / replay / skipped), or raises
        `Retry` when the hub has not acknowledged it."""
        if kind == KEY_TRANSITION:
            if self.reports is None:
                raise Retry("the report service is not up yet")
            body = self._key_transitions()
            month = None
        else:
            month = str(detail.get("month", ""))
            sha = str(detail.get("report_sha256", ""))
            data = self.archive.by_sha(sha)
            if data is None:
                self.health.skipped += 1
                log.error("hub push: report %s of %s is not in the archive; skipped", sha[:16], month)
                return "skipped"
            body = data
        status, answer = self._post(f"/api/v1/hub/sites/{self.site}/reports", body, "application/json")
        if status == 200 and isinstance(answer, dict):
            decided = "replay" if answer.get("replay") else str(answer.get("status"))
            if answer.get("status") == "rejected":
                self.health.rejected += 1
                log.warning("hub rejected %s %s: %s", kind, month or "", "; ".join(map(str, answer.get("reasons", []))))
            if kind == REPORT_CLOSED and self.cfg.evidence and answer.get("status") == "accepted" and month:
                self._push_evidence(month, str(detail.get("report_sha256", "")))
            return decided
        if status == 413:
            self.health.skipped += 1
            log.error("hub refused %s %s as too large; skipped: %s", kind, month or "", self._detail(answer))
            return "skipped"
        if status == 422:
            raise Retry(f"hub quarantined the {kind} (not enrolled or key not pinned yet?): {self._detail(answer)}")
        if status in (401, 403):
            raise Retry(f"hub refused the site token ({status}): {self._detail(answer)}")
        raise Retry(f"hub answered {status}: {self._detail(answer)[:200]}")

    def _key_transitions(self) -> bytes:
        fn = getattr(self.reports, "key_transitions_json", None)
        if fn is None:
            raise Retry("the report service cannot list key transitions")
        return bytes(fn())

    def _push_evidence(self, month: str, sha: str) -> None:
        """The evidence bundle of the month, when `sha` is still its latest version (best effort: a failure
        is logged, the report stays pushed)."""
        latest = self.archive.latest(self.site, month)
        if self.reports is None or latest is None or latest.sha256 != sha:
            return
        with tempfile.TemporaryFile(prefix="gia-evidence-") as f:
            try:
                self.reports.write_evidence_zip(self.site, month, f)
            except Exception as exc:
                log.warning("hub push: evidence of %s not built: %s", month, exc)
                return
            size = f.tell()
            f.seek(0)
            try:
                status, answer = self._post(
                    f"/api/v1/hub/sites/{self.site}/evidence/{month}", f, "application/zip", size
                )
            except Retry as exc:
                log.warning("hub push: evidence of %s not pushed: %s", month, exc)
                return
        if status == 200:
            self.health.evidence += 1
            if isinstance(answer, dict) and not answer.get("verified"):
                log.warning("hub: evidence of %s failed its check: %s", month, self._detail(answer))
        else:
            log.warning("hub push: evidence of %s refused (%d): %s", month, status, self._detail(answer))

    def close_due(self) -> None:
        """Close the months that have settled (the report service stores them and chains `report_closed`):
        what the MQTT publisher does on a bridged site."""
        fn = getattr(self.reports, "closed_report_json", None)
        if fn is None:
            return
        for month in self.closing():
            try:
                fn(self.site, month)
            except Exception as exc:  # no readings yet, ledger busy, key missing: try again later
                log.debug("hub push: %s not closed yet: %s", month, exc)

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.health.cursor = await asyncio.to_thread(self.load_cursor)
        backoff = Backoff(initial_s=1.0, max_s=self.cfg.retry_max_s)
        while True:
            await asyncio.to_thread(self.close_due)
            todo = await asyncio.to_thread(self.pending, self.health.cursor)
            self.health.pending = len(todo)
            if not todo:
                await asyncio.sleep(self.cfg.poll_s)
                continue
            eid, kind, detail = todo[0]
            try:
                said = await asyncio.to_thread(self.push_one, kind, detail)
            except Retry as exc:
                if self.health.last_error != str(exc):
                    log.warning("hub push of event %d (%s): %s; retrying", eid, kind, exc)
                self.health.last_error = str(exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            await asyncio.to_thread(self.save_cursor, eid)
            self.health.cursor = eid
            self.health.pushed += 1
            self.health.last_status = f"event {eid} ({kind}): {said}"
            self.health.last_error = None
            backoff.reset()
            log.info("hub push: event %d (%s) %s", eid, kind, said)

    def status(self) -> dict[str, Any]:
        h = self.health
        return {
            "url": self.cfg.url,
            "cursor": h.cursor,
            "pending": h.pending,
            "pushed": h.pushed,
            "rejected": h.rejected,
            "skipped": h.skipped,
            "evidence": h.evidence,
            "last_status": h.last_status,
            "last_error": h.last_error,
        }

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.clear()
