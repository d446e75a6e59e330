"""Notification throughput: rendering every format, and the dispatcher delivering to a local webhook.

Run:  .venv/bin/python benchmarks/notify_bench.py
Prints messages rendered per second per format, the time `deliver()` takes to accept a burst (what
the pipeline waits for), and end-to-end webhook deliveries per second through one channel worker.
"""
import logging
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

from citywatch.alerting.model import Alert, Notification, Recipient, notification_id
from citywatch.sinks.notify.dispatcher import NotifyConfig, RetryConfig, build_dispatcher
from citywatch.sinks.notify.render import Renderer


def notification(i: int, members: int = 1) -> Notification:
    sensors = [f"aq-{i:03d}-{k}" for k in range(members)]
    alert = Alert(key=f"aq-{i:03d}|threshold:no2", scope="sensor", sensor=sensors[0], area="Tân Phong", domain="air",
                  metric="no2", rule="threshold", severity="critical", state="firing", value=212.5 + i, threshold=200.0,
                  reason="above_crit", started_ns=1_764_226_800_000_000_000, sensors=sensors,
                  panel_url="http://grafana.local/d/cw-air?viewPanel=4")
    r = Recipient("duty-officer", "webhook", "-100123", "vi")
    return Notification(notification_id(alert.key, "firing", i, r.name), "firing", r, [alert], time.time_ns())


structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


class Ok(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


renderer = Renderer(units=lambda s, m: "ug/m3")
sample = [notification(i) for i in range(500)]
for name, render in (("email (subject+text+html)", renderer.email), ("slack", renderer.slack),
                     ("telegram", lambda n: renderer.telegram(n, 1)), ("generic json", renderer.generic)):
    t = time.perf_counter()
    for n in sample:
        render(n)
    print(f"render {name:26s} {len(sample) / (time.perf_counter() - t):8.0f} messages/s")

httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
with tempfile.TemporaryDirectory() as tmp:
    cfg = NotifyConfig(retry=RetryConfig(attempts=2, initial=0.05), max_queued=100_000, channels={
        "webhook": {"type": "webhook", "format": "telegram", "url": f"http://127.0.0.1:{httpd.server_address[1]}/"}})
    d = build_dispatcher(cfg, tmp, units=lambda s, m: "ug/m3")
    d.start()
    burst = [notification(i) for i in range(2000)]
    t = time.perf_counter()
    d.deliver(burst)
    accepted = time.perf_counter() - t
    d.wait_idle(120)
    total = time.perf_counter() - t
    d.close()
    print(f"deliver() accepted {len(burst)} notifications in {accepted * 1000:.1f} ms "
          f"({accepted / len(burst) * 1e6:.0f} µs each, journaled to the outbox)")
    print(f"webhook deliveries: {d.counters()['notify_delivered']:.0f} in {total:.2f} s "
          f"= {d.counters()['notify_delivered'] / total:.0f}/s through one channel worker")
httpd.shutdown()
