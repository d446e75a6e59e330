"""Sparkplug B decoder: sessions (births, aliases, seq, deaths), values, units, times and bad input.

Payloads are built as an edge node builds them, with the payload module's writer, and serialised to
bytes; the decoder only ever sees bytes and topics. The example messages in
tests/data/devices/sparkplug/ are checked against their JSON description; regenerate them with
``python tests/test_sparkplug.py --write-fixtures tests/data/devices/sparkplug``.
"""

from __future__ import annotations

import doctest
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from citywatch.ingest.sources import sparkplug as sparkplug_module
from citywatch.ingest.sources.records import DeviceRecord
from citywatch.ingest.sources.sparkplug import REBIRTH_METRIC, SparkplugDecoder
from citywatch.ingest.sources.sparkplug_payload import DataType, add_metric, new_payload, parse_payload

FIXTURES = Path(__file__).parent / "data" / "devices" / "sparkplug"

GROUP, NODE, DEVICE = "bienhoa", "gw-dongnai-01", "wq-probe-01"
NODE_ID = f"{GROUP}/{NODE}"
DEVICE_ID = f"{GROUP}/{NODE}/{DEVICE}"
T0 = 1_795_766_400_000  # 2026-11-27 08:00:00 UTC (15:00 in Biên Hòa), in ms as Sparkplug carries it
NS = 1_000_000


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- realistic messages
def nbirth(seq: int = 0, bd_seq: int = 7, ts: int = T0) -> bytes:
    p = new_payload(timestamp_ms=ts, seq=seq)
    add_metric(p, DataType.UInt64, bd_seq, name="bdSeq")
    add_metric(p, DataType.Boolean, False, name="Node Control/Rebirth")
    add_metric(p, DataType.String, "Advantech WISE-4471", name="Properties/Hardware Make", alias=1)
    add_metric(p, DataType.Float, 12.1, name="Power/Supply Voltage", alias=2, unit="V")
    add_metric(p, DataType.Int32, -71, name="Modem/RSSI", alias=3, unit="dBm")
    return p.SerializeToString()


def dbirth(seq: int = 1, ts: int = T0 + 50, device: str = DEVICE) -> bytes:
    p = new_payload(timestamp_ms=ts, seq=seq)
    add_metric(p, DataType.Float, 28.4, name="Sensors/Temperature", alias=10, unit="°C", timestamp_ms=ts - 20)
    add_metric(p, DataType.Double, 7.12, name="Sensors/pH", alias=11)
    metric = p.metrics[-1]
    metric.properties.keys.append("engUnits")  # the spelling some edge nodes use
    metric.properties.values.add(type=int(DataType.String), string_value="pH")
    add_metric(p, DataType.Float, 23.5, name="Sensors/Turbidity", alias=12, unit="NTU")
    add_metric(p, DataType.Float, 5.6, name="Sensors/DO", alias=13, unit="mg/L")
    add_metric(p, DataType.UInt16, 87, name="Battery/Level", alias=14, unit="%")
    return p.SerializeToString()


def ddata(seq: int, ts: int, values: dict[int, float], *, device: str = DEVICE, metric_ts: dict[int, int] | None = None) -> bytes:
    """DDATA as the specification asks: aliases only, no names and no datatypes."""
    p = new_payload(timestamp_ms=ts, seq=seq)
    for alias, value in values.items():
        datatype = DataType.Double if alias == 11 else DataType.UInt16 if alias == 14 else DataType.Float
        add_metric(p, datatype, value, alias=alias, declare_datatype=False,
                   timestamp_ms=(metric_ts or {}).get(alias))
    return p.SerializeToString()


def ndeath(bd_seq: int = 7) -> bytes:
    p = new_payload()  # a will message: written at connect time, so no timestamp and no seq
    add_metric(p, DataType.UInt64, bd_seq, name="bdSeq")
    return p.SerializeToString()


