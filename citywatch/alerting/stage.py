"""The alerting stage of the engine: the alert manager, its notification sink, the API and command topic.

The engine hands it the level changes of every stored batch (`after_stored`) and calls `tick` from its
loop; both return the lifecycle transitions as line-protocol points for the `alerts` measurement.
Those points keep the tags of the level-change points (sensor, domain, area, metric, detector, level)
and carry the fields `state` (pending, firing, resolved, acknowledged, silenced, unsilenced,
flapping, flapping_stopped, escalated), `key`, `severity`, `detail` and, for what people did, `who`.
They have no `level_code`, `value`, `threshold` or `reason`, so the boards' "latest level" queries
are not disturbed; a transition at the same reading time as its level change lands on the same
point and adds its fields to it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import structlog

from citywatch.alerting.grouping import SensorDirectory
from citywatch.alerting.lifecycle import AlertingConfig, AlertManager, Transition
from citywatch.alerting.model import NotificationSink
from citywatch.sinks.line_protocol import encode_line
from citywatch.stats import Stats


def transition_line(t: Transition) -> str:
    a = t.alert
    level = "ok" if t.state == "resolved" else a.severity
    tags = {"sensor": a.sensor or a.key.split("|", 1)[0], "domain": a.domain, "area": a.area, "metric": a.metric,
            "detector": a.rule, "level": level}
    fields: dict[str, Any] = {"state": t.state, "key": a.key, "severity": a.severity}
    if t.detail:
        fields["detail"] = t.detail
    if t.who:
        fields["who"] = t.who
    if len(a.sensors) > 1:
        fields["sensors"] = ",".join(a.sensors)
    return encode_line("alerts", tags, fields, t.at_ns)


def panel_ids(settings, registry) -> dict[str, int]:
    """"domain/metric" -> id of the metric's panel on the generated domain board."""
    from citywatch import grafana_boards as gb

    out: dict[str, int] = {}
    uids = settings.alerting.grafana.dashboards
    for board in gb.build_dashboards(settings, registry).values():
        domain = next((d for d, uid in uids.items() if uid == board.get("uid")), None)
        if domain is None:
            continue
        by_title = {p.get("title"): p.get("id") for p in board.get("panels", [])}
        for sensor in registry.by_domain(domain):
            for metric in sensor.metrics:
                pid = by_title.get(gb.METRIC_TITLES.get(metric, metric))
                if pid is not None:
                    out[f"{domain}/{metric}"] = pid
    return out


class AlertingStage:
    def __init__(self, settings, registry, stats: Stats | None = None, logger=None, mqtt_client=None,
                 sink: NotificationSink | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        cfg: AlertingConfig = settings.alerting
        self.settings = settings
        self.cfg = cfg
        self.stats = stats or Stats()
        self.log = logger or structlog.get_logger("citywatch.alerting")
        self.dispatcher = None
        if sink is None:
            from citywatch.sinks.notify.dispatcher import build_dispatcher
            from citywatch.sinks.notify.render import registry_units

            self.dispatcher = build_dispatcher(cfg.notify, settings.data_dir, units=registry_units(registry),
                                               mqtt_client=mqtt_client, mqtt=settings.mqtt, stats=self.stats,
                                               logger=self.log)
            sink = self.dispatcher
        if cfg.grafana.base_url and not cfg.grafana.panels:
            try:
                cfg.grafana.panels = panel_ids(settings, registry)
            except Exception as exc:  # a link without a panel id still opens the right board
                self.log.warning("grafana panel ids unavailable", error=str(exc))
        state_file = settings.data_path(cfg.state_file) if cfg.state_file else None
        self.manager = AlertManager(cfg, sink=sink, clock=clock, directory=SensorDirectory.from_registry(registry),
                                    state_file=state_file)
        self.api = None
        self.commands = None

    def start(self) -> None:
        if self.manager.load():
            self.log.info("alert state restored", open_alerts=len(self.manager.open_alerts()),
                          file=str(self.manager.state_file))
        if self.dispatcher is not None:
            self.dispatcher.start()
        if self.cfg.api.enabled:
            from citywatch.alerting.api import ApiServer

            self.api = ApiServer(self.manager, self.cfg.api, logger=self.log)
            self.api.start()
        if self.cfg.commands.enabled:
            from citywatch.alerting.commands import CommandListener

            self.commands = CommandListener(self.manager, self.cfg.commands, self.settings.mqtt, stats=self.stats,
                                            logger=self.log)
            self.commands.start()

    def after_stored(self, events: list, event_now_ns: int | None) -> list[str]:
        """Level changes of a stored batch -> notifications (to the sink) and transition points."""
        return self._run(self.manager.ingest, events, event_now_ns)

    def tick(self, event_now_ns: int | None = None) -> list[str]:
        """Timers; without `event_now_ns` the manager's own event time (the newest stored reading)."""
        return self._run(self.manager.tick, event_now_ns)

    def _run(self, step, *args) -> list[str]:
        try:
            notes = step(*args)
        except Exception:  # a bug in alerting must not stop the storage of readings
            self.stats.inc("alerting_errors")
            self.log.exception("alert manager failed")
            return []
        self.stats.inc("notifications", len(notes))
        self.stats.set("alerts_open", self.manager.open_count())
        return self._lines()

    def _lines(self) -> list[str]:
        return [transition_line(t) for t in self.manager.take_transitions()]

    def stop(self, timeout: float = 10.0) -> None:
        self.manager.save()
        if self.commands is not None:
            self.commands.stop()
        if self.api is not None:
            self.api.stop()
        if self.dispatcher is not None:
            self.dispatcher.close(timeout)


__all__ = ["AlertingStage", "transition_line", "panel_ids"]
