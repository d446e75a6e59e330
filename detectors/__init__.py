"""Detectors: vectorised, per-series checks on micro-batches of readings.

One detector per module, on the small base class in `citywatch.detectors.base`. The engine runs,
in this order (each configured by its section of `detectors:`, see the module's `SAMPLE_CONFIG`):

* `physical_range`: readings outside the registry's physical min/max (they skip the others);
* `threshold`: warn/crit thresholds with hysteresis and a for-duration (QCVN limits);
* data quality: `stuck` (flatline), `spike` (rate of change), `drift` (calibration drift against
  the sensor's own baseline and its neighbours), and per device `no_data` (late / offline, checked
  on the engine's clock rather than per reading);
* `anomaly`: the default statistical profile, one calibrated score in [0, 1] per reading, combining
  a robust z-score, EWMA/CUSUM level shifts, variance shifts and range novelty;
* `seasonal`: expected level by local time of day and day type, count-aware for traffic;
* `traffic_zero`: a true zero (a side street at night) against a dead camera;
* `spatial`: each sensor against its same-domain neighbours: "sensor suspect" or "area event".

`build_detectors` makes the list the engine runs, from the `detectors:` section of the config.

>>> from citywatch.config import DetectorsConfig
>>> from citywatch.registry import Registry, SeriesIndex
>>> cfg = DetectorsConfig(thresholds=qcvn05_2023_air_rules())
>>> [d.name for d in build_detectors(SeriesIndex(Registry({})), cfg)]
['physical_range', 'threshold', 'stuck', 'spike', 'drift', 'anomaly', 'seasonal', 'traffic_zero', 'spatial']
>>> [d.name for d in build_detectors(SeriesIndex(Registry({})), DetectorsConfig(anomaly=None, spatial=False))]
['physical_range', 'stuck', 'spike', 'drift', 'seasonal', 'traffic_zero']
>>> rule = qcvn05_2023_air_rules()[0]
>>> (rule.metric, rule.warn, rule.warn_reset, rule.crit, rule.crit_reset)
('no2', 160.0, 144.0, 200.0, 180.0)
"""

from __future__ import annotations

from citywatch.config import DetectorsConfig, ThresholdRule
from citywatch.detectors.base import (
    LEVEL_CRITICAL,
    LEVEL_NAMES,
    LEVEL_NOT_EVALUATED,
    LEVEL_OK,
    LEVEL_WARNING,
    Detector,
    DetectorOutput,
)
from citywatch.detectors.physical_range import PhysicalRangeDetector
from citywatch.detectors.threshold import ThresholdDetector
from citywatch.registry import SeriesIndex

__all__ = [
    "Detector",
    "DetectorOutput",
    "LEVEL_CRITICAL",
    "LEVEL_NAMES",
    "LEVEL_NOT_EVALUATED",
    "LEVEL_OK",
    "LEVEL_WARNING",
    "PhysicalRangeDetector",
    "ThresholdDetector",
    "build_detectors",
    "qcvn05_2023_air_rules",
]

# QCVN 05:2023/BTNMT (Vietnam's national technical regulation on ambient air quality), 1-hour
# average limits in ug/m3.
_QCVN05_2023_1H_UG_M3 = {"no2": 200.0, "so2": 350.0, "o3": 200.0, "co": 30000.0}


def qcvn05_2023_air_rules() -> list[ThresholdRule]:
    """Threshold rules for air from the QCVN 05:2023 1-hour limits (ug/m3).

    crit = the limit, warn = 80 % of it; each reset level is 90 % of its level. The deployed YAML
    config lists these rules explicitly; this function is for tests and documentation.
    """
    rules = []
    for metric, limit in _QCVN05_2023_1H_UG_M3.items():
        warn = round(0.8 * limit, 6)
        rules.append(
            ThresholdRule(
                metric=metric,
                domain="air",
                direction="above",
                warn=warn,
                warn_reset=round(0.9 * warn, 6),
                crit=limit,
                crit_reset=round(0.9 * limit, 6),
                source="QCVN 05:2023/BTNMT 1-hour limit",
            )
        )
    return rules


def build_detectors(series: SeriesIndex, cfg: DetectorsConfig) -> list[Detector]:
    """The per-reading detectors the config enables, in the order the engine runs them.

    The physical range check comes first (when `physical_range` is on), so that the engine can pass
    the readings it failed as `skip` to every detector after it.
    """
    from citywatch.detectors.anomaly_score import AnomalyScore
    from citywatch.detectors.drift import DriftDetector
    from citywatch.detectors.ewma_cusum import EwmaCusum
    from citywatch.detectors.range_novelty import RangeNovelty
    from citywatch.detectors.robust_zscore import RobustZScore
    from citywatch.detectors.seasonal_baseline import SeasonalBaseline
    from citywatch.detectors.spatial import SpatialDetector
    from citywatch.detectors.spike import SpikeDetector
    from citywatch.detectors.stuck import StuckDetector
    from citywatch.detectors.traffic_zero import TrafficZeroDetector
    from citywatch.detectors.variance_shift import VarianceShift

    def on(section) -> bool:
        return section is not None and getattr(section, "enabled", True)

    detectors: list[Detector] = []
    if cfg.physical_range:
        detectors.append(PhysicalRangeDetector(series))
    if cfg.thresholds:
        detectors.append(ThresholdDetector(series, cfg.thresholds))
    for section, cls in ((cfg.stuck, StuckDetector), (cfg.spike, SpikeDetector), (cfg.drift, DriftDetector),
                         (cfg.robust_zscore, RobustZScore), (cfg.ewma_cusum, EwmaCusum),
                         (cfg.variance_shift, VarianceShift), (cfg.range_novelty, RangeNovelty),
                         (cfg.anomaly, AnomalyScore),
                         (cfg.seasonal, SeasonalBaseline), (cfg.traffic_zero, TrafficZeroDetector),
                         (cfg.spatial, SpatialDetector)):
        if on(section):
            detectors.append(cls(series, section))
    return detectors
