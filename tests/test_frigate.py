"""Frigate vehicle counts: distinct event ids per camera and zone, in closed event-time buckets.

The messages are in the shape Frigate documents for ``frigate/events`` (type new / update / end with
``before`` and ``after`` states) and ``frigate/available``.
"""

from __future__ import annotations

import copy
import doctest
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import citywatch.ingest.sources.frigate as frigate_module
from citywatch.ingest.sources.frigate import FrigateOptions, FrigateVehicleCounter
from citywatch.ingest.sources.records import DeviceRecord

FIXTURES = Path(__file__).parent / "data" / "devices" / "frigate"
NS = 1_000_000_000
T0 = 1_795_748_400  # 2026-11-27T03:00:00Z, 10:00 in Bien Hoa; a multiple of 60 s
CAM = "nga_tu_vung_tau"


def obj(oid, label="car", *, frame, start=None, camera=CAM, zones=(), current=None, end=None, fp=False):
    """One tracked-object state as Frigate publishes it in `before` / `after`."""
    return {
        "id": oid,
        "camera": camera,
        "frame_time": frame,
        "snapshot": {"frame_time": frame, "box": [612, 318, 802, 455], "area": 26030, "region": [532, 198, 852, 518], "score": 0.84, "attributes": []},
        "label": label,
        "sub_label": None,
        "top_score": 0.86,
        "false_positive": fp,
        "start_time": frame - 1.0 if start is None else start,
        "end_time": end,
        "score": 0.8,
        "box": [612, 318, 802, 455],
        "area": 26030,
        "ratio": 1.386861,
        "region": [532, 198, 852, 518],
        "current_zones": list(zones if current is None else current),
        "entered_zones": list(zones),
        "thumbnail": None,
        "has_snapshot": True,
        "has_clip": True,
        "stationary": False,
        "motionless_count": 0,
        "position_changes": 0,
        "attributes": {},
        "current_attributes": [],
    }


class Frigate:
    """Drives a counter the way the MQTT consumer does: topic, payload bytes, arrival time."""

    def __init__(self, counter: FrigateVehicleCounter | None = None, latency_s: float = 0.4) -> None:
        self.counter = counter or FrigateVehicleCounter(interval_s=60, grace_s=30)
        self.latency_s = latency_s
        self.last: dict[str, dict] = {}

    def event(self, kind, after, arrival_s=None) -> list[DeviceRecord]:
        before = self.last.get(after["id"], after)
        self.last[after["id"]] = after
        payload = json.dumps({"type": kind, "before": before, "after": after}).encode()
        arrival = after["frame_time"] + self.latency_s if arrival_s is None else arrival_s
        return self.counter.feed("frigate/events", payload, int(round(arrival * NS)))

    def available(self, text: str, arrival_s: float) -> list[DeviceRecord]:
        return self.counter.feed("frigate/available", text.encode(), int(round(arrival_s * NS)))

    def tick(self, now_s: float) -> list[DeviceRecord]:
        return self.counter.tick(int(round(now_s * NS)))


