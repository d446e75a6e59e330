"""The alert manager on its own: readings' level changes in, exact notification sequences out.

The wall clock is injected (a list the test moves); event time comes from the readings.
"""

from __future__ import annotations

import threading

import pytest

from citywatch.alerting.grouping import SensorDirectory, area_offline_key
from citywatch.alerting.lifecycle import AlertingConfig, AlertManager
from citywatch.alerting.model import AlertNotFound, Notification, NotificationSink, SilenceNotFound
from citywatch.alerts import AlertEvent

S = 1_000_000_000
T0 = 1_764_205_200 * S  # 2025-11-27 01:00 UTC = 08:00 in Biên Hòa


class Clock:
    def __init__(self, start_ns: int = T0 + 3600 * S) -> None:
        self.now = start_ns  # the wall clock runs an hour behind the readings' arrival: irrelevant to alerts

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)


class MemorySink:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def deliver(self, notifications: list[Notification]) -> None:
        self.sent.extend(notifications)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.sent]

    def summary(self) -> list[tuple[str, str, list[str]]]:
        return [(n.kind, n.recipient.name, sorted(a.key for a in n.alerts)) for n in self.sent]


DIRECTORY = SensorDirectory({
    "aq-001": ("air", "tan-phong", 10.960, 106.840), "aq-002": ("air", "tan-phong", 10.962, 106.843),
    "aq-003": ("air", "tan-phong", 10.965, 106.845), "aq-004": ("air", "tan-phong", 10.970, 106.850),
    "aq-009": ("air", "long-binh", 10.900, 106.900), "aq-010": ("air", "long-binh", 10.905, 106.905),
})


def ev(sensor: str, level: str, t_s: float, *, metric: str = "no2", detector: str = "threshold",
       area: str | None = None, value: float = 250.0, domain: str = "air") -> AlertEvent:
    area = area or DIRECTORY.sensors[sensor][1]
    return AlertEvent(sensor=sensor, domain=domain, area=area, metric=metric, detector=detector, level=level,
                      previous_level="ok", value=value, threshold=200.0, score=1.0, ts_ns=T0 + int(t_s * S),
                      reason="above_crit" if level != "ok" else "ok")


def manager(cfg: dict | None = None, clock: Clock | None = None, state_file=None):
    config = AlertingConfig.model_validate(cfg or {})
    sink = MemorySink()
    clock = clock or Clock()
    return AlertManager(config, sink=sink, clock=clock, directory=DIRECTORY, state_file=state_file), sink, clock


def at(t_s: float) -> int:
    return T0 + int(t_s * S)


def test_memory_sink_is_a_notification_sink():
    assert isinstance(MemorySink(), NotificationSink)


def test_one_alert_fires_after_group_wait_and_resolves_after_hold_down():
    m, sink, clock = manager()
    m.ingest([ev("aq-001", "critical", 0)])
    assert sink.kinds() == []  # group_wait: 30 s of event time
    m.tick(event_now_ns=at(29))
    assert sink.kinds() == []
    m.tick(event_now_ns=at(30))
    assert sink.summary() == [("firing", "duty-officer", ["aq-001|threshold:no2"])]
    first = sink.sent[0]
    assert first.alerts[0].started_ns == at(0)  # the reading's time, not the wall clock
    assert first.alerts[0].panel_url.startswith("http://localhost:3000/d/cw-air?")
    assert "var-sensor=aq-001" in first.alerts[0].panel_url
    m.ingest([ev("aq-001", "ok", 100, value=150.0)])
    m.tick(event_now_ns=at(100 + 299))
    assert sink.kinds() == ["firing"]  # the hold-down is 5 minutes
    m.tick(event_now_ns=at(400))
    assert sink.kinds() == ["firing", "resolved"]
    resolved = sink.sent[1].alerts[0]
    assert (resolved.state, resolved.resolved_ns) == ("resolved", at(100))
    assert m.open_alerts() == []