def started(clock: Clock | None = None) -> SparkplugDecoder:
    """A decoder that has seen the node's and the probe's births (seq 0 and 1)."""
    decoder = SparkplugDecoder(rebirth_interval_s=30, clock=clock or Clock())
    decoder.decode(topic("NBIRTH"), nbirth(), arrival_ns=0)
    decoder.decode(topic("DBIRTH", DEVICE), dbirth(), arrival_ns=0)
    return decoder


def codes(records: list[DeviceRecord]) -> list[str]:
    return [error.split(":")[0] for record in records for error in record.errors]


# --------------------------------------------------------------------------------------- the docs
def test_module_doctests() -> None:
    assert doctest.testmod(sparkplug_module).failed == 0


def test_the_sample_profile_in_the_docs_is_a_valid_profile_that_builds_the_decoder() -> None:
    import textwrap

    import yaml

    from citywatch.ingest.sources.profile import SourceProfile

    doc = sparkplug_module.__doc__ or ""
    block = textwrap.dedent(doc.split("sources.profiles``;", 1)[1].split("::\n", 1)[1])
    [raw] = yaml.safe_load(block)
    profile = SourceProfile.model_validate(raw)
    assert profile.family == "sparkplug" and profile.topics[0].decoder == "sparkplug"
    assert profile.metrics["Sensors/PM2.5"].metric == "pm25"
    assert SparkplugDecoder(**profile.options).rebirth_interval_s == 60


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="rebirth_interval_s must be > 0"):
        SparkplugDecoder(rebirth_interval_s=0)
    with pytest.raises(TypeError):
        SparkplugDecoder(rebirth_every=5)  # type: ignore[call-arg]


# ----------------------------------------------------------------------------------------- births
def test_nbirth_puts_the_node_online_with_its_current_values() -> None:
    decoder = SparkplugDecoder()
    records = decoder.decode(topic("NBIRTH"), nbirth(), arrival_ns=0)
    assert records == [DeviceRecord(
        device=NODE_ID, available=True, ts_ns=T0 * NS,
        readings=[  # bdSeq and Node Control/* are session plumbing, not readings
            (T0 * NS, "Properties/Hardware Make", "Advantech WISE-4471", None),
            (T0 * NS, "Power/Supply Voltage", 12.1, "V"),
            (T0 * NS, "Modem/RSSI", -71, "dBm"),
        ])]


def test_dbirth_reads_units_from_engunit_properties_and_times_per_metric() -> None:
    decoder = SparkplugDecoder()
    decoder.decode(topic("NBIRTH"), nbirth(), arrival_ns=0)
    records = decoder.decode(topic("DBIRTH", DEVICE), dbirth(ts=T0 + 50), arrival_ns=0)
    t = (T0 + 50) * NS
    assert records == [DeviceRecord(
        device=DEVICE_ID, available=True, ts_ns=t,
        readings=[
            ((T0 + 30) * NS, "Sensors/Temperature", 28.4, "°C"),  # the metric's own timestamp wins
            (t, "Sensors/pH", 7.12, "pH"),  # "engUnits"
            (t, "Sensors/Turbidity", 23.5, "NTU"),
            (t, "Sensors/DO", 5.6, "mg/L"),
            (t, "Battery/Level", 87, "%"),
        ])]


# ------------------------------------------------------------------------------------------- data
def test_alias_only_ddata_gets_names_datatypes_and_units_from_the_birth() -> None:
    decoder = started()
    records = decoder.decode(
        topic("DDATA", DEVICE),
        ddata(2, T0 + 60_000, {10: 28.6, 11: 7.05, 13: 5.25}, metric_ts={11: T0 + 59_000}),
        arrival_ns=0)
    t = (T0 + 60_000) * NS
    assert records == [DeviceRecord(device=DEVICE_ID, ts_ns=t, readings=[
        (t, "Sensors/Temperature", 28.6, "°C"),  # a 32-bit float read as the decimal the device meant
        ((T0 + 59_000) * NS, "Sensors/pH", 7.05, "pH"),
        (t, "Sensors/DO", 5.25, "mg/L"),
    ])]
    assert decoder.rebirth_requests() == []


