"""schemathesis against the API's own /openapi.json, in process (ASGI), with real report services.

Property: no request the schema allows (and none of schemathesis' negative variations) gets a 5xx,
with and without a certifier token. The app is `create_app` with a real ReportService over a real
ledger holding a month of register readings; only the HTTP transport is in-process.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (test extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from drivers.model import Sample  # noqa: E402
from gateway.api.app import ApiServices, create_app  # noqa: E402
from gateway.api.auth import Authenticator, Principal, TokenEntry  # noqa: E402
from gateway.certification.service import ReportService  # noqa: E402
from gateway.certification.sitekeys import rotate_site_key  # noqa: E402
from gateway.ledger.store import Ledger  # noqa: E402
from gateway.runtime.live import LiveState  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.site.resolve import resolve_site  # noqa: E402
from tests.support.fuzz_budget import LONG  # noqa: E402

pytestmark = [pytest.mark.fuzz]

TOKEN = "fuzz-certifier-token-0123456789"


def _app(tmp: Path) -> Any:
    (tmp / "gia.yaml").write_text(
        "site: {id: fz, timezone: Europe/Riga}\n"
        "data_dir: data\n"
        "devices: [{id: m, driver: modbus, connection: 'tcp://127.0.0.1:1', map: eastron-sdm630,"
        " channels: [{role: grid_import, quantity: energy_import_wh}]}]\n"
        "http: {enabled: false}\n"
    )
    s = load_settings(tmp / "gia.yaml")
    led = Ledger(s.ledger_path)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    led.append(Sample("m", "energy_import_wh", 1000 * i, "Wh", t0 + timedelta(minutes=15 * i)) for i in range(3000))
    led.close()
    rotate_site_key(s.data_dir / "keys", s.ledger_path, site="fz", reason="fuzz site key")  # never made silently
    reports = ReportService(
        s, resolve_site(s, base_dir=tmp), now_ms=lambda: int(datetime(2026, 3, 5, tzinfo=UTC).timestamp() * 1000)
    )
    auth = Authenticator(
        [TokenEntry(TOKEN.encode(), Principal("c", frozenset({"certifier", "viewer"}), frozenset({"fz"})))],
        anonymous_viewer_on_loopback=False,
    )
    return create_app(
        ApiServices(
            site="fz",
            live=LiveState.for_devices({"m": "meter"}),
            auth=auth,
            health=lambda: {"status": "ok", "reasons": []},
            reports=reports,
        )
    )


@settings(max_examples=400 if LONG else 40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_5xx(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """Cases drawn from every operation's strategy (schemathesis' pytest plugin does not load under
    pytest 9 here: 'Function' object has no attribute '_nodeid', so its strategies are used directly)."""
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory.mktemp("api")))
    ops = [r.ok() for r in _SCHEMA.get_all_operations()]
    case = data.draw(st.one_of([op.as_strategy() for op in ops]))
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])


_SCHEMA: Any = None
