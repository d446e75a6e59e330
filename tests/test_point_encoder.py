"""The engine's cached line-protocol encoding equals the general encoder, escaping included."""

from __future__ import annotations

import numpy as np
from line_protocol_parser import parse_line

from citywatch.batch import ReadingBatch
from citywatch.detectors.base import Detector, DetectorOutput
from citywatch.evaluate import PointEncoder
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.sinks.line_protocol import encode_line


class _Fixed(Detector):
    name = "fixed"
    reasons = ("ok", "sensor_suspect", "area event, odd=name")

    def _process(self, batch: ReadingBatch) -> DetectorOutput:  # pragma: no cover - not used
        raise AssertionError


def test_anomaly_points_equal_the_general_encoder():
    reg = RegistryFile.model_validate({"sensors": [
        {"id": "aq-1", "domain": "air", "area": "Tân Phong, Biên Hòa", "lat": 11, "lon": 107, "interval": 60,
         "metrics": {"pm25": {"unit": "ug/m3"}, "no2": {"unit": "ug/m3"}}}]})
    series = SeriesIndex(Registry({s.id: s for s in reg.sensors}))
    series.add_registry()
    det = _Fixed(series)
    batch = ReadingBatch.from_columns([0, 0, 1, 1], [10, 20, 30, 40], [12.5, 250.0, 3e-7, 1e12])
    out = DetectorOutput(np.array([0.2, np.nan, 1.0, 0.75]), np.array([0, 1, 2, 1], np.int8),
                         np.array([0, 1, 2, 1], np.int16), np.array([np.nan, 200.0, np.nan, 1.5]))
    lines = PointEncoder(series).anomalies(batch, [det], [out])
    expected = []
    for r in (1, 2, 3):
        sid = int(batch.series[r])
        fields = {"score": float(np.nan_to_num(out.score[r])), "level": int(out.level[r]), "value": float(batch.value[r])}
        if not np.isnan(out.threshold[r]):
            fields["threshold"] = float(out.threshold[r])
        expected.append(encode_line("anomalies", {
            "sensor": series.sensor_ids[sid], "area": series.areas[sid], "domain": series.domains[sid],
            "metric": series.metrics[sid], "detector": det.name, "reason": det.reasons[int(out.reason[r])]},
            fields, int(batch.ts[r])))
    # the same points: the same measurement, tags, typed field values and time ("250.0" and "250" are
    # the same float field in line protocol)
    assert [parse_line(line) for line in lines] == [parse_line(line) for line in expected]
    assert all("inf" not in line and "nan" not in line for line in lines)