def test_ndata_of_node_level_metrics_uses_the_nbirth_aliases() -> None:
    decoder = started()
    p = new_payload(timestamp_ms=T0 + 1000, seq=2)
    add_metric(p, DataType.Int32, -83, alias=3, declare_datatype=False)
    add_metric(p, DataType.Float, 11.9, name="Power/Supply Voltage")  # names are allowed in DATA too
    records = decoder.decode(topic("NDATA"), p.SerializeToString(), arrival_ns=0)
    t = (T0 + 1000) * NS
    assert records == [DeviceRecord(device=NODE_ID, ts_ns=t, readings=[
        (t, "Modem/RSSI", -83, "dBm"), (t, "Power/Supply Voltage", 11.9, "V")])]


def test_unknown_alias_drops_that_metric_keeps_the_others_and_asks_for_a_rebirth() -> None:
    clock = Clock()
    decoder = started(clock)
    records = decoder.decode(topic("DDATA", DEVICE), ddata(2, T0 + 60_000, {10: 28.5, 99: 1.0, 13: 5.5}), arrival_ns=0)
    t = (T0 + 60_000) * NS
    assert records[0].readings == [(t, "Sensors/Temperature", 28.5, "°C"), (t, "Sensors/DO", 5.5, "mg/L")]
    assert records[0].errors == [f"sparkplug_unknown_alias: alias 99 is not in the birth of {DEVICE_ID}"]
    assert decoder.needs_rebirth(GROUP, NODE)
    [(command_topic, body)] = decoder.rebirth_requests()
    assert command_topic == f"spBv1.0/{GROUP}/NCMD/{NODE}"
    command = parse_payload(body)
    assert [(m.name, m.datatype, m.boolean_value) for m in command.metrics] == [(REBIRTH_METRIC, DataType.Boolean, True)]
    assert command.HasField("timestamp")


# -------------------------------------------------------------------------------------------- seq
def test_seq_wraps_from_255_to_0_without_a_gap() -> None:
    decoder = started()  # NBIRTH 0, DBIRTH 1
    errors: list[str] = []
    for i in range(2, 260):  # ... 254, 255, 0, 1, 2, 3
        seq = i % 256
        records = decoder.decode(topic("DDATA", DEVICE), ddata(seq, T0 + i * 1000, {12: float(i)}), arrival_ns=0)
        errors += records[0].errors
        assert records[0].readings == [((T0 + i * 1000) * NS, "Sensors/Turbidity", float(i), "NTU")]
    assert errors == []
    assert not decoder.needs_rebirth(GROUP, NODE)


def test_a_seq_gap_keeps_the_readings_and_asks_for_a_rebirth_once_per_interval() -> None:
    clock = Clock()
    decoder = started(clock)
    decoder.decode(topic("DDATA", DEVICE), ddata(2, T0 + 1000, {12: 20.0}), arrival_ns=0)
    records = decoder.decode(topic("DDATA", DEVICE), ddata(5, T0 + 4000, {12: 21.0}), arrival_ns=0)  # 3, 4 lost
    assert records[0].errors == ["sparkplug_seq_gap: expected seq 3, got 5"]
    assert records[0].readings == [((T0 + 4000) * NS, "Sensors/Turbidity", 21.0, "NTU")]
    # the count goes on from the message received: the next one is not a second gap
    assert decoder.decode(topic("DDATA", DEVICE), ddata(6, T0 + 5000, {12: 22.0}), arrival_ns=0)[0].errors == []

    assert [t for t, _ in decoder.rebirth_requests()] == [f"spBv1.0/{GROUP}/NCMD/{NODE}"]
    assert decoder.rebirth_requests() == []  # asked already
    clock.now += 29
    assert decoder.rebirth_requests() == []
    clock.now += 1
    assert len(decoder.rebirth_requests()) == 1  # still no rebirth after the interval: ask again
    decoder.decode(topic("NBIRTH"), nbirth(bd_seq=8), arrival_ns=0)
    clock.now += 100
    assert decoder.rebirth_requests() == [] and not decoder.needs_rebirth(GROUP, NODE)


