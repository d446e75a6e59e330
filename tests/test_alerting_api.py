"""The alert HTTP API, running for real (uvicorn in its thread) in front of a real AlertManager, over httpx."""

from __future__ import annotations

import time

import httpx
import pytest

from citywatch.alerting.api import ApiConfig, ApiServer, AuthError, load_tokens
from citywatch.alerting.lifecycle import AlertingConfig, AlertManager
from citywatch.alerting.model import iso_time
from citywatch.alerts import AlertEvent

READING_NS = 1_764_226_800_000_000_000
LAN = "lan-token-0123456789abcdef"
MINH = "minh-token-fedcba9876543210"
KEY = "aq-005|threshold:no2"


def _event(level: str, t_s: int, value: float, sensor: str = "aq-005") -> AlertEvent:
    return AlertEvent(sensor=sensor, domain="air", area="tan-phong", metric="no2", detector="threshold", level=level,
                      previous_level="ok", value=value, threshold=200.0, score=1.0,
                      ts_ns=READING_NS + t_s * 10**9, reason="above_crit")


@pytest.fixture
def manager() -> AlertManager:
    m = AlertManager(AlertingConfig.model_validate({"state_file": None}))
    m.ingest([_event("critical", 0, 231.0), _event("warning", 0, 170.0, sensor="aq-006")])
    m.ingest([_event("critical", 40, 240.0)])
    return m


@pytest.fixture
def api(manager):
    server = ApiServer(manager, ApiConfig(enabled=True, port=0), env={"CITYWATCH_API_TOKENS": f"lan:{LAN}, minh:{MINH}"})
    server.start()
    yield server
    server.stop()


def client(api: ApiServer, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api.url, headers=headers, timeout=5)


def test_binds_to_loopback_and_refuses_requests_without_a_valid_token(api):
    assert api.url.startswith("http://127.0.0.1:")
    for token in (None, "wrong-token-0123456789", LAN[:-1]):
        with client(api, token) as c:
            for method, path in (("GET", "/alerts"), ("POST", f"/alerts/{KEY}/ack"), ("GET", "/silences"),
                                 ("POST", "/silences"), ("DELETE", "/silences/x"), ("GET", "/audit")):
                r = c.request(method, path)
                assert r.status_code == 401, (token, method, path)
                assert r.json() == {"error": "missing or invalid bearer token"}
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
    with client(api, None) as c:
        assert c.get("/healthz").json() == {"ok": True}


def test_list_and_acknowledge_are_recorded_with_who_and_when(api, manager):
    with client(api, LAN) as c:
        alerts = c.get("/alerts").json()
        assert alerts["count"] == len(manager.open_alerts()) >= 2
        by_key = {a["key"]: a for a in alerts["alerts"]}
        current = manager.get(KEY)
        assert by_key[KEY]["state"] == "firing" and by_key[KEY]["value"] == current.value in (231.0, 240.0)
        assert by_key[KEY]["reading_time"] == iso_time(current.last_ns)
        assert by_key[KEY]["reading_time"].startswith("2025-11-27T07:00:")

        before = time.time_ns()
        r = c.post(f"/alerts/{KEY}/ack", json={"note": "đã cử đội hiện trường"})
        assert r.status_code == 200, r.text
        assert r.json()["alert"]["acked_by"] == "lan" and r.json()["alert"]["ack_note"] == "đã cử đội hiện trường"
        assert manager.get(KEY).acked_by == "lan" and manager.get(KEY).acked_at_ns >= before

        assert c.post("/alerts/nope|threshold:no2/ack").status_code == 404
        assert c.post(f"/alerts/{KEY}/ack", content=b"{not json").status_code == 400
        assert c.post(f"/alerts/{KEY}/ack", json={"note": "x", "extra": 1}).status_code == 422
        assert [a["key"] for a in c.get("/alerts", params={"acknowledged": "true"}).json()["alerts"]] == [KEY]
        assert KEY not in {a["key"] for a in c.get("/alerts", params={"acknowledged": "false"}).json()["alerts"]}
        assert {a["sensor"] for a in c.get("/alerts", params={"sensor": "aq-006"}).json()["alerts"]} == {"aq-006"}
        assert c.get("/alerts", params={"domain": "water"}).json() == {"alerts": [], "count": 0}
        assert c.get("/alerts", params={"colour": "red"}).status_code == 422
    with client(api, MINH) as c:
        assert c.post("/alerts/aq-006|threshold:no2/ack").status_code == 200  # no body: no note
        audit = c.get("/audit").json()["audit"]
    assert [(a["who"], a["action"], a["target"]) for a in audit] == [
        ("lan", "acknowledge", KEY), ("minh", "acknowledge", "aq-006|threshold:no2")]
    assert all(a["when_ns"] >= before and a["when"].endswith("Z") for a in audit)