def readings(records):
    """(device, bucket offset from T0 in s, count) for every reading, in emission order."""
    out = []
    for record in records:
        for ts, metric, value, unit in record.readings:
            assert (metric, unit) == ("vehicles", "veh")
            assert ts % (60 * NS) == 0
            out.append((record.device, ts // NS - T0, value))
    return out


def errors(records):
    return [(record.device, error.split(":", 1)[0]) for record in records for error in record.errors]


@pytest.fixture
def frigate() -> Frigate:
    f = Frigate()
    assert f.available("online", T0 - 300) == []  # Frigate runs; no camera known yet
    return f


# ---- counting distinct ids


def test_new_update_entering_zones_end_counts_once_per_camera_and_zone(frigate):
    assert frigate.event("new", obj("a", frame=T0 + 11.5)) == []
    assert frigate.event("update", obj("a", frame=T0 + 14.0, zones=["huong_bien_hoa"])) == []
    assert frigate.event("update", obj("a", frame=T0 + 65.0, zones=["huong_bien_hoa", "huong_vung_tau"])) == []
    assert frigate.event("end", obj("a", frame=T0 + 70.0, zones=["huong_bien_hoa", "huong_vung_tau"], end=T0 + 70.0)) == []
    # A person later on the same camera moves its watermark past 10:02:30: buckets 10:00 and 10:01 close.
    out = frigate.event("new", obj("p", "person", frame=T0 + 151.0))
    assert readings(out) == [
        (CAM, 0, 1),
        (CAM, 60, 0),
        (f"{CAM}/huong_bien_hoa", 0, 1),
        (f"{CAM}/huong_bien_hoa", 60, 0),
        (f"{CAM}/huong_vung_tau", 60, 1),  # entered at 10:01:05; the zone starts there
    ]
    assert frigate.counter.stats["vehicles_counted"] == 3


def test_camera_count_takes_frame_time_of_first_true_positive_message(frigate):
    # Frigate's first message comes when the object stops being a false positive: 10:00:59.6 while
    # the object started at 10:00:58. The count belongs to the frame_time bucket (10:00).
    frigate.event("new", obj("a", frame=T0 + 59.6, start=T0 + 58.0))
    frigate.event("new", obj("b", frame=T0 + 60.2, start=T0 + 59.1))
    out = frigate.tick(T0 + 150)
    assert readings(out) == [(CAM, 0, 1), (CAM, 60, 1)]


def test_event_without_frame_time_counts_at_start_time(frigate):
    state = obj("a", frame=T0 + 75.0, start=T0 + 59.0)
    del state["frame_time"]
    frigate.counter.feed("frigate/events", json.dumps({"type": "new", "before": state, "after": state}).encode(), (T0 + 76) * NS)
    assert readings(frigate.tick(T0 + 90)) == [(CAM, 0, 1)]


def test_false_positive_counts_when_it_becomes_true(frigate):
    assert frigate.event("new", obj("a", frame=T0 + 5.0, fp=True)) == []
    assert frigate.event("update", obj("a", frame=T0 + 20.0, fp=True, zones=["lane"])) == []
    assert frigate.event("update", obj("a", frame=T0 + 65.0, fp=False, zones=["lane"])) == []
    assert frigate.event("end", obj("a", frame=T0 + 80.0, zones=["lane"], end=T0 + 80.0)) == []
    # Counted once, at the first true-positive message (10:01:05), for the camera and the zone it
    # had entered while still a false positive.
    assert readings(frigate.tick(T0 + 150)) == [(CAM, 60, 1), (f"{CAM}/lane", 60, 1)]


def test_label_change_to_a_vehicle_counts_then_and_vehicle_to_vehicle_never_again(frigate):
    frigate.event("new", obj("a", "person", frame=T0 + 5.0, zones=["lane"]))
    frigate.event("update", obj("a", "motorcycle", frame=T0 + 62.0, zones=["lane"]))
    frigate.event("update", obj("a", "bicycle", frame=T0 + 64.0, zones=["lane"]))
    frigate.event("update", obj("a", "person", frame=T0 + 66.0, zones=["lane"]))
    frigate.event("update", obj("a", "car", frame=T0 + 68.0, zones=["lane"]))
    assert readings(frigate.tick(T0 + 150)) == [(CAM, 60, 1), (f"{CAM}/lane", 60, 1)]


def test_an_object_first_seen_in_its_end_message_counts_once(frigate):
    # The engine came up while the car was being tracked: its end message is all there is.
    frigate.event("end", obj("a", frame=T0 + 42.0, start=T0 + 20.0, zones=["lane"], end=T0 + 42.0))
    frigate.event("end", obj("a", frame=T0 + 42.0, start=T0 + 20.0, zones=["lane"], end=T0 + 42.0))  # redelivered
    assert readings(frigate.tick(T0 + 90)) == [(CAM, 0, 1), (f"{CAM}/lane", 0, 1)]


def test_non_vehicle_labels_are_never_counted_and_make_no_device(frigate):
    for i, label in enumerate(["person", "dog", "bird", "cat"]):
        frigate.event("new", obj(f"x{i}", label, frame=T0 + 5.0 + i, zones=["lane"]))
    assert frigate.tick(T0 + 3600) == []
    assert frigate.counter.devices == []


def test_configured_labels_decide_what_a_vehicle_is():
    f = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30, labels=("car",)))
    f.event("new", obj("a", "motorcycle", frame=T0 + 5.0))
    f.event("new", obj("b", "car", frame=T0 + 6.0))
    assert readings(f.tick(T0 + 90)) == [(CAM, 0, 1)]