def test_a_repeated_seq_is_a_gap_and_a_missing_one_too() -> None:
    decoder = started()
    decoder.decode(topic("DDATA", DEVICE), ddata(2, T0 + 1000, {12: 20.0}), arrival_ns=0)
    records = decoder.decode(topic("DDATA", DEVICE), ddata(2, T0 + 1000, {12: 20.0}), arrival_ns=0)
    assert records[0].errors == ["sparkplug_seq_gap: expected seq 3, got 2"]
    p = new_payload(timestamp_ms=T0 + 2000)
    add_metric(p, DataType.Float, 20.5, alias=12, declare_datatype=False)
    records = decoder.decode(topic("DDATA", DEVICE), p.SerializeToString(), arrival_ns=0)
    assert records[0].errors == ["sparkplug_seq_gap: the message has no seq"]
    assert records[0].readings == [((T0 + 2000) * NS, "Sensors/Turbidity", 20.5, "NTU")]


def test_seq_is_counted_per_edge_node_across_its_devices_and_nbirth_restarts_it() -> None:
    decoder = started()  # NBIRTH 0, DBIRTH 1
    decoder.decode(topic("DBIRTH", "aq-probe-02"), dbirth(seq=2, device="aq-probe-02"), arrival_ns=0)
    assert decoder.decode(topic("DDATA", DEVICE), ddata(3, T0, {12: 1.0}), arrival_ns=0)[0].errors == []
    assert decoder.decode(topic("DDATA", "aq-probe-02"), ddata(4, T0, {12: 1.0}, device="aq-probe-02"), arrival_ns=0)[0].errors == []
    # another edge node has its own count
    other = new_payload(timestamp_ms=T0, seq=0)
    add_metric(other, DataType.UInt64, 1, name="bdSeq")
    assert decoder.decode(f"spBv1.0/{GROUP}/NBIRTH/gw-other", other.SerializeToString(), arrival_ns=0)[0].errors == []
    assert decoder.decode(topic("DDATA", DEVICE), ddata(5, T0, {12: 1.0}), arrival_ns=0)[0].errors == []
    # a new NBIRTH (seq 0 again) starts over; its DBIRTHs follow
    assert decoder.decode(topic("NBIRTH"), nbirth(bd_seq=8), arrival_ns=0)[0].errors == []
    assert decoder.decode(topic("DBIRTH", DEVICE), dbirth(seq=1), arrival_ns=0)[0].errors == []
    assert decoder.decode(topic("DDATA", DEVICE), ddata(2, T0, {12: 1.0}), arrival_ns=0)[0].errors == []


# ------------------------------------------------------------------------------------ no birth yet
def test_data_before_any_birth_keeps_only_named_metrics() -> None:
    decoder = SparkplugDecoder()  # e.g. the engine restarted while the node kept publishing
    p = new_payload(timestamp_ms=T0, seq=42)
    add_metric(p, DataType.Float, 28.1, name="Sensors/Temperature", alias=10)
    add_metric(p, DataType.Float, 23.0, alias=12, declare_datatype=False)
    add_metric(p, DataType.Float, 5.5, alias=13, declare_datatype=False)
    records = decoder.decode(topic("DDATA", DEVICE), p.SerializeToString(), arrival_ns=0)
    assert records == [DeviceRecord(
        device=DEVICE_ID, ts_ns=T0 * NS, readings=[(T0 * NS, "Sensors/Temperature", 28.1, None)],
        errors=[f"sparkplug_no_birth: DDATA from {DEVICE_ID} before its BIRTH; 2 metric(s) with only an alias dropped"])]
    assert decoder.needs_rebirth(GROUP, NODE)


def test_ddata_of_a_device_without_dbirth_after_the_nbirth() -> None:
    decoder = SparkplugDecoder()
    decoder.decode(topic("NBIRTH"), nbirth(), arrival_ns=0)
    records = decoder.decode(topic("DDATA", "new-probe"), ddata(1, T0, {12: 3.0}, device="new-probe"), arrival_ns=0)
    assert codes(records) == ["sparkplug_no_birth"] and records[0].readings == []
    assert records[0].device == f"{NODE_ID}/new-probe"
    assert decoder.needs_rebirth(GROUP, NODE)


