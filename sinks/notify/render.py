"""Message rendering: one notification -> email (subject, text, HTML), Slack, Telegram and generic JSON.

Templates are Jinja2 files in `templates/`, one per format and language (`vi`, the default, and `en`),
named `<format>.<language>.<ext>`. A `template_dir` given in the config is searched first, so an
operations centre can override any one file without copying the rest.

Escaping follows the target: HTML email and Telegram (parse mode HTML) autoescape every value; Slack
mrkdwn escapes only `&`, `<` and `>` (what Slack decodes); plain text (email text, subjects, the
`text` of JSON and MQTT messages) is not escaped at all, since JSON encoding takes care of it.

Every message carries the reading time in local time (Asia/Ho_Chi_Minh) and UTC, the value with its
unit, the threshold, the reason in words, the sensor and area, the members of a grouped alert and
the link to the Grafana panel.

>>> from types import SimpleNamespace as NS
>>> alert = NS(key="threshold/aq-005/no2", sensor="aq-005", sensors=["aq-005"], area="Tân Phong",
...            domain="air", metric="no2", severity="critical", state="firing", value=212.5,
...            threshold=200.0, reason="above_crit", started_ns=1_764_226_800_000_000_000,
...            last_ns=1_764_226_800_000_000_000, resolved_ns=None, panel_url="https://grafana.example/d/air",
...            acked_by=None, flapping=False, rule="no2-1h")
>>> note = NS(id="n1", kind="firing", recipient=NS(name="duty", language="vi"), alerts=[alert],
...           created_ns=1_764_226_800_000_000_000)
>>> Renderer(units=lambda sensor, metric: "ug/m3").email(note).subject
'[citywatch] CẢNH BÁO · Nghiêm trọng: NO₂ 212,5 µg/m³ tại Tân Phong (aq-005)'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

LANGUAGES = ("vi", "en")
LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
MAX_LISTED = 20  # alerts listed in one message; the rest are counted ("and 12 more")
TELEGRAM_LIMIT = 4096  # characters of a sendMessage text
SLACK_SECTION_LIMIT = 3000  # characters of a section block's text

UnitLookup = Callable[[str, str], "str | None"]

UNIT_DISPLAY = {
    "ug/m3": "µg/m³", "mg/m3": "mg/m³", "ug/L": "µg/L", "Cel": "°C", "degF": "°F", "uS/cm": "µS/cm",
    "1": "", "pH": "", "veh": "xe",
}
UNIT_DISPLAY_EN = {**UNIT_DISPLAY, "veh": "veh"}

LABELS: dict[str, dict[str, dict[str, str]]] = {
    "vi": {
        "intro": {"repeat": "Nhắc lại: cảnh báo vẫn còn và chưa được xác nhận.",
                  "escalation": "Chưa được xác nhận: chuyển lên cấp {tier}.",
                  "digest": "Tổng hợp các cảnh báo được gộp lại để tránh gửi quá nhiều tin.",
                  "flapping": "Cảnh báo bật/tắt liên tục: tạm dừng thông báo từng lần thay đổi cho đến khi ổn định."},
        "kind": {"firing": "CẢNH BÁO", "resolved": "ĐÃ KẾT THÚC", "repeat": "NHẮC LẠI", "escalation": "CHUYỂN CẤP",
                 "digest": "TỔNG HỢP", "flapping": "DAO ĐỘNG"},
        "severity": {"warning": "Cảnh báo", "critical": "Nghiêm trọng", "info": "Thông tin", "ok": "Bình thường"},
        "state": {"pending": "đang chờ", "firing": "đang cảnh báo", "resolved": "đã kết thúc"},
        "domain": {"air": "Không khí", "water": "Nước", "traffic": "Giao thông", "forest": "Rừng"},
        "metric": {"pm25": "PM2.5", "pm10": "PM10", "pm1": "PM1", "no2": "NO₂", "so2": "SO₂", "o3": "O₃", "co": "CO",
                   "relativeHumidity": "Độ ẩm tương đối", "temperature": "Nhiệt độ", "precipitation": "Lượng mưa",
                   "windSpeed": "Tốc độ gió", "pH": "pH", "dissolvedOxygen": "Oxy hòa tan (DO)", "turbidity": "Độ đục",
                   "conductivity": "Độ dẫn điện", "intensity": "Lưu lượng xe", "occupancy": "Tỷ lệ chiếm dụng",
                   "averageVehicleSpeed": "Tốc độ trung bình"},
        "reason": {"ok": "trở lại bình thường", "above_warn": "vượt ngưỡng cảnh báo",
                   "above_crit": "vượt ngưỡng nguy hiểm", "below_warn": "dưới ngưỡng cảnh báo",
                   "below_crit": "dưới ngưỡng nguy hiểm", "pending": "chưa đủ thời gian duy trì để xác nhận",
                   "below_physical_min": "dưới giới hạn đo của thiết bị (nghi lỗi cảm biến)",
                   "above_physical_max": "vượt giới hạn đo của thiết bị (nghi lỗi cảm biến)",
                   "no_data": "không nhận được dữ liệu", "flapping": "trạng thái dao động liên tục",
                   "late": "dữ liệu đến trễ so với chu kỳ gửi", "offline": "mất kết nối (không gửi dữ liệu)",
                   "spike": "tăng/giảm đột biến", "level_shift": "giá trị dịch chuyển mức kéo dài",
                   "level_up": "mức tăng kéo dài", "level_down": "mức giảm kéo dài",
                   "variance_shift": "dao động bất thường",
                   "unusual_for_the_time": "khác thường so với cùng giờ, cùng thứ các tuần trước", "variance_up": "dao động tăng bất thường",
                   "variance_down": "dao động giảm bất thường", "new_range": "ra ngoài khoảng giá trị từng gặp",
                   "new_high": "cao nhất từng ghi nhận", "new_low": "thấp nhất từng ghi nhận",
                   "new_extreme": "vượt mọi giá trị từng ghi nhận",
                   "drift_baseline": "trôi dần so với mức nền (nghi cảm biến lệch)",
                   "drift_neighbours": "trôi dần so với các trạm lân cận (nghi cảm biến lệch)",
                   "above_expected": "cao hơn mức thường gặp vào giờ này",
                   "below_expected": "thấp hơn mức thường gặp vào giờ này",
                   "sensor_suspect": "khác hẳn các trạm lân cận (nghi lỗi cảm biến)",
                   "area_event": "cả khu vực cùng biến động (sự kiện thực)",
                   "stuck": "giá trị đứng yên (nghi kẹt cảm biến)", "flatline": "giá trị bằng phẳng bất thường",
                   "zero_unlikely": "bằng 0 bất thường", "dead_camera": "camera không hoạt động",
                   "true_zero": "bằng 0 hợp lý", "warming_up": "đang tích lũy dữ liệu nền",
                   "no_neighbours": "không có trạm lân cận để so sánh"},
    },
    "en": {
        "intro": {"repeat": "Reminder: the alert is still open and not acknowledged.",
                  "escalation": "Not acknowledged: escalated to tier {tier}.",
                  "digest": "Alerts gathered into one message to avoid a flood of messages.",
                  "flapping": "The alert keeps switching on and off: per-change messages pause until it settles."},
        "kind": {"firing": "ALERT", "resolved": "RESOLVED", "repeat": "REMINDER", "escalation": "ESCALATION",
                 "digest": "DIGEST", "flapping": "FLAPPING"},
        "severity": {"warning": "Warning", "critical": "Critical", "info": "Info", "ok": "OK"},
        "state": {"pending": "pending", "firing": "firing", "resolved": "resolved"},
        "domain": {"air": "Air", "water": "Water", "traffic": "Traffic", "forest": "Forest"},
        "metric": {"pm25": "PM2.5", "pm10": "PM10", "pm1": "PM1", "no2": "NO₂", "so2": "SO₂", "o3": "O₃", "co": "CO",
                   "relativeHumidity": "Relative humidity", "temperature": "Temperature", "precipitation": "Rainfall",
                   "windSpeed": "Wind speed", "pH": "pH", "dissolvedOxygen": "Dissolved oxygen", "turbidity": "Turbidity",
                   "conductivity": "Conductivity", "intensity": "Traffic flow", "occupancy": "Occupancy",
                   "averageVehicleSpeed": "Average speed"},
        "reason": {"ok": "back to normal", "above_warn": "above the warning threshold",
                   "above_crit": "above the critical threshold", "below_warn": "below the warning threshold",
                   "below_crit": "below the critical threshold", "pending": "not yet held long enough to confirm",
                   "below_physical_min": "below the device's measuring range (suspected sensor fault)",
                   "above_physical_max": "above the device's measuring range (suspected sensor fault)",
                   "no_data": "no data received", "flapping": "the state keeps changing (flapping)",
                   "late": "data arriving later than its reporting interval", "offline": "offline (no data)",
                   "spike": "sudden spike", "level_shift": "lasting shift in level", "level_up": "lasting rise",
                   "level_down": "lasting fall", "variance_shift": "unusual fluctuation",
                   "unusual_for_the_time": "unusual for this hour of this day of the week",
                   "variance_up": "fluctuating more than usual", "variance_down": "fluctuating less than usual",
                   "new_range": "outside the range seen so far", "new_high": "highest value seen",
                   "new_low": "lowest value seen", "new_extreme": "beyond anything seen so far",
                   "drift_baseline": "drifting from its baseline (suspected sensor drift)",
                   "drift_neighbours": "drifting from its neighbours (suspected sensor drift)",
                   "above_expected": "higher than usual for this time", "below_expected": "lower than usual for this time",
                   "sensor_suspect": "unlike its neighbours (suspected sensor fault)",
                   "area_event": "the whole area moves together (a real event)",
                   "stuck": "value not changing (suspected stuck sensor)", "flatline": "unusually flat signal",
                   "zero_unlikely": "an unlikely zero", "dead_camera": "camera not working",
                   "true_zero": "a plausible zero", "warming_up": "still learning its baseline",
                   "no_neighbours": "no neighbours to compare with"},
    },
}


@dataclass(frozen=True, slots=True)
class EmailMessage:
    subject: str
    text: str
    html: str


def language_of(recipient: Any, default: str = "vi") -> str:
    lang = getattr(recipient, "language", None) or default
    return lang if lang in LANGUAGES else default


def format_number(value: float | None, language: str) -> str:
    """Up to two decimals, no trailing zeros; Vietnamese writes a decimal comma."""
    if value is None:
        return "—"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text.replace(".", ",") if language == "vi" else text


def format_times(ts_ns: int | None, language: str) -> dict[str, str] | None:
    if ts_ns is None:
        return None
    utc = datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc)
    local = utc.astimezone(LOCAL_TZ)
    local_text = local.strftime("%H:%M:%S %d/%m/%Y") if language == "vi" else local.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "local": f"{local_text} (UTC+7)",
        "utc": utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "iso": utc.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def slack_escape(value: Any) -> Any:
    """Slack mrkdwn decodes only &amp; &lt; &gt;: escape those three in every value, nothing else."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


