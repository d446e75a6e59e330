"""A durable on-disk FIFO of line-protocol batches, used while InfluxDB is unreachable.

Each batch is one segment file, written atomically: the bytes go to a temporary file (fsync'ed when
`fsync` is on), which is renamed into place (and the directory fsync'ed). A segment is therefore either
complete or absent, even after a SIGKILL or a power cut (the latter only with `fsync: true`).

Segment names are `<sequence>-<points>.lp`, e.g. `000000000123-5000.lp`: the zero-padded sequence makes
lexical order the append order, and the point count is known without reading the file. Temporary files
(`.<name>.tmp`) left by a crash are deleted when the spool is opened.

When the spool holds `max_bytes`, `when_full` decides:

* `block`: `append()` waits until the replay frees space (the engine then stops acknowledging MQTT
  messages, so the broker keeps them); `close()` interrupts the wait with `SpoolClosed`;
* `drop_oldest`: the oldest segments are deleted until the new one fits, counting the lost points in the
  `spool_dropped_points` counter.

A single batch larger than `max_bytes` is accepted once the spool is otherwise empty (blocking forever or
dropping it would both be worse).

Only one `Spool` may use a directory at a time (an advisory lock file enforces it). Removing a segment is
not fsync'ed: after a crash a segment may be replayed twice, which InfluxDB absorbs (a point with the same
series and timestamp overwrites itself).
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from citywatch.stats import Stats

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_SEGMENT = re.compile(r"^(\d{12,})-(\d+)\.lp$")
_LOCK_NAME = "spool.lock"


class SpoolClosed(RuntimeError):
    """The spool was closed while `append()` waited for space; the batch was not stored."""


class SpoolLocked(RuntimeError):
    """Another Spool (in this or another process) already uses the directory."""


@dataclass(slots=True)
class _Segment:
    seq: int
    n_points: int
    size: int
    path: Path


class Spool:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        when_full: Literal["block", "drop_oldest"] = "block",
        fsync: bool = True,
        stats: Stats | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        if when_full not in ("block", "drop_oldest"):
            raise ValueError(f"when_full must be 'block' or 'drop_oldest', got {when_full!r}")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.when_full = when_full
        self.fsync = fsync
        self.stats = stats if stats is not None else Stats()
        self._log = logger or structlog.get_logger("citywatch.sinks.spool")
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._segments: OrderedDict[int, _Segment] = OrderedDict()
        self._bytes = 0
        self._points = 0
        self._next_seq = 0
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_dir_lock()
        try:
            self._recover()
        except BaseException:
            self._release_dir_lock()
            raise
        self._publish()

    @classmethod
    def from_config(cls, cfg, stats: Stats | None = None, base_dir: str | os.PathLike[str] | None = None,
                    logger=None) -> "Spool":
        """From a `citywatch.config.SpoolConfig`; a relative directory is resolved against `base_dir`."""
        directory = Path(cfg.directory)
        if base_dir is not None and not directory.is_absolute():
            directory = Path(base_dir) / directory
        return cls(directory, cfg.max_bytes, cfg.when_full, cfg.fsync, stats, logger)

    # -- opening -------------------------------------------------------------------------------------

    def _acquire_dir_lock(self) -> int | None:
        if fcntl is None:  # pragma: no cover
            return None
        fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise SpoolLocked(f"spool directory {self.directory} is already in use "
                                  "(close the other Spool first)") from None
            # e.g. ENOLCK on a network filesystem without locking: carry on unprotected
            self._log.warning("cannot lock the spool directory", directory=str(self.directory), error=str(exc))
        return fd

    def _release_dir_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _recover(self) -> None:
        found: list[_Segment] = []
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.endswith(".tmp"):
                # A batch that was being written when the process died: never acknowledged as spooled.
                self._unlink(Path(entry.path))
                continue
            match = _SEGMENT.match(name)
            if not match:
                continue
            size = entry.stat().st_size
            path = Path(entry.path)
            if size == 0:
                self._unlink(path)
                continue
            found.append(_Segment(int(match.group(1)), int(match.group(2)), size, path))
        found.sort(key=lambda s: s.seq)
        for seg in found:
            self._segments[seg.seq] = seg
            self._bytes += seg.size
            self._points += seg.n_points
        self._next_seq = (found[-1].seq + 1) if found else 0
        if found:
            self._log.info("spool recovered", directory=str(self.directory), segments=len(found),
                           points=self._points, bytes=self._bytes)

    # -- properties ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._segments)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def points(self) -> int:
        with self._lock:
            return self._points

    @property
    def closed(self) -> bool:
        return self._closed

    def _publish(self) -> None:
        self.stats.set("spool_bytes", self._bytes)
        self.stats.set("spool_segments", len(self._segments))
        self.stats.set("spool_points", self._points)

    # -- writing -------------------------------------------------------------------------------------

    def append(self, payload: bytes, n_points: int, timeout: float | None = None) -> None:
        """Store one batch at the end of the queue.

        With `when_full="block"` this waits for space (at most `timeout` seconds when given, then
        `TimeoutError`); `close()` interrupts the wait with `SpoolClosed`. Either way the batch is not
        stored when an exception is raised."""
        if n_points < 0:
            raise ValueError("n_points cannot be negative")
        payload = bytes(payload)
        size = len(payload)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._space:
            if self._closed:
                raise SpoolClosed("spool is closed")
            if self.when_full == "block":
                while self._segments and self._bytes + size > self.max_bytes:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"spool full ({self._bytes} of {self.max_bytes} bytes)")
                    self._space.wait(remaining if remaining is not None else 1.0)
                    if self._closed:
                        raise SpoolClosed("spool closed while waiting for space")
            else:
                dropped_points = dropped_segments = 0
                while self._segments and self._bytes + size > self.max_bytes:
                    _, seg = self._segments.popitem(last=False)
                    self._forget(seg)
                    self._unlink(seg.path)
                    dropped_points += seg.n_points
                    dropped_segments += 1
                if dropped_segments:
                    self.stats.inc("spool_dropped_points", dropped_points)
                    self.stats.inc("spool_dropped_segments", dropped_segments)
                    self._log.warning("spool full: dropped oldest segments", directory=str(self.directory),
                                      dropped_segments=dropped_segments, dropped_points=dropped_points,
                                      max_bytes=self.max_bytes)
            seq = self._next_seq
            self._next_seq += 1
            path = self.directory / f"{seq:012d}-{n_points}.lp"
            self._write_atomically(path, payload)
            self._segments[seq] = _Segment(seq, n_points, size, path)
            self._bytes += size
            self._points += n_points
            self._publish()

    def _write_atomically(self, path: Path, payload: bytes) -> None:
        tmp = path.with_name("." + path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            self._unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            self._unlink(tmp)
            raise
        if self.fsync:
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        try:
            dfd = os.open(self.directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - e.g. platforms without directory descriptors
            return
        try:
            os.fsync(dfd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(dfd)

    # -- reading -------------------------------------------------------------------------------------

    def oldest(self) -> tuple[int, bytes, int] | None:
        """`(segment_id, payload, n_points)` of the oldest segment, or None when empty. The segment
        stays in the spool until `remove(segment_id)`."""
        with self._lock:
            while self._segments:
                seg = next(iter(self._segments.values()))
                try:
                    data = seg.path.read_bytes()
                except FileNotFoundError:
                    self._log.warning("spool segment vanished", path=str(seg.path))
                    del self._segments[seg.seq]
                    self._forget(seg)
                    self._publish()
                    self._space.notify_all()
                    continue
                return seg.seq, data, seg.n_points
            return None

    def remove(self, segment_id: int) -> None:
        """Delete a segment (normally the one `oldest()` returned, once InfluxDB accepted it). Removing
        a segment that is already gone (e.g. dropped by `drop_oldest`) is a no-op."""
        with self._space:
            seg = self._segments.pop(segment_id, None)
            if seg is None:
                return
            self._forget(seg)
            self._unlink(seg.path)
            self._publish()
            self._space.notify_all()

    def _forget(self, seg: _Segment) -> None:
        self._bytes -= seg.size
        self._points -= seg.n_points

    def _unlink(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    # -- closing -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Wake up blocked `append()` calls (they raise `SpoolClosed`) and release the directory.
        Spooled segments stay on disk for the next `Spool` on the same directory."""
        with self._space:
            if self._closed:
                return
            self._closed = True
            self._space.notify_all()
            self._release_dir_lock()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, segments={len(self._segments)}, bytes={self._bytes})"