def test_dbirth_before_the_nbirth_is_kept_but_asks_for_a_rebirth() -> None:
    decoder = SparkplugDecoder()
    records = decoder.decode(topic("DBIRTH", DEVICE), dbirth(seq=9), arrival_ns=0)
    assert records[0].available is True and len(records[0].readings) == 5
    assert records[0].errors == [f"sparkplug_no_birth: DBIRTH from {DEVICE_ID} before its node's NBIRTH"]
    assert decoder.needs_rebirth(GROUP, NODE)


# ----------------------------------------------------------------------------------------- deaths
def test_ndeath_puts_the_node_and_all_its_devices_offline_and_ends_the_session() -> None:
    decoder = started()
    decoder.decode(topic("DBIRTH", "aq-probe-02"), dbirth(seq=2, device="aq-probe-02"), arrival_ns=0)
    records = decoder.decode(topic("NDEATH"), ndeath(bd_seq=7), arrival_ns=0)
    assert records == [
        DeviceRecord(device=NODE_ID, available=False),
        DeviceRecord(device=f"{NODE_ID}/aq-probe-02", available=False),
        DeviceRecord(device=DEVICE_ID, available=False),
    ]
    after = decoder.decode(topic("DDATA", DEVICE), ddata(3, T0, {12: 1.0}), arrival_ns=0)
    assert codes(after) == ["sparkplug_no_birth"] and after[0].readings == []


def test_a_stale_ndeath_from_an_earlier_connection_is_ignored() -> None:
    decoder = started()  # NBIRTH with bdSeq 7
    records = decoder.decode(topic("NDEATH"), ndeath(bd_seq=6), arrival_ns=0)
    assert records == [DeviceRecord(device=NODE_ID, errors=[
        "sparkplug_stale_death: NDEATH bdSeq 6, the current NBIRTH's is 7"])]
    # the session goes on
    assert decoder.decode(topic("DDATA", DEVICE), ddata(2, T0, {12: 1.0}), arrival_ns=0)[0].errors == []


def test_ddeath_puts_one_device_offline() -> None:
    decoder = started()
    records = decoder.decode(topic("DDEATH", DEVICE), new_payload(timestamp_ms=T0 + 500, seq=2).SerializeToString(), arrival_ns=0)
    assert records == [DeviceRecord(device=DEVICE_ID, available=False, ts_ns=(T0 + 500) * NS)]
    after = decoder.decode(topic("DDATA", DEVICE), ddata(3, T0, {12: 1.0}), arrival_ns=0)
    assert codes(after) == ["sparkplug_no_birth"]
    # the node itself is still alive
    p = new_payload(timestamp_ms=T0, seq=4)
    add_metric(p, DataType.Int32, -80, alias=3, declare_datatype=False)
    assert decoder.decode(topic("NDATA"), p.SerializeToString(), arrival_ns=0)[0].errors == []


def test_a_new_nbirth_replaces_the_alias_tables() -> None:
    decoder = started()
    decoder.decode(topic("NBIRTH"), nbirth(bd_seq=8), arrival_ns=0)
    p = new_payload(timestamp_ms=T0, seq=1)  # the device re-births with other aliases
    add_metric(p, DataType.Float, 6.1, name="Sensors/DO", alias=10, unit="mg/L")
    decoder.decode(topic("DBIRTH", DEVICE), p.SerializeToString(), arrival_ns=0)
    records = decoder.decode(topic("DDATA", DEVICE), ddata(2, T0, {10: 6.3, 12: 20.0}), arrival_ns=0)
    assert records[0].readings == [(T0 * NS, "Sensors/DO", 6.3, "mg/L")]
    assert codes(records) == ["sparkplug_unknown_alias"]


