"""The Sparkplug B payload: its protobuf schema, metric datatypes, and reading and writing metrics.

The wire format is Sparkplug B's `Payload` message (Eclipse Sparkplug 3.0, the protobuf definition
in its specification, as Eclipse Tahu ships it). The schema is declared here as a descriptor and
the protobuf runtime builds the message classes from it, in a private descriptor pool (so another
library's Sparkplug module cannot clash with it); parsing and serialising are the runtime's.
Field numbers and types follow the specification. Fields declared nowhere here (extensions, the
Template parameters) are kept by protobuf as unknown fields and ignored.

Value rules (specification 6.4.16-6.4.17): Int8/Int16/Int32 and the UInt8/16/32 types travel in
`int_value` (uint32), Int64/UInt64/DateTime in `long_value` (uint64); negative integers are two's
complement, which encoders write either at the type's width (Tahu's Python client) or sign-extended
to 32/64 bits (Tahu's Java client), so reading takes the low bits of the type's width.
`Float` travels as a 32-bit float: it is read as the shortest decimal that round-trips in 32 bits
(21.3, not 21.299999237060547), which is the value the device meant.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

__all__ = [
    "DataType",
    "DecodeError",
    "NUMERIC_TYPES",
    "Payload",
    "add_metric",
    "metric_unit",
    "metric_value",
    "new_payload",
    "parse_payload",
]


class DataType(IntEnum):
    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21
    Int8Array = 22
    Int16Array = 23
    Int32Array = 24
    Int64Array = 25
    UInt8Array = 26
    UInt16Array = 27
    UInt32Array = 28
    UInt64Array = 29
    FloatArray = 30
    DoubleArray = 31
    BooleanArray = 32
    StringArray = 33
    DateTimeArray = 34


NUMERIC_TYPES = frozenset({
    DataType.Int8, DataType.Int16, DataType.Int32, DataType.Int64,
    DataType.UInt8, DataType.UInt16, DataType.UInt32, DataType.UInt64,
    DataType.Float, DataType.Double,
})
# Passed on as they are: the mapper or validator decides what a boolean or a text is worth.
RAW_TYPES = frozenset({DataType.Boolean, DataType.String, DataType.Text, DataType.UUID, DataType.DateTime})
_SIGNED_BITS = {DataType.Int8: 8, DataType.Int16: 16, DataType.Int32: 32, DataType.Int64: 64}
_UNSIGNED_BITS = {DataType.UInt8: 8, DataType.UInt16: 16, DataType.UInt32: 32, DataType.UInt64: 64}

# ------------------------------------------------------------------------------------------ schema
_PACKAGE = "citywatch.sparkplug_b"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
}
_VALUE_ONEOF = "value"

# message -> [(field, number, type, "repeated" | "optional" | "value" (optional, in the oneof "value"))]
_SCHEMA: dict[str, list[tuple[str, int, str, str]]] = {
    "Payload": [
        ("timestamp", 1, "uint64", "optional"),
        ("metrics", 2, "Metric", "repeated"),
        ("seq", 3, "uint64", "optional"),
        ("uuid", 4, "string", "optional"),
        ("body", 5, "bytes", "optional"),
    ],
    "Metric": [
        ("name", 1, "string", "optional"),
        ("alias", 2, "uint64", "optional"),
        ("timestamp", 3, "uint64", "optional"),
        ("datatype", 4, "uint32", "optional"),
        ("is_historical", 5, "bool", "optional"),
        ("is_transient", 6, "bool", "optional"),
        ("is_null", 7, "bool", "optional"),
        ("metadata", 8, "MetaData", "optional"),
        ("properties", 9, "PropertySet", "optional"),
        ("int_value", 10, "uint32", "value"),
        ("long_value", 11, "uint64", "value"),
        ("float_value", 12, "float", "value"),
        ("double_value", 13, "double", "value"),
        ("boolean_value", 14, "bool", "value"),
        ("string_value", 15, "string", "value"),
        ("bytes_value", 16, "bytes", "value"),
        ("dataset_value", 17, "DataSet", "value"),
        ("template_value", 18, "Template", "value"),
    ],
    "MetaData": [
        ("is_multi_part", 1, "bool", "optional"),
        ("content_type", 2, "string", "optional"),
        ("size", 3, "uint64", "optional"),
        ("seq", 4, "uint64", "optional"),
        ("file_name", 5, "string", "optional"),
        ("file_type", 6, "string", "optional"),
        ("md5", 7, "string", "optional"),
        ("description", 8, "string", "optional"),
    ],
    "PropertySet": [
        ("keys", 1, "string", "repeated"),
        ("values", 2, "PropertyValue", "repeated"),
    ],
    "PropertySetList": [
        ("propertyset", 1, "PropertySet", "repeated"),
    ],
    "PropertyValue": [
        ("type", 1, "uint32", "optional"),
        ("is_null", 2, "bool", "optional"),
        ("int_value", 3, "uint32", "value"),
        ("long_value", 4, "uint64", "value"),
        ("float_value", 5, "float", "value"),
        ("double_value", 6, "double", "value"),
        ("boolean_value", 7, "bool", "value"),
        ("string_value", 8, "string", "value"),
        ("propertyset_value", 9, "PropertySet", "value"),
        ("propertysets_value", 10, "PropertySetList", "value"),
    ],
    "DataSet": [
        ("num_of_columns", 1, "uint64", "optional"),
        ("columns", 2, "string", "repeated"),
        ("types", 3, "uint32", "repeated"),
        ("rows", 4, "DataSetRow", "repeated"),
    ],
    "DataSetRow": [
        ("elements", 1, "DataSetValue", "repeated"),
    ],
    "DataSetValue": [
        ("int_value", 1, "uint32", "value"),
        ("long_value", 2, "uint64", "value"),
        ("float_value", 3, "float", "value"),
        ("double_value", 4, "double", "value"),
        ("boolean_value", 5, "bool", "value"),
        ("string_value", 6, "string", "value"),
    ],
    "Template": [
        ("version", 1, "string", "optional"),
        ("metrics", 2, "Metric", "repeated"),
        ("template_ref", 4, "string", "optional"),
        ("is_definition", 5, "bool", "optional"),
    ],
}


def _build_classes() -> dict[str, type[Message]]:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="citywatch/sparkplug_b.proto", package=_PACKAGE, syntax="proto2")
    for message_name, fields in _SCHEMA.items():
        message = file_proto.message_type.add(name=message_name)
        if any(kind == "value" for *_, kind in fields):
            message.oneof_decl.add(name=_VALUE_ONEOF)
        for field_name, number, type_name, kind in fields:
            field = message.field.add(
                name=field_name, number=number,
                label=_F.LABEL_REPEATED if kind == "repeated" else _F.LABEL_OPTIONAL)
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{type_name}"
            if kind == "value":
                field.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _SCHEMA}


_CLASSES = _build_classes()
Payload: Any = _CLASSES["Payload"]


# ----------------------------------------------------------------------------------------- reading
def parse_payload(data: bytes) -> Any:
    """A `Payload` from its bytes; protobuf's `DecodeError` when they are not one."""
    payload = Payload()
    payload.ParseFromString(bytes(data))
    return payload


