"""scripts/draft_positions.py: draft / target greedy agreement grouped by sequence position."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import TINY_CORPUS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import draft_positions


def test_bucket_agreement_counts_each_token_in_its_positions_bucket():
    totals = draft_positions.bucket_agreement(np.array([True, False, True, True]), 62, 64)
    assert totals == {0: [1, 2], 64: [2, 2]}  # positions 62, 63 | 64, 65
    draft_positions.bucket_agreement(np.array([False]), 64, 64, totals)
    assert totals[64] == [2, 3]
    lines = draft_positions.table({"a": totals, "b": {64: [1, 4]}}, 64)
    assert lines[0] == "| draft | positions 0-63 | positions 64-127 |"
    assert lines[2:] == ["| a | 0.50 (2) | 0.67 (3) |", "| b | - | 0.25 (4) |"]


def test_the_target_as_its_own_draft_agrees_everywhere(tiny_target, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": text}) + "\n" for i, text in enumerate(TINY_CORPUS[:2])))
    command = [sys.executable, str(REPO / "scripts" / "draft_positions.py"), str(tiny_target), "--target",
               str(tiny_target), "--prompts", str(prompts), "--prompt-lengths", "4,8", "--new-tokens", "6",
               "--bucket", "4", "--threads", "1", "--no-docs"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    row = done.stdout.strip().splitlines()[-1]
    assert row.startswith(f"| {tiny_target} |") and "1.00" in row
    assert all(cell.strip().startswith(("1.00", "-")) for cell in row.split("|")[2:-1])
