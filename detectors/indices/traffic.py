"""Traffic indicators from camera counts: flow, PCU, occupancy, speed ratio, TTI, level of service.

Inputs are arrays of any common shape, e.g. (n_cameras, n_intervals). The registry's traffic
metrics are ``intensity`` (vehicles counted in the reporting interval, all classes together),
``occupancy`` (fraction 0..1 of the interval the detection zone was occupied) and
``averageVehicleSpeed`` (km/h).

* **Flow** q = count x 3600 / Δt (veh/h), per lane when divided by the number of lanes.
* **PCU/h** weights each vehicle class by its passenger-car-unit factor. With per-class counts
  (`pcu_flow(counts_by_class=...)`) the counts are weighted directly; with only the total count
  (our cameras' ``intensity``) a **vehicle mix** (class shares summing to 1) gives an effective
  factor per vehicle. `DEFAULT_MIX` is a *placeholder* for motorbike-dominated Biên Hòa streets
  (85 % motorbikes), not a measurement: calibrate it per road from classified counts.
* **PCU factors** `PCU_FACTORS_TCVN4054_PLAIN` (and `..._MOUNTAIN`): TCVN 4054:2005 Bảng 2 as
  recalled by the domain reference (low-medium confidence: the text was not retrieved; urban
  roads fall under TCVN 13592:2022, not checked). Always a parameter.
* **Occupancy** % = 100 x occupied time / Δt; **density** k = q / v (veh/km, per lane if q is).
* **Speed**: `space_mean_speed` (harmonic mean of spot speeds; the one for q = k v);
  **speed ratio** v / v_ff and **travel-time index** TTI = v_ff / v (= actual / free-flow
  travel time over the same length; inf when v = 0). **v/c** = PCU flow per lane / capacity.
* **Peak-hour factor** PHF = V_hour / (4 x max V_15min).
* **Level of service** `level_of_service` with `LOS_TABLES`: HCM signalized and unsignalized
  intersection control delay (s/veh), basic freeway density (pc/km/ln, the pc/mi/ln bounds /
  1.609344) and urban street travel speed as % of free-flow speed (the default for our cameras;
  medium confidence, "from memory" in the reference). v/c > 1 is F whatever the measure. HCM
  bands are calibrated for car traffic: for motorbike-dominated streets use the speed ratio or v/c
  with a locally calibrated capacity, as the reference advises. All bands are parameters.

The reference's test vector: 15 minutes on a 3-lane approach, 900 motorbikes, 120 cars, 10 large
buses, 20 two-axle trucks:

>>> counts = {"motorbike": 900, "car": 120, "bus_large": 10, "truck_2axle": 20}
>>> float(flow_veh_per_hour(1050, 900))
4200.0
>>> pcu = pcu_flow(counts, interval_s=900)
>>> float(pcu), round(float(pcu / 3), 1), round(float(vc_ratio(pcu / 3, 1800)), 2)
(1820.0, 606.7, 0.34)

Speeds on an urban street with a 50 km/h free-flow speed:

>>> level_of_service(100 * speed_ratio([45, 38, 30, 22, 12], 50)).tolist()
['A', 'B', 'C', 'D', 'F']

Sample configuration (a proposed ``indices:`` section; not read by the engine yet): `SAMPLE_CONFIG`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_MIX",
    "LOS_LETTERS",
    "LOS_TABLES",
    "LosTable",
    "PCU_FACTORS_TCVN4054_MOUNTAIN",
    "PCU_FACTORS_TCVN4054_PLAIN",
    "SAMPLE_CONFIG",
    "density",
    "effective_pcu_factor",
    "flow_veh_per_hour",
    "level_of_service",
    "occupancy_percent",
    "pcu_flow",
    "peak_hour_factor",
    "space_mean_speed",
    "speed_ratio",
    "travel_time_index",
    "vc_ratio",
]

SAMPLE_CONFIG = """\
indices:
  traffic:
    ## Per road class; values are placeholders to calibrate locally
    free_flow_speed: 50        # km/h
    lanes: 2
    capacity_per_lane: 1800    # PCU/h/lane (example value only)
    pcu_factors: {bicycle: 0.2, motorbike: 0.3, car: 1.0, bus_small: 2.0, truck_2axle: 2.0,
                  bus_large: 2.5, truck_3axle: 2.5, trailer: 4.0}   # TCVN 4054:2005, plain
    mix: {motorbike: 0.85, car: 0.10, bus_small: 0.01, truck_2axle: 0.02, bus_large: 0.01, truck_3axle: 0.01}
    los: urban_speed_pct       # or signalized_delay, unsignalized_delay, freeway_density
