"""No data: devices that stopped reporting (``late``, then ``offline``), including ones never heard from.

Per *device* (registry sensor), not per series: a sensor is heard from when any of its metrics
arrives. Each sensor is expected every `Sensor.interval` (from its profile); a device that uploads
its readings in batches (say five at a time) advances its newest event time in steps, so the
detector also learns each sensor's *upload step* (an EWMA of how far its newest event time moves
per upload; longer silences than `max_upload_factor` intervals are outages and do not count) and
expects a sensor every
``max(interval, upload step)``.

States, judged by `check(now_ns)` with the engine's event-time clock (the newest event time the
engine has processed, or the wall clock when live):

* ``ok``      - heard from within ``late_factor x expected``;
* ``late``    - silent for more than ``late_factor x expected``;
* ``offline`` - silent for more than ``offline_after = max(offline_factor x expected, offline_min)``.

A device's own announcement (an MQTT last will, an ESPHome status topic, a Sparkplug DEATH, relayed
by the device-family sources through `announce`) makes it ``offline`` at the next check, until it
reports a reading again.

Silence is measured from the newest event time seen for the sensor, or, for a sensor of the registry
that has never reported, from when the detector started (its first `check`, or `start_ns`). A
reading after silence brings the sensor back to ``ok`` at the next `check`. Sensors without an
expected interval (auto-registered ones) are not judged. Per-domain overrides of the three settings
are possible (`domains:`).

`observe(batch)` updates the newest event time per sensor, vectorised (``np.maximum.at``); LATE and
DUPLICATE readings are ignored (they are older than what was seen). `check(now_ns)` returns the
`NoDataTransition`s since the previous check: sensor, domain, area, previous and new state,
newest event time (None if never seen). `levels()` gives the state per sensor as detector levels
(ok 0, late WARNING 1, offline CRITICAL 2) with the reasons ``ok``/``late``/``offline``.

State per sensor: 4 numbers (newest event time, upload step, state, readings seen), snapshot and
restore keyed by sensor id like `SeriesState` (sensors unknown to the registry are dropped).

Sample configuration: see `SAMPLE_CONFIG`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field

from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch
from citywatch.config import Duration, StrictModel
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_OK, LEVEL_WARNING
from citywatch.registry import Registry, SeriesIndex

__all__ = ["NoDataDetector", "NoDataConfig", "NoDataRule", "NoDataTransition", "SAMPLE_CONFIG",
           "STATE_OK", "STATE_LATE", "STATE_OFFLINE", "STATE_NAMES"]

SAMPLE_CONFIG = """\
detectors:
  no_data:
    enabled: true
    late_factor: 2.5              # late: silent for more than 2.5 expected intervals
    offline_factor: 10            # offline: silent for more than 10 expected intervals ...
    offline_min: 15m              # ... and at least this long
    max_upload_factor: 6          # batch uploads: expect a device every upload step (over 6 intervals: an outage)
    domains:                      # optional per-domain overrides of the three settings above
      forest: {late_factor: 2.0, offline_min: 1h}