def test_dip_shorter_than_hold_down_keeps_one_alert():
    m, sink, _ = manager()
    m.ingest([ev("aq-001", "critical", 0)], event_now_ns=at(60))
    for t in (600, 1200, 1800):  # dips of one minute every ten minutes: not flapping
        m.ingest([ev("aq-001", "ok", t)])
        m.ingest([ev("aq-001", "critical", t + 60)])
    assert sink.kinds() == ["firing"]
    [a] = m.open_alerts()
    assert a.started_ns == at(0) and a.state == "firing"


def test_flapping_sensor_gives_one_notification_not_fifty():
    m, sink, _ = manager()
    for i in range(50):  # a level change every 30 s for 25 minutes
        m.ingest([ev("aq-001", "critical" if i % 2 == 0 else "ok", 30 * i)])
    assert sink.kinds() == ["firing", "flapping"]
    [a] = m.open_alerts()
    assert a.flapping and a.state == "firing"
    # it calms down (ok from 25 min on): flapping decays below 25 %, then the alert resolves once
    for minute in range(26, 60):
        m.tick(event_now_ns=at(60 * minute))
    assert sink.kinds() == ["firing", "flapping", "resolved"]
    assert m.open_alerts() == []
    kinds = [t.state for t in m.take_transitions()]
    assert kinds.count("flapping") == 1 and kinds.count("flapping_stopped") == 1


def test_flap_damping_against_no_damping():
    """Without a hold-down, the same flapping sensor: damped after 4 changes; undamped 50 messages."""
    fast = {"defaults": {"resolve_for": "0s"}, "grouping": {"group_wait": "0s"}}
    m, sink, _ = manager(fast)
    for i in range(50):
        m.ingest([ev("aq-001", "critical" if i % 2 == 0 else "ok", 30 * i)])
    assert sink.kinds() == ["firing", "resolved", "firing", "flapping"]
    m2, sink2, _ = manager({**fast, "flapping": {"enabled": False}, "storm": {"max_per_window": 100}})
    for i in range(50):
        m2.ingest([ev("aq-001", "critical" if i % 2 == 0 else "ok", 30 * i)])
    assert sink2.kinds() == ["firing", "resolved"] * 25


def test_repeats_until_acknowledged_then_only_the_resolution():
    m, sink, clock = manager({"repeat_interval": "10m"})
    m.ingest([ev("aq-001", "critical", 0)], event_now_ns=at(30))
    clock.advance(599)
    m.tick()
    assert sink.kinds() == ["firing"]
    clock.advance(1)
    m.tick()
    clock.advance(600)
    m.tick()
    assert sink.kinds() == ["firing", "repeat", "repeat"]
    assert len({n.id for n in sink.sent}) == 3
    acked = m.acknowledge("aq-001|threshold:no2", who="nguyen.lan", note="đang kiểm tra / checking")
    assert acked.acked_by == "nguyen.lan" and acked.acked_at_ns == clock.now
    for _ in range(6):
        clock.advance(600)
        m.tick()
    assert sink.kinds() == ["firing", "repeat", "repeat"]
    m.ingest([ev("aq-001", "ok", 4000)], event_now_ns=at(4000 + 330))
    assert sink.kinds() == ["firing", "repeat", "repeat", "resolved"]
    [record] = m.audit()
    assert (record.who, record.action, record.target, record.when_ns) == (
        "nguyen.lan", "acknowledge", "aq-001|threshold:no2", acked.acked_at_ns)
    with pytest.raises(AlertNotFound):
        m.acknowledge("aq-001|threshold:no2", who="nguyen.lan")


