"""CS Drafting's cascades as a drafter: vertical (vc), horizontal (hc) and both (csd).

Two levels sit below the target: a draft model (`ModelDrafter`, level "draft0") and the n-gram
drafter (`NgramDrafter`, level "ngram", the statistical bottom). The k-matrix, flattened, is

    k_draft:         tokens the draft model drafts for the target each step (a chain);
    k_ngram_after:   horizontal cascade: n-gram tokens appended after them (later positions, which
                     the target is less likely to reach, come from the cheaper level);
    k_ngram_review:  vertical cascade: n-gram tokens the draft model reviews per forward, so that
                     its own generation is itself speculative.

vc = [k, 0, r], hc = [k, a, 0], csd = [k, a, r]; with r = 0 the draft model drafts autoregressively.

The vertical review is exact speculative decoding of the draft model: the n-gram drafter proposes
up to r tokens continuing the chain, the draft model scores them all in one forward, and keeps the
longest prefix its own choice agrees with. Greedy: a proposed token is kept while it is the draft's
argmax, then the draft's argmax of the first disagreeing (or the last) row follows. Sampling: a
proposed token x (a point mass) is kept with probability q(x), and on rejection the next token is
drawn from norm(max(0, q - point mass at x)); so every drafted token is distributed exactly as the
draft model's own q at its position, and that q row is what the target verifies it against.
Everything is lossless: the cascade only decides which tokens to draft, the engine verifies them.
"""

from __future__ import annotations

import torch

from drafttrain.decoding.sampling import SamplingParams, logits_to_probs
from drafttrain.drafters.base import DraftTree, TreeShape
from drafttrain.drafters.ngram import NgramDrafter
from drafttrain.drafters.transformer import ModelDrafter
from drafttrain.errors import DrafttrainError
from drafttrain.scheduling.tree import TreeBuilder

DRAFT_LEVEL = "draft0"
NGRAM_LEVEL = "ngram"
_GREEDY_Q = SamplingParams(1.0)  # under greedy decoding q rows are informative only: the softmax