def test_zones_off_counts_cameras_only():
    f = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30, zones=False))
    f.event("new", obj("a", frame=T0 + 5.0, zones=["lane"]))
    assert readings(f.tick(T0 + 90)) == [(CAM, 0, 1)]
    assert f.counter.devices == [CAM]


def test_zones_listed_are_the_only_zones_counted():
    f = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30, zones=["huong_bien_hoa"]))
    f.event("new", obj("a", frame=T0 + 5.0, zones=["huong_bien_hoa", "via_he"]))
    f.event("new", obj("b", frame=T0 + 6.0, zones=["via_he"]))
    assert readings(f.tick(T0 + 90)) == [(CAM, 0, 2), (f"{CAM}/huong_bien_hoa", 0, 1)]
    assert f.counter.devices == [CAM, f"{CAM}/huong_bien_hoa"]


def test_zone_re_entered_counts_once(frigate):
    frigate.event("new", obj("a", frame=T0 + 10.0, zones=["lane"]))
    frigate.event("update", obj("a", frame=T0 + 20.0, zones=["lane"], current=[]))
    frigate.event("update", obj("a", frame=T0 + 30.0, zones=["lane"], current=["lane"]))
    # entered_zones listing the zone twice (seen in the wild) is still one entry
    frigate.event("update", obj("a", frame=T0 + 40.0, zones=["lane", "lane"], current=["lane"]))
    assert readings(frigate.tick(T0 + 90)) == [(CAM, 0, 1), (f"{CAM}/lane", 0, 1)]


def test_two_cameras_have_their_own_watermarks():
    f = Frigate()
    f.available("online", T0 - 60)
    f.event("new", obj("a", frame=T0 + 10.0, camera="cam_a"))
    f.event("new", obj("b", frame=T0 + 20.0, camera="cam_b"))
    f.event("new", obj("c", frame=T0 + 25.0, camera="cam_b"))
    # cam_a's clock passing 10:01:30 closes cam_a's bucket only
    assert readings(f.event("new", obj("d", frame=T0 + 91.0, camera="cam_a"))) == [("cam_a", 0, 1)]
    # cam_b still accepts a late-arriving event for 10:00 (its own watermark is 10:00:25)
    assert f.event("new", obj("e", frame=T0 + 50.0, camera="cam_b"), arrival_s=T0 + 92) == []
    assert readings(f.event("new", obj("f", frame=T0 + 95.0, camera="cam_b"))) == [("cam_b", 0, 3)]
    assert readings(f.tick(T0 + 150)) == [("cam_a", 60, 1), ("cam_b", 60, 1)]


# ---- event time: grace, late events, bucket closing


def test_out_of_order_within_grace_is_counted_in_its_bucket(frigate):
    frigate.event("new", obj("a", frame=T0 + 40.0))
    frigate.event("new", obj("b", frame=T0 + 75.0))  # watermark 10:01:15
    assert frigate.event("new", obj("c", frame=T0 + 55.0), arrival_s=T0 + 80) == []  # 10:00:55, in grace
    assert readings(frigate.event("new", obj("d", frame=T0 + 89.9))) == []  # 10:01:29.9: still open
    out = frigate.event("new", obj("e", frame=T0 + 90.0))  # 10:01:30 = bucket end + grace: closes
    assert readings(out) == [(CAM, 0, 2)]


def test_too_late_event_is_an_error_and_dropped(frigate):
    frigate.event("new", obj("a", frame=T0 + 40.0, zones=["lane"]))
    assert readings(frigate.event("new", obj("b", frame=T0 + 95.0))) == [(CAM, 0, 1), (f"{CAM}/lane", 0, 1)]
    late = frigate.event("new", obj("c", frame=T0 + 50.0, zones=["lane"]), arrival_s=T0 + 96)
    assert errors(late) == [(CAM, "frigate_late_event"), (f"{CAM}/lane", "frigate_late_event")]
    assert "2026-11-27T03:00:00Z" in late[0].errors[0] and "c" in late[0].errors[0]
    assert all(not r.readings for r in late)
    assert frigate.counter.stats["frigate_late_event"] == 2
    # the late id is remembered: its later messages, in an open bucket, do not count it either
    frigate.event("update", obj("c", frame=T0 + 100.0, zones=["lane"]))
    assert readings(frigate.tick(T0 + 150)) == [(CAM, 60, 1), (f"{CAM}/lane", 60, 0)]


