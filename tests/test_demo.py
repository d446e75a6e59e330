"""The README's first command: the demo runs the whole pipeline on services it starts itself."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "citywatch", "demo", "--duration", "25", "--speedup", "120",
                        "--work-dir", str(tmp_path / "demo"), "--no-install"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = re.search(r"stored ([\d,]+) readings, rejected ([\d,]+), ([\d,]+) alerts", r.stdout)
    assert m, r.stdout[-2000:]
    stored, rejected, alerts = (int(g.replace(",", "")) for g in m.groups())
    assert stored > 2000  # 120 devices replaying a day at 120x for 25 s
    assert rejected >= 1  # the misconfigured device
    assert alerts >= 1  # the scripted NO2 episode crosses the QCVN 05:2023 1-hour limit
    truth = (tmp_path / "demo" / "ground-truth.jsonl").read_text().splitlines()
    assert any('"episode"' in line and "aq-005" in line for line in truth)
    assert (tmp_path / "demo" / "engine.log").stat().st_size > 0
    assert (tmp_path / "demo" / "grafana" / "provisioning" / "dashboards" / "citywatch.yaml").exists()
