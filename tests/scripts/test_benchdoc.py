"""scripts/benchdoc.py: an eval-runs section holds each run's command and table, not its plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import benchdoc

from drafttrain.cli import main


def test_eval_runs_section_has_commands_and_tables_only(tiny_target, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "def add(a, b):\n"}) + "\n")
    args = ["eval", "--target", str(tiny_target), "--prompts", str(prompts), "--methods", "ar,sd-ngram",
            "--max-new-tokens", "8", "--wandb", "disabled", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    text = benchdoc.eval_runs_section("demo", "scripts/demo.py", [(args, tmp_path / "out")])
    assert text.startswith("<!-- demo:start -->") and text.endswith("<!-- demo:end -->")
    assert "drafttrain eval --target" in text and "| sd-ngram |" in text
    assert "## Plots" not in text and ".png" not in text
