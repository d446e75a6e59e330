"""Notification templates, channels and the dispatcher, against real servers: a local HTTP server for
webhooks (with failures and 429 to drive retries and the dead-letter log), aiosmtpd for email (plain,
and STARTTLS with AUTH), Mosquitto for the MQTT channel and the alert command topic."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import ssl
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import orjson
import paho.mqtt.client as paho
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citywatch.alerting.commands import CommandConfig, CommandListener
from citywatch.alerting.lifecycle import AlertingConfig, AlertManager
from citywatch.alerting.model import Alert, Notification, Recipient, alert_key, notification_id
from citywatch.alerts import AlertEvent
from citywatch.config import ConfigError, MqttConfig
from citywatch.services import free_port
from citywatch.sinks.notify.base import parse_retry_after
from citywatch.sinks.notify.dispatcher import Dispatcher, NotifyConfig, RetryConfig, build_dispatcher
from citywatch.sinks.notify.email import EmailChannel, EmailChannelConfig
from citywatch.sinks.notify.mqtt_channel import MqttChannel, MqttChannelConfig
from citywatch.sinks.notify.render import Renderer, registry_units
from citywatch.sinks.notify.webhook import WebhookChannel, WebhookChannelConfig
from pipeline_helpers import Listener, small_registry, wait_for

READING_NS = 1_764_226_800_000_000_000  # 2025-11-27 07:00:00 UTC = 14:00 in Biên Hòa
PANEL = "http://grafana.local/d/cw-air?orgId=1&var-sensor=aq-005&viewPanel=4"
UNITS = {"no2": "ug/m3", "pm25": "ug/m3"}


def make_alert(sensor: str = "aq-005", metric: str = "no2", area: str = "Tân Phong", value: float = 212.5,
               **kw) -> Alert:
    fields = dict(key=alert_key(sensor, "threshold", metric), scope="sensor", sensor=sensor, area=area, domain="air",
                  metric=metric, rule="threshold", severity="critical", state="firing", value=value, threshold=200.0,
                  reason="above_crit", started_ns=READING_NS - 300 * 10**9, last_ns=READING_NS, panel_url=PANEL)
    fields.update(kw)
    return Alert(**fields)


def make_notification(channel: str, address: str = "", language: str = "vi", kind: str = "firing",
                      alerts: list[Alert] | None = None, name: str = "duty-officer", seq: int = 1) -> Notification:
    alerts = alerts or [make_alert()]
    r = Recipient(name=name, channel=channel, address=address, language=language)
    return Notification(id=notification_id(alerts[0].key, kind, seq, r.name), kind=kind, recipient=r,
                        alerts=alerts, created_ns=time.time_ns(), group_key=alerts[0].key)


def renderer() -> Renderer:
    return Renderer(units=lambda sensor, metric: UNITS.get(metric))


def fast_retry(attempts: int = 4) -> RetryConfig:
    return RetryConfig(attempts=attempts, initial=0.05, max=0.2, jitter=0.0)


# -- a real HTTP server receiving webhooks -----------------------------------------------------------
class WebhookServer:
    """Records every POST (path, headers, JSON body, arrival time) and answers from a script of
    (status, headers, body[, delay]); once the script is used up it answers 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: deque[tuple] = deque()  # (status, headers, body[, delay in seconds])
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "body": json.loads(body), "at": time.monotonic()})
                status, headers, reply, *delay = server.script.popleft() if server.script else (200, {}, b'{"ok": true}')
                if delay:  # a far end that hangs
                    time.sleep(delay[0])
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook():
    server = WebhookServer()
    yield server
    server.close()


def dispatcher_for(tmp_path: Path, channels: dict, retry: RetryConfig | None = None) -> Dispatcher:
    cfg = NotifyConfig(retry=retry or fast_retry(), channels={})
    d = Dispatcher(cfg, channels, tmp_path / "notify", tmp_path / "notify" / "deadletter.jsonl")
    d.start()
    return d


def dead_letters(tmp_path: Path) -> list[dict]:
    path = tmp_path / "notify" / "deadletter.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