def _float32(value: float) -> float:
    return float(str(np.float32(value)))


def metric_value(metric: Any, datatype: DataType | None) -> tuple[object, str | None]:
    """(value, None) or (None, why it is not a reading). `is_null` and an absent value give None.

    `datatype` is the metric's own or, for DATA metrics that leave it out, the one from its BIRTH;
    None when neither is known (the value is then read by its wire field alone).
    """
    if metric.is_null:
        return None, None
    field = metric.WhichOneof(_VALUE_ONEOF)
    if field is None:
        return None, None
    if datatype is not None and datatype not in NUMERIC_TYPES and datatype not in RAW_TYPES:
        return None, f"a {datatype.name} value is not a reading"
    if field in ("bytes_value", "dataset_value", "template_value"):
        return None, f"a {field.removesuffix('_value')} value is not a reading"
    value = getattr(metric, field)
    if field in ("int_value", "long_value"):
        if datatype in _SIGNED_BITS:
            bits = _SIGNED_BITS[datatype]
            value &= (1 << bits) - 1
            if value >= 1 << (bits - 1):
                value -= 1 << bits
        elif datatype in _UNSIGNED_BITS:
            value &= (1 << _UNSIGNED_BITS[datatype]) - 1
        elif datatype is DataType.Float or datatype is DataType.Double:
            value = float(value)
    elif field == "float_value":
        value = _float32(value)
    return value, None


def _property_value(value: Any) -> object:
    if value.is_null:
        return None
    field = value.WhichOneof(_VALUE_ONEOF)
    return None if field is None else getattr(value, field)


def metric_unit(metric: Any) -> str | None:
    """The metric's engineering unit: its property "engUnit" (or "engUnits"), when it has one."""
    if not metric.HasField("properties"):
        return None
    props = metric.properties
    for key, value in zip(props.keys, props.values):
        if key in ("engUnit", "engUnits"):
            unit = _property_value(value)
            return unit if isinstance(unit, str) and unit else None
    return None


# ----------------------------------------------------------------------------------------- writing
def new_payload(*, timestamp_ms: int | None = None, seq: int | None = None) -> Any:
    payload = Payload()
    if timestamp_ms is not None:
        payload.timestamp = timestamp_ms
    if seq is not None:
        payload.seq = seq
    return payload


def add_metric(
    payload: Any,
    datatype: DataType,
    value: object,
    *,
    name: str | None = None,
    alias: int | None = None,
    timestamp_ms: int | None = None,
    unit: str | None = None,
    declare_datatype: bool = True,
) -> Any:
    """Append a metric as an edge node writes it (value None: `is_null`). Returns the metric.

    `declare_datatype=False` leaves the datatype out, as DATA messages should (the BIRTH gave it).
    """
    metric = payload.metrics.add()
    if name is not None:
        metric.name = name
    if alias is not None:
        metric.alias = alias
    if timestamp_ms is not None:
        metric.timestamp = timestamp_ms
    if declare_datatype:
        metric.datatype = int(datatype)
    if unit is not None:
        metric.properties.keys.append("engUnit")
        metric.properties.values.add(type=int(DataType.String), string_value=unit)
    if value is None:
        metric.is_null = True
    elif datatype in _SIGNED_BITS or datatype in _UNSIGNED_BITS or datatype is DataType.DateTime:
        bits = _SIGNED_BITS.get(datatype) or _UNSIGNED_BITS.get(datatype) or 64
        field = "long_value" if bits == 64 else "int_value"
        setattr(metric, field, int(value) & ((1 << bits) - 1))  # type: ignore[call-overload]
    elif datatype is DataType.Float:
        metric.float_value = value
    elif datatype is DataType.Double:
        metric.double_value = value
    elif datatype is DataType.Boolean:
        metric.boolean_value = bool(value)
    elif datatype in (DataType.String, DataType.Text, DataType.UUID):
        metric.string_value = value
    elif datatype in (DataType.Bytes, DataType.File) or datatype.name.endswith("Array"):
        metric.bytes_value = value
    else:
        raise ValueError(f"add_metric cannot write a {datatype.name} value")
    return metric