"""

STATE_OK = 0
STATE_LATE = 1
STATE_OFFLINE = 2
STATE_NAMES = ("ok", "late", "offline")
NEVER = np.iinfo(np.int64).min
NS = 10**9


class NoDataRule(StrictModel):
    late_factor: float | None = Field(default=None, gt=1)
    offline_factor: float | None = Field(default=None, gt=1)
    offline_min: Duration | None = None


class NoDataConfig(StrictModel):
    enabled: bool = True
    late_factor: float = Field(default=2.5, gt=1)
    offline_factor: float = Field(default=10.0, gt=1)
    offline_min: Duration = 900.0
    max_upload_factor: float = Field(default=6.0, ge=1)
    upload_learning_rate: float = Field(default=0.1, gt=0, le=1)
    domains: dict[str, NoDataRule] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NoDataTransition:
    sensor: str
    domain: str
    area: str
    previous: str  # "ok" | "late" | "offline"
    state: str
    last_seen_ns: int | None  # newest event time seen, None if the sensor never reported
    now_ns: int  # the clock of the check that saw the change


class NoDataDetector:
    """Late / offline devices from the registry's expected intervals; see the module docstring.

    Examples
    --------
    >>> from citywatch.batch import ReadingBatch
    >>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
    >>> def station(i, interval):
    ...     return Sensor(id=f"aq-{i}", domain="air", area="Tân Phong", lat=10.97, lon=106.84, interval=interval,
    ...                   metrics={"pm25": MetricSpec(unit="ug/m3", min=0, max=1000)})
    >>> registry = Registry({s.id: s for s in (station(1, 60), station(2, 60))})
    >>> series = SeriesIndex(registry)
    >>> series.add_registry()
    >>> nodata = NoDataDetector(series, start_ns=0)
    >>> minute = 60 * 10**9
    >>> nodata.observe(ReadingBatch.from_columns(series=[0, 0], ts=[0, minute], value=[12.0, 13.0]))
    >>> nodata.check(2 * minute)
    []
    >>> [(t.sensor, t.previous, t.state) for t in nodata.check(4 * minute)]  # aq-2 never reported
    [('aq-1', 'ok', 'late'), ('aq-2', 'ok', 'late')]
    >>> [(t.sensor, t.state, t.last_seen_ns) for t in nodata.check(17 * minute)]  # silent > 15 min
    [('aq-1', 'offline', 60000000000), ('aq-2', 'offline', None)]
    >>> nodata.observe(ReadingBatch.from_columns(series=[0], ts=[18 * minute], value=[14.0]))
    >>> [(t.sensor, t.previous, t.state) for t in nodata.check(18 * minute)]
    [('aq-1', 'offline', 'ok')]
    """

    name: ClassVar[str] = "no_data"
    reasons: ClassVar[tuple[str, ...]] = STATE_NAMES
    state_fields: ClassVar[dict[str, tuple[type | str, object]]] = {
        "last_seen": (np.int64, NEVER),
        "upload_step": (np.float64, np.nan),  # seconds the newest event time moves per upload
        "state": (np.int8, STATE_OK),
        "seen": (np.int64, 0),
        "offline_since": (np.int64, NEVER),  # a device's own "offline" (LWT, status, DEATH), until it reports again
    }

    def __init__(self, series: SeriesIndex, config: NoDataConfig | None = None, start_ns: int | None = None) -> None:
        self.series = series
        self.registry: Registry = series.registry
        self.config = config or NoDataConfig()
        self.start_ns = start_ns
        self.sensor_ids: list[str] = []
        self._sensor_index: dict[str, int] = {}
        self._series_sensor = np.zeros(0, np.int64)  # series id -> sensor index
        self.state: dict[str, np.ndarray] = {k: np.full(0, f, dtype=d) for k, (d, f) in self.state_fields.items()}
        self._interval = np.zeros(0)
        self._late_factor = np.zeros(0)
        self._offline_factor = np.zeros(0)
        self._offline_min = np.zeros(0)
        self._domain: list[str] = []
        self._area: list[str] = []
        self._sync()

    # -------------------------------------------------------------------------- sensors

    def _sync(self) -> None:
        """Pick up sensors and series that appeared since the last call."""
        new = [sid for sid in self.registry.sensors if sid not in self._sensor_index]
        for sid in self.series.sensor_ids[len(self._series_sensor):]:
            if sid not in self._sensor_index and sid not in new:
                new.append(sid)
        if new:
            cfg = self.config
            k0 = len(self.sensor_ids)
            for sid in new:
                self._sensor_index[sid] = len(self.sensor_ids)
                self.sensor_ids.append(sid)
            k = len(new)
            for name, (dtype, fill) in self.state_fields.items():
                self.state[name] = np.concatenate([self.state[name], np.full(k, fill, dtype=dtype)])
            iv, lf, of, om = (np.zeros(k) for _ in range(4))
            for j, sid in enumerate(new):
                sensor = self.registry.get(sid)
                iv[j] = float(sensor.interval or 0.0) if sensor is not None else 0.0
                rule = cfg.domains.get(sensor.domain) if sensor is not None else None
                lf[j] = rule.late_factor if rule and rule.late_factor else cfg.late_factor
                of[j] = rule.offline_factor if rule and rule.offline_factor else cfg.offline_factor
                om[j] = rule.offline_min if rule and rule.offline_min is not None else cfg.offline_min
                self._domain.append(sensor.domain if sensor is not None else "")
                self._area.append(sensor.area if sensor is not None else "")
            self._interval = np.concatenate([self._interval, iv])
            self._late_factor = np.concatenate([self._late_factor, lf])
            self._offline_factor = np.concatenate([self._offline_factor, of])
            self._offline_min = np.concatenate([self._offline_min, om])
            assert len(self.sensor_ids) == k0 + k
        if len(self._series_sensor) < len(self.series):
            extra = [self._sensor_index[s] for s in self.series.sensor_ids[len(self._series_sensor):]]
            self._series_sensor = np.concatenate([self._series_sensor, np.asarray(extra, np.int64)])

    def __len__(self) -> int:
        return len(self.sensor_ids)

    # -------------------------------------------------------------------------- stream

    def observe(self, batch: ReadingBatch) -> None:
        """Update the newest event time of each sensor in the batch (LATE/DUPLICATE rows ignored)."""
        self._sync()
        ok = (batch.flags & (FLAG_LATE | FLAG_DUPLICATE)) == 0
        if not ok.any():
            return
        sensor = self._series_sensor[batch.series[ok]]
        newest = np.full(len(self.sensor_ids), NEVER, np.int64)
        np.maximum.at(newest, sensor, batch.ts[ok])
        st = self.state
        moved = newest > st["last_seen"]
        had = moved & (st["last_seen"] != NEVER)
        # Longer silences are outages, not an upload rhythm: they do not teach the upload step.
        steps = (newest - np.where(had, st["last_seen"], newest)) / NS
        had &= steps <= self.config.max_upload_factor * np.maximum(self._interval, 1e-9)
        step = steps[had]
        old = st["upload_step"][had]
        rate = self.config.upload_learning_rate
        st["upload_step"][had] = np.where(np.isnan(old), step, old + rate * (step - old))
        st["last_seen"][moved] = newest[moved]
        np.add.at(st["seen"], sensor, 1)

    def announce(self, sensor_id: str, online: bool, ts_ns: int) -> None:
        """A device said it went offline (MQTT last will, status topic, Sparkplug DEATH) or came back.

        Offline holds from then until the sensor's next reading, so a dead device is reported at the
        next check instead of after ``offline_after``. Online only cancels that; being ``ok`` still
        takes a reading.
        """
        self._sync()
        i = self._sensor_index.get(sensor_id)
        if i is None:
            return
        st = self.state
        st["offline_since"][i] = NEVER if online else max(int(ts_ns), int(st["last_seen"][i]))

    def expected_s(self) -> np.ndarray:
        """Seconds between reports expected from each sensor: max(interval, learned upload step)."""
        return np.fmax(self._interval, self.state["upload_step"])

    def states(self, now_ns: int) -> np.ndarray:
        """The state each sensor would have at `now_ns` (without recording transitions)."""
        self._sync()
        if self.start_ns is None:
            self.start_ns = int(now_ns)
        st = self.state
        since = np.where(st["last_seen"] == NEVER, self.start_ns, st["last_seen"])
        silent_s = (int(now_ns) - since) / NS
        expected = self.expected_s()
        late_after = self._late_factor * expected
        offline_after = np.maximum(self._offline_factor * expected, self._offline_min)
        state = np.where(silent_s > offline_after, STATE_OFFLINE,
                         np.where(silent_s > late_after, STATE_LATE, STATE_OK)).astype(np.int8)
        state[self._interval <= 0] = STATE_OK  # no expected interval: not judged
        announced = (st["offline_since"] != NEVER) & (st["last_seen"] <= st["offline_since"])
        state[announced] = STATE_OFFLINE
        return state

    def check(self, now_ns: int) -> list[NoDataTransition]:
        """Judge every sensor at `now_ns`; the state changes since the previous check."""
        new = self.states(now_ns)
        old = self.state["state"]
        changed = np.flatnonzero(new != old)
        out = []
        for i in changed.tolist():
            seen = int(self.state["last_seen"][i])
            out.append(NoDataTransition(self.sensor_ids[i], self._domain[i], self._area[i], STATE_NAMES[old[i]],
                                        STATE_NAMES[new[i]], None if seen == NEVER else seen, int(now_ns)))
        self.state["state"] = new
        return out

    def levels(self) -> tuple[list[str], np.ndarray]:
        """(sensor ids, level per sensor as of the last check: ok 0, late WARNING, offline CRITICAL)."""
        lv = np.array([LEVEL_OK, LEVEL_WARNING, LEVEL_CRITICAL], np.int8)[self.state["state"]]
        return list(self.sensor_ids), lv

    # -------------------------------------------------------------------------- persistence

    def snapshot(self) -> dict[str, np.ndarray]:
        self._sync()
        snap = {k: v.copy() for k, v in self.state.items()}
        snap["__sensor_id"] = np.asarray(self.sensor_ids, dtype=str)
        snap["__start_ns"] = np.asarray([NEVER if self.start_ns is None else self.start_ns], np.int64)
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Load a snapshot; sensors unknown to the current registry are dropped."""
        self._sync()
        src, dst = [], []
        for i, sid in enumerate(snap["__sensor_id"].tolist()):
            j = self._sensor_index.get(sid)
            if j is not None:
                src.append(i)
                dst.append(j)
        for k in self.state_fields:
            if k in snap:
                self.state[k][dst] = snap[k][src]
        start = int(snap.get("__start_ns", np.asarray([NEVER]))[0])
        if start != NEVER:
            self.start_ns = start
