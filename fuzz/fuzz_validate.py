"""atheris: the whole validation path (`Validator.validate`: topic, registry, decoding, units, time
windows, rate limit) on one message per input. Every rejection has a known reason, is counted under
it and can be dead-lettered; accepted readings are finite.

Input layout: the first byte picks the validator (strict / auto-register and accept / rate-limited)
and the topic, the rest is the payload; so the seed payloads in run.py are reached at once."""

import atheris

with atheris.instrument_imports(include=["citywatch"]):
    from citywatch.ingest.validate import Validator  # noqa: F401  (instrumented before checks imports it)

from harness import Outcomes, fuzz
from checks import ARRIVAL_NS, check_counters, check_validated, make_validator

TOPICS = ["city/air/aq-001/telemetry", "city/air/aq-002/telemetry", "city/water/wq-001/telemetry",
          "city/air/aq-404/telemetry", "city/water/aq-001/telemetry", "city/air/aq 1,x=y/telemetry",
          "city/air/+/telemetry", "city/air/aq-001", "city/noise/n-1/telemetry"]
validators = [make_validator(),
              make_validator(unknown_sensor="auto_register", unknown_metric="accept", max_payload_bytes=4096),
              make_validator(max_messages_per_sensor_per_s=100, rate_limit_burst=3)]
outcomes = Outcomes("validate")
arrival = [ARRIVAL_NS]


def test_one(data: bytes) -> None:
    head = data[0] if data else 0
    v = validators[head % len(validators)]
    topic = TOPICS[(head // len(validators)) % len(TOPICS)]
    arrival[0] += 1_000_000  # 1 ms between messages: the rate-limited validator sees bursts
    dropped_before = v.stats.get("rate_limited_dropped")
    batch, rejections = v.validate([(topic, data[1:], arrival[0])])
    dropped = int(v.stats.get("rate_limited_dropped") - dropped_before)
    kinds = check_validated(v, 1, batch, rejections, dropped)
    check_counters(v.stats)
    if dropped:
        kinds.append("rate_limited_dropped")
    outcomes.count(kinds)


if __name__ == "__main__":
    fuzz(test_one)