def test_silence_suppresses_matching_alerts_only():
    m, sink, clock = manager()
    s = m.add_silence(who="tran.minh", start_ns=at(0), end_ns=at(3600), sensor="aq-001",
                      comment="bảo trì / maintenance")
    m.ingest([ev("aq-001", "critical", 60), ev("aq-009", "critical", 60)], event_now_ns=at(120))
    assert sink.summary() == [("firing", "duty-officer", ["aq-009|threshold:no2"])]
    silenced = {a.key: a.silenced_by for a in m.open_alerts()}
    assert silenced == {"aq-001|threshold:no2": s.id, "aq-009|threshold:no2": None}
    # outside the window (event time) the same sensor is reported; and once the window is over, the
    # NO2 alert it muted, still open, is reported too
    m.ingest([ev("aq-001", "critical", 4000, metric="pm25")], event_now_ns=at(4100))
    assert sink.summary()[1] == ("firing", "duty-officer", ["aq-001|threshold:pm25"])
    m.tick(event_now_ns=at(4130))
    assert sink.summary()[2:] == [("firing", "duty-officer", ["aq-001|threshold:no2"])]
    assert [(r.who, r.action, r.target) for r in m.audit()] == [("tran.minh", "silence", s.id)]


def test_silence_by_area_domain_and_rule_and_its_removal():
    m, sink, clock = manager()
    m.add_silence(who="a", start_ns=at(0), end_ns=at(3600), area="long-binh")
    m.add_silence(who="a", start_ns=at(0), end_ns=at(3600), domain="air", rule="physical_range")
    m.ingest([ev("aq-009", "critical", 10), ev("aq-010", "critical", 10),
              ev("aq-002", "critical", 10, detector="physical_range")], event_now_ns=at(60))
    assert sink.kinds() == []
    area_silence = next(s for s in m.silences() if s.area == "long-binh")
    m.remove_silence(area_silence.id, who="b")
    m.tick(event_now_ns=at(120))  # now unmuted, they wait for their group like new alerts
    assert sink.kinds() == []
    m.tick(event_now_ns=at(150))
    assert sink.summary() == [("firing", "duty-officer", ["aq-009|threshold:no2", "aq-010|threshold:no2"])]
    with pytest.raises(SilenceNotFound):
        m.remove_silence(area_silence.id, who="b")
    assert [r.action for r in m.audit()] == ["silence", "silence", "unsilence"]


ROTA = {
    "repeat_interval": "0s",
    "routing": {
        "recipients": {"duty": {"address": "city/notifications/duty"},
                       "lead": {"channel": "email", "address": "lead@example.org", "language": "en"},
                       "night": {"channel": "telegram", "address": "-100"}},
        "routes": [
            {"match": {"hours": "22:00-06:00"}, "tiers": [{"recipients": ["night"]}]},
            {"tiers": [{"after": "0s", "recipients": ["duty"]}, {"after": "15m", "recipients": ["lead"]}]},
        ],
    },
}


def test_escalation_to_the_next_tier_on_time():
    m, sink, clock = manager(ROTA)  # the wall clock is 09:00 local: day route
    m.ingest([ev("aq-001", "critical", 0)], event_now_ns=at(30))
    assert sink.summary() == [("firing", "duty", ["aq-001|threshold:no2"])]
    clock.advance(15 * 60 - 1)
    m.tick()
    assert len(sink.sent) == 1
    clock.advance(1)
    m.tick()
    assert sink.summary()[1] == ("escalation", "lead", ["aq-001|threshold:no2"])
    assert sink.sent[1].tier == 1 and sink.sent[1].recipient.language == "en"
    clock.advance(3600)
    m.tick()
    assert len(sink.sent) == 2  # no third tier, no repeats configured
    m.ingest([ev("aq-001", "ok", 100)], event_now_ns=at(1000))
    assert sorted(sink.summary()[2:]) == [("resolved", "duty", ["aq-001|threshold:no2"]),
                                          ("resolved", "lead", ["aq-001|threshold:no2"])]


def test_acknowledged_alert_does_not_escalate():
    m, sink, clock = manager(ROTA)
    m.ingest([ev("aq-001", "critical", 0)], event_now_ns=at(30))
    clock.advance(600)
    m.acknowledge("aq-001|threshold:no2", who="duty")
    clock.advance(3600)
    m.tick()
    assert sink.kinds() == ["firing"]


