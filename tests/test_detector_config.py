"""Every detector's documented config block is accepted by the engine's config, as written."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import yaml

from citywatch.config import Settings
from citywatch.detectors import build_detectors
from citywatch.registry import Registry, SeriesIndex

MODULES = ["physical_range", "threshold", "stuck", "spike", "drift", "no_data", "anomaly_score", "robust_zscore",
           "ewma_cusum", "variance_shift", "range_novelty", "seasonal_baseline", "traffic_zero", "spatial",
           "neighbours"]


@pytest.mark.parametrize("name", MODULES)
def test_sample_config_block_is_valid_engine_config(name):
    module = importlib.import_module(f"citywatch.detectors.{name}")
    doc = yaml.safe_load(module.SAMPLE_CONFIG)
    assert list(doc) == ["detectors"], "a sample block is a `detectors:` section users can paste"
    settings = Settings.model_validate(doc)
    for key, value in doc["detectors"].items():
        section = getattr(settings.detectors, key)
        if isinstance(value, dict):  # the options given are the options the engine sees
            dumped = section.model_dump(by_alias=True)
            for option in value:
                assert option in dumped, f"{name}: {key}.{option} is not an option of {type(section).__name__}"
        elif isinstance(value, list):
            assert len(section) == len(value)
        else:
            assert section == value
    build_detectors(SeriesIndex(Registry({})), settings.detectors)


def test_unknown_detector_options_are_refused_with_their_path():
    with pytest.raises(Exception) as err:
        Settings.model_validate({"detectors": {"spatial": {"radius": 3}}})
    assert "spatial" in str(err.value) and "radius" in str(err.value)


@pytest.mark.parametrize("first", ["citywatch.registry", "citywatch.detectors.spatial", "citywatch.config",
                                   "citywatch.detectors", "citywatch.pipeline", "citywatch.detectors.no_data"])
def test_any_import_order_works(first):
    """The config gathers the detectors' option models; no module may depend on being imported first."""
    code = f"import {first}; import citywatch.config as c; c.Settings.model_validate({{}})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
