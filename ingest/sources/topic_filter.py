"""Topic filters with named captures, including multi-level ones (Telegraf's topic_parsing, extended).

Levels of a filter are literal text, ``+`` / ``#`` (MQTT wildcards, not captured), ``{name}`` (one
level, captured) or ``{name+}`` (one or more levels, captured with their ``/``). A multi-level
capture may sit in the middle: ``zigbee2mqtt/{device+}/availability`` captures
``forest/station 3/soil`` from ``zigbee2mqtt/forest/station 3/soil/availability``. The broker
subscription of such a filter is cut at the multi-level capture (``zigbee2mqtt/#``), and `match`
checks the rest.

    >>> f = TopicFilter("tele/{device}/SENSOR")
    >>> f.subscription, f.match("tele/aq_tasmota_01/SENSOR")
    ('tele/+/SENSOR', {'device': 'aq_tasmota_01'})
    >>> z = TopicFilter("zigbee2mqtt/{device+}/availability")
    >>> z.subscription, z.match("zigbee2mqtt/forest/station 3/soil/availability")
    ('zigbee2mqtt/#', {'device': 'forest/station 3/soil'})
    >>> TopicFilter("zigbee2mqtt/{device+}").match("zigbee2mqtt/bridge/state")
    {'device': 'bridge/state'}
    >>> TopicFilter("v3/{app}@{tenant}/devices/{device}/up").match("v3/bienhoa-water@ttn/devices/wq-lora-01/up")
    {'app': 'bienhoa-water', 'tenant': 'ttn', 'device': 'wq-lora-01'}

As the last example shows, a level may also mix text and one-level captures (``{app}@{tenant}``);
captures never match an empty string.
"""

from __future__ import annotations

import re

__all__ = ["TopicFilter"]

_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}")


class TopicFilter:
    __slots__ = ("text", "names", "subscription", "_regex")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise ValueError("a topic filter is a non-empty string")
        levels = text.split("/")
        regex: list[str] = []
        sub: list[str] = []
        names: list[str] = []
        cut = False
        for i, level in enumerate(levels):
            if level == "#":
                if i != len(levels) - 1:
                    raise ValueError(f"topic filter {text!r}: '#' must be the last level")
                regex.append("(?:/.*)?" if regex else ".*")
                if not cut:
                    sub.append("#")
                cut = True
                continue
            part, pos, wild = [], 0, False
            for m in _CAPTURE.finditer(level):
                part.append(re.escape(level[pos:m.start()]))
                name, multi = m.group(1), m.group(2) == "+"
                if name in names:
                    raise ValueError(f"topic filter {text!r}: capture {{{name}}} appears twice")
                names.append(name)
                if multi:
                    if m.group(0) != level:
                        raise ValueError(f"topic filter {text!r}: a multi-level capture must be a whole level")
                    if any("+}" in lv for lv in levels[i + 1:]):
                        raise ValueError(f"topic filter {text!r}: only one multi-level capture")
                    part.append(f"(?P<{name}>[^/]+(?:/[^/]+)*?)")
                    if not cut:
                        sub.append("#")
                    cut = True
                else:
                    part.append(f"(?P<{name}>[^/]+)")
                wild = True
                pos = m.end()
            rest = level[pos:]
            if level == "+":
                part.append("[^/]+")
                wild = True
            elif any(c in rest for c in "+#{}"):
                raise ValueError(f"topic filter {text!r}: level {level!r} has a stray '+', '#' or brace")
            else:
                part.append(re.escape(rest))
            regex.append(("/" if regex else "") + "".join(part))
            if not cut:
                sub.append("+" if wild else level)
        self.text = text
        self.names = tuple(names)
        self.subscription = "/".join(sub)
        self._regex = re.compile("".join(regex))

    def __repr__(self) -> str:
        return f"TopicFilter({self.text!r})"

    def match(self, topic: str) -> dict[str, str] | None:
        m = self._regex.fullmatch(topic)
        if m is None:
            return None
        caps = m.groupdict()
        if any("+" in v or "#" in v for v in caps.values()):
            return None
        return caps