def test_late_zone_entry_of_a_new_zone_cannot_reopen_a_closed_bucket(frigate):
    frigate.event("new", obj("a", frame=T0 + 40.0))
    frigate.event("new", obj("b", frame=T0 + 95.0))  # closes 10:00 for the camera
    late = frigate.event("new", obj("c", frame=T0 + 50.0, zones=["new_zone"]), arrival_s=T0 + 97)
    assert errors(late) == [(CAM, "frigate_late_event"), (f"{CAM}/new_zone", "frigate_late_event")]
    assert readings(frigate.tick(T0 + 150)) == [(CAM, 60, 1), (f"{CAM}/new_zone", 60, 0)]


def test_tick_closes_buckets_on_the_wall_clock_with_true_zeros(frigate):
    frigate.event("new", obj("a", frame=T0 + 12.0, zones=["lane"]))
    frigate.event("new", obj("b", frame=T0 + 85.0))  # watermark 10:01:25: nothing closes yet
    assert frigate.tick(T0 + 89.999) == []  # 10:00's end + grace is 10:01:30
    assert readings(frigate.tick(T0 + 90)) == [(CAM, 0, 1), (f"{CAM}/lane", 0, 1)]
    assert readings(frigate.tick(T0 + 300)) == [
        (CAM, 60, 1),
        (CAM, 120, 0),
        (CAM, 180, 0),
        (f"{CAM}/lane", 60, 0),
        (f"{CAM}/lane", 120, 0),
        (f"{CAM}/lane", 180, 0),
    ]
    assert frigate.tick(T0 + 300) == []  # each bucket is emitted once


def test_interval_and_grace_are_honoured():
    f = Frigate(FrigateVehicleCounter(interval_s=300, grace_s=0))
    f.available("online", T0 - 600)
    f.event("new", obj("a", frame=T0 + 10.0))
    f.event("new", obj("b", frame=T0 + 299.0))
    assert f.tick(T0 + 299.9) == []
    assert readings(f.tick(T0 + 300)) == [(CAM, 0, 2)]
    assert readings(f.tick(T0 + 900)) == [(CAM, 300, 0), (CAM, 600, 0)]


def test_frame_time_is_converted_exactly_to_the_printed_digits():
    f = Frigate()
    f.available("online", T0 - 60)
    payload = (
        b'{"type":"new","before":null,"after":{"id":"1795748459.999999-abcdef","camera":"cam","label":"car",'
        b'"false_positive":false,"start_time":1795748459.999999,"frame_time":1795748459.999999,'
        b'"end_time":null,"current_zones":[],"entered_zones":[]}}'
    )
    f.counter.feed("frigate/events", payload, (T0 + 60) * NS)
    # 10:00:59.999999 belongs to bucket 10:00, not 10:01 (a float product would round it up)
    assert readings(f.tick(T0 + 150)) == [("cam", 0, 1), ("cam", 60, 0)]


# ---- availability


def test_offline_marks_every_camera_and_zone_unavailable_and_withholds_zeros(frigate):
    frigate.event("new", obj("a", frame=T0 + 10.0, zones=["lane"]))
    frigate.event("new", obj("b", frame=T0 + 20.0, camera="cau_dong_nai"))
    assert readings(frigate.tick(T0 + 150)) == [
        ("cau_dong_nai", 0, 1),
        ("cau_dong_nai", 60, 0),
        (CAM, 0, 1),
        (CAM, 60, 0),
        (f"{CAM}/lane", 0, 1),
        (f"{CAM}/lane", 60, 0),
    ]
    frigate.event("new", obj("c", frame=T0 + 130.0))  # bucket 10:02 has one car
    off = frigate.available("offline", T0 + 200)
    assert [(r.device, r.available, r.ts_ns) for r in off] == [
        ("cau_dong_nai", False, (T0 + 200) * NS),
        (CAM, False, (T0 + 200) * NS),
        (f"{CAM}/lane", False, (T0 + 200) * NS),
    ]
    # 10:02 ended before Frigate stopped: complete, true zeros too. 10:03 (stopped at 10:03:20)
    # and later: nothing, not even zeros.
    assert readings(frigate.tick(T0 + 600)) == [("cau_dong_nai", 120, 0), (CAM, 120, 1), (f"{CAM}/lane", 120, 0)]
    assert frigate.counter.stats["frigate_zero_withheld"] == 3 * 6  # 10:03 .. 10:08 on three devices

    on = frigate.available("online", T0 + 725)
    assert [(r.device, r.available) for r in on] == [("cau_dong_nai", True), (CAM, True), (f"{CAM}/lane", True)]
    # 10:12 (started at 10:12:05) is partial: a car seen in it is emitted, a zero would not be;
    # 10:13 is whole again, so zeros return.
    frigate.event("new", obj("d", frame=T0 + 730.0))
    assert readings(frigate.tick(T0 + 870)) == [
        ("cau_dong_nai", 780, 0),
        (CAM, 720, 1),
        (CAM, 780, 0),
        (f"{CAM}/lane", 780, 0),
    ]


