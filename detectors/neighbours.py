"""Neighbour graph per domain: which series are the spatial neighbours of each series.

The neighbours of a series (sensor S, metric M) are the series of the *same metric* on *other
sensors of the same domain* whose registry coordinates lie within ``radius_km`` of S (great-circle
distance, haversine), nearest first, at most ``k`` of them. ``radius_km: null`` means "the k
nearest, however far". Sensors without coordinates (auto-registered ones) have no neighbours and
are nobody's neighbour.

Interface (used by the spatial and drift detectors):

* ``NeighbourGraph(series, config)``; ``graph.update()`` brings it up to date with the series
  index (cheap when nothing was added; a rebuild when series were added). Detectors call it from
  their ``_on_new_series`` hook or at the start of a batch.
* ``graph.index``: int64 array ``(n_series, k)``; row ``sid`` holds the neighbour series ids of
  ``sid``, nearest first, padded with -1.
* ``graph.distance_km``: float64 array ``(n_series, k)``; the matching distances, ``inf`` where
  padded.
* ``graph.count``: int64 array ``(n_series,)``; the number of real neighbours per row.
* ``graph.neighbours(sid)``: the real neighbour ids of one series (convenience, for tests/tools).
* ``latest_neighbour_values(graph, ...)``: for some rows of a sorted batch, each neighbour's latest
  value at or before the row's event time (from the batch, else carried from earlier batches),
  NaN if it has none or it is too old.

A typical vectorised use: given a per-series array ``z`` (NaN where unknown),
``zn = np.where(graph.index >= 0, z[graph.index], np.nan)`` is the neighbours' values, one row per
series (index -1 reads the last element, hence the ``where``).

Building is vectorised per (domain, metric) group: one pairwise haversine matrix over the group's
sensors, then ``argsort`` per row. The loop is over groups, never over readings.

Sample configuration: see `SAMPLE_CONFIG`.

Examples
--------
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> pm = {"pm25": MetricSpec(unit="ug/m3", min=0, max=1000)}
>>> sensors = [Sensor(id=i, domain="air", area="a", lat=lat, lon=106.82, interval=60, metrics=pm)
...            for i, lat in [("a1", 10.950), ("a2", 10.955), ("a3", 10.962), ("a4", 11.200)]]
>>> series = SeriesIndex(Registry({s.id: s for s in sensors}))
>>> series.add_registry()
>>> graph = NeighbourGraph(series, NeighbourConfig(radius_km=2.0, k=3))
>>> graph.index.tolist()
[[1, 2, -1], [0, 2, -1], [1, 0, -1], [-1, -1, -1]]
>>> graph.distance_km[0, :2].round(3).tolist()
[0.556, 1.334]
>>> graph.count.tolist()
[2, 2, 2, 0]
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from citywatch.config import StrictModel
from citywatch.registry import SeriesIndex

__all__ = ["NeighbourConfig", "NeighbourGraph", "haversine_km", "latest_neighbour_values", "SAMPLE_CONFIG"]

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)

SAMPLE_CONFIG = """\
detectors:
  spatial:              # the detectors that compare neighbours each have a `neighbours:` block
    neighbours:
      radius_km: 3.0    # neighbours lie within this great-circle distance; null = no radius limit
      k: 8              # at most this many neighbours per series, nearest first