# -- templates -----------------------------------------------------------------------------------------
def test_templates_carry_every_fact_in_vietnamese_and_english():
    group = make_alert(sensor=None, sensors=["aq-001", "aq-002", "aq-003"], metric="pm25", area="Hố Nai",
                       key="area:Hố Nai|grouped:pm25", scope="area", value=61.0, severity="warning",
                       reason="above_warn", threshold=50.0)
    local = dt.datetime.fromtimestamp(READING_NS / 1e9, ZoneInfo("Asia/Ho_Chi_Minh"))
    utc_text = dt.datetime.fromtimestamp(READING_NS / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    r = renderer()
    for lang, words, local_text in (
        ("vi", ["Giá trị", "Ngưỡng", "Lý do", "vượt ngưỡng nguy hiểm", "Thời điểm đo", "Các trạm trong nhóm",
                "Biểu đồ Grafana", "212,5 µg/m³", "200 µg/m³", "tại Tân Phong"], local.strftime("%H:%M:%S %d/%m/%Y")),
        ("en", ["Value", "Threshold", "Reason", "above the critical threshold", "Reading time", "Group members",
                "Grafana panel", "212.5 µg/m³", "200 µg/m³", "at Tân Phong"], local.strftime("%Y-%m-%d %H:%M:%S")),
    ):
        n = make_notification("email", "a@example.org", language=lang, alerts=[make_alert(), group])
        mail = r.email(n)
        for text in (mail.text, mail.html):
            for word in words:
                assert word in text, (lang, word)
            assert local_text in text and "UTC+7" in text and utc_text in text
            assert "aq-001, aq-002, aq-003" in text and "aq-005" in text and "Hố Nai" in text
        assert PANEL in mail.text and PANEL.replace("&", "&amp;") in mail.html
        slack = r.slack(n)["blocks"][1]["text"]["text"]
        telegram = r.telegram(n, "-100123")["text"]
        summary = r.generic(n)["text"]
        for text in (slack, telegram, summary):
            assert words[-3] in text and local_text in text and utc_text in text and "aq-002" in text
        assert f"<{PANEL.replace('&', '&amp;')}|" in slack
        assert f'<a href="{PANEL.replace("&", "&amp;")}">' in telegram
    vi_subject = r.email(make_notification("email", "a@example.org")).subject
    en_subject = r.email(make_notification("email", "a@example.org", language="en")).subject
    assert vi_subject == "[citywatch] CẢNH BÁO · Nghiêm trọng: NO₂ 212,5 µg/m³ tại Tân Phong (aq-005)"
    assert en_subject == "[citywatch] ALERT · Critical: NO₂ 212.5 µg/m³ at Tân Phong (aq-005)"
    resolved = make_notification("email", "a@example.org", kind="resolved",
                                 alerts=[make_alert(state="resolved", resolved_ns=READING_NS + 600 * 10**9)])
    assert "ĐÃ KẾT THÚC" in r.email(resolved).subject and "Kết thúc lúc" in r.email(resolved).text
    escalation = make_notification("email", "a@example.org", kind="escalation")
    escalation.tier = 1
    assert "CHUYỂN CẤP" in r.email(escalation).subject
    for text in (r.email(escalation).text, r.email(escalation).html, r.telegram(escalation, 1)["text"],
                 r.slack(escalation)["blocks"][1]["text"]["text"], r.generic(escalation)["text"]):
        assert "Chưa được xác nhận: chuyển lên cấp 2." in text


def test_values_are_escaped_for_html_telegram_and_slack_but_not_plain_text():
    nasty = "Khu <b>A</b> & \"B\""
    n = make_notification("email", "a@example.org", alerts=[make_alert(area=nasty)])
    r = renderer()
    mail = r.email(n)
    assert nasty in mail.text and nasty in mail.subject
    assert "Khu &lt;b&gt;A&lt;/b&gt; &amp; &#34;B&#34;" in mail.html and "<b>A</b>" not in mail.html
    telegram = r.telegram(n, 42)["text"]
    assert "Khu &lt;b&gt;A&lt;/b&gt; &amp;" in telegram and "<b>A</b>" not in telegram
    slack = r.slack(n)
    assert "Khu &lt;b&gt;A&lt;/b&gt; &amp; \"B\"" in slack["blocks"][1]["text"]["text"]
    assert r.generic(n)["alerts"][0]["area"] == nasty


def test_a_template_directory_overrides_one_file(tmp_path):
    (tmp_path / "email_subject.en.txt").write_text("ALERT {{ first.sensor }} {{ first.value }}")
    r = Renderer(tmp_path, units=lambda s, m: "ug/m3")
    n = make_notification("email", "a@example.org", language="en")
    assert r.email(n).subject == "ALERT aq-005 212.5 µg/m³"
    assert "Reading time" in r.email(n).text  # the other templates are the built-in ones
    (tmp_path / "telegram.vi.html").write_text("{{ alerts[0].no_such_field }}")
    with pytest.raises(jinja2.UndefinedError):  # a broken override stops the start, not a 3 a.m. alert
        build_dispatcher(NotifyConfig(template_dir=str(tmp_path)), tmp_path)


def test_units_come_from_the_registry():
    r = Renderer(units=registry_units(small_registry()))
    n = make_notification("email", "a@example.org", alerts=[make_alert(sensor="wq-001", metric="dissolvedOxygen",
                                                                       value=3.25, threshold=4.0)])
    assert "Oxy hòa tan (DO) 3,25 mg/L tại Tân Phong (wq-001)" in r.email(n).subject
    assert "Ngưỡng:          4 mg/L" in r.email(n).text


def test_retry_after_header_forms():
    assert parse_retry_after("7") == 7.0
    now = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    delays = [fast_retry(10).delay(k) for k in range(1, 6)]
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]  # doubling, bounded
    assert fast_retry().delay(1, asked=3.0) == 3.0


# -- webhooks ----------------------------------------------------------------------------------------
def test_webhook_formats_generic_slack_and_telegram(tmp_path, webhook):
    env = {"TG_TOKEN": "123:abc", "PORTAL_TOKEN": "s3cret-portal-token", "SLACK_URL": webhook.url + "/slack"}
    cfg = NotifyConfig(retry=fast_retry(), channels={
        "portal": {"type": "webhook", "format": "generic", "url": webhook.url + "/generic", "token_env": "PORTAL_TOKEN"},
        "slack": {"type": "webhook", "format": "slack", "url_env": "SLACK_URL"},
        "telegram": {"type": "webhook", "format": "telegram", "url": webhook.url + "/bot{token}/sendMessage",
                     "token_env": "TG_TOKEN"},
    })
    d = build_dispatcher(cfg, tmp_path, units=lambda s, m: UNITS.get(m), env=env)
    d.start()
    try:
        d.deliver([make_notification("portal", name="portal"), make_notification("slack", "#truc-ban", name="slack"),
                   make_notification("telegram", "-1001234", name="tg", language="en")])
        assert d.wait_idle(10)
    finally:
        d.close()
    by_path = {r["path"]: r for r in webhook.requests}
    assert set(by_path) == {"/generic", "/slack", "/bot123:abc/sendMessage"}
    generic = by_path["/generic"]
    assert generic["headers"]["Authorization"] == "Bearer s3cret-portal-token"
    body = generic["body"]
    assert body["kind"] == "firing" and body["alerts"][0]["value"] == 212.5 and body["alerts"][0]["threshold"] == 200.0
    assert body["alerts"][0]["reading_time"] == "2025-11-27T07:00:00Z" and body["alerts"][0]["panel_url"] == PANEL
    slack = by_path["/slack"]["body"]
    assert slack["channel"] == "#truc-ban" and slack["blocks"][0]["type"] == "header"
    assert "Authorization" not in by_path["/slack"]["headers"]
    tg = by_path["/bot123:abc/sendMessage"]["body"]
    assert tg["chat_id"] == "-1001234" and tg["parse_mode"] == "HTML" and "Reading time" in tg["text"]
    assert d.counters()["notify_delivered"] == 3


