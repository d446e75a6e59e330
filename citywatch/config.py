"""Engine configuration: `config/citywatch.yaml`, validated with pydantic, overridden by the environment.

Secrets (passwords, tokens) are never read from the YAML file: only from the environment
variables listed in `ENV_OVERRIDES`, or from a file named by `<variable>_FILE` that only its owner
can read (mode 0600), so a committed config cannot leak them.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, ValidationError, model_validator

from citywatch.config_types import (  # noqa: F401  (re-exported: the building blocks of every config model)
    ConfigError,
    Duration,
    Section,
    StrictModel,
    format_validation_error,
    parse_duration,
    read_yaml,
)

class MqttConfig(StrictModel):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "citywatch-engine"
    protocol: Literal["3.1.1", "5"] = "5"
    topic: str = "city/{domain}/{sensor}/telemetry"
    qos: Literal[0, 1] = 1
    persistent_session: bool = True
    session_expiry: Duration = 86400.0
    # MQTT 5: how many unacknowledged QoS 1 messages the broker may send us. For MQTT 3.1.1 the
    # broker's own max_inflight_messages applies instead (mosquitto default 20: raise it).
    receive_maximum: int = Field(default=10000, ge=1, le=65535)
    keepalive: int = Field(default=30, ge=5)
    reconnect_min_delay: Duration = 1.0
    reconnect_max_delay: Duration = 30.0
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_insecure: bool = False
    alert_topic: str = "city/alerts/{domain}/{sensor}"
    deadletter_topic: str = "city/deadletter/{domain}/{sensor}"
    username: str | None = None
    password: SecretStr | None = Field(default=None, exclude=True)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def use_tls(self) -> bool:
        return self.scheme == "mqtts"

    @model_validator(mode="after")
    def _check(self) -> "MqttConfig":
        if self.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"mqtt.url must start with mqtt:// or mqtts://, got {self.url!r}")
        for name in ("domain", "sensor"):
            if "{" + name + "}" not in self.topic:
                raise ValueError(f"mqtt.topic must contain the segment {{{name}}}: {self.topic!r}")
        return self


class InfluxConfig(StrictModel):
    url: str = "http://127.0.0.1:8086"
    database: str = "citywatch"
    retention_policy: str | None = None
    create_database: bool = True
    timeout: Duration = 10.0
    gzip: bool = True
    verify_tls: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: SecretStr | None = Field(default=None, exclude=True)
    token: SecretStr | None = Field(default=None, exclude=True)


class BatchingConfig(StrictModel):
    # A micro-batch is flushed when it holds max_messages, or when its oldest message is max_age
    # old; it takes at most max_messages messages and max_bytes of payload (backlog arrays are big).
    max_messages: int = Field(default=5000, ge=1)
    max_bytes: int = Field(default=1 << 20, ge=1024)
    max_age: Duration = 0.2
    # InfluxDB writes: points per HTTP request and requests in flight.
    write_batch_points: int = Field(default=5000, ge=1)
    concurrent_writes: int = Field(default=2, ge=1, le=16)
    write_retries: int = Field(default=3, ge=0)
    retry_backoff: Duration = 0.2
    retry_backoff_max: Duration = 5.0


class SpoolConfig(StrictModel):
    directory: str = "spool"
    max_bytes: int = Field(default=1 << 30, ge=1 << 16)
    # What happens when the spool is full: "block" stops acknowledging MQTT messages (the broker keeps
    # them); "drop_oldest" deletes the oldest spooled segment, counting the readings lost.
    when_full: Literal["block", "drop_oldest"] = "block"
    fsync: bool = True
    replay_interval: Duration = 1.0


class ValidationConfig(StrictModel):
    unknown_sensor: Literal["reject", "auto_register"] = "reject"
    unknown_metric: Literal["reject", "accept"] = "reject"
    max_future_skew: Duration = 300.0
    max_age: Duration = 30 * 86400.0
    max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    deadletter_file: str | None = "deadletter.jsonl"
    log_every: Duration = 10.0
    # Per-sensor token bucket on messages (see citywatch.ingest.validate): on average at most this
    # many messages per second, in bursts of at most rate_limit_burst; null = no limit.
    max_messages_per_sensor_per_s: float | None = Field(default=None, gt=0)
    rate_limit_burst: int = Field(default=60, ge=1)


class ThresholdRule(StrictModel):
    """warn/crit with their reset levels (hysteresis) and a for-duration, like Kapacitor's warn/warnReset."""

    metric: str
    domain: str | None = None
    direction: Literal["above", "below"] = "above"
    warn: float | None = None
    warn_reset: float | None = None
    crit: float | None = None
    crit_reset: float | None = None
    for_: Duration = Field(default=0.0, alias="for")
    source: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> "ThresholdRule":
        if self.warn is None and self.crit is None:
            raise ValueError("a threshold rule needs warn or crit")
        sign = 1 if self.direction == "above" else -1
        for level, reset in (("warn", "warn_reset"), ("crit", "crit_reset")):
            lv, rv = getattr(self, level), getattr(self, reset)
            if lv is not None and rv is not None and sign * (rv - lv) > 0:
                raise ValueError(f"{reset} ({rv}) must not be beyond {level} ({lv}) for direction {self.direction}")
        if self.warn is not None and self.crit is not None and sign * (self.warn - self.crit) > 0:
            raise ValueError(f"warn ({self.warn}) must come before crit ({self.crit}) for direction {self.direction}")
        return self


