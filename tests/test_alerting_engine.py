"""The alert lifecycle through the real engine, on real Mosquitto and InfluxDB: readings published by a
device, level changes from the detectors, notifications to an in-memory sink (or the default MQTT
channel), lifecycle transitions in the `alerts` measurement, state across a restart."""

from __future__ import annotations

import time

import orjson
import pytest

from citywatch.alerting.model import Notification
from citywatch.pipeline import Engine

from pipeline_helpers import Device, Listener, count, engine_settings, rows, small_registry, wait_for

pytestmark = pytest.mark.integration

T0_MS = (int(time.time()) - 7200) * 1000  # two hours ago: event time, well before arrival
KEY = "aq-001|threshold:no2"


class MemorySink:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def deliver(self, notifications: list[Notification]) -> None:
        self.sent.extend(notifications)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.sent]


class Clock:
    def __init__(self) -> None:
        self.now = time.time_ns()

    def __call__(self) -> int:
        return self.now


# Only threshold alerts are routed (to one MQTT recipient): whatever else the detectors or the index
# stages raise has no recipient, so the sequences below are exactly the threshold alert's.
ALERTING = {
    "routing": {"routes": [{"match": {"rules": ["threshold"]}, "tiers": [{"recipients": ["duty-officer"]}]}]},
}
QUIET = {"air": False, "fire": False, "traffic": False}


@pytest.fixture
def make_engine(mosquitto, influxdb, db_name, tmp_path):
    engines: list[Engine] = []

    def make(sink=None, alerting=None, data="engine"):
        settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / data, f"{db_name}-engine",
                                   alerting={**ALERTING, **(alerting or {})}, indices=QUIET)
        engine = Engine(settings, small_registry())
        if sink is not None:
            engine.alerting.manager.sink = sink  # in place of the channels' dispatcher
        engine.start()
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        time.sleep(0.2)
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        if e._thread is not None and e._thread.is_alive():
            e.stop()


@pytest.fixture
def device(mosquitto, db_name):
    d = Device(mosquitto.port, client_id=f"{db_name}-device")
    yield d
    d.close()


def no2(i: int, value: float, spacing_s: int = 30) -> dict:
    return {"ts": T0_MS + i * spacing_s * 1000, "no2": value}


def states(influxdb, db_name) -> list[tuple[int, str]]:
    return [(r["time"], r["state"]) for r in rows(
        influxdb, db_name, f'SELECT "state" FROM "alerts" WHERE "key" = \'{KEY}\' ORDER BY time')]


def test_flapping_sensor_gives_one_notification_not_fifty(make_engine, device, influxdb, db_name):
    sink = MemorySink()
    engine = make_engine(sink)
    # a device uploads 25 minutes of NO2 swinging across the limit every 30 s: 50 level changes
    device.publish_all([("city/air/aq-001/telemetry", [no2(i, 250.0 if i % 2 == 0 else 100.0) for i in range(50)])])
    wait_for(lambda: engine.stats.get("alerts") >= 50, 15, "50 level changes")
    wait_for(lambda: "flapping" in [s for _, s in states(influxdb, db_name)], 10, "flapping transition stored")
    assert sink.kinds() == ["flapping"]
    [alert] = sink.sent[0].alerts
    assert (alert.key, alert.started_ns, alert.flapping) == (KEY, T0_MS * 1_000_000, True)
    # then it stays clean for 40 minutes: flapping decays, the alert resolves, once
    device.publish_all([("city/air/aq-001/telemetry", [no2(50 + i, 90.0, 60) for i in range(40)])])
    wait_for(lambda: sink.kinds() == ["flapping", "resolved"], 15, "one resolution")
    time.sleep(1.5)  # a tick or two: nothing more
    assert sink.kinds() == ["flapping", "resolved"]
    recorded = states(influxdb, db_name)
    assert [s for _, s in recorded].count("flapping") == 1 and [s for _, s in recorded].count("flapping_stopped") == 1
    # reading times: fired with the first reading, resolved as of the first reading of the calm
    assert recorded[0] == (T0_MS * 1_000_000, "firing")
    assert (no2(49, 0)["ts"] * 1_000_000, "resolved") in recorded
    # the level-change points the boards read are untouched: 50 changes, and their fields are there
    assert count(influxdb, db_name, "alerts", "level_code", "WHERE \"detector\" = 'threshold'") == 50