"""


class NeighbourConfig(StrictModel):
    radius_km: float | None = Field(default=3.0, gt=0)
    k: int = Field(default=8, ge=1, le=256)


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


class NeighbourGraph:
    """Padded neighbour index matrix over a `SeriesIndex`; see the module docstring."""

    def __init__(self, series: SeriesIndex, config: NeighbourConfig | None = None) -> None:
        self.series = series
        self.config = config or NeighbourConfig()
        self.k = self.config.k
        self.index = np.full((0, self.k), -1, np.int64)
        self.distance_km = np.full((0, self.k), np.inf)
        self.count = np.zeros(0, np.int64)
        self._built_for = -1
        self.update()

    def __len__(self) -> int:
        return len(self.index)

    def update(self) -> bool:
        """Rebuild if series were added since the last build; True when it rebuilt."""
        n = len(self.series)
        if n == self._built_for:
            return False
        self._build(n)
        self._built_for = n
        return True

    def neighbours(self, sid: int) -> list[int]:
        self.update()
        row = self.index[sid]
        return row[row >= 0].tolist()

    def _coordinates(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lat = np.full(n, np.nan)
        lon = np.full(n, np.nan)
        sensors = self.series.registry.sensors
        for sid in range(n):
            s = sensors.get(self.series.sensor_ids[sid])
            if s is not None and not s.auto_registered:
                lat[sid], lon[sid] = s.lat, s.lon
        sensor_code = np.unique(np.asarray(self.series.sensor_ids[:n], dtype=object), return_inverse=True)[1]
        return lat, lon, sensor_code

    def _build(self, n: int) -> None:
        k = self.k
        index = np.full((n, k), -1, np.int64)
        dist = np.full((n, k), np.inf)
        if n:
            lat, lon, sensor_code = self._coordinates(n)
            domains = self.series.domains[:n]
            metrics = self.series.metrics[:n]
            groups: dict[tuple[str, str], list[int]] = {}
            for sid in range(n):
                if not np.isnan(lat[sid]):
                    groups.setdefault((domains[sid], metrics[sid]), []).append(sid)
            radius = np.inf if self.config.radius_km is None else self.config.radius_km
            for members in groups.values():
                ids = np.asarray(members, np.int64)
                if len(ids) < 2:
                    continue
                d = haversine_km(lat[ids, None], lon[ids, None], lat[None, ids], lon[None, ids])
                # A sensor is not its own neighbour.
                d[sensor_code[ids, None] == sensor_code[None, ids]] = np.inf
                d[d > radius] = np.inf
                take = min(k, len(ids) - 1)
                order = np.argsort(d, axis=1, kind="stable")[:, :take]
                dd = np.take_along_axis(d, order, axis=1)
                nb = np.where(np.isfinite(dd), ids[order], -1)
                index[ids, :take] = nb
                dist[ids, :take] = dd
        self.index = index
        self.distance_km = dist
        self.count = (index >= 0).sum(axis=1).astype(np.int64)


def latest_neighbour_values(graph: NeighbourGraph, series: np.ndarray, ts: np.ndarray, values: np.ndarray,
                            rows: np.ndarray, carried: np.ndarray, carried_ts: np.ndarray,
                            max_age_ns: np.ndarray) -> np.ndarray:
    """(len(rows) x k): each neighbour's latest value at or before each row's event time.

    `series`, `ts`, `values`: a (series, ts)-sorted batch and one value per row (NaN: none). A
    neighbour's latest row in the batch at or before the row's time is used, else its value carried
    from earlier batches (`carried`, `carried_ts`: per series) if not newer than the row. Values
    older than the row's `max_age_ns` (per series of the row) are NaN, as are padded slots.
    """
    nb = graph.index[series[rows]]  # (m, k)
    t = ts[rows]
    have = np.flatnonzero(np.isfinite(values))
    times = np.unique(ts)
    width = len(times) + 1
    # a searchsorted over keys (series, dense time rank): the batch is sorted by (series, ts)
    key_have = series[have].astype(np.int64) * width + np.searchsorted(times, ts[have])
    nb_safe = np.maximum(nb, 0)
    key_q = nb_safe * width + np.searchsorted(times, t)[:, None]
    pos = np.searchsorted(key_have, key_q, side="right") - 1
    found = (pos >= 0) & (nb >= 0)
    pos_c = np.maximum(pos, 0)
    if len(have):
        found &= series[have][pos_c] == nb_safe
        vn = np.where(found, values[have][pos_c], np.nan)
        tn = np.where(found, ts[have][pos_c], 0)
    else:
        vn = np.full(nb.shape, np.nan)
        tn = np.zeros(nb.shape, np.int64)
    use = ~found & (nb >= 0) & (carried_ts[nb_safe] <= t[:, None])
    vn = np.where(use, carried[nb_safe], vn)
    tn = np.where(use, carried_ts[nb_safe], tn)
    fresh = (t[:, None] - tn) <= max_age_ns[series[rows]][:, None]
    return np.where((found | use) & fresh, vn, np.nan)
