"""A real distributed search: two workers on one study through a local PostgreSQL server."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CAN_INSTALL = os.geteuid() == 0 and shutil.which("apt-get") is not None


@pytest.mark.slow
@pytest.mark.skipif(not (glob.glob("/usr/lib/postgresql/*/bin/initdb") or CAN_INSTALL),
                    reason="needs PostgreSQL from the OS packages (or root with apt-get to install it)")
def test_two_workers_share_one_study_through_postgresql(tiny_target, tmp_path):
    pytest.importorskip("psycopg", reason='the PostgreSQL driver: pip install -e ".[postgres]"')
    prompts = tmp_path / "calibration.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"c{i}", "prompt": text}) + "\n" for i, text in enumerate(
        ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n"])))
    result = subprocess.run([sys.executable, str(REPO / "scripts/search_postgres.py"), "--target", str(tiny_target),
                             "--prompts", str(prompts), "--trials", "8", "--workers", "2"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    numbers = [int(n) for n in re.findall(r"^trial\s+(\d+) COMPLETE", result.stdout, re.MULTILINE)]
    # every trial once with no duplicate numbers; racing workers may each start one last trial
    assert sorted(numbers) == list(range(len(numbers))) and 8 <= len(numbers) <= 9
    workers = set(re.findall(r"worker (\S+)", result.stdout))
    assert len(workers) == 2  # both processes ran trials of the one study