def test_webhook_retries_5xx_and_honours_429_retry_after(tmp_path, webhook):
    webhook.script.extend([(503, {}, b"busy"), (429, {"Retry-After": "1"}, b"slow down")])
    ch = WebhookChannel("hook", WebhookChannelConfig(url=webhook.url + "/in"), renderer())
    d = dispatcher_for(tmp_path, {"hook": ch})
    try:
        n = make_notification("hook")
        d.deliver([n])
        assert d.wait_idle(10)
    finally:
        d.close()
    assert len(webhook.requests) == 3
    first, second, third = (r["at"] for r in webhook.requests)
    assert second - first < 0.9  # backoff of 50 ms after the 503
    assert third - second >= 0.95  # the 429's Retry-After: 1 second
    assert d.delivered(n.id) and dead_letters(tmp_path) == []
    c = d.counters()
    assert c["notify_delivered"] == 1 and c["notify_retries"] == 2 and c["notify_failures.hook"] == 2


def test_webhook_failures_end_in_the_dead_letter_log(tmp_path, webhook):
    webhook.script.extend([(500, {}, b"down")] * 3 + [(400, {}, b'{"error": "bad chat"}')])
    ch = WebhookChannel("hook", WebhookChannelConfig(url=webhook.url + "/in"), renderer())
    refused = WebhookChannel("gone", WebhookChannelConfig(url=f"http://127.0.0.1:{free_port()}/in", timeout=1),
                             renderer())
    d = dispatcher_for(tmp_path, {"hook": ch, "gone": refused}, retry=fast_retry(attempts=3))
    try:
        exhausted, rejected = make_notification("hook", seq=1), make_notification("hook", seq=2)
        unreachable, unknown = make_notification("gone", seq=3), make_notification("pager", seq=4)
        d.deliver([exhausted])
        assert d.wait_idle(10)
        d.deliver([rejected, unreachable, unknown])
        assert d.wait_idle(10)
    finally:
        d.close()
    dead = {r["notification_id"]: r for r in dead_letters(tmp_path)}
    assert set(dead) == {exhausted.id, rejected.id, unreachable.id, unknown.id}
    assert dead[exhausted.id]["attempts"] == 3 and "HTTP 500" in dead[exhausted.id]["error"]
    assert dead[rejected.id]["attempts"] == 1 and "HTTP 400" in dead[rejected.id]["error"]  # 4xx: no retry
    assert dead[unreachable.id]["attempts"] == 3 and "connection failed" in dead[unreachable.id]["error"]
    assert "unknown channel 'pager'" in dead[unknown.id]["error"]
    assert Notification.from_dict(dead[exhausted.id]["notification"]) == exhausted  # enough to resend by hand
    assert len(webhook.requests) == 4
    assert d.counters()["notify_dead_letters"] == 4


def test_nothing_is_sent_twice_and_the_queue_survives_a_restart(tmp_path, webhook):
    ch = WebhookChannel("hook", WebhookChannelConfig(url=webhook.url + "/in"), renderer())
    d = dispatcher_for(tmp_path, {"hook": ch})
    sent = make_notification("hook", seq=1)
    d.deliver([sent, sent])  # the same id twice in one call
    assert d.wait_idle(10)
    d.close()
    assert len(webhook.requests) == 1

    # Restart: the delivered id is remembered. A notification for a webhook that is down waits.
    down_port = free_port()
    later = make_notification("late", seq=2)
    late_ch = WebhookChannel("late", WebhookChannelConfig(url=f"http://127.0.0.1:{down_port}/in", timeout=1),
                             renderer())
    ch2 = WebhookChannel("hook", WebhookChannelConfig(url=webhook.url + "/in"), renderer())
    d2 = dispatcher_for(tmp_path, {"hook": ch2, "late": late_ch}, retry=RetryConfig(attempts=5, initial=30, jitter=0))
    d2.deliver([sent, later])
    wait_for(lambda: d2.stats.get("notify_failures.late") >= 1, 5, "first failed attempt")
    d2.close()
    assert len(webhook.requests) == 1 and d2.counters()["notify_duplicates"] == 1

    # Third run: the late webhook is up now; the journaled notification goes out, once.
    late_server = ThreadingHTTPServer(("127.0.0.1", down_port), _Ok)
    threading.Thread(target=late_server.serve_forever, daemon=True).start()
    try:
        late_ch3 = WebhookChannel("late", WebhookChannelConfig(url=f"http://127.0.0.1:{down_port}/in"), renderer())
        d3 = dispatcher_for(tmp_path, {"hook": ch2, "late": late_ch3})
        assert d3.wait_idle(10)
        d3.deliver([sent, later])
        assert d3.wait_idle(5)
        d3.close()
        assert _Ok.bodies == [later.id]
        assert d3.counters()["notify_delivered"] == 1 and d3.counters()["notify_duplicates"] == 2
    finally:
        late_server.shutdown()
        late_server.server_close()


class _Ok(BaseHTTPRequestHandler):
    bodies: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Ok.bodies.append(body["id"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_deliver_never_blocks_on_a_slow_channel(tmp_path):
    class Slow:  # a channel whose far end hangs: deliver() must still return at once
        name = "slow"

        def __init__(self):
            self.release = threading.Event()

        def start(self): pass

        def send(self, n):
            self.release.wait(5)

        def close(self):
            self.release.set()

    slow = Slow()
    d = dispatcher_for(tmp_path, {"slow": slow})
    try:
        t0 = time.monotonic()
        d.deliver([make_notification("slow", seq=i) for i in range(50)])
        assert time.monotonic() - t0 < 0.5
        assert d.queued() == 50
    finally:
        slow.release.set()
        d.close()


# -- email -------------------------------------------------------------------------------------------
class MailHandler:
    def __init__(self) -> None:
        self.messages: list = []
        self.refuse = {"nobody@example.org"}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content, policy=email.policy.default),
                              getattr(session, "auth_data", None)))
        return "250 Message accepted"


@pytest.fixture
def smtp_server():
    handler = MailHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


