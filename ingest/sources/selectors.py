"""Selectors: JSONPath-like paths into a decoded payload, with named captures and fallbacks.

A path is a list of steps separated by ``.``; a leading ``$`` or ``$.`` is optional:

* ``name`` - the key ``name`` of an object;
* ``"PM2.5"`` or ``['PM2.5']`` - a key that contains dots (or any other character);
* ``[2]`` - an element of an array (negative indexes count from the end);
* ``*`` or ``[*]`` - every key of an object or every element of an array;
* ``{chip}`` - like ``*``, and the key (or index) is *captured* under the name ``chip``, so the
  metric name, the device id or a tag can use it.

Each match is ``(value, key, captures)``: ``key`` is the last object key on the path (the source
metric name, e.g. ``PM2.5`` for ``SDS0X1."PM2.5"`` or for ``*.*``). A missing key or a step that
does not fit the value's type matches nothing; that is not an error. Several paths separated by
``|`` are *fallbacks*: the first path that matches anything wins.

    >>> doc = {"Time": "2024-06-01T19:00:00", "SDS0X1": {"PM2.5": 35.2, "PM10": 51},
    ...        "BME280": {"Temperature": 31.5}}
    >>> [(v, k) for v, k, _ in Selector('SDS0X1."PM2.5"').find(doc)]
    [(35.2, 'PM2.5')]
    >>> sorted((k, c["chip"]) for _, k, c in Selector("{chip}.*").find(doc))
    [('PM10', 'SDS0X1'), ('PM2.5', 'SDS0X1'), ('Temperature', 'BME280')]
    >>> Selector("PMS5003.PM25 | SDS0X1['PM2.5']").first(doc)
    35.2
    >>> Selector("rx[*].rssi").values({"rx": [{"rssi": -80}, {"rssi": -71}, {}]})
    [-80, -71]
"""

from __future__ import annotations

import re
from typing import Any, Iterator

__all__ = ["Selector", "SelectorError", "Match"]

Match = tuple[Any, "str | None", dict[str, str]]

_STEP = re.compile(
    r"""\s*(?:
        \[\s*(?P<index>-?\d+)\s*\]                      # [2]
      | \[\s*\*\s*\]                                      # [*]
      | \[\s*'(?P<sq>(?:[^'\\]|\\.)*)'\s*\]               # ['PM2.5']
      | \[\s*"(?P<dq>(?:[^"\\]|\\.)*)"\s*\]               # ["PM2.5"]
      | "(?P<quoted>(?:[^"\\]|\\.)*)"                     # "PM2.5"
      | '(?P<squoted>(?:[^'\\]|\\.)*)'                    # 'PM2.5'
      | \{(?P<capture>[A-Za-z_][A-Za-z0-9_]*)\}           # {chip}
      | (?P<star>\*)                                      # *
      | (?P<name>[^.\[\]"'{}*|\s][^.\[\]"'{}|]*)         # plain key
    )\s*""",
    re.VERBOSE,
)


class SelectorError(ValueError):
    """A path that cannot be parsed; the message says where."""


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _parse(path: str) -> tuple[tuple[str, object], ...]:
    text = path.strip()
    if text.startswith("$"):
        text = text[1:].lstrip(".")
    steps: list[tuple[str, object]] = []
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None or m.end() == pos:
            raise SelectorError(f"selector {path!r}: cannot read a step at {text[pos:]!r}")
        g = m.groupdict()
        if g["index"] is not None:
            steps.append(("index", int(g["index"])))
        elif g["capture"] is not None:
            steps.append(("capture", g["capture"]))
        elif g["star"] is not None or m.group(0).strip().startswith("["):
            if g["sq"] is not None or g["dq"] is not None:
                steps.append(("key", _unescape(g["sq"] if g["sq"] is not None else g["dq"])))
            else:
                steps.append(("wild", None))
        else:
            key = g["quoted"] if g["quoted"] is not None else g["squoted"]
            steps.append(("key", _unescape(key) if key is not None else g["name"].strip()))
        pos = m.end()
        if pos < len(text):
            if text[pos] == ".":
                pos += 1
                if pos == len(text):
                    raise SelectorError(f"selector {path!r}: ends with '.'")
            elif text[pos] != "[":
                raise SelectorError(f"selector {path!r}: expected '.' or '[' at {text[pos:]!r}")
    if not steps:
        raise SelectorError(f"selector {path!r} is empty")
    return tuple(steps)


class Selector:
    """A compiled path (or ``|``-separated fallbacks); see the module docstring."""

    __slots__ = ("text", "_alternatives", "captures")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise SelectorError("a selector is a non-empty string")
        self.text = text
        self._alternatives = tuple(_parse(part) for part in _split_alternatives(text))
        names = {v for alt in self._alternatives for kind, v in alt if kind == "capture"}
        self.captures: frozenset[str] = frozenset(names)

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"

    def find(self, doc: Any) -> list[Match]:
        """Every match of the first alternative that matches anything."""
        for steps in self._alternatives:
            found = list(_walk(doc, steps, 0, None, {}))
            if found:
                return found
        return []

    def values(self, doc: Any) -> list[Any]:
        return [v for v, _, _ in self.find(doc)]

    def first(self, doc: Any, default: Any = None) -> Any:
        """The first matched value that is not None, else `default`."""
        for v, _, _ in self.find(doc):
            if v is not None:
                return v
        return default


def _split_alternatives(text: str) -> list[str]:
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    if any(not p.strip() for p in parts):
        raise SelectorError(f"selector {text!r}: an empty alternative around '|'")
    return parts


def _walk(node: Any, steps: tuple, i: int, key: str | None, caps: dict[str, str]) -> Iterator[Match]:
    if i == len(steps):
        yield node, key, caps
        return
    kind, arg = steps[i]
    if kind == "key":
        if type(node) is dict and arg in node:
            yield from _walk(node[arg], steps, i + 1, arg, caps)
    elif kind == "index":
        if type(node) is list and -len(node) <= arg < len(node):
            yield from _walk(node[arg], steps, i + 1, key, caps)
    else:  # wild or capture
        if type(node) is dict:
            items = ((k, v, k) for k, v in node.items())
        elif type(node) is list:
            items = ((str(j), v, key) for j, v in enumerate(node))
        else:
            return
        for label, child, child_key in items:
            yield from _walk(child, steps, i + 1, child_key,
                             {**caps, arg: label} if kind == "capture" else caps)