class DetectorsConfig(StrictModel):
    physical_range: bool = True
    thresholds: list[ThresholdRule] = Field(default_factory=list)
    # Which detector results become points in the `scores` measurement: every scored reading,
    # only readings whose level is not ok, or none.
    write_scores: Literal["all", "nonzero", "none"] = "all"
    # Readings arriving out of order within this much event time are still processed in order
    # (at the cost of this much extra detection latency); 0 = evaluate on arrival. See citywatch.reorder.
    allowed_lateness: Duration = 0.0
    state_file: str | None = "detector-state.npz"
    snapshot_interval: Duration = 60.0
    # One section per detector, documented next to its code (`SAMPLE_CONFIG` in its module);
    # `null` or `false` turns a detector off. The default set works with no per-sensor tuning.
    stuck: Section[StuckConfig] = Field(default_factory=lambda: StuckConfig())
    # Jumps of 4 (not 4.5) typical rates: road occupancy and speed change so much from minute to
    # minute at rush hour that 4.5 missed one spike in ten there, for about one false alert less.
    spike: Section[SpikeConfig] = Field(default_factory=lambda: SpikeConfig(jump_factor=4.0))
    # Weather is local (a shower over one station, not its neighbours): not compared with neighbours.
    # A half-hour window held for 15 minutes finds drifts against neighbours about a third sooner than
    # the detector's own defaults at almost no cost in false alerts (simulator scenarios). The check
    # against the own baseline waits for eight days of history: after three, day-to-day weather and
    # traffic (a rainy day's speeds and dissolved oxygen) were still read as drifts, dozens a day.
    drift: Section[DriftConfig] = Field(default_factory=lambda: DriftConfig(neighbour_exclude=[
        "averageVehicleSpeed", "temperature", "relativeHumidity", "soilMoisture", "windSpeed", "precipitation"],
        window=1800.0, persist=900.0, own_min_history=8 * 86400.0))
    # Late after two missed reports: the duty officer hears of a silent device within two intervals.
    no_data: Section[NoDataConfig] = Field(default_factory=lambda: NoDataConfig(late_factor=2.0))
    anomaly: Section[AnomalyConfig] = Field(default_factory=lambda: AnomalyConfig())
    seasonal: Section[SeasonalConfig] = Field(default_factory=lambda: SeasonalConfig(metrics=["intensity"]))
    traffic_zero: Section[TrafficZeroConfig] = Field(default_factory=lambda: TrafficZeroConfig())
    # Turbidity rises along the whole river after rain (runoff: weather, not pollution or a broken
    # sensor): in the engine it would raise area events on every storm, so it is left out here.
    spatial: Section[SpatialConfig] = Field(default_factory=lambda: SpatialConfig(
        metrics=["pm25", "no2", "dissolvedOxygen"]))
    # The statistics the default profile (`anomaly`) combines, as detectors of their own: off by default.
    robust_zscore: Section[RobustZConfig] = None
    ewma_cusum: Section[CusumConfig] = None
    variance_shift: Section[VarianceConfig] = None
    range_novelty: Section[NoveltyConfig] = None


class IndicesConfig(StrictModel):
    # Hourly VN_AQI and US AQI per air station, computed live from event-time hourly means.
    air: bool = True
    # Daily forest fire danger (Vietnamese Nesterov index) per forest station; the reset and the
    # level bounds are local calibrations (see citywatch/fire_index.py).
    fire: bool = True
    fire_rain_reset_mm: float = Field(default=5.0, gt=0)
    fire_level_bounds: list[float] = Field(default_factory=lambda: [1000.0, 2500.0, 5000.0, 10000.0],
                                           min_length=4, max_length=4)
    # Hourly flow, speed ratio and level of service per traffic camera.
    traffic: bool = True
    traffic_free_flow_kmh: dict[Literal["main", "secondary", "side"], float] = Field(
        default_factory=lambda: {"main": 50.0, "secondary": 40.0, "side": 30.0})
    # Hourly VN_WQI per water station from probe hourly means and the latest lab samples, and
    # QCVN 08:2023 limits of the station's class (see citywatch/water_index.py).
    water: bool = True
    water_class: Literal["A", "B", "C", "D"] = "B"
    water_class_by_station: dict[str, Literal["A", "B", "C", "D"]] = Field(default_factory=dict)
    water_lab_max_age: Duration = 31 * 86400.0
    water_weighted: bool = False