def test_email_multipart_in_vietnamese_through_a_real_smtp_server(tmp_path, smtp_server):
    handler, port = smtp_server
    ch = EmailChannel("email", EmailChannelConfig(host="127.0.0.1", port=port, security="none",
                                                  sender="citywatch <canhbao@bienhoa.example>"), renderer())
    d = dispatcher_for(tmp_path, {"email": ch})
    try:
        n = make_notification("email", "Trực ban <trucban@example.org>, truongca@example.org")
        bad = make_notification("email", "nobody@example.org", seq=2)
        d.deliver([n, bad])
        assert d.wait_idle(10)
    finally:
        d.close()
    assert len(handler.messages) == 1
    mail_from, rcpts, msg, _ = handler.messages[0]
    assert mail_from == "canhbao@bienhoa.example" and rcpts == ["trucban@example.org", "truongca@example.org"]
    assert msg["Subject"] == "[citywatch] CẢNH BÁO · Nghiêm trọng: NO₂ 212,5 µg/m³ tại Tân Phong (aq-005)"
    assert msg["Message-ID"] == f"<{n.id}@citywatch>"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Giá trị đo:      212,5 µg/m³" in text and "14:00:00 27/11/2025 (UTC+7)" in text
    assert "<b>212,5 µg/m³</b>" in html and PANEL.replace("&", "&amp;") in html
    dead = dead_letters(tmp_path)
    assert [r["notification_id"] for r in dead] == [bad.id] and "550" in dead[0]["error"]
    assert dead[0]["attempts"] == 1  # a refused mailbox is not retried


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_email_starttls_and_auth_from_environment_secrets(tmp_path):
    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    logins: list[bytes] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"canhbao" and auth_data.password == b"mat-khau-rat-dai"
        logins.append(auth_data.login)
        return AuthResult(success=ok, handled=False)

    handler = MailHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=tls, require_starttls=True,
                            authenticator=authenticator, auth_required=True)
    controller.start()
    try:
        def channel(password: str, from_file: bool = False) -> EmailChannel:
            cfg = EmailChannelConfig(host="127.0.0.1", port=controller.port, security="starttls", tls_ca_file=str(cert),
                                     username_env="SMTP_USER", password_env="SMTP_PASS")
            env = {"SMTP_USER": "canhbao", "SMTP_PASS": password}
            if from_file:  # a Docker / systemd credential file instead of the variable
                secret_file = tmp_path / "smtp-password"
                secret_file.write_text(password + "\n")
                secret_file.chmod(0o600)
                env = {"SMTP_USER": "canhbao", "SMTP_PASS_FILE": str(secret_file)}
            return EmailChannel("email", cfg, renderer(), env=env)

        d = dispatcher_for(tmp_path, {"email": channel("mat-khau-rat-dai", from_file=True)})
        n = make_notification("email", "trucban@example.org", language="en")
        d.deliver([n])
        assert d.wait_idle(10)
        d.close()
        assert len(handler.messages) == 1 and handler.messages[0][2]["Subject"].startswith("[citywatch] ALERT")
        assert d.delivered(n.id)

        d2 = dispatcher_for(tmp_path / "wrong", {"email": channel("wrong-password")})
        wrong = make_notification("email", "trucban@example.org", seq=9)
        d2.deliver([wrong])
        assert d2.wait_idle(10)
        d2.close()
        dead = dead_letters(tmp_path / "wrong")
        assert [r["notification_id"] for r in dead] == [wrong.id] and "535" in dead[0]["error"]
        assert set(logins) == {b"canhbao"} and len(handler.messages) == 1  # smtplib tries PLAIN, then LOGIN
    finally:
        controller.stop()

    with pytest.raises(ValueError, match="SMTP_USER"):
        EmailChannel("email", EmailChannelConfig(username_env="SMTP_USER", password_env="SMTP_PASS"), renderer(), env={})
    (tmp_path / "smtp-password").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):  # a secret others can read is refused
        EmailChannel("email", EmailChannelConfig(username_env="SMTP_USER", password_env="SMTP_PASS"), renderer(),
                     env={"SMTP_USER": "canhbao", "SMTP_PASS_FILE": str(tmp_path / "smtp-password")})


def test_email_server_down_is_retried_then_dead_lettered(tmp_path):
    ch = EmailChannel("email", EmailChannelConfig(host="127.0.0.1", port=free_port(), security="none", timeout=1),
                      renderer())
    d = dispatcher_for(tmp_path, {"email": ch}, retry=fast_retry(attempts=2))
    n = make_notification("email", "trucban@example.org")
    d.deliver([n])
    assert d.wait_idle(10)
    d.close()
    dead = dead_letters(tmp_path)
    assert dead[0]["notification_id"] == n.id and dead[0]["attempts"] == 2
    assert "SMTP connection failed" in dead[0]["error"]


# -- MQTT ----------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_mqtt_channel_publishes_json_with_its_own_client_and_the_engines(tmp_path, mosquitto):
    listener = Listener(mosquitto.port, "city/notifications/#", "notify-listener")
    engine_client = paho.Client(CallbackAPIVersion.VERSION2, client_id="engine-under-test")
    engine_client.connect("127.0.0.1", mosquitto.port)
    engine_client.loop_start()
    mqtt_cfg = MqttConfig(url=mosquitto.url)
    own = MqttChannel("mqtt", MqttChannelConfig(client_id="notify-own"), renderer(), mqtt=mqtt_cfg)
    shared = MqttChannel("screen", MqttChannelConfig(topic="city/notifications/screen/{recipient}"), renderer(),
                         client=engine_client)
    d = dispatcher_for(tmp_path, {"mqtt": own, "screen": shared})
    try:
        assert own.wait_connected(5) and shared.wait_connected(5)
        a = make_notification("mqtt", "city/notifications/duty-officer", seq=1)
        b = make_notification("screen", "", name="wall+1", language="en", seq=2)
        d.deliver([a, b])
        assert d.wait_idle(10)
        got = wait_for(lambda: dict(listener.messages) if len(listener.messages) >= 2 else None, 5, "notifications")
    finally:
        d.close()
        still_connected = engine_client.is_connected()  # the channel leaves the engine's client alone
        listener.close()
        engine_client.disconnect()
        engine_client.loop_stop()
    assert still_connected
    assert set(got) == {"city/notifications/duty-officer", "city/notifications/screen/wall_1"}
    body = got["city/notifications/duty-officer"]
    assert body["id"] == a.id and body["language"] == "vi" and body["alerts"][0]["value"] == 212.5
    assert "vượt ngưỡng nguy hiểm" in body["text"] and body["alerts"][0]["unit"] == "µg/m³"
    assert got["city/notifications/screen/wall_1"]["id"] == b.id
    assert d.counters()["notify_delivered"] == 2


