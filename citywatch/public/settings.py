"""Settings of the public server (`citywatch serve`): where it listens, caching, rate limits, CORS,
which alerts are public advisories. Built from command-line options (see `citywatch serve --help`)."""

from __future__ import annotations

from pydantic import Field

from citywatch.config import StrictModel


class AdvisoryRule(StrictModel):
    """Alerts of `detector` on `metric` (an index name) at `min_level` or worse are public advisories."""

    detector: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    metric: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    min_level: str = Field(default="warning", pattern=r"^(warning|critical)$")


#: The conservative default allow-list: index category changes that concern the public.
#: VN_AQI hourly: warning = category 3-4 (Kém / Xấu), critical = 5-6, so "warning" = Poor or worse.
#: VN_WQI: warning = class 3-4, critical = class 5-6 (Kém / Poor and worse): "critical".
#: Fire danger: warning = level III, critical = IV-V: "critical" = level IV or higher.
DEFAULT_ADVISORY_RULES = (
    AdvisoryRule(detector="index", metric="vn_aqi_hourly", min_level="warning"),
    AdvisoryRule(detector="index", metric="vn_wqi", min_level="critical"),
    AdvisoryRule(detector="index", metric="fire_danger", min_level="critical"),
)


class PublicSettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    cache_ttl: float = Field(default=15.0, gt=0, le=300)
    cache_max_bytes: int = Field(default=64 << 20, ge=1 << 20)  # per cache layer (answers, fast path)
    rate_per_second: float = Field(default=10.0, ge=0)  # 0 = no rate limit
    rate_burst: int = Field(default=60, ge=1)
    trust_forwarded_for: bool = False  # behind a reverse proxy: the client is the X-Forwarded-For address
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # how old the latest value may be to count as "current"
    current_hourly_max_age_h: float = Field(default=3.0, gt=0, le=48)  # hourly indices
    current_daily_max_age_h: float = Field(default=50.0, gt=0, le=168)  # daily indices (local days)
    current_readings_max_age_min: float = Field(default=60.0, gt=0, le=1440)
    history_max_days: int = Field(default=31, ge=1, le=366)
    advisory_max_age_h: float = Field(default=48.0, gt=0, le=24 * 14)
    advisory_rules: list[AdvisoryRule] = Field(default_factory=lambda: list(DEFAULT_ADVISORY_RULES))
