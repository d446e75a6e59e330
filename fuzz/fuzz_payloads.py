"""atheris: `decode_payload` over arbitrary bytes (JSON objects, backlog arrays, SenML, garbage)."""

import atheris

with atheris.instrument_imports(include=["citywatch"]):
    from citywatch.ingest.payloads import decode_payload

from harness import Outcomes, fuzz
from checks import ARRIVAL_NS, check_decoded

outcomes = Outcomes("payloads")


def test_one(data: bytes) -> None:
    outcomes.count(check_decoded(decode_payload(data, ARRIVAL_NS)))


if __name__ == "__main__":
    fuzz(test_one)