class ForecastsConfig(StrictModel):
    # Short-term forecasts of hourly VN_AQI / US AQI per air station, water probe hourly means and
    # traffic hourly counts, with early-warning alerts (see citywatch/forecast_stage.py).
    enabled: bool = True
    horizon: int = Field(default=24, ge=1, le=48)
    level: float = Field(default=0.8, gt=0, lt=1)  # central prediction interval
    # What must cross a limit to warn: the interval's bound on the side of the limit, or the median.
    bound: Literal["upper", "median"] = "upper"
    aqi_category: int = Field(default=3, ge=2, le=6)  # warn when an AQI is forecast to reach this category
    models: dict[Literal["aqi", "water", "traffic"],
                 Literal["seasonal_naive", "holt_winters", "ar_deseasonalised", "combination"]] = \
        Field(default_factory=lambda: {"aqi": "holt_winters", "water": "holt_winters", "traffic": "ar_deseasonalised"})
    holt_winters: dict[Literal["alpha", "beta", "phi", "delta", "omega", "ar_memory", "robust"], float] = \
        Field(default_factory=dict)
    ar_deseasonalised: dict[Literal["order", "forgetting", "profile_gain"], float] = Field(default_factory=dict)
    combination: dict[Literal["memory", "sharpness", "min_evidence"], float] = Field(default_factory=dict)


class SourcesConfig(StrictModel):
    """Device families that publish in their own formats (citywatch.ingest.sources).

    ``profiles`` lists shipped profiles by name (tasmota, esphome, ttn, chirpstack, zigbee2mqtt,
    sensor_community, sparkplug, frigate), paths to profile YAML files (relative to this config
    file), or inline profiles. Their topics are subscribed beside ``mqtt.topic``.
    """

    enabled: bool = True
    profiles: list[str | dict[str, Any]] = Field(default_factory=list)


class NatsConfig(StrictModel):
    """The NATS JetStream source (`source: nats`; see ingest/nats_source.py and README "Scaling out")."""

    url: str = "nats://127.0.0.1:4222"
    instance_id: str | None = None  # unique per instance; default <hostname>-<pid>
    partitions: int = Field(default=8, ge=1, le=1024)  # must equal the server mapping's partition(n, ...)
    stream: str = "CITYWATCH_TELEMETRY"
    subject_prefix: str = "citywatch.telemetry"  # mapped subjects: <prefix>.<partition>.<domain>.<sensor>
    create_stream: bool = True
    lease_bucket: str = "citywatch_leases"
    state_bucket: str = "citywatch_state"
    lease_ttl: Duration = Field(default=10.0, ge=1.0)  # a dead instance's partitions move after at most this
    snapshot_interval: Duration = Field(default=5.0, ge=0.0)  # partition state saved after a stored batch at most this often
    # How long partitions may stay without a live owner (all instances down) and still lose nothing.
    max_failover_time: Duration = Field(default=3600.0, ge=0.0)
    stream_max_age: Duration = Field(default=86400.0, gt=0.0)  # stream retention
    fetch_batch: int = Field(default=1000, ge=1)
    max_ack_pending: int = Field(default=20000, ge=1)  # per partition consumer: bounds what is in flight

    @model_validator(mode="after")
    def _check(self) -> "NatsConfig":
        need = self.snapshot_interval + self.lease_ttl + self.max_failover_time
        if self.stream_max_age < need:
            raise ValueError(f"nats.stream_max_age ({self.stream_max_age:g}s) must cover snapshot_interval + lease_ttl "
                             f"+ max_failover_time ({need:g}s): older readings would be gone when a partition is replayed")
        return self


class AlertsConfig(StrictModel):
    mqtt: bool = True
    influxdb: bool = True