# ----------------------------------------------------------------------------------------- values
def test_values_by_datatype() -> None:
    decoder = SparkplugDecoder()
    p = new_payload(timestamp_ms=T0, seq=0)
    add_metric(p, DataType.Int8, -5, name="i8", alias=1)
    add_metric(p, DataType.Int16, -300, name="i16", alias=2)
    add_metric(p, DataType.Int64, -9_000_000_000, name="i64", alias=3)
    add_metric(p, DataType.UInt32, 4_000_000_000, name="u32", alias=4)
    add_metric(p, DataType.UInt64, 2**63 + 5, name="u64", alias=5)
    add_metric(p, DataType.Double, 0.1 + 0.2, name="double", alias=6)
    add_metric(p, DataType.Float, None, name="null float", alias=7)
    add_metric(p, DataType.Boolean, True, name="Pump/Running", alias=8)
    add_metric(p, DataType.String, "12.5", name="Display", alias=9)
    add_metric(p, DataType.Bytes, b"\x01\x02", name="Raw", alias=10)
    add_metric(p, DataType.FloatArray, b"\x00\x00\x80\x3f", name="Spectrum", alias=11)
    metric = p.metrics.add(name="Table", alias=12, datatype=int(DataType.DataSet))
    metric.dataset_value.num_of_columns = 1
    metric.dataset_value.columns.append("a")
    [record] = decoder.decode(topic("NBIRTH"), p.SerializeToString(), arrival_ns=0)
    t = T0 * NS
    assert record.readings == [
        (t, "i8", -5, None), (t, "i16", -300, None), (t, "i64", -9_000_000_000, None),
        (t, "u32", 4_000_000_000, None), (t, "u64", 2**63 + 5, None), (t, "double", 0.1 + 0.2, None),
        (t, "null float", None, None),  # missing, never 0
        (t, "Pump/Running", True, None), (t, "Display", "12.5", None),  # raw: the mapper judges them
    ]
    assert record.errors == [
        "sparkplug_unsupported_type: 'Raw': a Bytes value is not a reading",
        "sparkplug_unsupported_type: 'Spectrum': a FloatArray value is not a reading",
        "sparkplug_unsupported_type: 'Table': a DataSet value is not a reading",
    ]
    # DATA by alias uses the BIRTH's datatype for the sign of an Int8 sent sign-extended to 32 bits
    # (as Tahu's Java client writes it)
    data = new_payload(timestamp_ms=T0, seq=1)
    data.metrics.add(alias=1, int_value=0xFFFF_FFFB)
    data.metrics.add(alias=7, float_value=3.25)
    [record] = decoder.decode(topic("NDATA"), data.SerializeToString(), arrival_ns=0)
    assert record.readings == [(t, "i8", -5, None), (t, "null float", 3.25, None)]


# A DBIRTH serialised by the protobuf classes generated from Eclipse Tahu's sparkplug_b.proto (not by
# this project's schema): Temperature Float 28.4 °C (own timestamp), pH Double 7.12, an Int8 -5
# sign-extended to 32 bits, a UInt64 counter, a null Float, a Boolean and a DataSet.
TAHU_DBIRTH = bytes.fromhex(
    "0880e892e0a13412390a1353656e736f72732f54656d7065726174757265100a18ece792e0a13420094a120a07656e"
    "67556e69741207080c4203c2b043653333e34112190a0a53656e736f72732f7048100b200a697b14ae47e17a1c4012"
    "180a0c4c6576656c2f4f6666736574100c200150fbffffff0f12160a0a466c6f772f546f74616c100d200858b5b8f0"
    "fe2d12120a0a53656e736f72732f444f100e2009380112140a0c50756d702f52756e6e696e67100f200b7001121b0a"
    "0b43616c6962726174696f6e101020108a0107080112016118091801"
)


def test_a_payload_from_an_independent_encoder_decodes_field_by_field() -> None:
    decoder = SparkplugDecoder()
    decoder.decode(topic("NBIRTH"), nbirth(), arrival_ns=0)
    [record] = decoder.decode(topic("DBIRTH", DEVICE), TAHU_DBIRTH, arrival_ns=0)
    t = T0 * NS
    assert record == DeviceRecord(device=DEVICE_ID, available=True, ts_ns=t, readings=[
        ((T0 - 20) * NS, "Sensors/Temperature", 28.4, "°C"),
        (t, "Sensors/pH", 7.12, None),
        (t, "Level/Offset", -5, None),
        (t, "Flow/Total", 12_345_678_901, None),
        (t, "Sensors/DO", None, None),
        (t, "Pump/Running", True, None),
    ], errors=["sparkplug_unsupported_type: 'Calibration': a DataSet value is not a reading"])


