"""The citizens' page end to end: headless Debian Chromium (driven by Playwright, no browser download)
at a phone-sized viewport, on the public API serving what the simulator and the engine wrote.

It sees every air station on the map coloured and labelled by its current VN_AQI category, switches
to English, opens a station (advice and the last 24 h chart), shows the water layer, and saves a
screenshot (to $CITYWATCH_SCREENSHOT_DIR when set, else the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from citywatch.detectors.indices import vn_aqi, vn_wqi
from citywatch.public.advice import hex_colour
from citywatch.public.app import create_app
from citywatch.public.settings import PublicSettings

from test_public_api import load_city, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed: apt-get install chromium "
                                                         "(scripts/setup.sh installs it)")]
PHONE = {"width": 360, "height": 740}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page_server(mosquitto, influxdb, tmp_path_factory):
    city = load_city(mosquitto, influxdb, "public_page", tmp_path_factory.mktemp("page-engine"))
    srv = serve(create_app(city.influx, city.registry, PublicSettings(rate_per_second=0)))
    yield srv
    srv.stop()


def test_page_on_a_phone(page_server, tmp_path):
    from playwright.sync_api import sync_playwright

    current = httpx.get(f"{page_server.url}/api/v1/current").json()["stations"]
    air = {s["id"]: s for s in current if s["domain"] == "air"}
    water = {s["id"]: s for s in current if s["domain"] == "water"}
    rated = {sid: s["indices"]["vn_aqi_hourly"] for sid, s in air.items() if "vn_aqi_hourly" in s["indices"]}
    assert len(rated) >= 20
    worst = max(rated, key=lambda sid: rated[sid]["category"])
    assert rated[worst]["category"] >= 3  # the simulated NO2 episode
    shots = Path(os.environ.get("CITYWATCH_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS, viewport=PHONE,
            device_scale_factor=2, is_mobile=True, has_touch=True, locale="vi-VN", timezone_id="Asia/Ho_Chi_Minh")
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{page_server.url}/")
            page.wait_for_selector("body[data-loaded=true] #map .marker")
            assert page.evaluate("document.documentElement.lang") == "vi"
            # every air station on the map, coloured by its category and labelled with its value
            markers = page.locator("#map .marker")
            assert markers.count() == len(air)
            for sid, ix in rated.items():
                m = page.locator(f'#map .marker[data-sensor="{sid}"]')
                assert m.get_attribute("data-category") == str(ix["category"])
                assert m.locator("text").text_content() == f"{ix['value']:.0f}"
                assert m.locator(".shape").get_attribute("fill") == hex_colour(vn_aqi.CATEGORIES[ix["category"] - 1].rgb)
                assert sid in m.get_attribute("aria-label") or air[sid]["name"] in m.get_attribute("aria-label")
            label = page.locator(f'#stations button[data-station="{worst}"] .label')
            assert label.text_content() == vn_aqi.CATEGORIES[rated[worst]["category"] - 1].label_vi
            assert page.locator("#advisories li").count() >= 1
            # a phone screen: nothing wider than the viewport
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            assert page.locator("#map").bounding_box()["width"] <= PHONE["width"]

            # English
            page.locator("#lang").click()
            assert page.evaluate("document.documentElement.lang") == "en"
            assert label.text_content() == vn_aqi.CATEGORIES[rated[worst]["category"] - 1].label_en
            assert "Enjoy outdoor activities freely." in page.locator("#legend").text_content()

            # the station view: category, health advice, the last 24 h
            page.locator(f'#map .marker[data-sensor="{worst}"]').click()
            page.wait_for_selector("#station:not([hidden]) #chart .pt")
            station = page.locator("#station")
            cat = vn_aqi.CATEGORIES[rated[worst]["category"] - 1]
            assert station.locator("#station-label").text_content() == cat.label_en
            assert "Sensitive groups" in station.text_content()
            assert page.locator("#chart .pt").count() >= 3
            assert "24 h highest" in page.locator("#chart-summary").text_content()
            page.screenshot(path=str(shots / "public-page-station-en.png"), full_page=False)

            # the water layer: VN_WQI classes
            page.locator('#layers button[data-layer="water"]').click()
            assert page.locator("#map .marker").count() == len(water)
            for sid, s in water.items():
                if "vn_wqi" in s["indices"]:
                    c = s["indices"]["vn_wqi"]["category"]
                    m = page.locator(f'#map .marker[data-sensor="{sid}"] .shape')
                    assert m.get_attribute("fill") == hex_colour(vn_wqi.CATEGORIES[c - 1].rgb)
            page.locator('#layers button[data-layer="air"]').click()
            page.locator("#lang").click()
            page.evaluate("window.scrollTo(0, 0)")
            path = shots / "public-page-vi.png"
            page.screenshot(path=str(path), full_page=True)
            assert not errors, errors
        finally:
            context.close()
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == PHONE["width"] * 2