def test_route_by_time_of_day_in_local_time():
    clock = Clock(T0 + 15 * 3600 * S)  # 16:00 UTC = 23:00 in Biên Hòa
    m, sink, _ = manager(ROTA, clock=clock)
    m.ingest([ev("aq-001", "critical", 0)], event_now_ns=at(30))
    assert sink.summary() == [("firing", "night", ["aq-001|threshold:no2"])]


def test_grouping_merges_neighbours_into_one_notification():
    m, sink, _ = manager()
    m.ingest([ev("aq-001", "critical", 0)])
    m.ingest([ev("aq-002", "warning", 10), ev("aq-003", "critical", 20)])
    m.ingest([ev("aq-009", "critical", 25)])  # another area, 9 km away
    m.tick(event_now_ns=at(40))
    assert sink.summary() == [
        ("firing", "duty-officer", ["aq-001|threshold:no2", "aq-002|threshold:no2", "aq-003|threshold:no2"])]
    m.tick(event_now_ns=at(55))
    assert sink.summary()[1] == ("firing", "duty-officer", ["aq-009|threshold:no2"])
    # the resolutions of the group come together too
    m.ingest([ev(s, "ok", 100) for s in ("aq-001", "aq-002", "aq-003")], event_now_ns=at(100 + 300))
    m.tick(event_now_ns=at(100 + 330))
    assert sink.summary()[2] == (
        "resolved", "duty-officer", ["aq-001|threshold:no2", "aq-002|threshold:no2", "aq-003|threshold:no2"])
    assert len(sink.sent) == 3


def test_area_offline_root_alert_mutes_the_alerts_it_explains():
    m, sink, _ = manager()
    # 3 of the 4 tan-phong sensors stop reporting, and their neighbour reads a stuck value
    m.ingest([ev(s, "critical", 0, detector="no_data", metric="offline", value=0.0)
              for s in ("aq-001", "aq-002", "aq-003")]
             + [ev("aq-004", "critical", 5)], event_now_ns=at(60))
    assert sink.summary() == [("firing", "duty-officer", [area_offline_key("tan-phong")])]
    root = sink.sent[0].alerts[0]
    assert root.scope == "area" and sorted(root.sensors) == ["aq-001", "aq-002", "aq-003"]
    assert root.started_ns == at(0)
    muted = {a.key: a.inhibited_by for a in m.open_alerts() if a.scope == "sensor"}
    assert set(muted.values()) == {area_offline_key("tan-phong")} and len(muted) == 4
    # the area comes back: the root resolves, the others resolve on their own and were never sent
    m.ingest([ev(s, "ok", 120, detector="no_data", metric="offline") for s in ("aq-001", "aq-002", "aq-003")]
             + [ev("aq-004", "ok", 120)], event_now_ns=at(120 + 301))
    m.tick(event_now_ns=at(120 + 331))  # the resolution waits its group_wait
    assert sink.kinds() == ["firing", "resolved"]
    assert m.open_alerts() == []


def test_sensor_offline_mutes_that_sensors_other_alerts():
    m, sink, _ = manager()
    m.ingest([ev("aq-009", "critical", 0, detector="no_data", metric="offline"),
              ev("aq-009", "critical", 1, metric="pm25", detector="flatline")], event_now_ns=at(60))
    assert sink.summary() == [("firing", "duty-officer", ["aq-009|no_data:offline"])]