def test_no_timestamp_anywhere_means_the_message_time() -> None:
    decoder = SparkplugDecoder()
    p = new_payload(seq=0)
    add_metric(p, DataType.Float, 30.5, name="Sensors/Temperature", alias=1, unit="°C")
    records = decoder.decode(topic("NBIRTH"), p.SerializeToString(), arrival_ns=123)
    assert records == [DeviceRecord(device=NODE_ID, available=True, ts_ns=None,
                                    readings=[(None, "Sensors/Temperature", 30.5, "°C")])]


# ------------------------------------------------------------------------------------- bad input
def test_malformed_protobuf_is_one_error_record_for_the_topic_device() -> None:
    decoder = started()
    records = decoder.decode(topic("DDATA", DEVICE), b"\x0a\xff\xff\xff\xff", arrival_ns=0)
    assert len(records) == 1 and records[0].device == DEVICE_ID and records[0].readings == []
    assert codes(records) == ["malformed_protobuf"]
    # the session is untouched: the next message is in sequence
    assert decoder.decode(topic("DDATA", DEVICE), ddata(2, T0, {12: 1.0}), arrival_ns=0)[0].errors == []


@pytest.mark.parametrize("bad", [
    "tele/aq_tasmota_01/SENSOR",
    "spBv1.0/bienhoa/NDATA",
    "spBv1.0/bienhoa/XDATA/gw-dongnai-01",
    "spBv1.0/bienhoa/DDATA/gw-dongnai-01",
    "spBv1.0/bienhoa/NDATA/gw-dongnai-01/extra",
    "spBv1.0//NDATA/gw-dongnai-01",
])
def test_bad_topics(bad: str) -> None:
    records = SparkplugDecoder().decode(bad, nbirth(), arrival_ns=0)
    assert len(records) == 1 and records[0].device == bad and codes(records) == ["bad_topic"]


@pytest.mark.parametrize("quiet", [
    f"spBv1.0/{GROUP}/NCMD/{NODE}", f"spBv1.0/{GROUP}/DCMD/{NODE}/{DEVICE}", "spBv1.0/STATE/scada-host-1"])
def test_commands_and_host_state_carry_no_readings(quiet: str) -> None:
    decoder = started()
    assert decoder.decode(quiet, b'{"online": true, "timestamp": 1795766400000}', arrival_ns=0) == []
    assert decoder.decode(topic("DDATA", DEVICE), ddata(2, T0, {12: 1.0}), arrival_ns=0)[0].errors == []


# -------------------------------------------------------------------------------------- fixtures
def fixture_messages() -> list[tuple[str, str, str, bytes]]:
    """(file, topic, description, payload) of the example session in tests/data/devices/sparkplug/."""
    one_minute = 60_000
    return [
        ("01-nbirth.bin", topic("NBIRTH"), "edge node birth: bdSeq 7, seq 0, node metrics with aliases",
         nbirth()),
        ("02-dbirth.bin", topic("DBIRTH", DEVICE), "water probe birth: names, aliases, engUnit(s) properties",
         dbirth()),
        ("03-ddata.bin", topic("DDATA", DEVICE), "probe data: aliases only, no datatypes",
         ddata(2, T0 + one_minute, {10: 28.6, 11: 7.05, 12: 24.0, 13: 5.25})),
        ("04-ddata-unknown-alias.bin", topic("DDATA", DEVICE), "an alias the birth did not declare",
         ddata(3, T0 + 2 * one_minute, {10: 28.7, 42: 1.0})),
        ("05-ddata-gap.bin", topic("DDATA", DEVICE), "seq 6 after 3: two messages lost, readings kept",
         ddata(6, T0 + 5 * one_minute, {12: 26.5})),
        ("06-ddeath.bin", topic("DDEATH", DEVICE), "the probe goes offline",
         new_payload(timestamp_ms=T0 + 6 * one_minute, seq=7).SerializeToString()),
        ("07-ndeath-stale.bin", topic("NDEATH"), "the will of an earlier connection (bdSeq 6): ignored",
         ndeath(bd_seq=6)),
        ("08-ndeath.bin", topic("NDEATH"), "the node's will: node and probe offline", ndeath(bd_seq=7)),
        ("09-malformed.bin", topic("DDATA", DEVICE), "bytes that are not a Sparkplug payload",
         b"\x0a\xff\xff\xff\xff"),
    ]


