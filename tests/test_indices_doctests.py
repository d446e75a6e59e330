"""The examples in the index modules' docstrings run as tests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "citywatch.detectors.indices",
    "citywatch.detectors.indices._common",
    "citywatch.detectors.indices.vn_aqi",
    "citywatch.detectors.indices.us_aqi",
    "citywatch.detectors.indices.vn_wqi",
    "citywatch.detectors.indices.fire_danger",
    "citywatch.detectors.indices.traffic",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "citywatch.detectors.indices":
        assert result.attempted > 0, f"{name} has no doctest examples"


@pytest.mark.parametrize("name", MODULES[2:])
def test_sample_config_is_yaml(name):
    import yaml

    cfg = yaml.safe_load(importlib.import_module(name).SAMPLE_CONFIG)
    assert list(cfg) == ["indices"]