def test_acknowledged_alert_stops_repeating(make_engine, device, influxdb, db_name):
    sink = MemorySink()
    engine = make_engine(sink, alerting={"repeat_interval": "10m", "grouping": {"group_wait": "0s"}})
    clock = Clock()
    engine.alerting.manager.clock = clock
    device.publish_all([("city/air/aq-001/telemetry", [no2(0, 250.0)])])
    wait_for(lambda: sink.kinds() == ["firing"], 10, "firing")
    clock.now += 10 * 60 * 10**9
    wait_for(lambda: sink.kinds() == ["firing", "repeat"], 5, "first repeat")
    acked = engine.alerting.manager.acknowledge(KEY, who="nguyen.lan", note="đã cử người / crew sent")
    clock.now += 60 * 60 * 10**9  # an hour: six more repeats were due
    time.sleep(2.5)  # at least two engine ticks
    assert sink.kinds() == ["firing", "repeat"]
    wait_for(lambda: any(s == "acknowledged" for _, s in states(influxdb, db_name)), 10, "ack stored")
    [ack] = rows(influxdb, db_name, 'SELECT "who", "state" FROM "alerts" WHERE "state" = \'acknowledged\'')
    assert ack["who"] == "nguyen.lan" and ack["time"] == acked.acked_at_ns
    # the resolution still goes out
    device.publish_all([("city/air/aq-001/telemetry", [no2(1, 100.0), no2(20, 100.0)])])
    wait_for(lambda: sink.kinds() == ["firing", "repeat", "resolved"], 10, "resolved")


def test_restart_keeps_open_alerts_and_sends_nothing_twice(make_engine, device, influxdb, db_name, tmp_path):
    first = MemorySink()
    engine = make_engine(first)
    device.publish_all([("city/air/aq-001/telemetry", [no2(0, 250.0), no2(2, 255.0)])])
    wait_for(lambda: first.kinds() == ["firing"], 10, "firing")
    open_before = engine.alerting.manager.open_alerts()
    # the gauges are set right after the notifications are handed over
    wait_for(lambda: engine.stats.get("alerts_open") == 1 and engine.stats.get("notifications") == 1, 5, "gauges")
    engine.stop()
    # as after a crash before the detectors' last snapshot: the detectors forget the alert, and the
    # device (or the broker) delivers the same readings again
    (tmp_path / "engine" / "detector-state.npz").unlink()
    second = MemorySink()
    engine = make_engine(second)
    assert engine.alerting.manager.open_alerts() == open_before
    device.publish_all([("city/air/aq-001/telemetry", [no2(0, 250.0), no2(2, 255.0)])])
    wait_for(lambda: engine.stats.get("alerts") >= 1, 10, "the level change raised again")
    time.sleep(1.5)
    assert second.sent == []
    assert engine.alerting.manager.counters["events_replayed"] == 1
    device.publish_all([("city/air/aq-001/telemetry", [no2(3, 100.0), no2(20, 100.0)])])
    wait_for(lambda: second.kinds() == ["resolved"], 10, "resolved after the restart")
    assert second.sent[0].alerts[0].started_ns == T0_MS * 1_000_000
    assert engine.alerting.manager.open_alerts() == []


def test_default_channel_publishes_the_notification_on_mqtt(make_engine, device, mosquitto, db_name):
    listener = Listener(mosquitto.port, "city/notifications/#", f"{db_name}-duty")
    try:
        make_engine(alerting={"grouping": {"group_wait": "0s"}})  # the real dispatcher, default MQTT channel
        device.publish_all([("city/air/aq-001/telemetry", [no2(0, 250.0)])])
        wait_for(lambda: listener.messages, 15, "notification on MQTT")
        topic, body = listener.messages[0]
        assert topic == "city/notifications/duty-officer"
        assert body["kind"] == "firing"
        assert KEY in orjson.dumps(body).decode()
    finally:
        listener.close()


def test_transition_points_keep_the_board_tags_and_leave_the_level_fields_alone():
    from citywatch.alerting.lifecycle import Transition
    from citywatch.alerting.model import Alert
    from citywatch.alerting.stage import transition_line

    a = Alert(key=KEY, scope="sensor", sensor="aq-001", area="Tân Phong", domain="air", metric="no2",
              rule="threshold", severity="critical", state="firing", value=250.0, threshold=200.0,
              reason="above_crit", started_ns=T0_MS * 1_000_000)
    line = transition_line(Transition(a, "acknowledged", 1_764_205_200_000_000_000, who="lan", detail="on it"))
    assert line == ('alerts,area=Tân\\ Phong,detector=threshold,domain=air,level=critical,metric=no2,sensor=aq-001 '
                    'detail="on it",key="aq-001|threshold:no2",severity="critical",state="acknowledged",who="lan" '
                    '1764205200000000000')
    assert "level_code" not in line and "value=" not in line and "reason=" not in line


def test_panel_links_point_at_the_metric_panel_of_the_domain_board():
    from citywatch import grafana_boards as gb
    from citywatch.alerting.stage import panel_ids
    from citywatch.config import Settings

    settings, registry = Settings(), small_registry()
    ids = panel_ids(settings, registry)
    board = next(b for b in gb.build_dashboards(settings, registry).values() if b["uid"] == "cw-air")
    titles = {p["id"]: p["title"] for p in board["panels"]}
    assert titles[ids["air/no2"]] == gb.METRIC_TITLES["no2"] and titles[ids["air/pm25"]] == gb.METRIC_TITLES["pm25"]
    assert "water/pH" in ids