def record_json(record: DeviceRecord) -> dict[str, Any]:
    return {
        "device": record.device,
        "available": record.available,
        "ts_ns": record.ts_ns,
        "readings": [{"ts_ns": ts, "metric": name, "value": value, "unit": unit}
                     for ts, name, value, unit in record.readings],
        "errors": [error.split(":")[0] for error in record.errors],
    }


def write_fixtures(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    decoder = SparkplugDecoder()
    messages = []
    for file, message_topic, description, payload in fixture_messages():
        (directory / file).write_bytes(payload)
        records = decoder.decode(message_topic, payload, arrival_ns=0)
        messages.append({"file": file, "topic": message_topic, "description": description,
                         "expected": [record_json(r) for r in records]})
    doc = {
        "family": "sparkplug",
        "notes": (
            "One edge node session, in order (the decoder is stateful: decode the files in this order "
            "with one decoder). Payloads are Sparkplug B protobuf as published. `expected` is what "
            "SparkplugDecoder makes of each message: source metric names, units as the engUnit(s) "
            "property gives them, ts_ns from the metric's or the payload's timestamp (ms), errors as "
            "their codes. Timestamps are fixed (2026-11-27 08:00 UTC on): rewrite them with "
            "sparkplug_payload.parse_payload and SerializeToString, or widen the plausibility window, "
            "to use them later. A registry sensor for the probe: source {family: sparkplug, device: "
            f"{DEVICE_ID}}}; metric table: Sensors/Temperature -> temperature (degC), Sensors/pH -> pH, "
            "Sensors/Turbidity -> turbidity, Sensors/DO -> dissolvedOxygen."
        ),
        "messages": messages,
    }
    (directory / "messages.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def test_fixture_files_decode_to_their_description() -> None:
    doc = json.loads((FIXTURES / "messages.json").read_text())
    decoder = SparkplugDecoder()
    for message in doc["messages"]:
        payload = (FIXTURES / message["file"]).read_bytes()
        records = decoder.decode(message["topic"], payload, arrival_ns=0)
        assert [record_json(r) for r in records] == message["expected"], message["file"]
    by_file = {m["file"]: m["expected"] for m in doc["messages"]}
    # what the lead's end-to-end test relies on, stated independently of the generator
    assert by_file["03-ddata.bin"][0]["readings"][0] == {
        "ts_ns": (T0 + 60_000) * NS, "metric": "Sensors/Temperature", "value": 28.6, "unit": "°C"}
    assert by_file["05-ddata-gap.bin"][0]["errors"] == ["sparkplug_seq_gap"]
    assert [r["available"] for r in by_file["08-ndeath.bin"]] == [False, False]


def test_fixture_files_are_the_generator_s() -> None:
    for file, _topic, _description, payload in fixture_messages():
        assert (FIXTURES / file).read_bytes() == payload, f"{file}: regenerate the fixtures"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-fixtures":
        write_fixtures(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_sparkplug.py --write-fixtures DIRECTORY")


def test_edge_node_sessions_are_bounded():
    decoder = SparkplugDecoder(max_nodes=2)
    for node in ("a", "b", "c"):
        birth = new_payload(timestamp_ms=1764230400000, seq=0)
        add_metric(birth, DataType.UInt64, 1, name="bdSeq")
        records = decoder.decode(f"spBv1.0/g/NBIRTH/{node}", birth.SerializeToString(), arrival_ns=0)
    assert records[0].errors[0].startswith("sparkplug_too_many_nodes")
    assert len(decoder._nodes) == 2
