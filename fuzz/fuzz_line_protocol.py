"""atheris: `encode_line` with tag values and string fields from the input (the strings a device or a
registry can put into a point). The line is one line whatever they hold, and it parses back
(line-protocol-parser, InfluxDB's grammar) to the same tags and fields: nothing injected."""

import math
import sys

import atheris

with atheris.instrument_imports(include=["citywatch"]):
    from citywatch.sinks.line_protocol import LineProtocolError, encode_line

from line_protocol_parser import parse_line

from harness import Outcomes, fuzz
from checks import check_line_round_trip

INJECTIONS = ["\n", "\r\n", " ", ",", "=", "\\", '"', "\\n", "air,sensor=x pm25=1 0", "#", "\t", "'", "\\ "]
outcomes = Outcomes("line_protocol")


def text(fdp: atheris.FuzzedDataProvider) -> str:
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        if fdp.ConsumeBool():
            parts.append(fdp.PickValueInList(INJECTIONS))
        else:
            parts.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8)))
    return "".join(parts).replace("\x00", "")  # InfluxDB itself refuses NUL bytes


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    tags = {"sensor": text(fdp), "area": text(fdp)}
    value = fdp.ConsumeFloat()
    if value != 0 and abs(value) < sys.float_info.min:
        value = 0.0  # subnormal: InfluxDB takes it (checked on influxd 1.6), line-protocol-parser does not
    fields = {"reason": text(fdp), "value": value, "n": fdp.ConsumeInt(8)}
    try:
        # InfluxDB's time range ends one below int64's maximum (which it keeps as a sentinel)
        line = encode_line("alerts", tags, fields, fdp.ConsumeIntInRange(0, 2**63 - 2))
    except LineProtocolError:
        assert not math.isfinite(fields["value"]) or not -(2**63) <= fields["n"] < 2**63
        outcomes.count(["not_representable"])
        return
    check_line_round_trip(line, tags, fields, parse_line)
    outcomes.count(["round_trip"])


if __name__ == "__main__":
    fuzz(test_one)