@pytest.mark.integration
def test_mqtt_channel_retries_while_the_broker_is_unreachable(tmp_path):
    mqtt_cfg = MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}")
    ch = MqttChannel("mqtt", MqttChannelConfig(client_id="notify-nobroker", publish_timeout=0.5), renderer(),
                     mqtt=mqtt_cfg)
    d = dispatcher_for(tmp_path, {"mqtt": ch}, retry=fast_retry(attempts=3))
    n = make_notification("mqtt", "city/notifications/duty-officer")
    d.deliver([n])
    assert d.wait_idle(10)
    d.close()
    dead = dead_letters(tmp_path)
    assert dead[0]["notification_id"] == n.id and dead[0]["attempts"] == 3 and "not connected" in dead[0]["error"]


# -- the alert manager through the dispatcher -----------------------------------------------------------
def _event(level: str, t_s: int, value: float, sensor: str = "aq-005") -> AlertEvent:
    return AlertEvent(sensor=sensor, domain="air", area="tan-phong", metric="no2", detector="threshold", level=level,
                      previous_level="ok", value=value, threshold=200.0, score=1.0,
                      ts_ns=READING_NS + t_s * 10**9, reason="above_crit" if level != "ok" else "ok")


def _manager(sink=None, **routing) -> AlertManager:
    cfg = AlertingConfig.model_validate({"state_file": None, **({"routing": routing} if routing else {})})
    return AlertManager(cfg, sink=sink)


def test_alert_manager_notifications_reach_a_webhook_once(tmp_path, webhook):
    cfg = NotifyConfig(retry=fast_retry(), channels={"webhook": {"type": "webhook", "url": webhook.url + "/hook"}})
    d = build_dispatcher(cfg, tmp_path, units=lambda s, m: "ug/m3")
    d.start()
    manager = _manager(d, recipients={"ops-log": {"channel": "webhook", "address": "", "language": "en"}},
                       routes=[{"tiers": [{"after": "0s", "recipients": ["ops-log"]}]}])
    try:
        manager.ingest([_event("critical", 0, 231.0)])
        manager.ingest([_event("critical", 40, 240.0)])
        assert d.wait_idle(10)
    finally:
        d.close()
    assert len(webhook.requests) == 1
    body = webhook.requests[0]["body"]
    assert body["kind"] == "firing" and body["recipient"] == "ops-log" and body["language"] == "en"
    assert body["alerts"][0]["key"] == "aq-005|threshold:no2" and "µg/m³" in body["text"]