def test_restart_keeps_open_alerts_and_sends_nothing_twice(tmp_path):
    state = tmp_path / "alerting-state.json"
    cfg = {"repeat_interval": "10m"}
    m, sink, clock = manager(cfg, state_file=state)
    backlog = [ev("aq-001", "critical", 0), ev("aq-009", "warning", 5)]
    m.ingest(backlog, event_now_ns=at(40))
    assert sink.kinds() == ["firing", "firing"]
    before = m.open_alerts()

    m2, sink2, _ = manager(cfg, clock=clock, state_file=state)
    assert m2.load()
    assert m2.open_alerts() == before
    m2.ingest(backlog, event_now_ns=at(40))  # the broker redelivers what was not acknowledged
    m2.tick()
    assert sink2.sent == []
    assert m2.counters["events_replayed"] == 2
    clock.advance(600)
    m2.tick()
    assert sink2.summary() == [("repeat", "duty-officer", ["aq-001|threshold:no2", "aq-009|threshold:no2"])]
    # another restart at the same moment: the repeat is not sent again
    m3, sink3, _ = manager(cfg, clock=clock, state_file=state)
    m3.load()
    m3.tick()
    assert sink3.sent == []
    m3.ingest([ev("aq-001", "ok", 100), ev("aq-009", "ok", 100)], event_now_ns=at(500))
    assert sink3.kinds() == ["resolved", "resolved"]


def test_unsent_notification_before_restart_goes_out_after(tmp_path):
    state = tmp_path / "s.json"
    m, sink, clock = manager(state_file=state)
    m.ingest([ev("aq-001", "critical", 0)])  # waiting in its group when the engine stops
    m.save()
    m2, sink2, _ = manager(clock=clock, state_file=state)
    m2.load()
    m2.tick(event_now_ns=at(30))
    assert sink.sent == [] and sink2.kinds() == ["firing"]


def test_for_duration_and_cancelled_pending():
    m, sink, _ = manager({"rules": {"stale": {"for": "2m"}}, "grouping": {"group_wait": "0s"}})
    m.ingest([ev("aq-001", "warning", 0, detector="stale")])
    m.tick(event_now_ns=at(119))
    assert sink.kinds() == [] and m.open_alerts()[0].state == "pending"
    m.tick(event_now_ns=at(120))
    assert sink.kinds() == ["firing"]
    m.ingest([ev("aq-002", "warning", 200, detector="stale"), ev("aq-002", "ok", 260, detector="stale")])
    m.tick(event_now_ns=at(1000))
    assert sink.kinds() == ["firing"]  # aq-002 never held for 2 minutes
    states = [(t.alert.sensor, t.state) for t in m.take_transitions()]
    assert ("aq-002", "pending") in states and ("aq-002", "resolved") in states and ("aq-002", "firing") not in states


def test_severity_rise_notifies_and_drop_does_not():
    m, sink, _ = manager({"grouping": {"group_wait": "0s"}})
    m.ingest([ev("aq-001", "warning", 0)])
    m.ingest([ev("aq-001", "critical", 60)])
    m.ingest([ev("aq-001", "warning", 120)])
    assert [(n.kind, n.alerts[0].severity) for n in sink.sent] == [("firing", "warning"), ("firing", "critical")]
    assert len(m.open_alerts()) == 1


def test_events_out_of_order_use_event_time_and_bad_events_are_counted():
    m, sink, _ = manager({"grouping": {"group_wait": "0s"}})
    # a backlog delivered newest first: the alert still starts at the first reading past the limit
    m.ingest([ev("aq-001", "ok", 120), ev("aq-001", "critical", 60)])
    m.tick(event_now_ns=at(200))
    assert sink.kinds() == ["firing"]
    m.ingest([ev("aq-002", "critical", 10), object()])
    assert m.counters["events_bad"] == 1
    assert m.counters["events_replayed"] == 0
    m.tick(event_now_ns=at(60 + 400))
    assert sink.kinds() == ["firing", "firing", "resolved"]
    resolved = sink.sent[-1].alerts[0]
    assert (resolved.started_ns, resolved.resolved_ns) == (at(60), at(120))


def test_storm_control_caps_messages_and_sends_a_digest():
    m, sink, clock = manager({"storm": {"window": "10m", "max_per_window": 3}, "grouping": {"enabled": False},
                              "repeat_interval": "0s"})
    m.ingest([ev("aq-001", "critical", 0, metric=f"m{i}") for i in range(8)], event_now_ns=at(30))
    assert sink.kinds() == ["firing"] * 3
    assert m.counters["held_for_digest"] == 5
    clock.advance(599)
    m.tick()
    assert len(sink.sent) == 3
    clock.advance(1)
    m.tick()
    assert sink.kinds() == ["firing"] * 3 + ["digest"]
    assert sorted(a.metric for a in sink.sent[-1].alerts) == ["m3", "m4", "m5", "m6", "m7"]


