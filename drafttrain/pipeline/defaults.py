"""Pipeline settings that scale with a user's target (`drafttrain quickstart --target DIR`).

The embedded quickstart config is sized for the small model it pretrains. A user's pretrained model
is deeper and costlier per token, and other levels pay on it (docs/benchmarks.md, SmolLM2 sections):

- the draft starts as the target's first and last decoder layers with its embeddings and head
  (`student.from_target_layers`), is distilled with total variation (the loss that targets acceptance)
  on corpus text and on the target's own continuations, and drafts over the 8192 tokens most frequent
  in its training text (a full-vocabulary head would cost a draft step as much as several layers);
- the search gives three layer groups and the head a precision (int8, fp16 or the target's) beside
  layer skipping, and starts from the all-int8 copy of the target;
- calibration and evaluation decode fewer, shorter prompts: a target forward costs tens of
  milliseconds on a CPU, not one.

Anything set on the command line overrides these.
"""

from __future__ import annotations

import json
from pathlib import Path

from drafttrain.runtime.loader import read_model_args

DRAFT_VOCABULARY = 8192


def target_overrides(target: Path) -> list[str]:
    """key=value overrides of the quickstart config for the checkpoint at `target`."""
    args = read_model_args(target)
    first_last = sorted({0, args.num_layers - 1})
    settings = {
        "distill.set.student": {"from_target_layers": first_last},
        "distill.set.loss": "tvd",
        "distill.set.vocab_subset": min(DRAFT_VOCABULARY, args.vocab_size),
        "distill.set.data": {"corpus": 0.5, "target_generated": 0.5, "generated_sequences": 48,
                             "prompt_tokens": 64, "generate_tokens": 64},
        "distill.set.trainer.max_steps": 60,
        "distill.set.trainer.batch_size": 4,
        "search.set.quant_groups": min(3, args.num_layers),
        "search.set.quant_choices": ["none", "int8", "fp16"],
        "search.set.head_choices": ["none", "int8", "fp16"],
        "search.set.trials": 12,
        "calibrate.set.num_prompts": 12,
        "calibrate.set.max_new_tokens": 64,
        "calibrate.set.latency_tokens": [1, 2, 4, 8, 16],
        "eval.set.num_prompts": 8,
        "eval.set.methods": ["ar", "hf", "hf-pld", "hf-assisted", "levels", "dytc"],
    }
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]