# -- the command topic ---------------------------------------------------------------------------------
class Requester:
    """An MQTT 5 console: publishes commands with a response topic and correlation data."""

    def __init__(self, port: int, client_id: str = "duty-console") -> None:
        self.replies: list[tuple[str, dict, bytes | None]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = lambda c, u, m: self.replies.append(
            (m.topic, orjson.loads(m.payload), getattr(m.properties, "CorrelationData", None)))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("city/commands/alerts/replies/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(5)

    def send(self, command, correlation: bytes | None = None, response_topic: str | None = None) -> dict:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation:
            props.CorrelationData = correlation
        before = len(self.replies)
        payload = command if isinstance(command, bytes) else orjson.dumps(command)
        self.client.publish("city/commands/alerts", payload, qos=1, properties=props).wait_for_publish(5)
        wait_for(lambda: len(self.replies) > before, 5, "command reply")
        return self.replies[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.integration
def test_ack_silence_and_unsilence_over_the_command_topic(mosquitto):
    manager = _manager()
    manager.ingest([_event("critical", 0, 231.0)])
    manager.ingest([_event("critical", 40, 240.0)])
    key = "aq-005|threshold:no2"
    assert manager.get(key).state == "firing"
    cfg = CommandConfig(enabled=True, token_env="CMD_TOKEN", client_id="citywatch-commands-test")
    listener = CommandListener(manager, cfg, MqttConfig(url=mosquitto.url), env={"CMD_TOKEN": "doi-ca-dem"})
    listener.start()
    console = Requester(mosquitto.port)
    try:
        assert listener.ready.wait(5)
        before = time.time_ns()
        topic, reply, corr = console.send({"action": "ack", "key": key, "by": "lan", "note": "đã cử đội",
                                           "token": "doi-ca-dem", "request_id": "r1"},
                                          correlation=b"c-1", response_topic="city/commands/alerts/replies/console")
        assert topic == "city/commands/alerts/replies/console" and corr == b"c-1"
        assert reply["ok"] and reply["request_id"] == "r1" and reply["alert"]["acked_by"] == "lan"
        acked = manager.get(key)
        assert acked.acked_by == "lan" and acked.ack_note == "đã cử đội" and acked.acked_at_ns >= before

        _, reply, _ = console.send({"action": "silence", "sensor": "aq-005", "duration": "2h", "comment": "bảo trì",
                                    "by": "minh", "token": "doi-ca-dem"})
        assert reply["ok"], reply
        silence_id = reply["silence"]["id"]
        assert [s.id for s in manager.silences()] == [silence_id]
        assert 2 * 3600 * 10**9 - 10**10 < reply["silence"]["end_ns"] - before <= 2 * 3600 * 10**9 + 10**10

        _, reply, _ = console.send({"action": "unsilence", "id": silence_id, "by": "minh", "token": "doi-ca-dem"})
        assert reply["ok"] and manager.silences() == []

        # Refusals: wrong token, not JSON, unknown action, unknown key, a silence matching everything.
        assert console.send({"action": "ack", "key": key, "by": "x", "token": "nope"})[1]["error"] == \
            "missing or wrong token"
        assert "not JSON" in console.send(b"{ack")[1]["error"]
        assert "unknown action" in console.send({"action": "reboot", "by": "x", "token": "doi-ca-dem"})[1]["error"]
        assert "no open alert" in console.send({"action": "ack", "key": "nope|x:y", "by": "x",
                                                "token": "doi-ca-dem"})[1]["error"]
        assert "at least one of" in console.send({"action": "silence", "duration": "1h", "by": "x",
                                                  "token": "doi-ca-dem"})[1]["error"]
        # Without an MQTT 5 response topic the reply goes to the configured topic.
        assert console.send({"action": "ack", "key": key, "by": "x"})[0] == "city/commands/alerts/replies"
    finally:
        console.close()
        listener.stop()
    audit = [(r.who, r.action, r.target) for r in manager.audit()]
    assert audit == [("lan", "acknowledge", key), ("minh", "silence", silence_id), ("minh", "unsilence", silence_id)]
    assert all(r.when_ns >= before for r in manager.audit())
    assert listener.stats.get("commands_done") == 3 and listener.stats.get("commands_rejected") == 6


def test_a_large_digest_fits_telegram_and_slack_limits_by_listing_fewer_alerts():
    alerts = [make_alert(sensor=f"aq-{i:03d}", value=200.0 + i) for i in range(60)]
    n = make_notification("telegram", "-100123", kind="digest", alerts=alerts)
    r = renderer()
    telegram = r.telegram(n, "-100123")["text"]
    slack = r.slack(n)["blocks"][1]["text"]["text"]
    assert len(telegram) <= 4096 and len(slack) <= 3000
    for text in (telegram, slack):
        listed = text.count(", trạm aq-")
        assert 1 <= listed < 60 and f"… và {60 - listed} cảnh báo khác." in text
    assert telegram.count("<b>") == telegram.count("</b>")  # whole tags: Telegram parses it
    assert len(r.generic(n)["alerts"]) == 60  # structured JSON keeps them all


def test_module_doctests():
    import doctest

    import citywatch.sinks.notify.render as render_module

    result = doctest.testmod(render_module)
    assert result.attempted >= 1 and result.failed == 0


def test_detector_reasons_have_words_in_both_languages():
    """The reason codes of the detectors (as of this writing) read as words; a code added later still
    reads, with its underscores as spaces, until it gets its own words."""
    from citywatch.sinks.notify.render import LABELS

    codes = ["above_warn", "above_crit", "below_warn", "below_crit", "pending", "below_physical_min",
             "above_physical_max", "late", "offline", "spike", "level_shift", "level_up", "level_down",
             "variance_shift", "variance_up", "variance_down", "unusual_for_the_time", "new_range", "new_high", "new_low", "new_extreme",
             "drift_baseline", "drift_neighbours", "above_expected", "below_expected", "sensor_suspect",
             "area_event", "stuck", "flatline", "zero_unlikely", "dead_camera", "true_zero", "warming_up",
             "no_neighbours"]
    for lang in ("vi", "en"):
        assert [c for c in codes if c not in LABELS[lang]["reason"]] == [], lang
    assert len({LABELS["vi"]["reason"][c] for c in codes}) == len(codes)  # no two read the same
    shown = renderer().alert_context(make_alert(reason="some_new_code"), "en")
    assert shown["reason"] == "some new code"


def test_sample_configs_validate():
    import yaml

    from citywatch.alerting import api, commands
    from citywatch.alerting.lifecycle import AlertingConfig
    from citywatch.sinks.notify import dispatcher, email as email_module, mqtt_channel, webhook as webhook_module

    notify = NotifyConfig.model_validate(yaml.safe_load(dispatcher.SAMPLE_CONFIG)["notify"])
    assert set(notify.channels) == {"mqtt", "email", "slack"} and notify.channels["email"].security == "starttls"
    for module, model in ((webhook_module, WebhookChannelConfig), (email_module, EmailChannelConfig),
                          (mqtt_channel, MqttChannelConfig)):
        for name, block in yaml.safe_load(module.SAMPLE_CONFIG).items():
            assert model.model_validate(block).type == block["type"], name
    assert api.ApiConfig.model_validate(yaml.safe_load(api.SAMPLE_CONFIG)["api"]).host == "127.0.0.1"
    assert commands.CommandConfig.model_validate(yaml.safe_load(commands.SAMPLE_CONFIG)["commands"]).enabled
    alerting = AlertingConfig.model_validate({"notify": yaml.safe_load(dispatcher.SAMPLE_CONFIG)["notify"],
                                              "api": {"port": 9000}, "commands": {"enabled": True}})
    assert isinstance(alerting.notify, NotifyConfig) and alerting.api.port == 9000 and alerting.commands.enabled
    with pytest.raises(ValueError, match="exactly one of url and url_env"):
        WebhookChannelConfig(format="slack")
    with pytest.raises(ValueError, match="password"):
        NotifyConfig.model_validate({"channels": {"e": {"type": "email", "password": "x"}}})  # secrets: env only


def test_a_recipients_notifications_keep_their_order_across_retries(tmp_path, webhook):
    webhook.script.append((503, {}, b"busy"))  # the first request fails
    ch = WebhookChannel("hook", WebhookChannelConfig(url=webhook.url + "/in"), renderer())
    d = dispatcher_for(tmp_path, {"hook": ch}, retry=RetryConfig(attempts=3, initial=0.3, jitter=0))
    firing = make_notification("hook", name="lan", kind="firing")
    resolved = make_notification("hook", name="lan", kind="resolved",
                                 alerts=[make_alert(state="resolved", resolved_ns=READING_NS + 10**12)])
    other = make_notification("hook", name="minh", kind="firing")
    try:
        d.deliver([firing])
        wait_for(lambda: webhook.requests, 5, "first attempt")
        d.deliver([resolved, other])
        assert d.wait_idle(10)
    finally:
        d.close()
    order = [(r["body"]["recipient"], r["body"]["kind"]) for r in webhook.requests]
    # minh does not wait for lan's retry; lan's "resolved" never overtakes lan's "firing"
    assert order == [("lan", "firing"), ("minh", "firing"), ("lan", "firing"), ("lan", "resolved")]


@pytest.mark.integration
def test_a_command_sent_while_the_engine_is_down_is_carried_out_on_restart(mosquitto):
    manager = _manager()
    manager.ingest([_event("critical", 0, 231.0)])
    manager.ingest([_event("critical", 40, 240.0)])
    key = "aq-005|threshold:no2"
    cfg = CommandConfig(enabled=True, client_id="citywatch-commands-restart")
    mqtt_cfg = MqttConfig(url=mosquitto.url)
    first = CommandListener(manager, cfg, mqtt_cfg)
    first.start()
    assert first.ready.wait(5)
    first.stop()  # the engine goes down; its session (and subscription) stays on the broker
    console = Requester(mosquitto.port, client_id="duty-console-restart")
    try:
        console.client.publish("city/commands/alerts", orjson.dumps({"action": "ack", "key": key, "by": "lan"}),
                               qos=1).wait_for_publish(5)
        assert manager.get(key).acked_by is None
        second = CommandListener(manager, cfg, mqtt_cfg)
        second.start()
        try:
            wait_for(lambda: manager.get(key).acked_by == "lan", 5, "the queued command")
            wait_for(lambda: console.replies, 5, "its reply")
        finally:
            second.stop()
    finally:
        console.close()
    assert console.replies[-1][1]["ok"] and console.replies[-1][0] == "city/commands/alerts/replies"


@pytest.mark.integration
def test_alerting_stage_wires_channels_api_and_command_topic(tmp_path, mosquitto, webhook, monkeypatch):
    """The engine's alerting stage built from one `alerting:` config: notifications on MQTT and a webhook,
    the API and the command topic acting on the same alerts, and the audit trail of both."""
    import httpx

    from citywatch.alerting.stage import AlertingStage

    monkeypatch.setenv("CITYWATCH_API_TOKENS", "lan:lan-token-0123456789abcdef")
    alerting = AlertingConfig.model_validate({
        "state_file": "alerting-state.json",
        "grafana": {"base_url": None},
        "routing": {"recipients": {"duty-officer": {"channel": "mqtt", "address": "city/notifications/duty-officer"},
                                   "ops-log": {"channel": "webhook", "address": "", "language": "en"}},
                    "routes": [{"tiers": [{"after": "0s", "recipients": ["duty-officer", "ops-log"]}]}]},
        "notify": {"retry": {"attempts": 3, "initial": "50ms"},
                   "channels": {"mqtt": {"type": "mqtt", "client_id": "stage-notify"},
                                "webhook": {"type": "webhook", "url": webhook.url + "/hook"}}},
        "api": {"enabled": True, "port": 0},
        "commands": {"enabled": True, "client_id": "stage-commands"},
    })
    settings = type("S", (), {"alerting": alerting, "data_dir": str(tmp_path), "mqtt": MqttConfig(url=mosquitto.url),
                              "data_path": staticmethod(lambda p: tmp_path / p)})()
    listener = Listener(mosquitto.port, "city/notifications/#", "stage-listener")
    stage = AlertingStage(settings, small_registry())
    stage.start()
    console = Requester(mosquitto.port, client_id="stage-console")
    try:
        assert stage.commands.ready.wait(5) and stage.dispatcher.channels["mqtt"].wait_connected(5)
        lines = stage.after_stored([_event("critical", 0, 231.0, sensor="aq-001")], None)
        lines += stage.after_stored([_event("critical", 40, 240.0, sensor="aq-001")], None)
        assert any('state="firing"' in line for line in lines), lines
        assert stage.dispatcher.wait_idle(10)
        got = wait_for(lambda: listener.messages, 5, "the MQTT notification")
        assert got[0][0] == "city/notifications/duty-officer" and got[0][1]["alerts"][0]["unit"] == "µg/m³"
        assert webhook.requests[0]["body"]["recipient"] == "ops-log" and webhook.requests[0]["body"]["language"] == "en"

        key = "aq-001|threshold:no2"
        with httpx.Client(base_url=stage.api.url, headers={"Authorization": "Bearer lan-token-0123456789abcdef"}) as c:
            assert [a["key"] for a in c.get("/alerts").json()["alerts"]] == [key]
            assert c.post("/silences", json={"area": "tan-phong", "duration": "1h"}).status_code == 201
        _, reply, _ = console.send({"action": "ack", "key": key, "by": "minh"})
        assert reply["ok"]
        lines = stage.tick()
        assert any('state="acknowledged"' in line and 'who="minh"' in line for line in lines)
    finally:
        console.close()
        listener.close()
        stage.stop()
    assert [(r.who, r.action) for r in stage.manager.audit()] == [("lan", "silence"), ("minh", "acknowledge")]
    assert stage.dispatcher.counters()["notify_delivered"] == 2


@pytest.mark.integration
def test_the_shipped_broker_acl_lets_only_duty_officers_command(tmp_path):
    """deploy/mosquitto/acl on a real broker: a duty officer's command is carried out and answered;
    the same command from a field device's account never reaches the engine."""
    import subprocess

    from citywatch.services import Mosquitto, find_binary

    repo = Path(__file__).resolve().parent.parent
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate((("citywatch", "engine-pw"), ("dutyofficer", "duty-pw"), ("aq-001", "dev-pw"))):
        subprocess.run([find_binary("mosquitto_passwd"), "-b", *(["-c"] if i == 0 else []), str(passwd), user, password],
                       check=True)
    passwd.chmod(0o600)
    broker = Mosquitto(tmp_path / "broker", password_file=passwd,
                       extra_config=f"acl_file {repo / 'deploy' / 'mosquitto' / 'acl'}")
    broker.start()
    manager = _manager()
    manager.ingest([_event("critical", 0, 231.0)])
    manager.ingest([_event("critical", 40, 240.0)])
    key = "aq-005|threshold:no2"
    listener = CommandListener(manager, CommandConfig(enabled=True, client_id="acl-commands"),
                               MqttConfig(url=broker.url, username="citywatch", password="engine-pw"))
    listener.start()

    def console(user: str, password: str) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set(user, password)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        return c

    device, officer = console("aq-001", "dev-pw"), console("dutyofficer", "duty-pw")
    replies: list[dict] = []
    officer.on_message = lambda c, u, m: replies.append(orjson.loads(m.payload))
    try:
        assert listener.ready.wait(5)
        officer.subscribe("city/commands/alerts/replies/#", qos=1)
        command = {"action": "ack", "key": key, "by": "lan", "request_id": "acl"}
        device.publish("city/commands/alerts", orjson.dumps({**command, "by": "intruder"}), qos=1).wait_for_publish(5)
        time.sleep(0.5)
        assert manager.get(key).acked_by is None and listener.stats.get("commands_done") == 0
        officer.publish("city/commands/alerts", orjson.dumps(command), qos=1).wait_for_publish(5)
        wait_for(lambda: replies, 5, "the reply to the duty officer")
    finally:
        for c in (device, officer):
            c.disconnect()
            c.loop_stop()
        listener.stop()
        broker.stop()
    assert replies[0]["ok"] and replies[0]["request_id"] == "acl" and manager.get(key).acked_by == "lan"
    assert [(r.who, r.action) for r in manager.audit()] == [("lan", "acknowledge")]


@pytest.mark.integration
def test_engine_end_to_end_reading_to_webhook_to_acknowledgement_in_influxdb(tmp_path, mosquitto, influxdb, db_name,
                                                                            webhook, monkeypatch):
    """A device's NO2 readings cross the limit; the engine notifies a webhook in Vietnamese with the
    value, unit and panel link; a duty officer acknowledges through the API; the acknowledgement is a
    point of `alerts` in InfluxDB with who did it."""
    import httpx

    from citywatch.pipeline import Engine
    from pipeline_helpers import Device, engine_settings, rows

    monkeypatch.setenv("CITYWATCH_API_TOKENS", "lan:lan-token-0123456789abcdef")
    settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path, f"{db_name}-engine", alerting={
        "grafana": {"base_url": "http://grafana.local"},
        "routing": {"recipients": {"ops": {"channel": "webhook", "address": ""}},
                    "routes": [{"tiers": [{"after": "0s", "recipients": ["ops"]}]}]},
        "notify": {"retry": {"attempts": 3, "initial": "50ms"},
                   "channels": {"webhook": {"type": "webhook", "url": webhook.url + "/hook"}}},
        "api": {"enabled": True, "port": 0},
    })
    engine = Engine(settings, small_registry())
    engine.start()
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    t0_ms = (time.time_ns() // 1_000_000 // 60_000 - 30) * 60_000  # half an hour ago, on a minute
    try:
        assert engine.consumer.connected.wait(10)
        device.publish_all([("city/air/aq-001/telemetry", {"ts": t0_ms + i * 60_000, "no2": v})
                            for i, v in enumerate([100, 250, 260, 255])])  # critical from the second reading on
        hook = wait_for(lambda: [r["body"] for r in webhook.requests
                                 if r["body"]["alerts"][0]["key"] == "aq-001|threshold:no2"], 15, "the webhook")
        body = hook[0]
        assert body["kind"] == "firing" and body["language"] == "vi" and body["recipient"] == "ops"
        alert = body["alerts"][0]
        assert alert["value"] == 250 and alert["threshold"] == 200 and alert["unit"] == "µg/m³"
        assert alert["reading_time"] == dt.datetime.fromtimestamp((t0_ms + 60_000) / 1000, dt.timezone.utc) \
            .isoformat().replace("+00:00", "Z")
        assert alert["panel_url"].startswith("http://grafana.local/d/") and "vượt ngưỡng nguy hiểm" in body["text"]

        with httpx.Client(base_url=engine.alerting.api.url,
                          headers={"Authorization": "Bearer lan-token-0123456789abcdef"}) as c:
            keys = [a["key"] for a in c.get("/alerts").json()["alerts"]]
            assert "aq-001|threshold:no2" in keys
            assert c.post("/alerts/aq-001|threshold:no2/ack", json={"note": "đang xử lý"}).status_code == 200
        acked = wait_for(lambda: rows(influxdb, db_name, "SELECT * FROM alerts WHERE \"state\" = 'acknowledged'"),
                         10, "the acknowledgement in InfluxDB")
        assert acked[0]["who"] == "lan" and acked[0]["key"] == "aq-001|threshold:no2"
        firing = rows(influxdb, db_name, "SELECT * FROM alerts WHERE \"state\" = 'firing'")
        assert [p["time"] for p in firing if p["key"] == "aq-001|threshold:no2"] == [(t0_ms + 60_000) * 1_000_000]
    finally:
        device.close()
        engine.stop()
    assert sum(1 for r in webhook.requests if r["body"]["alerts"][0]["key"] == "aq-001|threshold:no2") == 1
    assert engine.stats.get("notify_delivered") >= 1


def test_a_webhook_that_hangs_times_out_and_is_retried(tmp_path, webhook):
    webhook.script.append((200, {}, b"{}", 1.5))  # answers, but after the channel's timeout
    ch = WebhookChannel("hook", WebhookChannelConfig(url=webhook.url + "/in", timeout=0.3), renderer())
    d = dispatcher_for(tmp_path, {"hook": ch})
    n = make_notification("hook")
    try:
        t0 = time.monotonic()
        d.deliver([n])
        assert time.monotonic() - t0 < 0.2  # the pipeline does not wait for it
        assert d.wait_idle(10)
    finally:
        d.close()
    assert len(webhook.requests) == 2 and d.delivered(n.id)
    assert d.counters()["notify_retries"] == 1 and dead_letters(tmp_path) == []