def test_acknowledge_from_another_thread_while_ingesting():
    m, sink, clock = manager({"grouping": {"group_wait": "0s"}})
    keys = [f"aq-001|threshold:m{i}" for i in range(200)]
    m.ingest([ev("aq-001", "critical", 0, metric=f"m{i}") for i in range(200)])
    errors: list[Exception] = []

    def ack_all():
        try:
            for k in keys:
                m.acknowledge(k, who="api")
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    worker = threading.Thread(target=ack_all)
    worker.start()
    for i in range(200):
        m.ingest([ev("aq-002", "critical" if i % 2 == 0 else "ok", 1 + i, metric=f"x{i % 7}")])
        m.open_alerts()
    worker.join()
    assert errors == []
    assert all(a.acked_by == "api" for a in m.open_alerts() if a.sensor == "aq-001")
    assert len(m.audit()) == 200


def test_config_rejects_unknown_recipient():
    with pytest.raises(ValueError, match="unknown recipient"):
        AlertingConfig.model_validate({"routing": {"routes": [{"tiers": [{"recipients": ["nobody"]}]}]}})


def test_quiet_keys_and_old_silences_are_forgotten():
    m, sink, clock = manager({"forget_after": "1d", "grouping": {"group_wait": "0s"}})
    m.add_silence(who="a", start_ns=at(0), end_ns=at(60), sensor="aq-009")
    m.ingest([ev("aq-001", "critical", 0), ev("aq-001", "ok", 10), ev("aq-002", "critical", 0)])
    m.tick(event_now_ns=at(1000))
    clock.advance(2 * 86400)
    m.tick(event_now_ns=at(2 * 86400))
    assert [a.key for a in m.open_alerts()] == ["aq-002|threshold:no2"]  # the open one is kept
    assert m.silences() == []
    assert set(m.state_dict()["tracks"][i]["key"] for i in range(len(m.state_dict()["tracks"]))) == {
        "aq-002|threshold:no2"}


def test_routes_by_day_and_continue_add_recipients():
    cfg = {
        "grouping": {"group_wait": "0s"},
        "routing": {
            "recipients": {"duty": {"address": "city/notifications/duty"},
                           "log": {"channel": "webhook", "address": "x"},
                           "weekend": {"address": "city/notifications/weekend"}},
            "routes": [
                {"match": {"severities": ["critical"]}, "tiers": [{"recipients": ["log"]}], "continue": True},
                {"match": {"days": ["sat", "sun"]}, "tiers": [{"recipients": ["weekend"]}]},
                {"tiers": [{"recipients": ["duty"]}]},
            ],
        },
    }
    thursday = Clock(T0 + 3600 * S)  # 2025-11-27 is a Thursday
    m, sink, _ = manager(cfg, clock=thursday)
    m.ingest([ev("aq-001", "critical", 0), ev("aq-009", "warning", 0)])
    assert sorted(sink.summary()) == [("firing", "duty", ["aq-001|threshold:no2"]),
                                      ("firing", "duty", ["aq-009|threshold:no2"]),
                                      ("firing", "log", ["aq-001|threshold:no2"])]
    saturday = Clock(T0 + 2 * 86400 * S + 3600 * S)
    m, sink, _ = manager(cfg, clock=saturday)
    m.ingest([ev("aq-009", "warning", 0)])
    assert sink.summary() == [("firing", "weekend", ["aq-009|threshold:no2"])]