class Renderer:
    def __init__(self, template_dir: str | Path | None = None, units: UnitLookup | None = None,
                 default_language: str = "vi") -> None:
        loaders: list[jinja2.BaseLoader] = []
        if template_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(template_dir)))
        loaders.append(jinja2.PackageLoader("citywatch.sinks.notify", "templates"))
        loader = jinja2.ChoiceLoader(loaders)
        common = dict(loader=loader, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self._text = jinja2.Environment(autoescape=False, **common)
        self._html = jinja2.Environment(autoescape=True, **common)
        self._slack = jinja2.Environment(autoescape=False, finalize=slack_escape, **common)
        self.units = units
        if default_language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, not {default_language!r}")
        self.default_language = default_language

    # -- context -----------------------------------------------------------------------------------
    def _unit(self, alert: Any, language: str) -> str:
        unit = getattr(alert, "unit", None)
        sensor = getattr(alert, "sensor", None) or next(iter(getattr(alert, "sensors", None) or []), None)
        if unit is None and self.units is not None and sensor and getattr(alert, "metric", None):
            unit = self.units(sensor, alert.metric)
        if not unit:
            return ""
        return (UNIT_DISPLAY if language == "vi" else UNIT_DISPLAY_EN).get(unit, unit)

    def alert_context(self, alert: Any, language: str) -> dict[str, Any]:
        labels = LABELS[language]
        unit = self._unit(alert, language)

        def with_unit(v: float | None) -> str:
            text = format_number(v, language)
            return f"{text} {unit}" if unit and v is not None else text

        reason = getattr(alert, "reason", None) or ""
        metric = getattr(alert, "metric", None) or ""
        severity = getattr(alert, "severity", None) or ""
        state = getattr(alert, "state", None) or ""
        sensors = list(getattr(alert, "sensors", None) or [])
        sensor = getattr(alert, "sensor", None) or (sensors[0] if len(sensors) == 1 else "")
        return {
            "key": getattr(alert, "key", ""),
            "sensor": sensor,
            "members": sensors if len(sensors) > 1 else [],
            "area": getattr(alert, "area", None) or "",
            "domain": labels["domain"].get(getattr(alert, "domain", None) or "", getattr(alert, "domain", None) or ""),
            "metric": labels["metric"].get(metric, metric),
            "metric_code": metric,
            "rule": getattr(alert, "rule", None) or "",
            "severity": labels["severity"].get(severity, severity),
            "severity_code": severity,
            "state": labels["state"].get(state, state),
            "state_code": state,
            "value": with_unit(getattr(alert, "value", None)),
            "threshold": with_unit(getattr(alert, "threshold", None)) if getattr(alert, "threshold", None) is not None else None,
            "unit": unit,
            "reason": labels["reason"].get(reason, reason.replace("_", " ")),
            "reason_code": reason,
            "reading_time": format_times(getattr(alert, "last_ns", None) or getattr(alert, "started_ns", None), language),
            "started": format_times(getattr(alert, "started_ns", None), language),
            "resolved": format_times(getattr(alert, "resolved_ns", None), language),
            "acked_by": getattr(alert, "acked_by", None),
            "flapping": bool(getattr(alert, "flapping", False)),
            "panel_url": getattr(alert, "panel_url", None),
        }

    def context(self, notification: Any, language: str | None = None, max_listed: int = MAX_LISTED) -> dict[str, Any]:
        lang = language or language_of(getattr(notification, "recipient", None), self.default_language)
        labels = LABELS[lang]
        alerts = [self.alert_context(a, lang) for a in notification.alerts]
        kind = notification.kind
        severities = [a["severity_code"] for a in alerts]
        worst = "critical" if "critical" in severities else (severities[0] if severities else "")
        recipient = getattr(notification, "recipient", None)
        return {
            "id": notification.id,
            "kind": labels["kind"].get(kind, kind.upper()),
            "kind_code": kind,
            "language": lang,
            "recipient": getattr(recipient, "name", recipient) or "",
            "severity": labels["severity"].get(worst, worst),
            "severity_code": worst,
            "alerts": alerts[:max_listed],
            "first": alerts[0] if alerts else None,
            "count": len(alerts),
            "more": max(0, len(alerts) - max_listed),
            "created": format_times(getattr(notification, "created_ns", None), lang),
            "intro": labels["intro"].get(kind, "").format(tier=int(getattr(notification, "tier", 0) or 0) + 1),
        }

    # -- formats -----------------------------------------------------------------------------------
    def _render(self, env: jinja2.Environment, name: str, ctx: dict[str, Any]) -> str:
        return env.get_template(f"{name}.{ctx['language']}.{_EXT[name]}").render(ctx).strip()

    def email(self, notification: Any, language: str | None = None) -> EmailMessage:
        ctx = self.context(notification, language)
        subject = " ".join(self._render(self._text, "email_subject", ctx).split())
        return EmailMessage(subject=subject, text=self._render(self._text, "email_body", ctx) + "\n",
                            html=self._render(self._html, "email_html", ctx))

    def text(self, notification: Any, language: str | None = None) -> str:
        """The plain-text summary used as `text` of JSON and MQTT messages."""
        return self._render(self._text, "summary", self.context(notification, language))

    def slack(self, notification: Any, language: str | None = None, channel: str | None = None) -> dict[str, Any]:
        """An incoming-webhook / chat.postMessage body: a header block and a mrkdwn section."""
        ctx = self.context(notification, language)
        subject = " ".join(self._render(self._text, "email_subject", ctx).split())
        body = self._fit(self._slack, "slack", notification, language, SLACK_SECTION_LIMIT)
        payload: dict[str, Any] = {
            "text": slack_escape(subject),  # the notification preview
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": _cut(subject, 150), "emoji": True}},
                {"type": "section", "text": {"type": "mrkdwn", "text": body}},
            ],
        }
        if channel:
            payload["channel"] = channel
        return payload

    def telegram(self, notification: Any, chat_id: str | int, language: str | None = None) -> dict[str, Any]:
        """A Bot API sendMessage body in HTML parse mode."""
        text = self._fit(self._html, "telegram", notification, language, TELEGRAM_LIMIT)
        return {"chat_id": chat_id, "text": text, "parse_mode": "HTML", "disable_web_page_preview": True}

    def _fit(self, env: jinja2.Environment, name: str, notification: Any, language: str | None, limit: int) -> str:
        """List fewer alerts until the message fits the service's limit: cutting markup in the middle
        would make the service refuse the whole message."""
        listed = MAX_LISTED
        while True:
            text = self._render(env, name, self.context(notification, language, listed))
            if len(text) <= limit:
                return text
            if listed == 1:
                return _cut(text, limit)
            listed = max(1, listed // 2)

    def generic(self, notification: Any, language: str | None = None) -> dict[str, Any]:
        """Structured JSON for webhooks and MQTT: the raw fields, the formatted ones and a text summary."""
        ctx = self.context(notification, language)
        every = self.context(notification, language, max_listed=len(notification.alerts))["alerts"]
        alerts = []
        for raw, shown in zip(notification.alerts, every):  # the summary text lists MAX_LISTED, the JSON all
            alerts.append({
                "key": shown["key"], "sensor": shown["sensor"], "sensors": list(getattr(raw, "sensors", None) or []),
                "area": shown["area"], "domain": getattr(raw, "domain", None), "metric": shown["metric_code"],
                "rule": shown["rule"], "severity": shown["severity_code"], "state": shown["state_code"],
                "value": getattr(raw, "value", None), "threshold": getattr(raw, "threshold", None),
                "unit": shown["unit"], "reason": shown["reason_code"], "reason_text": shown["reason"],
                "reading_time": shown["reading_time"]["iso"] if shown["reading_time"] else None,
                "reading_time_local": shown["reading_time"]["local"] if shown["reading_time"] else None,
                "started_ns": getattr(raw, "started_ns", None), "last_ns": getattr(raw, "last_ns", None),
                "resolved_ns": getattr(raw, "resolved_ns", None), "acked_by": shown["acked_by"],
                "flapping": shown["flapping"], "panel_url": shown["panel_url"],
            })
        return {
            "id": ctx["id"], "kind": ctx["kind_code"], "recipient": ctx["recipient"], "language": ctx["language"],
            "severity": ctx["severity_code"], "created": ctx["created"]["iso"] if ctx["created"] else None,
            "subject": " ".join(self._render(self._text, "email_subject", ctx).split()),
            "text": self._render(self._text, "summary", ctx), "count": ctx["count"], "alerts": alerts,
        }


_EXT = {"email_subject": "txt", "email_body": "txt", "email_html": "html", "summary": "txt", "slack": "txt",
        "telegram": "html"}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def registry_units(registry: Any) -> UnitLookup:
    """The unit lookup of a `citywatch.registry.Registry`: (sensor, metric) -> its unit, or None."""
    def unit(sensor: str, metric: str) -> str | None:
        s = registry.get(sensor)
        spec = s.metrics.get(metric) if s is not None else None
        return spec.unit if spec is not None else None
    return unit


def check_templates(renderer: Renderer, sample: Any, languages: Sequence[str] = LANGUAGES) -> None:
    """Render every format in every language once: a broken override fails at startup, not at 3 a.m."""
    for lang in languages:
        renderer.email(sample, lang)
        renderer.slack(sample, lang)
        renderer.telegram(sample, 0, lang)
        renderer.generic(sample, lang)


__all__ = ["EmailMessage", "LANGUAGES", "LOCAL_TZ", "Renderer", "check_templates", "format_number",
           "format_times", "language_of", "registry_units", "slack_escape"]
