"""Building an area report does not stop ingestion: the aggregation runs outside the write lock.

Found with the replica fault tests: with 50 sites, each area-report build held the database's write lock
for 2-3 s (every site report's signature verified again, then summed) and every replica's ingestion
waited behind it; at 500 sites that is half a minute per build. Now the build is prepared on a read
snapshot and stored under the lock only if its inputs are still current; a report accepted meanwhile
makes it be prepared again, so the stored version always sums what the database holds."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.certification.area import aggregate
from gateway.hub import areas as areas_module
from gateway.hub.areas import AreaReports
from gateway.hub.config import DatabaseConfig
from gateway.hub.ingest import Ingestor, Outcome
from tests.hub.conftest import SignedSite
from tests.hub.test_area_reports import Clock, ms, open_store


def test_a_report_is_decided_while_an_area_report_aggregates_and_is_summed(
    tmp_path: Path, hub_db: DatabaseConfig, area_sites: dict[str, SignedSite], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(ms(2025, 4, 20))  # after the March deadline: the area report is due with whoever is in
    store = open_store(tmp_path, hub_db, clock)
    try:
        for s, site in area_sites.items():
            store.enroll(s, "park", site.public_pem)
        ing, areas = Ingestor(store, max_bytes=1 << 22), AreaReports(store)
        for s in ("p", "b"):
            assert ing.submit_report(s, area_sites[s].reports["2025-03"], via="mqtt").status == "accepted"
        real = aggregate
        during: list[Outcome | None] = []

        def aggregate_while_c_reports(*args: Any, **kw: Any) -> dict[str, Any]:
            if not during:  # the first build: site c's report arrives (on another thread, another replica)
                out: list[Outcome] = []
                t = threading.Thread(
                    target=lambda: out.append(ing.submit_report("c", area_sites["c"].reports["2025-03"], via="mqtt"))
                )
                t.start()
                t.join(timeout=20)  # under the lock it would wait for this very build: 20 s, then fail
                during.append(out[0] if out else None)
                if t.is_alive():
                    t.join()  # (let it finish after the build, so the store closes cleanly)
            return real(*args, **kw)

        monkeypatch.setattr(areas_module, "aggregate", aggregate_while_c_reports)
        built = areas.build_month("park", "2025-03")
        assert during[0] is not None and during[0].status == "accepted", "ingestion waited for the area build"
        assert built is not None and built.version == 1 and built.complete  # prepared again with c, stored once
        body = json.loads(built.data)
        assert sorted(s["site"] for s in body["sites"]) == ["b", "c", "p"] and body["missing"] == []
        assert [v["version"] for v in areas.versions("park", "2025-03")] == [1]
    finally:
        store.close()
