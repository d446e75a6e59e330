"""The alert manager's state file: JSON, written atomically (temporary file, fsync, rename).

A crash while writing leaves the previous file intact; a file that cannot be read is moved aside
(`<name>.corrupt-<n>`) and the manager starts empty rather than refusing to start.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "alerting-state.json"
>>> write_state_atomic(p, {"version": 1, "sent": ["a1"]})
>>> read_state(p)
{'version': 1, 'sent': ['a1']}
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("citywatch.alerting")


def write_state_atomic(path: Path, state: dict[str, Any], fsync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(state))
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none (or it was unreadable and has been set aside)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        state = orjson.loads(data)
        if not isinstance(state, dict):
            raise ValueError("the top level is not an object")
        return state
    except ValueError as exc:
        set_aside(path, str(exc))
        return None


def set_aside(path: Path, why: str) -> Path:
    """Move an unusable state file to `<name>.corrupt-<n>` (kept for inspection) and say so."""
    n = 1
    while path.with_name(f"{path.name}.corrupt-{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.corrupt-{n}")
    path.replace(aside)
    log.error("alert state file unusable (%s); moved to %s, starting empty", why, aside)
    return aside
