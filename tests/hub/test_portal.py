"""The certifier portal's API on a running hub (real HTTP server, real Mosquitto): area-scoped tokens with 401
and 403 as on the gateway; the attacks of issue #17, each refused and listed on the portal; a certifier's
downloads verify offline with `gia verify`."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiomqtt
import httpx
import pytest

from gateway.certification.signing import KeyStore
from gateway.certification.verify import run as verify_run
from gateway.hub.config import AreaConfig, DatabaseConfig, HubConfig, HubHttpConfig, HubSettings, HubToken
from gateway.hub.service import Hub
from gateway.settings import MqttConfig
from tests.hub.conftest import AREA_DEFINITION, SignedSite
from tests.hub.test_hub_e2e import running
from tests.hub.test_ingest import lenient
from tests.servers import MosquittoBroker, free_port

pytestmark = pytest.mark.mosquitto

TOKENS = {
    "viewer": ("park-viewer", ["viewer"], ["park"]),
    "certifier": ("park-certifier", ["certifier"], ["park"]),
    "elsewhere": ("other-certifier", ["certifier"], ["other"]),
    "admin": ("hub-admin", ["admin"], ["*"]),
}


def secret(name: str) -> str:
    return f"{name}-token-0123456789abcdef0123456789abcdef"


def make_hub(tmp_path: Path, broker: MosquittoBroker) -> Hub:
    cfg = HubConfig(
        data_dir=tmp_path / "hub",
        database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"),
        areas=[AreaConfig(id="park", name="Park", **AREA_DEFINITION), AreaConfig(id="other")],
        mqtt=MqttConfig(url=broker.url, client_id=f"hub-{free_port()}", timeout_s=3),
        http=HubHttpConfig(
            listen=f"127.0.0.1:{free_port()}",
            max_body_bytes=2 * 1024 * 1024,
            tokens=[HubToken(name=n, token=secret(k), roles=r, areas=a) for k, (n, r, a) in TOKENS.items()],  # type: ignore[arg-type]
        ),
        area_check_s=0.5,
    )
    return Hub(HubSettings(hub=cfg))


def bearer(kind: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret(kind)}"}


def verify(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    return verify_run(list(args), stdout=buf), buf.getvalue()


async def test_attacks_are_refused_and_listed_and_tokens_are_scoped(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker, area_sites: dict[str, SignedSite]
) -> None:
    hub = make_hub(tmp_path, mosquitto_fresh)
    tokens = {s: hub.store.enroll(s, "park", site.public_pem).token for s, site in area_sites.items()}
    intruder = KeyStore(tmp_path / "intruder")
    base = f"http://{hub.cfg.http.listen}"
    async with running(hub), httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def push(site: str, body: bytes) -> httpx.Response:
            return await http.post(
                f"/api/v1/hub/sites/{site}/reports", content=body, headers={"Authorization": f"Bearer {tokens[site]}"}
            )

        for s, site in area_sites.items():
            for m in ("2025-02", "2025-03"):
                r = await push(s, site.reports[m])
                assert (r.status_code, r.json()["status"]) == (200, "accepted"), r.json()
        b, c = area_sites["b"], area_sites["c"]
        # 1. a report signed by a key nobody enrolled
        r = await push("b", json.dumps(intruder.sign_report(json.loads(b.reports["2025-03"]))).encode())
        assert (r.status_code, r.json()["error"]) == (422, "quarantined")
        # 2. a second, different report for a stored month (not a reissue naming the first)
        r = await push("b", b.resign("2025-03", generated_at="2025-04-09T00:00:00Z"))
        assert r.json()["status"] == "rejected" and r.json()["reasons"][0].startswith("conflict:")
        # 3. a site claiming a meter another site owns (c's February re-signed claiming b's grid meter)
        doc = json.loads(c.reports["2025-02"])
        doc["channels"][0]["meter"]["serial"] = "GRID-B"
        r = await push("c", json.dumps(c.keys.sign_report(doc)).encode())
        assert r.json()["status"] == "rejected" and any("belongs to site 'b'" in x for x in r.json()["reasons"])
        # 4. a replayed old report: idempotent, counted
        r = await push("b", b.reports["2025-02"])
        assert r.json()["replay"] is True and r.json()["status"] == "accepted"
        # 5. a self-declared grade better than the area's policy allows
        r = await push("b", lenient(b, "2025-02"))
        assert r.json()["status"] == "rejected" and any(x.startswith("policy.grade:") for x in r.json()["reasons"])
        # 6. malformed and 10 MB payloads, over HTTP and MQTT: refused, the hub keeps running
        assert (await push("b", b"{ not json")).status_code == 422
        assert (await push("b", b"{" + b" " * (10 * 1024 * 1024) + b"}")).status_code == 413
        async with aiomqtt.Client(mosquitto_fresh.host, mosquitto_fresh.port) as mq:
            await mq.publish("gia/c/report/2025-01", b"x" * (10 * 1024 * 1024), qos=1)
        assert (await http.get("/healthz")).status_code == 200

        # -- who may see what -------------------------------------------------------------------------
        assert (await http.get("/api/v1/areas/park/matrix")).status_code == 401
        assert (
            await http.get("/api/v1/areas/park/matrix", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        assert (await http.get("/api/v1/areas/park/matrix", headers=bearer("elsewhere"))).status_code == 403
        assert (await http.get("/api/v1/areas/park/reports/2025-03", headers=bearer("viewer"))).status_code == 403
        assert (await http.get("/api/v1/areas/nowhere/matrix", headers=bearer("admin"))).status_code == 404
        r = await http.get("/api/v1/areas", headers=bearer("viewer"))
        assert [a["id"] for a in r.json()["areas"]] == ["park"]

        # -- everything refused is on the portal ---------------------------------------------------------
        async with asyncio.timeout(20):
            while True:
                refused = (await http.get("/api/v1/areas/park/refusals", headers=bearer("viewer"))).json()
                if any(i["kind"] == "too_large" and i["site"] == "c" for i in refused["incidents"]):
                    break
                await asyncio.sleep(0.1)
        assert {q["kind"] for q in refused["quarantine"]} >= {"unpinned_key", "malformed"}
        assert [c["site"] for c in refused["conflicts"]] == ["b"]
        reasons = " ".join(r for x in refused["rejected"] for r in x["reasons"])
        assert "belongs to site 'b'" in reasons and "policy.grade" in reasons
        kinds = {(i["site"], i["kind"]) for i in refused["incidents"]}
        assert {("b", "replay"), ("b", "too_large"), ("c", "too_large")} <= kinds

        # -- the matrix, and a certifier's downloads that verify offline -------------------------------
        # Area reports are prepared off the write lock as reports arrive: a version may be built before the
        # last site's report is decided, and a new version follows. Wait for the complete one, which must come.
        async with asyncio.timeout(30):
            while True:
                got = await http.get("/api/v1/areas/park/reports/2025-03", headers=bearer("certifier"))
                if got.status_code == 200:
                    matrix = (await http.get("/api/v1/areas/park/matrix", headers=bearer("viewer"))).json()
                    march = next(m for m in matrix["months"] if m["month"] == "2025-03")
                    if (march.get("area_report") or {}).get("complete"):
                        break
                await asyncio.sleep(0.2)
        assert march["area_report"]["complete"] and {
            s: x["status"] for s, x in march["cells"].items()
        } == dict.fromkeys(("b", "c", "p"), "accepted")
        feb = next(m for m in matrix["months"] if m["month"] == "2025-02")
        assert (march["cells"]["b"]["refused"], feb["cells"]["b"]["refused"], feb["cells"]["c"]["refused"]) == (1, 1, 1)
        d = tmp_path / "certifier"
        (d / "sites").mkdir(parents=True)
        area = await http.get("/api/v1/areas/park/reports/2025-03", headers=bearer("certifier"))
        (d / "area.json").write_bytes(area.content)
        for s in ("p", "b", "c"):
            got = await http.get(f"/api/v1/areas/park/sites/{s}/reports/2025-03", headers=bearer("certifier"))
            assert got.content == area_sites[s].reports["2025-03"]
            (d / "sites" / f"{s}.json").write_bytes(got.content)
        keys = (await http.get("/api/v1/areas/park/keys", headers=bearer("certifier"))).json()
        assert {k["site"] for k in keys["keys"]} == {"p", "b", "c"}
        (d / "keys.json").write_text(json.dumps(keys))
        (d / "hub.pem").write_text((await http.get("/api/v1/hub/key")).json()["public_key_pem"])
        (d / "proof.json").write_bytes(
            (await http.get("/api/v1/log/proof", params={"area": "park", "period": "2025-03"})).content
        )
        args = ["--public-key", str(d / "hub.pem"), "--trusted-keys", str(d / "keys.json"), "--evidence",
                str(d / "sites"), "--log-head", str(d / "proof.json"), "--hub-key", str(d / "hub.pem")]  # fmt: skip
        rc, out = verify(str(d / "area.json"), *args)
        assert rc == 0, out
        rc, out = verify(str(d / "sites" / "b.json"), "--trusted-keys", str(d / "keys.json"))
        assert rc == 0 and "OK b 2025-03" in out, out
        assert (
            await http.get("/api/v1/areas/park/sites/b/evidence/2025-03", headers=bearer("certifier"))
        ).status_code == 404

        # -- the page: a login form without a token, the portal with the cookie -----------------------
        page = await http.get("/")
        assert page.status_code == 401 and 'name="token"' in page.text
        login = await http.post("/login", content=f"token={secret('certifier')}",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
        assert secret("certifier") not in (await http.get("/")).text
        http.cookies.set("gia_token", secret("certifier"))
        assert (await http.get("/")).status_code == 200