def test_neighbours_in_different_areas_group_by_distance():
    # aq-004 (tan-phong) and aq-009 (long-binh) are 9 km apart; with a 10 km radius they are neighbours
    m, sink, _ = manager({"grouping": {"radius_km": 10}})
    m.ingest([ev("aq-004", "critical", 0), ev("aq-009", "critical", 5)], event_now_ns=at(30))
    assert sink.summary() == [("firing", "duty-officer", ["aq-004|threshold:no2", "aq-009|threshold:no2"])]
    m2, sink2, _ = manager({"grouping": {"radius_km": None}})
    m2.ingest([ev("aq-004", "critical", 0), ev("aq-009", "critical", 5)], event_now_ns=at(35))
    assert len(sink2.sent) == 2
    # another metric or rule is another event: never merged
    m3, sink3, _ = manager()
    m3.ingest([ev("aq-001", "critical", 0), ev("aq-002", "critical", 0, metric="pm25")], event_now_ns=at(30))
    assert len(sink3.sent) == 2


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 99}', b'{"version": 1, "tracks": [{"key": 1}]}'])
def test_unusable_state_file_is_set_aside_and_the_manager_starts_empty(tmp_path, content):
    state = tmp_path / "alerting-state.json"
    state.write_bytes(content)
    m, sink, _ = manager({"grouping": {"group_wait": "0s"}}, state_file=state)
    assert m.load() is False
    assert (tmp_path / "alerting-state.json.corrupt-1").read_bytes() == content
    m.ingest([ev("aq-001", "critical", 0)])
    assert sink.kinds() == ["firing"]
    assert m.load() is True and [a.key for a in m.open_alerts()] == ["aq-001|threshold:no2"]