def test_an_event_while_offline_proves_frigate_runs_again(frigate):
    frigate.event("new", obj("a", frame=T0 + 10.0))
    frigate.available("offline", T0 + 30)
    # the "online" was lost; an event says Frigate is back
    out = frigate.event("new", obj("b", frame=T0 + 200.0))
    assert [(r.device, r.available, r.ts_ns) for r in out if r.available is not None] == [(CAM, True, (T0 + 200.4) * NS)]
    # its watermark closes 10:00 (a car seen before the stop), 10:01 and 10:02 were offline: no zeros
    assert readings(out) == [(CAM, 0, 1)]
    assert readings(frigate.tick(T0 + 390)) == [(CAM, 180, 1), (CAM, 240, 0), (CAM, 300, 0)]


def test_no_zeros_before_anything_is_known():
    # No "online" yet: the first message arrives at 10:00:40; the camera's first bucket is emitted
    # with its vehicle, and zeros only start with the first bucket Frigate is known to run for.
    f = Frigate()
    f.event("new", obj("a", frame=T0 + 40.0))
    assert readings(f.tick(T0 + 210)) == [(CAM, 0, 1), (CAM, 60, 0), (CAM, 120, 0)]


def test_a_backlog_proves_frigate_ran_from_its_earliest_event():
    # Messages of the last minutes delivered together (a reconnect): the events' own times count.
    f = Frigate()
    out = f.event("new", obj("a", frame=T0 + 5.0), arrival_s=T0 + 200)
    out += f.event("new", obj("b", frame=T0 + 130.0), arrival_s=T0 + 200.1)
    out += f.event("new", obj("c", frame=T0 + 195.0), arrival_s=T0 + 200.2)
    assert readings(out) == [(CAM, 0, 1), (CAM, 60, 0)]  # 10:01 is a true zero, though it arrived at 10:03:20


def test_availability_payload_other_than_online_offline_is_an_error(frigate):
    out = frigate.available("restarting", T0)
    assert errors(out) == [("frigate", "bad_structure")]
    assert frigate.available(" online\n", T0 + 1) == []  # whitespace tolerated


def test_a_flapping_frigate_keeps_bounded_gaps_and_never_a_false_zero(frigate):
    frigate.event("new", obj("a", frame=T0 + 10.0))
    for minute in range(1, 101):  # offline for ten seconds in each of the next 100 minutes
        frigate.available("offline", T0 + 60 * minute + 10)
        frigate.available("online", T0 + 60 * minute + 20)
    assert len(frigate.counter.snapshot()["gaps"]) <= 65
    out = readings(frigate.tick(T0 + 60 * 103 + 30))
    assert out == [(CAM, 0, 1), (CAM, 101 * 60, 0), (CAM, 102 * 60, 0)]


# ---- bad input


@pytest.mark.parametrize(
    "payload, code",
    [
        (b'{"type": "new", "after": {', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "bad_structure"),
        (b'{"type": "created", "after": {"id": "a", "camera": "c", "label": "car", "frame_time": 1}}', "bad_structure"),
        (b'{"type": "new", "before": {}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": "a", "camera": "c", "frame_time": 1795748410.0}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": 7, "camera": "c", "label": "car", "frame_time": 1795748410.0}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": "a", "camera": "c", "label": "car", "frame_time": "10:00"}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": "a", "camera": "c", "label": "car", "frame_time": true}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": "a", "camera": "c", "label": "car", "frame_time": null, "start_time": null}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": "a", "camera": "c", "label": "car", "frame_time": 1795748410.0, "entered_zones": "lane"}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": "a", "camera": "c", "label": "car", "frame_time": 1795748410.0, "false_positive": "no"}}', "bad_structure"),
        (b'{"type": "new", "after": {"id": "a", "camera": "a/b", "label": "car", "frame_time": 1795748410.0}}', "bad_structure"),
    ],
)
def test_bad_messages_are_error_records_never_exceptions(frigate, payload, code):
    out = frigate.counter.feed("frigate/events", payload, (T0 + 11) * NS)
    assert errors(out) == [("frigate", code)]
    assert out[0].readings == [] and out[0].errors[0].startswith(f"{code}: ")
    assert frigate.counter.stats[code] == 1
    assert frigate.counter.devices == []


