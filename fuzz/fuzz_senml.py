"""atheris: SenML (RFC 8428) records built field by field from the input, then decoded.

Random bytes seldom get past the JSON parser; this harness spends its inputs on SenML structure
instead: base fields and records with every key the decoder knows, values of every JSON type."""

import json

import atheris

with atheris.instrument_imports(include=["citywatch"]):
    from citywatch.ingest.payloads import SENML_KEYS, decode_payload

from harness import Outcomes, fuzz
from checks import ARRIVAL_NS, check_decoded

KEYS = sorted(SENML_KEYS | {"t", "u", "s", "ut", "x"})
NAMES = ["pm25", "no2", "aq-001:", "aq-001/pm25", "urn:dev:aq-001:", "", "ph", "a/b/"]
UNITS = ["ug/m3", "mg/m3", "Cel", "%", "/", "", "GQ"]
outcomes = Outcomes("senml")


def value(fdp: atheris.FuzzedDataProvider, key: str):
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 12))
    if kind == 1:
        return fdp.ConsumeFloat()
    if kind == 2:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16))
    if kind == 3:
        return fdp.ConsumeBool()
    if kind == 4:
        return None
    if kind == 5:
        return [fdp.ConsumeRegularFloat()]
    if kind == 6:
        return fdp.PickValueInList(NAMES)
    if kind == 7:
        return fdp.PickValueInList(UNITS)
    if kind == 8:  # plausible times: absolute seconds, milliseconds, relative
        return fdp.PickValueInList([1_795_000_000, 1_795_000_000_000, -60, 0, 2**28, 1e300])
    return fdp.ConsumeRegularFloat()


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    records = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        records.append({fdp.PickValueInList(KEYS): value(fdp, "") for _ in range(fdp.ConsumeIntInRange(0, 6))})
    doc = records[0] if len(records) == 1 and fdp.ConsumeBool() else records
    payload = json.dumps(doc, allow_nan=True).encode()  # NaN/Infinity literals too, as a device might
    outcomes.count(check_decoded(decode_payload(payload, ARRIVAL_NS)))


if __name__ == "__main__":
    fuzz(test_one)
