"""Physical range check: a reading outside what the sensor can physically report is a fault.

Each series takes its bounds from the sensor registry (`metrics.<name>.min` / `.max`, e.g. a
concentration cannot be negative, a pH probe reads 0-14). A reading below the minimum or above the
maximum is CRITICAL with score 1.0: the device, its wiring or its calibration is broken. The engine
passes the rows this check failed as `skip` to the other detectors, so that a broken sensor does not
also raise, say, a pollution alert.

The check is stateless and evaluates every reading that has a value, late and duplicate ones
included (a broken value is broken whenever it arrives). A NaN value is not evaluated.

Sample configuration (`config/citywatch.yaml`)::

    detectors:
      ## Flag readings outside the min/max given per metric in the sensor registry.
      physical_range: true

"""

from __future__ import annotations

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_NOT_EVALUATED, LEVEL_OK, Detector, DetectorOutput

__all__ = ["PhysicalRangeDetector", "SAMPLE_CONFIG"]

SAMPLE_CONFIG = """\
detectors:
  ## Flag readings outside the min/max given per metric in the sensor registry.
  physical_range: true
"""

REASON_OK = 0
REASON_BELOW_MIN = 1
REASON_ABOVE_MAX = 2


class PhysicalRangeDetector(Detector):
    """Readings outside the registry's physical min/max for their series.

    Parameters
    ----------
    series
        The series index; bounds come from `series.physical_min` / `series.physical_max`
        (NaN: no bound on that side). Series added later are picked up automatically.

    Output per reading: below the minimum -> CRITICAL, score 1.0, reason `below_physical_min`,
    threshold = the minimum; above the maximum -> CRITICAL, score 1.0, reason `above_physical_max`,
    threshold = the maximum; otherwise OK, score 0.0, reason `ok`, threshold NaN. The bounds
    themselves are inside the range. NaN values are not evaluated (level -1, score NaN).

    Examples
    --------
    >>> from citywatch.batch import ReadingBatch
    >>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
    >>> sensor = Sensor(id="wq-01", domain="water", area="dong-nai", lat=10.95, lon=106.82,
    ...                 interval=60, metrics={"ph": MetricSpec(unit="pH", min=0, max=14),
    ...                                       "turbidity": MetricSpec(unit="NTU", min=0)})
    >>> series = SeriesIndex(Registry({sensor.id: sensor}))
    >>> series.add_registry()
    >>> detector = PhysicalRangeDetector(series)
    >>> ph, turbidity = series.get("wq-01", "ph"), series.get("wq-01", "turbidity")
    >>> batch = ReadingBatch.from_columns(
    ...     series=[ph, ph, ph, turbidity, turbidity],
    ...     ts=[1, 2, 3, 1, 2],
    ...     value=[7.2, -0.5, 15.0, -3.0, 1e6],
    ... )
    >>> out = detector.process(batch)
    >>> out.level.tolist()
    [0, 2, 2, 2, 0]
    >>> detector.reason_names(out.reason).tolist()
    ['ok', 'below_physical_min', 'above_physical_max', 'below_physical_min', 'ok']
    >>> out.threshold.tolist()
    [nan, 0.0, 14.0, 0.0, nan]

    """

    name = "physical_range"
    reasons = ("ok", "below_physical_min", "above_physical_max")
    state_fields = {}

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        sid = batch.series
        lo = self.series.physical_min[sid]
        hi = self.series.physical_max[sid]
        x = batch.value
        below = x < lo  # NaN bound or NaN value: False
        above = x > hi
        bad = below | above
        has_value = ~np.isnan(x)
        level = np.where(bad, np.int8(LEVEL_CRITICAL), np.int8(LEVEL_OK))
        level[~has_value] = LEVEL_NOT_EVALUATED
        score = np.where(has_value, bad.astype(np.float64), np.nan)
        reason = np.zeros(len(batch), np.int16)
        reason[below] = REASON_BELOW_MIN
        reason[above] = REASON_ABOVE_MAX
        threshold = np.where(below, lo, np.where(above, hi, np.nan))
        return DetectorOutput(score=score, level=level.astype(np.int8, copy=False), reason=reason,
                              threshold=threshold)
