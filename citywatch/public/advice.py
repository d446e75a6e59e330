"""Health advice per VN_AQI category and suitability per VN_WQI class, for the public page and API.

VN_AQI: Decision 1459/QĐ-TCMT (12 Nov 2019), Bảng 4 (effects on health) and Bảng 5 (recommended
activities for the general public and for sensitive groups), Vietnamese text as issued; the English
is our translation. VN_WQI: Decision 1460/QĐ-TCMT (12 Nov 2019), suitability of each class (Bảng 7),
in short form. Category numbers, ranges, labels and colours are the index modules' own tables
(`vn_aqi.CATEGORIES`, `vn_wqi.CATEGORIES`): `scales()` joins them with this text.

>>> s = scales()["vn_aqi"]
>>> [c["number"] for c in s["categories"]], s["categories"][2]["label_en"], s["categories"][2]["colour"]
([1, 2, 3, 4, 5, 6], 'Poor', '#ff7e00')
>>> s["categories"][0]["text_colour"], s["categories"][5]["text_colour"]
('#000000', '#ffffff')
"""

from __future__ import annotations

from typing import Any

from citywatch.detectors.indices import fire_danger, traffic, us_aqi, vn_aqi, vn_wqi
from citywatch.detectors.indices._common import Category

SOURCE_AQI = "Quyết định 1459/QĐ-TCMT (12/11/2019), Bảng 4 và Bảng 5 / Decision 1459/QĐ-TCMT, Tables 4 and 5"
SOURCE_WQI = "Quyết định 1460/QĐ-TCMT (12/11/2019) / Decision 1460/QĐ-TCMT"

# (health effect, advice for everyone, advice for sensitive groups), vi then en; by category number
AQI_ADVICE: dict[int, dict[str, tuple[str, str, str]]] = {
    1: {"vi": ("Chất lượng không khí tốt, không ảnh hưởng tới sức khỏe.",
               "Tự do thực hiện các hoạt động ngoài trời.",
               "Tự do thực hiện các hoạt động ngoài trời."),
        "en": ("Air quality is good and does not affect health.",
               "Enjoy outdoor activities freely.",
               "Enjoy outdoor activities freely.")},
    2: {"vi": ("Chất lượng không khí ở mức chấp nhận được. Tuy nhiên, đối với những người nhạy cảm (người già, "
               "trẻ em, người mắc các bệnh hô hấp, tim mạch…) có thể chịu những tác động nhất định tới sức khỏe.",
               "Tự do thực hiện các hoạt động ngoài trời.",
               "Nên theo dõi các triệu chứng như ho hoặc khó thở, nhưng vẫn có thể hoạt động bên ngoài."),
        "en": ("Air quality is acceptable. Sensitive people (the elderly, children, people with respiratory or "
               "heart disease…) may experience some health effects.",
               "Enjoy outdoor activities freely.",
               "Watch for symptoms such as coughing or shortness of breath, but outdoor activity is still possible.")},
    3: {"vi": ("Những người nhạy cảm gặp phải các vấn đề về sức khỏe, những người bình thường ít ảnh hưởng.",
               "Những người thấy có triệu chứng đau mắt, ho hoặc đau họng… nên cân nhắc giảm các hoạt động ngoài "
               "trời. Đối với học sinh, có thể hoạt động bên ngoài, nhưng nên giảm bớt việc tập thể dục kéo dài.",
               "Nên giảm các hoạt động mạnh và giảm thời gian hoạt động ngoài trời. Những người mắc bệnh hen suyễn "
               "có thể cần sử dụng thuốc thường xuyên hơn."),
        "en": ("Sensitive people experience health problems; the general public is little affected.",
               "People with sore eyes, a cough or a sore throat… should consider reducing outdoor activity. "
               "Pupils can be active outdoors but should cut down on prolonged exercise.",
               "Reduce strenuous activity and time spent outdoors. People with asthma may need their "
               "medication more often.")},
    4: {"vi": ("Những người bình thường bắt đầu có các ảnh hưởng tới sức khỏe, nhóm người nhạy cảm có thể gặp "
               "những vấn đề sức khỏe nghiêm trọng hơn.",
               "Mọi người nên giảm các hoạt động mạnh khi ở ngoài trời, tránh tập thể dục kéo dài và nghỉ ngơi "
               "nhiều hơn trong nhà.",
               "Nên ở trong nhà và giảm hoạt động mạnh. Nếu cần thiết phải ra ngoài, hãy đeo khẩu trang đạt tiêu chuẩn."),
        "en": ("The general public begins to feel health effects; sensitive groups may have more serious problems.",
               "Everyone should reduce strenuous outdoor activity, avoid prolonged exercise and rest more indoors.",
               "Stay indoors and reduce strenuous activity. If you must go out, wear a certified mask.")},
    5: {"vi": ("Cảnh báo hưởng tới sức khỏe: mọi người bị ảnh hưởng tới sức khỏe nghiêm trọng hơn.",
               "Mọi người hạn chế tối đa các hoạt động ngoài trời và chuyển tất cả các hoạt động vào trong nhà. "
               "Nếu cần thiết phải ra ngoài, hãy đeo khẩu trang đạt tiêu chuẩn.",
               "Nên ở trong nhà và giảm hoạt động mạnh."),
        "en": ("Health warning: everyone is more seriously affected.",
               "Everyone should keep outdoor activity to a minimum and move all activities indoors. If you must "
               "go out, wear a certified mask.",
               "Stay indoors and reduce strenuous activity.")},
    6: {"vi": ("Cảnh báo khẩn cấp về sức khỏe: Toàn bộ dân số bị ảnh hưởng tới sức khỏe tới mức nghiêm trọng.",
               "Mọi người nên ở trong nhà, đóng cửa ra vào và cửa sổ. Nếu cần thiết phải ra ngoài, hãy đeo khẩu "
               "trang đạt tiêu chuẩn.",
               "Mọi người nên ở trong nhà, đóng cửa ra vào và cửa sổ. Nếu cần thiết phải ra ngoài, hãy đeo khẩu "
               "trang đạt tiêu chuẩn."),
        "en": ("Health emergency: the whole population is seriously affected.",
               "Everyone should stay indoors with doors and windows closed. If you must go out, wear a certified mask.",
               "Everyone should stay indoors with doors and windows closed. If you must go out, wear a certified mask.")},
}

