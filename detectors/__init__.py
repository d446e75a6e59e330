"""Detectors: vectorised, per-series checks on micro-batches of readings.

One detector per module, on the small base class in `citywatch.detectors.base`:

* `PhysicalRangeDetector` (`physical_range`): readings outside the registry's physical min/max;
* `ThresholdDetector` (`threshold`): warn/crit thresholds with hysteresis and a for-duration.

`build_detectors` makes the list the engine runs, from the `detectors:` section of the config.

>>> from citywatch.config import DetectorsConfig
>>> from citywatch.registry import Registry, SeriesIndex
>>> cfg = DetectorsConfig(thresholds=qcvn05_2023_air_rules())
>>> [d.name for d in build_detectors(SeriesIndex(Registry({})), cfg)]
['physical_range', 'threshold']
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
    """The detectors the config enables, in the order the engine runs them.

    The physical range check comes first (when `physical_range` is on), so that the engine can pass
    the readings it failed as `skip` to the threshold detector, which follows when rules are given.
    """
    detectors: list[Detector] = []
    if cfg.physical_range:
        detectors.append(PhysicalRangeDetector(series))
    if cfg.thresholds:
        detectors.append(ThresholdDetector(series, cfg.thresholds))
    return detectors