def test_topic_that_is_not_events_or_available_is_rejected(frigate):
    out = frigate.counter.feed("frigate/nga_tu_vung_tau/car", b"2", T0 * NS)
    assert errors(out) == [("frigate", "bad_topic")]


def test_topic_prefix_is_configurable():
    counter = FrigateVehicleCounter(topic_prefix="nvr2")
    state = obj("a", frame=T0 + 5.0)
    payload = json.dumps({"type": "new", "before": state, "after": state}).encode()
    assert errors(counter.feed("frigate/events", payload, (T0 + 6) * NS)) == [("nvr2", "bad_topic")]
    assert counter.feed("nvr2/events", payload, (T0 + 6) * NS) == []
    assert readings(counter.tick((T0 + 90) * NS)) == [(CAM, 0, 1)]


def test_event_time_far_from_arrival_is_implausible(frigate):
    future = frigate.event("new", obj("a", frame=T0 + 3600.0), arrival_s=T0)  # camera clock an hour ahead
    past = frigate.event("new", obj("b", frame=T0 - 7 * 3600.0), arrival_s=T0)  # older than id retention
    assert errors(future) == [(CAM, "frigate_implausible_time")]
    assert errors(past) == [(CAM, "frigate_implausible_time")]
    assert frigate.counter.devices == []
    # within the skew (a camera clock a few seconds ahead) is fine
    assert frigate.event("new", obj("c", frame=T0 + 20.0), arrival_s=T0 + 15) == []
    assert readings(frigate.tick(T0 + 90)) == [(CAM, 0, 1)]


# ---- bounded memory


def test_ids_are_forgotten_after_the_retention_and_old_objects_not_recounted():
    f = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30, id_retention_s=3600))
    f.available("online", T0 - 60)
    f.event("new", obj("parked", frame=T0 + 10.0, zones=["lane"]))
    f.tick(T0 + 3 * 3600)
    assert f.counter.stats["frigate_ids_expired"] == 1
    assert f.counter.snapshot()["ids"] == []
    # Its end message three hours later: an unknown id that started before the retention horizon
    # was counted then and forgotten since; not a new vehicle.
    f.event("end", obj("parked", frame=T0 + 3 * 3600 + 5.0, start=T0 + 9.0, zones=["lane"], end=T0 + 3 * 3600 + 5.0))
    assert f.counter.stats["frigate_forgotten_event"] == 1
    assert [(d, t, n) for d, t, n in readings(f.tick(T0 + 3 * 3600 + 90)) if n] == []


def test_id_count_is_capped(frigate):
    counter = FrigateVehicleCounter(max_ids=3)
    for i in range(5):
        state = obj(f"id{i}", "person", frame=T0 + i)
        counter.feed("frigate/events", json.dumps({"type": "new", "before": state, "after": state}).encode(), (T0 + i) * NS)
    assert [row[0] for row in counter.snapshot()["ids"]] == ["id2", "id3", "id4"]
    assert counter.stats["frigate_ids_evicted"] == 2


def test_cameras_and_zones_are_capped():
    f = Frigate(FrigateVehicleCounter(max_devices=3))
    assert f.event("new", obj("a", frame=T0 + 1.0, camera="cam1", zones=["z1"])) == []
    assert f.event("new", obj("b", frame=T0 + 2.0, camera="cam1", zones=["z2"])) == []
    out = f.event("new", obj("c", frame=T0 + 3.0, camera="cam2"))
    assert errors(out) == [("cam2", "frigate_too_many_devices")]
    out = f.event("update", obj("a", frame=T0 + 4.0, camera="cam1", zones=["z1", "z3"]))
    assert errors(out) == [("cam1/z3", "frigate_too_many_devices")]
    assert f.counter.devices == ["cam1", "cam1/z1", "cam1/z2"]