def test_silences_add_list_remove(api, manager):
    with client(api, MINH) as c:
        before = time.time_ns()
        r = c.post("/silences", json={"sensor": "aq-005", "duration": "2h", "comment": "bảo trì thiết bị"})
        assert r.status_code == 201, r.text
        silence = r.json()["silence"]
        assert silence["created_by"] == "minh" and silence["sensor"] == "aq-005"
        assert abs(silence["end_ns"] - silence["start_ns"] - 2 * 3600 * 10**9) < 10**6
        assert manager.get(KEY).silenced_by == silence["id"]

        later = c.post("/silences", json={"area": "tan-phong", "metric": "pm25",
                                          "start": "2026-12-01T01:00:00+07:00", "end": "2026-12-01T03:00:00Z"})
        assert later.status_code == 201 and later.json()["silence"]["start"] == "2026-11-30T18:00:00.000Z"
        assert {s["id"] for s in c.get("/silences").json()["silences"]} == {silence["id"], later.json()["silence"]["id"]}

        for bad, why in (({"duration": "1h"}, "at least one of"), ({"sensor": "aq-005"}, "exactly one of end"),
                         ({"sensor": "aq-005", "duration": "30d"}, "at most 168 h"),
                         ({"sensor": "aq-005", "end": "2026-12-01T03:00:00"}, "time zone")):
            r = c.post("/silences", json=bad)
            assert r.status_code == 422 and why in r.json()["error"], (bad, r.text)

        assert c.delete(f"/silences/{silence['id']}").json()["silence"]["id"] == silence["id"]
        assert c.delete(f"/silences/{silence['id']}").status_code == 404
        assert manager.get(KEY).silenced_by is None
    audit = [(a.who, a.action, a.target) for a in manager.audit()]
    assert audit == [("minh", "silence", silence["id"]), ("minh", "silence", later.json()["silence"]["id"]),
                     ("minh", "unsilence", silence["id"])]
    assert all(a.when_ns >= before for a in manager.audit())


def test_refuses_to_start_without_a_token_unless_told(manager, tmp_path):
    with pytest.raises(AuthError, match="needs at least one token"):
        ApiServer(manager, ApiConfig(enabled=True, port=0), env={})
    with pytest.raises(AuthError, match="shorter than 16"):
        load_tokens(ApiConfig(), env={"CITYWATCH_API_TOKENS": "lan:short"})
    secret = tmp_path / "api-tokens"
    secret.write_text(f"# duty officers\nlan:{LAN}\n")
    assert load_tokens(ApiConfig(tokens_file=str(secret)), env={}) == {LAN: "lan"}

    open_api = ApiServer(manager, ApiConfig(enabled=True, port=0, allow_unauthenticated=True), env={})
    open_api.start()
    try:
        with httpx.Client(base_url=open_api.url, timeout=5) as c:
            assert c.post(f"/alerts/{KEY}/ack").json()["alert"]["acked_by"] == "anonymous"
    finally:
        open_api.stop()
    assert manager.audit()[-1].who == "anonymous"
