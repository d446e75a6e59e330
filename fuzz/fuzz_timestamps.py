"""atheris: `timestamp_ns` on integers, floats and strings: an int64 ns time after 1970, or
`TimestampError`, nothing else."""

import atheris

with atheris.instrument_imports(include=["citywatch"]):
    from citywatch.ingest.payloads import TimestampError, timestamp_ns

from harness import Outcomes, fuzz
from checks import INT64_MAX

outcomes = Outcomes("timestamps")


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        raw = fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 40))
    elif kind == 1:
        raw = fdp.ConsumeFloat()
    elif kind == 2:
        raw = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    else:  # RFC 3339 shaped, with random digits
        digits = "".join(str(fdp.ConsumeIntInRange(0, 9)) for _ in range(14))
        frac = "".join(str(fdp.ConsumeIntInRange(0, 9)) for _ in range(fdp.ConsumeIntInRange(0, 12)))
        zone = fdp.PickValueInList(["Z", "z", "+07:00", "-0930", "+99:99", "", "+07"])
        raw = (f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}{fdp.PickValueInList(['T', 't', ' ', '_'])}"
               f"{digits[8:10]}:{digits[10:12]}:{digits[12:14]}{'.' + frac if frac else ''}{zone}")
    try:
        ns = timestamp_ns(raw)
    except TimestampError:
        outcomes.count(["bad_timestamp"])
        return
    assert type(ns) is int and 0 < ns <= INT64_MAX, (raw, ns)
    outcomes.count(["ok"])


if __name__ == "__main__":
    fuzz(test_one)
