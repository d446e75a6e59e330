"""The sample registry (config/sensors/bienhoa.yaml) and the errors a broken registry gives."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from citywatch.config import ConfigError
from citywatch.registry import DOMAINS, Registry

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "sensors" / "bienhoa.yaml"

# Biên Hòa and the forests of Vĩnh Cửu to its north.
LAT_RANGE = (10.80, 11.40)
LON_RANGE = (106.70, 107.25)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(SAMPLE)


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))


def test_sample_loads_with_about_120_sensors(registry):
    assert 110 <= len(registry.sensors) <= 130
    counts = Counter(s.domain for s in registry.sensors.values())
    assert set(counts) == set(DOMAINS)
    assert counts["air"] >= 30 and counts["traffic"] >= 30 and counts["water"] >= 20 and counts["forest"] >= 10


def test_coordinates_in_bien_hoa_and_vinh_cuu(registry):
    for s in registry.sensors.values():
        assert LAT_RANGE[0] <= s.lat <= LAT_RANGE[1], s.id
        assert LON_RANGE[0] <= s.lon <= LON_RANGE[1], s.id
    forest = registry.by_domain("forest")
    assert all(s.lat >= 11.05 for s in forest), "forest stations are north of the city, in Vĩnh Cửu"
    assert all(s.lat < 11.05 for s in registry.sensors.values() if s.domain != "forest")


def test_profiles_resolved_ids_intervals_units(registry):
    prefix = {"air": "aq-", "water": "wq-", "traffic": "tc-", "forest": "fr-"}
    interval = {"air": 60.0, "water": 300.0, "traffic": 60.0, "forest": 600.0}
    for s in registry.sensors.values():
        assert s.id.startswith(prefix[s.domain])
        assert s.interval == interval[s.domain]
        assert s.name and s.area
        assert s.metrics
        for metric, spec in s.metrics.items():
            assert spec.min is not None and spec.max is not None and spec.min < spec.max, (s.id, metric)
        if s.domain == "traffic":
            assert s.road_class in ("main", "secondary", "side")
            assert set(s.metrics) == {"intensity", "occupancy", "averageVehicleSpeed"}
        else:
            assert s.road_class is None
    aq = registry.get("aq-001")
    assert {"pm25", "pm10", "no2", "so2", "o3", "co", "temperature", "relativeHumidity"} <= set(aq.metrics)
    assert aq.metrics["pm25"].unit == "ug/m3" and aq.metrics["relativeHumidity"].unit == "1"
    assert aq.metrics["relativeHumidity"].max == 1
    wq = registry.get("wq-001")
    assert wq.metrics["pH"].min == 0 and wq.metrics["pH"].max == 14
    assert wq.metrics["dissolvedOxygen"].unit == "mg/L" and wq.metrics["turbidity"].unit == "NTU"
    assert registry.get("tc-001").metrics["intensity"].unit == "veh"
    assert registry.get("fr-001").metrics["precipitation"].unit == "mm"
    roads = Counter(s.road_class for s in registry.by_domain("traffic"))
    assert set(roads) == {"main", "secondary", "side"}


def test_names_and_areas_are_vietnamese(registry):
    assert any("Biên Hòa" in (s.name or "") for s in registry.sensors.values())
    areas = {s.area for s in registry.sensors.values()}
    assert {"Trung Dũng", "Tân Phong", "Long Bình Tân", "Hiệp Hòa", "Mã Đà", "Trị An"} <= areas


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        Registry.load(path)
    return str(exc.value)


def test_bad_latitude_names_file_key_path_and_reason(tmp_path, raw):
    raw["sensors"][3]["lat"] = 123.4
    path = _write(tmp_path, raw)
    msg = _error(path)
    assert str(path) in msg
    assert "sensors.3.lat" in msg
    assert "less than or equal to 90" in msg


def test_ph_max_below_min(tmp_path, raw):
    raw["profiles"]["water_station"]["metrics"]["pH"] = {"unit": "pH", "min": 14, "max": 0}
    path = _write(tmp_path, raw)
    msg = _error(path)
    assert str(path) in msg
    assert "profiles.water_station.metrics.pH" in msg
    assert "min (14.0) must be below max (0.0)" in msg


def test_sensor_metric_override_max_below_min(tmp_path, raw):
    wq = next(i for i, s in enumerate(raw["sensors"]) if s["id"] == "wq-001")
    raw["sensors"][wq]["metrics"] = {"pH": {"unit": "pH", "min": 6, "max": 5}}
    msg = _error(_write(tmp_path, raw))
    assert f"sensors.{wq}.metrics.pH" in msg and "must be below max" in msg


def test_unknown_profile(tmp_path, raw):
    raw["sensors"][5]["profile"] = "air_staton"
    path = _write(tmp_path, raw)
    msg = _error(path)
    assert str(path) in msg
    assert "sensors.5.profile" in msg
    assert "unknown profile 'air_staton'" in msg


def test_duplicate_id(tmp_path, raw):
    raw["sensors"][7]["id"] = raw["sensors"][2]["id"]
    path = _write(tmp_path, raw)
    msg = _error(path)
    assert str(path) in msg
    assert "sensors.7.id" in msg
    assert f"duplicate sensor id {raw['sensors'][2]['id']!r}" in msg


def test_unknown_unit_and_bad_road_class(tmp_path, raw):
    raw["profiles"]["forest_station"]["metrics"]["soilMoisture"]["unit"] = "m3/m3"
    tc = next(i for i, s in enumerate(raw["sensors"]) if s["domain"] == "traffic")
    raw["sensors"][tc]["road_class"] = "motorway"
    msg = _error(_write(tmp_path, raw))
    assert "profiles.forest_station.metrics.soilMoisture.unit" in msg and "unknown unit 'm3/m3'" in msg
    assert f"sensors.{tc}.road_class" in msg


def test_profile_for_another_domain(tmp_path, raw):
    aq = next(i for i, s in enumerate(raw["sensors"]) if s["domain"] == "air")
    raw["sensors"][aq]["profile"] = "water_station"
    msg = _error(_write(tmp_path, raw))
    assert f"sensors.{aq}.profile" in msg and "is for domain water" in msg