def test_a_long_stop_emits_a_bounded_number_of_buckets():
    f = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30, id_retention_s=3600))
    f.available("online", T0 - 60)
    f.event("new", obj("a", frame=T0 + 10.0))
    out = readings(f.tick(T0 + 30 * 86400))  # a month without a tick
    assert out[0] == (CAM, 0, 1)
    assert len(out) == 1 + 60  # the real count, then at most id_retention / interval buckets


# ---- snapshot / restore


def test_snapshot_restore_continues_counting_without_double_counts(frigate):
    frigate.event("new", obj("a", frame=T0 + 10.0, zones=["lane"]))
    frigate.event("new", obj("b", frame=T0 + 70.0))
    state = json.loads(json.dumps(frigate.counter.snapshot()))  # plain data, JSON round trip

    restored = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30))
    restored.counter.restore(state)
    restored.last = copy.deepcopy(frigate.last)
    # the same ids again (redelivered after the restart) count nothing; a new car does
    restored.event("update", obj("a", frame=T0 + 72.0, zones=["lane"]))
    restored.event("update", obj("b", frame=T0 + 75.0, zones=["lane"]))
    restored.event("new", obj("c", frame=T0 + 80.0))
    assert readings(restored.tick(T0 + 150)) == [(CAM, 0, 1), (CAM, 60, 2), (f"{CAM}/lane", 0, 1), (f"{CAM}/lane", 60, 1)]


def test_restart_gap_withholds_zeros_for_the_time_the_engine_was_stopped(frigate):
    frigate.event("new", obj("a", frame=T0 + 10.0))
    state = frigate.counter.snapshot()  # clock at 10:00:10.4
    restored = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30))
    restored.counter.restore(state)
    # back at 10:05:10: 10:00 .. 10:05 overlap the stop; 10:06 on is known again
    assert readings(restored.tick(T0 + 310)) == [(CAM, 0, 1)]
    assert readings(restored.tick(T0 + 450)) == [(CAM, 360, 0)]


def test_restore_keeps_frigate_offline_until_it_says_online(frigate):
    frigate.event("new", obj("a", frame=T0 + 10.0))
    frigate.available("offline", T0 + 100)
    restored = Frigate(FrigateVehicleCounter(interval_s=60, grace_s=30))
    restored.counter.restore(json.loads(json.dumps(frigate.counter.snapshot())))
    assert readings(restored.tick(T0 + 600)) == [(CAM, 0, 1)]  # 10:01 overlaps the stop; no zeros while offline
    assert [(r.device, r.available) for r in restored.available("online", T0 + 610)] == [(CAM, True)]
    assert readings(restored.tick(T0 + 750)) == [(CAM, 660, 0)]


def test_restore_refuses_another_interval_or_format(frigate):
    state = frigate.counter.snapshot()
    with pytest.raises(ValueError, match="interval of 60 s"):
        FrigateVehicleCounter(interval_s=300).restore(state)
    with pytest.raises(ValueError, match="format"):
        FrigateVehicleCounter().restore({**state, "format": 99})
    with pytest.raises(ValueError, match="not a Frigate counter snapshot"):
        FrigateVehicleCounter().restore({**state, "ids": [["a", "cam"]]})


# ---- options, documentation, fixture


def test_options_parse_durations_and_build_the_counter():
    options = FrigateOptions.model_validate({"interval_s": "5m", "grace_s": "45s", "labels": ["car", "bus"], "id_retention_s": "2h"})
    counter = FrigateVehicleCounter.from_options(options)
    assert (counter.interval_ns, counter.grace_ns, counter.id_retention_ns) == (300 * NS, 45 * NS, 7200 * NS)
    assert counter.labels == {"car", "bus"}
    # a profile's options: passed to the constructor as keyword arguments, validated the same way
    counter = FrigateVehicleCounter(**{"interval_s": "5m", "grace_s": 10, "labels": ["car"], "zones": False})
    assert (counter.interval_ns, counter.grace_ns, counter.labels, counter.zones) == (300 * NS, 10 * NS, {"car"}, False)
    bad_options = (
        {"interval_s": 0}, {"interval_s": "soon"}, {"labels": []}, {"labels": "car"}, {"labels": [""]},
        {"topic_prefix": "frigate/#"}, {"zones": "lane"}, {"max_devices": 0},
    )
    for bad in bad_options:
        with pytest.raises(ValidationError):
            FrigateOptions.model_validate(bad)
        with pytest.raises(ValueError, match=next(iter(bad))):
            FrigateVehicleCounter(**bad)
    with pytest.raises(ValidationError):
        FrigateOptions.model_validate({"colour": "red"})


