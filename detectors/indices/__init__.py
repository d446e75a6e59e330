"""Official indices as vectorised pure functions over arrays shaped (n_stations, n_times) or (n_times,).

One module per index:

* `vn_aqi`: Vietnam AQI (QĐ 1459/QĐ-TCMT), hourly (NowCast) and daily;
* `us_aqi`: US EPA AQI with the 2024 PM2.5 breakpoints and NowCast;
* `vn_wqi`: Vietnam water quality index (QĐ 1460/QĐ-TCMT);
* `fire_danger`: forest fire danger, Nesterov index as applied in Vietnam;
* `traffic`: flow, PCU, occupancy, speed ratio, travel-time index, level of service.

The numbers follow the project's domain reference; each module's docstring says which choices were
interpretations and which tables are parameters because the reference is not certain of them.
"""

from citywatch.detectors.indices._common import Category, IndexResult, nowcast, round_half_up, truncate
from citywatch.detectors.indices.vn_aqi import (
    vn_aqi_category,
    vn_aqi_daily,
    vn_aqi_daily_from_aggregates,
    vn_aqi_hourly,
    vn_aqi_subindex,
)
from citywatch.detectors.indices.us_aqi import (
    ugm3_to_native,
    us_aqi_category,
    us_aqi_daily,
    us_aqi_daily_from_aggregates,
    us_aqi_hourly,
    us_aqi_subindex,
)
from citywatch.detectors.indices.vn_wqi import (
    do_percent_saturation,
    do_saturation,
    vn_wqi_index,
    vn_wqi_category,
    wqi_subindex,
)
from citywatch.detectors.indices.fire_danger import (
    fire_danger_index,
    fire_danger_level,
    nesterov_vn,
    saturation_deficit,
    saturation_vapour_pressure,
)
from citywatch.detectors.indices.traffic import (
    density,
    effective_pcu_factor,
    flow_veh_per_hour,
    level_of_service,
    occupancy_percent,
    pcu_flow,
    peak_hour_factor,
    space_mean_speed,
    speed_ratio,
    travel_time_index,
    vc_ratio,
)

__all__ = [
    "Category",
    "IndexResult",
    "nowcast",
    "round_half_up",
    "truncate",
    "ugm3_to_native",
    "us_aqi_category",
    "us_aqi_daily",
    "us_aqi_daily_from_aggregates",
    "us_aqi_hourly",
    "us_aqi_subindex",
    "vn_aqi_category",
    "vn_aqi_daily",
    "vn_aqi_daily_from_aggregates",
    "vn_aqi_hourly",
    "vn_aqi_subindex",
    "do_percent_saturation",
    "do_saturation",
    "vn_wqi_index",
    "vn_wqi_category",
    "wqi_subindex",
    "fire_danger_index",
    "fire_danger_level",
    "nesterov_vn",
    "saturation_deficit",
    "saturation_vapour_pressure",
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