@pytest.mark.parametrize("name", ["model", "lifecycle", "grouping", "routing", "persistence"])
def test_module_examples_and_sample_configs(name):
    import doctest
    import importlib

    import yaml

    module = importlib.import_module(f"citywatch.alerting.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
    sample = getattr(module, "SAMPLE_CONFIG", None)
    if sample is not None:
        section = yaml.safe_load(sample)["alerting"]
        assert section and set(section) <= set(AlertingConfig.model_fields)
        AlertingConfig.model_validate(section)


def test_a_late_sensor_is_not_offline_and_mutes_nothing():
    m, sink, _ = manager()
    m.ingest([ev(s, "warning", 0, detector="no_data", metric="offline") for s in ("aq-001", "aq-002", "aq-003")]
             + [ev("aq-004", "critical", 5)], event_now_ns=at(60))
    assert sorted(k for n in sink.sent for k in (a.key for a in n.alerts)) == [
        "aq-001|no_data:offline", "aq-002|no_data:offline", "aq-003|no_data:offline", "aq-004|threshold:no2"]
    assert all(a.inhibited_by is None for a in m.open_alerts())


def test_an_unacknowledged_incident_escalates_as_one_message():
    m, sink, clock = manager(ROTA)
    m.ingest([ev(s, "critical", 0) for s in ("aq-001", "aq-002", "aq-009")], event_now_ns=at(30))
    assert sorted(sink.summary()) == [
        ("firing", "duty", ["aq-001|threshold:no2", "aq-002|threshold:no2"]),
        ("firing", "duty", ["aq-009|threshold:no2"])]
    m.acknowledge("aq-002|threshold:no2", who="duty")
    clock.advance(15 * 60)
    m.tick()
    assert sink.summary()[2:] == [("escalation", "lead", ["aq-001|threshold:no2", "aq-009|threshold:no2"])]
    assert sink.sent[2].tier == 1


def test_notification_ids_are_the_same_for_the_same_readings():
    """What the dispatcher relies on to recognise a resend: ids depend on the data, not on the run."""
    runs = []
    for start in (T0, T0 + 999 * S):
        m, sink, clock = manager({"repeat_interval": "10m"}, clock=Clock(start))
        m.ingest([ev("aq-001", "critical", 0), ev("aq-002", "critical", 3), ev("aq-009", "warning", 4)],
                 event_now_ns=at(40))
        clock.advance(600)
        m.tick()
        runs.append([n.id for n in sink.sent])
    assert runs[0] == runs[1] and len(set(runs[0])) == len(runs[0]) == 3


def test_flapping_detected_on_a_rise_is_announced_once():
    """Without a hold-down, the change that reveals flapping may be the one that reopens the alert."""
    m, sink, _ = manager({"defaults": {"resolve_for": "0s"}, "grouping": {"group_wait": "0s"},
                          "flapping": {"min_changes": 5}})
    for i in range(40):
        m.ingest([ev("aq-001", "critical" if i % 2 == 0 else "ok", 30 * i)])
    # changes 1-4 go out one by one; the 5th (a rise) reveals the flapping: one notice, then quiet
    assert sink.kinds() == ["firing", "resolved", "firing", "resolved", "flapping"]


def test_pending_alert_that_flaps_never_notifies():
    m, sink, _ = manager({"rules": {"stale": {"for": "5m"}}, "grouping": {"group_wait": "0s"}})
    for i in range(40):
        m.ingest([ev("aq-001", "warning" if i % 2 == 0 else "ok", 30 * i, detector="stale")])
    m.tick(event_now_ns=at(3600))
    assert sink.sent == []


def test_area_goes_offline_when_the_deciding_sensor_does():
    m, sink, _ = manager({"grouping": {"group_wait": "0s"}})
    offline = dict(detector="no_data", metric="offline", value=0.0)
    m.ingest([ev("aq-001", "critical", 0, **offline)], event_now_ns=at(0))
    m.ingest([ev("aq-002", "critical", 100, **offline)], event_now_ns=at(100))  # 2 of 4: half of tan-phong
    assert [n.alerts[0].key for n in sink.sent] == ["aq-001|no_data:offline", area_offline_key("tan-phong")]
    assert sink.sent[1].alerts[0].started_ns == at(100)
    m.ingest([ev("aq-003", "critical", 200, **offline)], event_now_ns=at(200))  # explained: not sent
    assert len(sink.sent) == 2 and sorted(m.get(area_offline_key("tan-phong")).sensors) == ["aq-001", "aq-002",
                                                                                          "aq-003"]


def test_state_is_saved_at_once_when_something_was_sent_and_throttled_otherwise(tmp_path):
    state = tmp_path / "s.json"
    m, sink, _ = manager({"save_interval": "1h"}, state_file=state)
    m.ingest([ev("aq-001", "critical", 0)])  # pending in its group: nothing sent
    assert not state.exists()
    m.tick(event_now_ns=at(30))
    assert sink.kinds() == ["firing"] and state.exists()
    saved = state.read_bytes()
    m.ingest([ev("aq-001", "warning", 60)])  # a change that sends nothing
    assert state.read_bytes() == saved
    m.save()
    assert state.read_bytes() != saved


def test_devices_going_late_then_offline_as_the_no_data_detector_reports_them():
    m, sink, _ = manager()

    def device(sensor: str, level: str, t_s: float, reason: str) -> AlertEvent:
        e = ev(sensor, level, t_s, detector="no_data", metric="device", value=t_s)
        e.reason = reason
        return e

    m.ingest([device("aq-001", "warning", 0, "late"), device("aq-002", "warning", 10, "late")], event_now_ns=at(40))
    assert sink.summary() == [("firing", "duty-officer", ["aq-001|no_data:device", "aq-002|no_data:device"])]
    m.ingest([device("aq-001", "critical", 600, "offline"), device("aq-002", "critical", 610, "offline"),
              ev("aq-003", "critical", 620)], event_now_ns=at(700))
    # two of the four tan-phong devices offline: the area is; their own rise to critical and the
    # neighbour's threshold alert are explained by it
    assert sink.summary()[1:] == [("firing", "duty-officer", [area_offline_key("tan-phong")])]
    assert {a.key: a.inhibited_by for a in m.open_alerts() if a.scope == "sensor"} == {
        "aq-001|no_data:device": area_offline_key("tan-phong"), "aq-002|no_data:device": area_offline_key("tan-phong"),
        "aq-003|threshold:no2": area_offline_key("tan-phong")}