def test_sample_config_is_a_valid_source_profile():
    import yaml

    from citywatch.ingest.sources.profile import SourceProfile

    sample = yaml.safe_load(frigate_module.SAMPLE_CONFIG)
    (raw,) = sample["sources"]["profiles"]
    profile = SourceProfile.model_validate(raw)
    assert profile.family == "frigate"
    assert [(t.filter, t.decoder) for t in profile.topics] == [("frigate/events", "frigate"), ("frigate/available", "frigate")]
    counter = FrigateVehicleCounter(**profile.options)
    assert (counter.interval_ns, counter.id_retention_ns, counter.max_clock_skew_ns) == (60 * NS, 6 * 3600 * NS, 300 * NS)
    assert (counter.events_topic, counter.available_topic) == ("frigate/events", "frigate/available")


def test_module_docstring_example_runs():
    result = doctest.testmod(frigate_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _shift(message: dict, delta_s: int) -> dict:
    """The fixture's replay rule: move every time field of the payload by `delta_s`."""
    message = copy.deepcopy(message)
    if message["payload_is_text"]:
        return message
    for side in ("before", "after"):
        state = message["payload"][side]
        for key in ("frame_time", "start_time", "end_time"):
            if state.get(key) is not None:
                state[key] += delta_s
        state["snapshot"]["frame_time"] += delta_s
    return message


def _replay(sequence: dict, delta_s: int, arrival) -> list[tuple[int, DeviceRecord]]:
    """(index of the message that emitted it, record) for every record the sequence yields."""
    counter = FrigateVehicleCounter(**sequence["options"])
    out: list[tuple[int, DeviceRecord]] = []
    for i, message in enumerate(sequence["messages"]):
        message = _shift(message, delta_s)
        payload = message["payload"] if message["payload_is_text"] else json.dumps(message["payload"])
        out.extend((i, record) for record in counter.feed(message["topic"], payload.encode(), arrival(i, message)))
    return out


@pytest.mark.parametrize("mode", ["as_recorded", "shifted_and_published_at_once"])
def test_example_sequence_fixture(mode):
    sequence = json.loads((FIXTURES / "sequence.json").read_text())
    base = sequence["base_time"]
    if mode == "as_recorded":
        delta = 0
        arrival = lambda i, m: int(round((base + m["arrival_offset_s"]) * NS))  # noqa: E731
    else:
        # What an end-to-end test does: moved to another minute and published in one burst.
        delta = 86400 * 3 + 600
        arrival = lambda i, m: (base + delta + 2) * NS + i * 1_000_000  # noqa: E731
    out = _replay(sequence, delta, arrival)
    got = [
        {"device": r.device, "ts_ns": ts, "metric": metric, "value": value, "unit": unit}
        for _, r in out
        for ts, metric, value, unit in r.readings
    ]
    expected = [
        {"device": e["device"], "ts_ns": e["ts_ns"] + delta * NS, "metric": e["metric"], "value": e["value"], "unit": e["unit"]}
        for e in sequence["expected_readings"]
    ]
    assert got == expected
    got_errors = [{"message_index": i, "device": r.device, "code": e.split(":")[0]} for i, r in out for e in r.errors]
    assert got_errors == sequence["expected_errors"]
    assert [r for _, r in out if r.available is not None] == sequence["expected_availability"]


def test_availability_fixtures():
    counter = FrigateVehicleCounter()
    state = obj("a", frame=T0 + 5.0, zones=["lane"])
    counter.feed("frigate/events", json.dumps({"type": "new", "before": state, "after": state}).encode(), (T0 + 6) * NS)
    for name, available in (("available_offline.json", False), ("available_online.json", True)):
        message = json.loads((FIXTURES / name).read_text())
        out = counter.feed(message["topic"], message["payload"].encode(), (T0 + 20) * NS)
        assert [(r.device, r.available) for r in out] == [(CAM, available), (f"{CAM}/lane", available)]