class Settings(StrictModel):
    registry: str = "sensors/bienhoa.yaml"
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    influxdb: InfluxConfig = Field(default_factory=InfluxConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    detectors: DetectorsConfig = Field(default_factory=DetectorsConfig)
    indices: IndicesConfig = Field(default_factory=IndicesConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    forecasts: ForecastsConfig = Field(default_factory=ForecastsConfig)
    # Where readings come from: the MQTT broker directly, or NATS JetStream partitions (`nats:`).
    source: Literal["mqtt", "nats"] = "mqtt"
    nats: NatsConfig = Field(default_factory=NatsConfig)
    # The alert lifecycle, notifications, the alert API and command topic (citywatch.alerting): on when
    # the config has an `alerting:` section (unless it says `enabled: false`), off without one.
    alerting: AlertingConfig = Field(default_factory=lambda: AlertingConfig(enabled=False))
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Where the engine keeps its spool, detector state and dead letters (relative to the working dir).
    data_dir: str = ".citywatch"
    # Directory the config was loaded from; relative paths in the config are resolved against it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A path from the config file (the registry), relative to the config file's directory."""
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)

    def data_path(self, path: str | os.PathLike[str]) -> Path:
        """A path of the engine's own data (spool, state, dead letters), relative to `data_dir`."""
        p = Path(path)
        return p if p.is_absolute() else (Path(self.data_dir) / p)


ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CITYWATCH_MQTT_URL": ("mqtt", "url"),
    "CITYWATCH_MQTT_USERNAME": ("mqtt", "username"),
    "CITYWATCH_MQTT_PASSWORD": ("mqtt", "password"),
    "CITYWATCH_INFLUX_URL": ("influxdb", "url"),
    "CITYWATCH_INFLUX_DB": ("influxdb", "database"),
    "CITYWATCH_INFLUX_TOKEN": ("influxdb", "token"),
    "CITYWATCH_INFLUX_USERNAME": ("influxdb", "username"),
    "CITYWATCH_INFLUX_PASSWORD": ("influxdb", "password"),
}
_SECRET_KEYS = {("mqtt", "password"), ("influxdb", "password"), ("influxdb", "token")}


def read_secret_file(var: str, env: dict[str, str]) -> str | None:
    """The value of `<var>_FILE` (a path, as Docker and systemd credentials give them): the file's
    content without the trailing newline. The file must be readable by its owner only (mode 0600 or
    stricter), so that a secret left readable by other users is refused rather than used."""
    file_var = var + "_FILE"
    name = env.get(file_var)
    if not name:
        return None
    if env.get(var):
        raise ConfigError(f"{file_var}: {var} is set too; set only one of them")
    try:
        mode = os.stat(name).st_mode
        if mode & 0o077:
            raise ConfigError(f"{file_var}: {name} has mode {mode & 0o777:04o}; a secret file must not be "
                              f"readable or writable by group or others (chmod 600 {name})")
        with open(name, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{file_var}: cannot read {name}: {exc.strerror}") from None


def default_config_path() -> Path:
    """`$CITYWATCH_CONFIG`, else ./config/citywatch.yaml, else the copy shipped in the package."""
    env = os.environ.get("CITYWATCH_CONFIG")
    if env:
        return Path(env)
    local = Path("config/citywatch.yaml")
    if local.exists():
        return local
    return Path(str(resources.files("citywatch.sample_config").joinpath("citywatch.yaml")))


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    path = Path(path) if path is not None else default_config_path()
    env = dict(os.environ) if env is None else env
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for section, key in _SECRET_KEYS:
        if isinstance(raw.get(section), dict) and raw[section].get(key):
            raise ConfigError(
                f"{path}: {section}.{key}: secrets are not read from files; "
                f"set {next(k for k, v in ENV_OVERRIDES.items() if v == (section, key))} instead"
            )
    for var, (section, key) in ENV_OVERRIDES.items():
        value = read_secret_file(var, env) or env.get(var)
        if value:
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{path}: {section}: must be a mapping")
            raw[section][key] = value
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err)) from None
    settings.base_dir = path.resolve().parent
    return settings


# The detectors' option models live beside their code; they build on the definitions above, so they
# are imported last and the models that refer to them are completed here.
from citywatch.detectors.anomaly_score import AnomalyConfig  # noqa: E402
from citywatch.detectors.drift import DriftConfig  # noqa: E402
from citywatch.detectors.ewma_cusum import CusumConfig  # noqa: E402
from citywatch.detectors.no_data import NoDataConfig  # noqa: E402
from citywatch.detectors.range_novelty import NoveltyConfig  # noqa: E402
from citywatch.detectors.robust_zscore import RobustZConfig  # noqa: E402
from citywatch.detectors.seasonal_baseline import SeasonalConfig  # noqa: E402
from citywatch.detectors.spatial import SpatialConfig  # noqa: E402
from citywatch.detectors.spike import SpikeConfig  # noqa: E402
from citywatch.detectors.stuck import StuckConfig  # noqa: E402
from citywatch.detectors.traffic_zero import TrafficZeroConfig  # noqa: E402
from citywatch.detectors.variance_shift import VarianceConfig  # noqa: E402
from citywatch.alerting.lifecycle import AlertingConfig  # noqa: E402

DetectorsConfig.model_rebuild()
Settings.model_rebuild()