"""

#: TCVN 4054:2005 Bảng 2 (plain/hilly terrain): PCU per vehicle.
PCU_FACTORS_TCVN4054_PLAIN: dict[str, float] = {
    "bicycle": 0.2, "motorbike": 0.3, "car": 1.0, "bus_small": 2.0, "truck_2axle": 2.0,
    "bus_large": 2.5, "truck_3axle": 2.5, "trailer": 4.0,
}
#: TCVN 4054:2005 Bảng 2 (mountain terrain).
PCU_FACTORS_TCVN4054_MOUNTAIN: dict[str, float] = {
    "bicycle": 0.2, "motorbike": 0.2, "car": 1.0, "bus_small": 2.5, "truck_2axle": 2.5,
    "bus_large": 3.0, "truck_3axle": 3.0, "trailer": 5.0,
}
#: Placeholder vehicle mix (shares of the total count) for when only the total is counted.
DEFAULT_MIX: dict[str, float] = {
    "motorbike": 0.85, "car": 0.10, "bus_small": 0.01, "truck_2axle": 0.02, "bus_large": 0.01, "truck_3axle": 0.01,
}

LOS_LETTERS = ("A", "B", "C", "D", "E", "F")


class LosTable(NamedTuple):
    """Five bounds between A..F. higher_is_better=False: A <= b0 < B <= b1 ... (upper-inclusive);
    True: A > b0 >= B > b1 ... (F <= b4)."""

    bounds: tuple[float, ...]
    higher_is_better: bool


_MI = 1.609344
LOS_TABLES: dict[str, LosTable] = {
    "signalized_delay": LosTable((10, 20, 35, 55, 80), False),  # s/veh
    "unsignalized_delay": LosTable((10, 15, 25, 35, 50), False),  # s/veh
    "freeway_density": LosTable(tuple(b / _MI for b in (11, 18, 26, 35, 45)), False),  # pc/km/ln
    "urban_speed_pct": LosTable((80, 67, 50, 40, 30), True),  # % of free-flow speed
}


def flow_veh_per_hour(count, interval_s, lanes=1) -> np.ndarray:
    """Vehicles per hour (per lane when `lanes` > 1) from a count over `interval_s` seconds."""
    return np.asarray(count, dtype=np.float64) * 3600.0 / np.asarray(interval_s, dtype=np.float64) / lanes


def effective_pcu_factor(mix: Mapping[str, float] = DEFAULT_MIX,
                         factors: Mapping[str, float] = PCU_FACTORS_TCVN4054_PLAIN) -> float:
    """PCU per vehicle of a mix (shares are normalised to sum to 1).

    >>> round(effective_pcu_factor(), 3)
    0.465
    """
    unknown = set(mix) - set(factors)
    if unknown:
        raise ValueError(f"no PCU factor for vehicle class(es) {sorted(unknown)}")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("the vehicle mix has no positive share")
    return sum(share * factors[c] for c, share in mix.items()) / total


def pcu_flow(counts_by_class: Mapping[str, np.ndarray | float] | None = None, *, total=None, interval_s,
             lanes=1, factors: Mapping[str, float] = PCU_FACTORS_TCVN4054_PLAIN,
             mix: Mapping[str, float] = DEFAULT_MIX) -> np.ndarray:
    """PCU/h (per lane when `lanes` > 1): from per-class counts, or from a `total` count and `mix`."""
    if counts_by_class is not None:
        unknown = set(counts_by_class) - set(factors)
        if unknown:
            raise ValueError(f"no PCU factor for vehicle class(es) {sorted(unknown)}")
        pcu = sum(np.asarray(n, dtype=np.float64) * factors[c] for c, n in counts_by_class.items())
    elif total is not None:
        pcu = np.asarray(total, dtype=np.float64) * effective_pcu_factor(mix, factors)
    else:
        raise ValueError("give counts_by_class or total")
    return flow_veh_per_hour(pcu, interval_s, lanes)


def occupancy_percent(occupied_s, interval_s=None) -> np.ndarray:
    """Occupancy in %: 100 x occupied time / interval, or 100 x a fraction when no interval."""
    x = np.asarray(occupied_s, dtype=np.float64)
    return 100.0 * (x if interval_s is None else x / np.asarray(interval_s, dtype=np.float64))


def density(flow, speed) -> np.ndarray:
    """k = q / v (veh/km for veh/h and km/h); NaN when v is 0."""
    v = np.asarray(speed, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(v > 0, np.asarray(flow, dtype=np.float64) / v, np.nan)


def space_mean_speed(spot_speeds, axis=-1) -> np.ndarray:
    """Harmonic mean of spot speeds along `axis`, NaN skipped.

    >>> round(float(space_mean_speed([30, 40, 20, 35])), 1)
    29.2
    """
    v = np.asarray(spot_speeds, dtype=np.float64)
    present = ~np.isnan(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(present, 1.0 / v, 0.0).sum(axis=axis)
        return present.sum(axis=axis) / inv


def speed_ratio(speed, free_flow_speed) -> np.ndarray:
    """v / v_ff (a fraction; x 100 for the % used by `LOS_TABLES['urban_speed_pct']`)."""
    return np.asarray(speed, dtype=np.float64) / np.asarray(free_flow_speed, dtype=np.float64)


def travel_time_index(speed, free_flow_speed) -> np.ndarray:
    """Actual / free-flow travel time = v_ff / v (inf when v = 0)."""
    with np.errstate(divide="ignore"):
        return np.asarray(free_flow_speed, dtype=np.float64) / np.asarray(speed, dtype=np.float64)


def vc_ratio(pcu_per_hour_per_lane, capacity_per_lane) -> np.ndarray:
    """Volume / capacity, both in PCU/h/lane."""
    return np.asarray(pcu_per_hour_per_lane, dtype=np.float64) / np.asarray(capacity_per_lane, dtype=np.float64)


def peak_hour_factor(counts_15min, axis=-1) -> np.ndarray:
    """PHF = hourly volume / (4 x the largest 15-min count) over four 15-min counts on `axis`.

    >>> round(float(peak_hour_factor([250, 300, 340, 290])), 3)
    0.868
    """
    c = np.asarray(counts_15min, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return c.sum(axis=axis) / (4.0 * c.max(axis=axis))


def level_of_service(measure, kind: str = "urban_speed_pct", *, vc=None,
                     tables: Mapping[str, LosTable] = LOS_TABLES) -> np.ndarray:
    """LOS letter 'A'..'F' per value ('' for NaN); F wherever `vc` > 1.

    >>> level_of_service([10, 10.1, 80, 80.5], "signalized_delay").tolist()
    ['A', 'B', 'E', 'F']
    """
    table = tables[kind]
    # Remove floating-point noise so that a value computed as exactly a bound (100 x 40/50 =
    # 80.00000000000001) falls on the bound.
    x = np.round(np.asarray(measure, dtype=np.float64), 6)
    b = np.asarray(table.bounds, dtype=np.float64)
    if table.higher_is_better:
        idx = (x[..., None] <= b).sum(axis=-1)
    else:
        idx = np.searchsorted(b, x, side="left")
    if vc is not None:
        idx = np.where(np.asarray(vc, dtype=np.float64) > 1.0, 5, idx)
        x = np.where(np.asarray(vc, dtype=np.float64) > 1.0, 0.0, x)
    return np.where(np.isnan(x), "", np.asarray(LOS_LETTERS)[np.clip(idx, 0, 5)])