# suitability of each VN_WQI class (Decision 1460/QĐ-TCMT), vi then en; by class number
WQI_USE: dict[int, dict[str, str]] = {
    1: {"vi": "Sử dụng tốt cho mục đích cấp nước sinh hoạt.", "en": "Good for domestic water supply."},
    2: {"vi": "Sử dụng cho mục đích cấp nước sinh hoạt nhưng cần các biện pháp xử lý phù hợp.",
        "en": "Usable for domestic water supply with suitable treatment."},
    3: {"vi": "Sử dụng cho mục đích tưới tiêu và các mục đích tương đương khác.",
        "en": "Usable for irrigation and similar purposes."},
    4: {"vi": "Sử dụng cho giao thông thủy và các mục đích tương đương khác.",
        "en": "Usable for waterway transport and similar purposes."},
    5: {"vi": "Nước ô nhiễm nặng, cần các biện pháp xử lý trong tương lai.",
        "en": "Heavily polluted water, needing treatment in the future."},
    6: {"vi": "Nước nhiễm độc, cần có biện pháp khắc phục, xử lý.", "en": "Toxic water, needing remediation."},
}


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def text_colour(rgb: tuple[int, int, int]) -> str:
    """Black or white, whichever contrasts more with the background (WCAG relative luminance)."""
    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    lum = 0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2])
    return "#000000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#ffffff"


def _category(c: Category) -> dict[str, Any]:
    return {"number": c.number, "low": c.low, "high": c.high, "label_vi": c.label_vi, "label_en": c.label_en,
            "colour": hex_colour(c.rgb), "text_colour": text_colour(c.rgb)}


#: How the page shows the registry's canonical units (citywatch/units.py).
UNIT_DISPLAY = {"ug/m3": "µg/m³", "mg/m3": "mg/m³", "Cel": "°C", "1": "%", "uS/cm": "µS/cm"}


def metric_names() -> dict[str, dict[str, str]]:
    """Display names of the metrics (vi / en), from the staff boards' titles."""
    from citywatch.grafana_boards import METRIC_TITLES

    out = {}
    for metric, title in METRIC_TITLES.items():
        vi, _, en = title.partition(" / ")
        out[metric] = {"vi": vi, "en": en or vi}
    return out


def scales() -> dict[str, Any]:
    """Every index scale the public data uses, with colours, labels and advice."""
    aqi = []
    for c in vn_aqi.CATEGORIES:
        a = AQI_ADVICE[c.number]
        aqi.append({**_category(c), "health_vi": a["vi"][0], "health_en": a["en"][0],
                    "advice_vi": a["vi"][1], "advice_en": a["en"][1],
                    "sensitive_vi": a["vi"][2], "sensitive_en": a["en"][2]})
    wqi = [{**_category(c), "use_vi": WQI_USE[c.number]["vi"], "use_en": WQI_USE[c.number]["en"]}
           for c in vn_wqi.CATEGORIES]
    return {
        "metrics": metric_names(),
        "units": UNIT_DISPLAY,
        "vn_aqi": {"name_vi": "Chỉ số chất lượng không khí (VN_AQI)", "name_en": "Air quality index (VN_AQI)",
                   "source": SOURCE_AQI, "categories": aqi},
        "us_aqi": {"name_vi": "AQI Hoa Kỳ", "name_en": "US AQI", "source": "US EPA (2024)",
                   "categories": [_category(c) for c in us_aqi.CATEGORIES]},
        "vn_wqi": {"name_vi": "Chỉ số chất lượng nước (VN_WQI)", "name_en": "Water quality index (VN_WQI)",
                   "source": SOURCE_WQI, "categories": wqi},
        "fire_danger": {"name_vi": "Cấp dự báo cháy rừng", "name_en": "Forest fire danger level",
                        "categories": [{"number": lv.number, "roman": lv.roman, "label_vi": lv.label_vi,
                                        "label_en": lv.label_en} for lv in fire_danger.LEVELS]},
        "traffic_los": {"name_vi": "Mức phục vụ giao thông", "name_en": "Traffic level of service",
                        "categories": [{"number": i + 1, "label_vi": letter, "label_en": letter}
                                       for i, letter in enumerate(traffic.LOS_LETTERS)]},
    }
