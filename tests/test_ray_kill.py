"""Kill -9 of the driver of ``cfx explain --ray``, then the same command: the result equals an uninterrupted run.
(In its own module, so it runs after test_ray.py's shared Ray is shut down.)"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_ray import _ray_processes, _require_ray, _restoring_edits, _wait_until_gone

CFX = str(Path(sys.executable).parent / "cfx")


def _explained(out: Path) -> int:
    try:
        db = sqlite3.connect(out / "run.sqlite", timeout=1)
        n = db.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
        db.close()
        return n
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_driver_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    """``cfx explain --ray`` in its own process (which starts its own local Ray), killed with SIGKILL once part of
    the explanations are stored, then the same command again: the result equals an uninterrupted local run, and no
    Ray process of the killed driver outlives it."""
    _require_ray()
    args = [CFX, "explain", "--model", "demo:shapes", "--data", "demo:shapes:review",
            "--flag-share", "15", "--generators", "igd,nn", "--explain-batch-size", "4", "--quiet"]
    before = _ray_processes()
    out = tmp_path / "killed"
    driver = subprocess.Popen([*args, "--out", str(out), "--ray", "--ray-actors", "2"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while _explained(out) < 8 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, "the run finished before it could be killed: give it more work"
    stored = _explained(out)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert 0 < stored < 48  # killed part way through (48 flagged)
    orphans = _ray_processes() - before  # the killed driver's local Ray: its daemons notice and exit
    resumed = subprocess.run([*args, "--out", str(out), "--ray", "--ray-actors", "2"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = subprocess.run([*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert [s["id"] for s in a["samples"]] == [s["id"] for s in b["samples"]]
    assert [(s["flagged"], s.get("cause")) for s in a["samples"]] == [(s["flagged"], s.get("cause"))
                                                                        for s in b["samples"]]
    assert a["counts"] == b["counts"] and a["counts"]["explained"] == 48
    assert _restoring_edits(tmp_path / "whole") == _restoring_edits(out)
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM explanations").fetchone() == (48, 48)
    db.close()
    left = _wait_until_gone(orphans, seconds=90)
    assert not left, f"the killed driver's Ray processes outlived it: {sorted(left)}"
