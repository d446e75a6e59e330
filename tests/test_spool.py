"""The on-disk spool: FIFO order, atomic segments, recovery after a crash, full-spool policies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from citywatch.config import SpoolConfig
from citywatch.sinks.spool import Spool, SpoolClosed, SpoolLocked
from citywatch.stats import Stats


def payload(i: int, size: int = 100) -> bytes:
    head = f"m f={i}i {i}".encode()
    return head + b"\n" + b"x" * max(0, size - len(head) - 1)


def drain(spool: Spool) -> list[tuple[bytes, int]]:
    out = []
    while (seg := spool.oldest()) is not None:
        seg_id, data, n = seg
        out.append((data, n))
        spool.remove(seg_id)
    return out


def test_fifo_names_and_stats(tmp_path):
    stats = Stats()
    spool = Spool(tmp_path / "s", 1 << 20, "block", True, stats)
    assert len(spool) == 0 and spool.oldest() is None
    for i in range(5):
        spool.append(payload(i), n_points=i + 1)
    assert len(spool) == 5
    assert spool.points == 15
    assert spool.bytes == 500
    assert stats.get("spool_bytes") == 500 and stats.get("spool_segments") == 5
    names = sorted(p.name for p in (tmp_path / "s").glob("*.lp"))
    assert names == [f"{i:012d}-{i + 1}.lp" for i in range(5)]
    seg_id, data, n = spool.oldest()
    assert (data, n) == (payload(0), 1)
    assert spool.oldest()[0] == seg_id  # oldest() does not consume
    assert drain(spool) == [(payload(i), i + 1) for i in range(5)]
    assert len(spool) == 0 and spool.bytes == 0 and spool.points == 0
    assert stats.get("spool_bytes") == 0 and stats.get("spool_segments") == 0
    assert not list((tmp_path / "s").glob("*.lp"))
    spool.remove(12345)  # unknown ids are ignored
    spool.close()


def test_survives_reopen_and_cleans_temp_files(tmp_path):
    d = tmp_path / "s"
    spool = Spool(d, 1 << 20, "block", False, Stats())
    for i in range(3):
        spool.append(payload(i), 10)
    spool.remove(spool.oldest()[0])
    spool.close()
    (d / ".000000000099-10.lp.tmp").write_bytes(b"half a segm")
    (d / "000000000050-3.lp").write_bytes(b"")  # an empty segment (power cut without fsync)
    (d / "unrelated.txt").write_text("left alone")
    stats = Stats()
    spool = Spool(d, 1 << 20, "block", False, stats)
    assert len(spool) == 2 and spool.points == 20 and stats.get("spool_segments") == 2
    assert not list(d.glob("*.tmp")) and not (d / "000000000050-3.lp").exists()
    assert (d / "unrelated.txt").exists()
    spool.append(payload(7), 1)  # numbering continues after the highest recovered segment
    assert sorted(p.name for p in d.glob("*.lp"))[-1] == "000000000003-1.lp"
    assert drain(spool) == [(payload(1), 10), (payload(2), 10), (payload(7), 1)]
    spool.close()


def test_one_spool_per_directory(tmp_path):
    spool = Spool(tmp_path, 1 << 20, "block", False, Stats())
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, 1 << 20, "block", False, Stats())
    spool.close()
    Spool(tmp_path, 1 << 20, "block", False, Stats()).close()


def test_from_config(tmp_path):
    cfg = SpoolConfig(directory="sp", max_bytes=1 << 16, when_full="drop_oldest", fsync=False)
    with Spool.from_config(cfg, Stats(), base_dir=tmp_path) as spool:
        assert spool.directory == tmp_path / "sp" and spool.when_full == "drop_oldest"
        assert spool.max_bytes == 1 << 16 and spool.fsync is False


def test_sigkill_mid_append_loses_only_the_unfinished_segment(tmp_path):
    d = tmp_path / "s"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from citywatch.sinks.spool import Spool
        from citywatch.stats import Stats
        spool = Spool({str(d)!r}, 1 << 30, "block", True, Stats())
        for i in range(1000):
            n = i % 7 + 1
            spool.append(b"\\n".join(b"m f=%di %d" % (i, j) for j in range(n)), n)
            if i == 40:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    spool = Spool(d, 1 << 30, "block", True, Stats())
    segments = drain(spool)
    assert len(segments) > 40
    for i, (data, n) in enumerate(segments):  # complete, consecutive, and each matches its name
        assert n == i % 7 + 1
        assert data == b"\n".join(b"m f=%di %d" % (i, j) for j in range(n))
    assert not [p for p in os.listdir(d) if p.endswith(".tmp")]
    spool.close()


def test_drop_oldest_counts_dropped_points(tmp_path):
    stats = Stats()
    spool = Spool(tmp_path, 1000, "drop_oldest", False, stats)
    for i in range(10):
        spool.append(payload(i, 300), n_points=i + 1)
    # 3 segments of 300 bytes fit in 1000: the 7 oldest were dropped, holding 1+2+...+7 points
    assert len(spool) == 3 and spool.bytes == 900
    assert stats.get("spool_dropped_points") == 28
    assert [n for _, n in drain(spool)] == [8, 9, 10]
    spool.close()


def test_oversized_segment_is_accepted_when_alone(tmp_path):
    stats = Stats()
    spool = Spool(tmp_path, 1000, "drop_oldest", False, stats)
    spool.append(payload(0, 100), 1)
    spool.append(payload(1, 5000), 2)
    assert len(spool) == 1 and spool.points == 2 and stats.get("spool_dropped_points") == 1
    spool.close()
    spool = Spool(tmp_path, 1000, "block", False, stats)
    with pytest.raises(TimeoutError):  # the spool is not empty: it waits
        spool.append(payload(2, 5000), 3, timeout=0.1)
    spool.remove(spool.oldest()[0])
    spool.append(payload(2, 5000), 3)
    assert len(spool) == 1 and spool.points == 3
    spool.close()


def test_block_waits_until_space_frees(tmp_path):
    spool = Spool(tmp_path, 1000, "block", False, Stats())
    for i in range(3):
        spool.append(payload(i, 300), 1)
    done = threading.Event()
    errors = []

    def blocked_append():
        try:
            spool.append(payload(3, 300), 1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        done.set()

    t = threading.Thread(target=blocked_append)
    t.start()
    assert not done.wait(0.3), "append must block while the spool is full"
    assert len(spool) == 3
    spool.remove(spool.oldest()[0])
    assert done.wait(5), "append must resume once space is freed"
    t.join()
    assert not errors
    assert [data for data, _ in drain(spool)] == [payload(i, 300) for i in (1, 2, 3)]
    spool.close()


def test_block_timeout_and_close_interrupt(tmp_path):
    spool = Spool(tmp_path, 1000, "block", False, Stats())
    for i in range(3):
        spool.append(payload(i, 300), 1)
    with pytest.raises(TimeoutError):
        spool.append(payload(9, 300), 1, timeout=0.1)
    result = []

    def blocked_append():
        try:
            spool.append(payload(3, 300), 1)
            result.append("stored")
        except SpoolClosed:
            result.append("closed")

    t = threading.Thread(target=blocked_append)
    t.start()
    time.sleep(0.2)
    spool.close()
    t.join(5)
    assert result == ["closed"]
    with pytest.raises(SpoolClosed):
        spool.append(b"x", 1)
    spool = Spool(tmp_path, 1000, "block", False, Stats())
    assert len(spool) == 3  # nothing half-written
    spool.close()


def test_concurrent_appends_and_removes(tmp_path):
    stats = Stats()
    spool = Spool(tmp_path, 50_000, "block", False, stats)
    n_threads, per_thread = 8, 200
    got: list[bytes] = []
    stop = threading.Event()

    def producer(t: int):
        for i in range(per_thread):
            spool.append(f"t{t} i{i}".encode(), 1)

    def consumer():
        while not stop.is_set() or len(spool):
            seg = spool.oldest()
            if seg is None:
                time.sleep(0.001)
                continue
            got.append(seg[1])
            spool.remove(seg[0])

    c = threading.Thread(target=consumer)
    c.start()
    producers = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    c.join(10)
    assert len(got) == n_threads * per_thread == len(set(got))
    for t in range(n_threads):  # each producer's segments come out in its own order
        mine = [g for g in got if g.startswith(f"t{t} ".encode())]
        assert mine == [f"t{t} i{i}".encode() for i in range(per_thread)]
    assert len(spool) == 0 and stats.get("spool_bytes") == 0
    spool.close()
