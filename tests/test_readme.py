"""Every code snippet of the README runs as written, in order, in a fresh folder (the set-up block is CI itself)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README.read_text(), re.S)


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    for doc in ("docs/cli.md", "docs/api.md", "docs/methods.md", "docs/results.md"):
        assert f"({doc})" in text and (README.parent / doc).is_file(), doc
    assert "../shared" not in text and "§" not in text


@pytest.mark.slow
def test_readme_snippets_run_as_written(tmp_path):
    ran = []
    for language, code in BLOCKS:
        if "pip install" in code:  # the set-up block: .ci/run runs exactly these two commands
            continue
        command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{language} snippet failed:\n{code}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        ran.append(result.stdout)
    assert len(ran) >= 4
    # what the snippets promise exists: the review report, the summary, the audit
    summary = json.loads((tmp_path / "review" / "summary.json").read_text())
    assert summary["counts"]["samples"] == 120 and summary["counts"]["flagged"] > 0
    assert summary["counts"]["explained"] == summary["counts"]["flagged"]
    assert (tmp_path / "review" / "report.html").is_file() and (tmp_path / "audit" / "audit.html").is_file()
    unfitted = json.loads((tmp_path / "review-unfitted" / "summary.json").read_text())
    assert unfitted["counts"]["flagged"] == 24 and unfitted["counts"]["explained"] == 24  # 20 % of 120, nothing fitted
    assert unfitted["config"]["fitted"] is None and unfitted["config"]["generators"] == ["igd", "nn"]
    assert "flagged;" in ran[-1]