def draft_distribution(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """The draft model's q rows: processed like the target's when sampling, the softmax when greedy."""
    return logits_to_probs(logits, _GREEDY_Q if sampling.greedy else sampling)


def review_proposals(proposed: list[int], logits: torch.Tensor, q_draft: torch.Tensor, sampling: SamplingParams,
                     generator: torch.Generator | None) -> tuple[int, int]:
    """How many of the n-gram's `proposed` tokens the draft model keeps, and its next token after them.

    logits, q_draft: [len(proposed) + 1, vocab], the draft model's rows before each proposed token
    and after the last one. The kept tokens plus the next token are distributed as the draft
    model's own (greedy or sampled) continuation.
    """
    if sampling.greedy:
        choices = logits.argmax(dim=-1).tolist()
        kept = 0
        while kept < len(proposed) and proposed[kept] == choices[kept]:
            kept += 1
        return kept, choices[kept]
    accept_probs = q_draft[torch.arange(len(proposed)), proposed].tolist() if proposed else []
    draws = torch.rand(len(proposed), generator=generator, device=q_draft.device).tolist()
    for kept, (accept_prob, draw) in enumerate(zip(accept_probs, draws)):
        if draw >= accept_prob:
            leftover = q_draft[kept].clone()
            leftover[proposed[kept]] = 0.0
            total = float(leftover.sum())
            row = leftover / total if total > 0 else q_draft[kept]
            return kept, int(torch.multinomial(row, 1, generator=generator))
    return len(proposed), int(torch.multinomial(q_draft[len(proposed)], 1, generator=generator))


class CascadeDrafter:
    """Drafter protocol over a draft model and the n-gram drafter, driven by a flattened k-matrix."""

    def __init__(self, draft: ModelDrafter, ngram: NgramDrafter, k_draft: int, k_ngram_after: int = 0,
                 k_ngram_review: int = 0, name: str = "csd") -> None:
        if k_draft <= 0:
            raise DrafttrainError(f"{name}: k_draft={k_draft} is invalid: the draft model must draft at least "
                                  "1 token per step")
        for setting, value in (("k_ngram_after", k_ngram_after), ("k_ngram_review", k_ngram_review)):
            if value < 0:
                raise DrafttrainError(f"{name}: {setting}={value} is invalid: use 0 (off) or a positive integer")
        self.draft, self.ngram, self.name = draft, ngram, name
        self.k_draft, self.k_ngram_after, self.k_ngram_review = k_draft, k_ngram_after, k_ngram_review
        self.max_positions = draft.max_positions
        self._context_length = 0

    def capacity(self) -> TreeShape:
        """The longest chain a step drafts: the shape the decoder must reserve."""
        return TreeShape.chain(self.k_draft + self.k_ngram_after)

    def reset(self) -> None:
        self.draft.reset()
        self.ngram.reset()

    def propose(self, context: torch.Tensor, shape: TreeShape, sampling: SamplingParams,
                generator: torch.Generator | None) -> DraftTree:
        n_ctx = len(context)
        k_model = min(self.k_draft, shape.depth)
        sequence = torch.empty(n_ctx + k_model, dtype=torch.long, device=context.device)
        sequence[:n_ctx] = context
        chain, q_rows = self._draft_chain(sequence, n_ctx, k_model, sampling, generator)
        self._context_length = n_ctx
        builder = TreeBuilder(context.device)
        parent = -1
        for token, q_row in zip(chain, q_rows):
            parent = builder.add(parent, token, DRAFT_LEVEL, q_row)
        k_after = min(self.k_ngram_after, shape.depth - len(chain), shape.num_nodes - len(chain))
        if k_after > 0:
            tail = self.ngram.propose(sequence[:n_ctx + len(chain)], TreeShape.chain(k_after), sampling, generator)
            builder.graft(parent, tail, NGRAM_LEVEL)
        return builder.build(self.draft.target_vocab)

    def observe(self, tree: DraftTree, accepted: list[int]) -> None:
        """Keep the draft model's cache entries of the accepted draft-model tokens (a chain prefix)."""
        self.draft.rollback(self._context_length + len(accepted))

    def _draft_chain(self, sequence: torch.Tensor, n_ctx: int, k_model: int, sampling: SamplingParams,
                     generator: torch.Generator | None) -> tuple[list[int], list[torch.Tensor]]:
        """`k_model` draft-model tokens after sequence[:n_ctx], written into `sequence`, with their q rows.

        Each round feeds the newest chain token and the n-gram's proposals in one forward. The draft
        model's cache ends up trusting the context and the chain tokens that were fed."""
        chain: list[int] = []
        q_rows: list[torch.Tensor] = []
        while len(chain) < k_model:
            end = n_ctx + len(chain)
            proposed = self._proposals(sequence[:end], min(self.k_ngram_review, k_model - len(chain)), sampling)
            sequence[end:end + len(proposed)] = torch.tensor(proposed, dtype=torch.long)
            logits = self.draft.score(sequence[:end + len(proposed)], len(proposed) + 1)
            q_draft = draft_distribution(logits, sampling)
            kept, next_token = review_proposals(proposed, logits, q_draft, sampling, generator)
            chain += proposed[:kept]
            q_rows += list(q_draft[:kept])
            self.draft.rollback(end + kept)  # the rejected proposals' entries are stale
            if len(chain) < k_model:
                sequence[n_ctx + len(chain)] = next_token
                chain.append(next_token)
                q_rows.append(q_draft[kept])
        return chain, q_rows

    def _proposals(self, prefix: torch.Tensor, count: int, sampling: SamplingParams) -> list[int]:
        """Up to `count` n-gram tokens continuing `prefix` for the draft model to review."""
        if count <= 0:
            return []
        return self.ngram.propose(prefix, TreeShape.chain(count), sampling, None).tokens.tolist()
