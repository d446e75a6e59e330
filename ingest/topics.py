"""MQTT topic patterns with named segments, like Telegraf's ``topic_parsing``.

A pattern is an MQTT topic whose levels are either literal text or a ``{name}`` placeholder that
captures exactly one level::

    >>> p = TopicPattern("city/{domain}/{sensor}/telemetry")
    >>> p.subscription
    'city/+/+/telemetry'
    >>> p.match("city/air/aq-001/telemetry")
    {'domain': 'air', 'sensor': 'aq-001'}
    >>> p.match("city/air/aq-001/status") is None
    True
    >>> TopicPattern("city/alerts/{domain}/{sensor}").format(domain="air", sensor="aq-001")
    'city/alerts/air/aq-001'

Rules:

* a placeholder is a whole level (``{sensor}``, not ``aq-{sensor}``) and its name is a Python
  identifier; each name appears once;
* literal levels may not contain the MQTT wildcards ``+`` or ``#`` (the subscription would mean
  something else) nor braces;
* ``match`` returns ``None`` unless the topic has the same number of levels, every literal level is
  equal, and every captured value is non-empty and free of ``+`` and ``#`` (a topic name never
  contains wildcards, but a value that does must never reach the registry or a topic we publish);
* ``format`` checks its values the same way (and that none contains ``/``), and ignores keyword
  arguments the pattern does not use, so ``deadletter.format(**telemetry.match(topic))`` works
  when the two patterns use different placeholders.
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

__all__ = ["TopicPattern"]


class TopicPattern:
    __slots__ = ("pattern", "names", "subscription", "_levels", "_n")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("a topic pattern is a non-empty string")
        levels: list[tuple[bool, str]] = []  # (is_placeholder, name or literal text)
        names: list[str] = []
        for level in pattern.split("/"):
            m = _PLACEHOLDER.match(level)
            if m:
                name = m.group(1)
                if name in names:
                    raise ValueError(f"topic pattern {pattern!r}: placeholder {{{name}}} appears twice")
                names.append(name)
                levels.append((True, name))
            elif any(c in level for c in "+#{}"):
                raise ValueError(
                    f"topic pattern {pattern!r}: level {level!r} must be literal text without '+', '#' or "
                    "braces, or a whole-level placeholder such as {sensor}"
                )
            else:
                levels.append((False, level))
        self.pattern = pattern
        self.names: tuple[str, ...] = tuple(names)
        self.subscription = "/".join("+" if is_ph else text for is_ph, text in levels)
        self._levels = tuple(levels)
        self._n = len(levels)

    def __repr__(self) -> str:
        return f"TopicPattern({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopicPattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def match(self, topic: str) -> dict[str, str] | None:
        """The placeholder values of `topic`, or None when it does not fit the pattern."""
        if not isinstance(topic, str):
            return None
        parts = topic.split("/")
        if len(parts) != self._n:
            return None
        out: dict[str, str] = {}
        for (is_ph, text), part in zip(self._levels, parts):
            if is_ph:
                if not part or "+" in part or "#" in part:
                    return None
                out[text] = part
            elif part != text:
                return None
        return out

    def format(self, **values: str) -> str:
        """Build a topic from placeholder values. Raises ValueError for a missing or unusable value."""
        parts: list[str] = []
        for is_ph, text in self._levels:
            if not is_ph:
                parts.append(text)
                continue
            if text not in values:
                raise ValueError(f"topic pattern {self.pattern!r} needs a value for {{{text}}}")
            value = values[text]
            if not isinstance(value, str) or not value or any(c in value for c in "/+#"):
                raise ValueError(
                    f"topic pattern {self.pattern!r}: {{{text}}} must be a non-empty string without "
                    f"'/', '+' or '#', got {value!r}"
                )
            parts.append(value)
        return "/".join(parts)
