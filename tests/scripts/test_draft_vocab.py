"""scripts/draft_vocab.py writes a draft copy with its vocabulary subset; bench_draft_vocab's table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import bench_draft_vocab

from drafttrain.drafters.vocab import VOCAB_FILE, load_vocab_subset
from drafttrain.runtime import load_tokenizer


def test_draft_vocab_copies_the_draft_with_its_most_frequent_tokens(tiny_draft, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": "for i in range(10):\n    print(i)\n" * 3}) for _ in range(4)))
    out = tmp_path / "draft-v8"
    command = [sys.executable, str(REPO / "scripts" / "draft_vocab.py"), str(tiny_draft), "--out", str(out),
               "--size", "8", "--corpus-kind", "jsonl", "--corpus-path", str(corpus)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    subset = load_vocab_subset(out, 1 << 20)
    ids = load_tokenizer(tiny_draft)("for i in range(10):\n    print(i)\n").input_ids
    assert len(subset) == 8 and set(subset.tolist()) <= set(ids)
    assert (out / "model.safetensors").exists() and not (Path(tiny_draft) / VOCAB_FILE).exists()
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr


def test_the_table_compares_each_method_with_itself_without_the_subset():
    def entry(tokens, seconds, exact=True):
        return {"tokens": tokens, "seconds": seconds, "forwards": tokens // 2, "draft": seconds / 4, "exact": exact}

    lines = bench_draft_vocab.table({"dytc": entry(100, 1.0), "dytc + subset": entry(100, 0.8, exact=False)})
    assert lines[2] == "| dytc | 100.0 | - | 2.00 | 25% | yes |"
    assert lines[3] == "| dytc + subset | 125.0 | 1.250x | 2.00 | 25% | **NO** |"
