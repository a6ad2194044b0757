"""Give a draft model a vocabulary subset (FR-Spec): its most frequent tokens in a corpus.

Copies the draft's checkpoint directory to --out and writes `vocab_subset.json` there
(`drafttrain.drafters.vocab`): the --size token ids most frequent in the corpus, tokenized with the
draft's tokenizer (the target's: a draft must share it). `ModelDrafter.from_pretrained`, and so
`drafttrain eval --draft`, `drafttrain export` and calibration, then draft only among those tokens,
computing only their rows of the LM head. Decoding stays exact.

    python scripts/draft_vocab.py DRAFT_DIR --out DIR [--size 2048] [--corpus-kind stdlib]
                                  [--corpus-path PATH] [--max-documents 400]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from drafttrain.data.corpus import CorpusConfig, iter_documents
from drafttrain.drafters.vocab import (
    coverage,
    frequent_tokens,
    save_vocab_subset,
    token_counts,
)
from drafttrain.errors import DrafttrainError
from drafttrain.runtime.loader import load_tokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("draft", type=Path, help="the draft's checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="where the draft with its subset is written")
    parser.add_argument("--size", type=int, default=2048, help="tokens in the subset")
    parser.add_argument("--corpus-kind", default="stdlib", choices=("stdlib", "dir", "jsonl"))
    parser.add_argument("--corpus-path", type=Path, help="the corpus (kind dir or jsonl)")
    parser.add_argument("--max-documents", type=int, default=400, help="documents counted (0: all)")
    options = parser.parse_args()
    try:
        if options.out.exists():
            raise DrafttrainError(f"--out {options.out} exists: choose a new directory")
        tokenizer = load_tokenizer(options.draft)
        corpus = CorpusConfig(kind=options.corpus_kind, path=options.corpus_path, max_documents=options.max_documents)
        documents = tqdm(iter_documents(corpus), desc="counting tokens", unit="doc")
        counts = token_counts((tokenizer(document.text).input_ids for document in documents), len(tokenizer))
        subset = frequent_tokens(counts, options.size)
        covered = coverage(subset, counts)
        options.out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=options.out.name + ".", dir=options.out.parent))
        shutil.copytree(options.draft, partial, dirs_exist_ok=True)
        save_vocab_subset(partial, subset, int(counts.sum()), covered)
        partial.rename(options.out)
    except DrafttrainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{options.out}: {options.size} tokens, covering {covered:.1%} of {int(counts.sum())} counted tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
