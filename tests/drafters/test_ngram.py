"""Tests for the prompt-lookup n-gram drafter and its bigram-table fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters import ngram
from drafttrain.drafters.base import Drafter, DraftTree, TreeShape
from drafttrain.drafters.ngram import BigramTable, NgramDrafter, longest_match_ends
from drafttrain.errors import DrafttrainError

GREEDY = SamplingParams()

# successors of each token in CORPUS, most frequent first (ties: smaller id first)
CORPUS = [[1, 2, 3, 1, 2, 4, 1, 2, 3], [3, 1, 5], [5, 6, 5, 0]]
EXPECTED_SUCCESSORS = [[-1, -1, -1], [2, 5, -1], [3, 4, -1], [1, -1, -1], [1, -1, -1],
                       [0, 6, -1], [5, -1, -1], [-1, -1, -1]]
EXPECTED_COUNTS = [[0, 0, 0], [3, 1, 0], [2, 1, 0], [2, 0, 0], [1, 0, 0], [1, 1, 0],
                   [1, 0, 0], [0, 0, 0]]


def propose(drafter: NgramDrafter, context: list[int], shape: TreeShape) -> DraftTree:
    return drafter.propose(torch.tensor(context, dtype=torch.long), shape, GREEDY, None)


def fitted_table() -> BigramTable:
    sequences = [CORPUS[0], torch.tensor(CORPUS[1]), np.array(CORPUS[2])]
    return BigramTable.fit(sequences, vocab_size=8, top=3)


def root_paths(tree: DraftTree) -> list[list[int]]:
    """Token path from the root to every node."""
    tokens = tree.tokens.tolist()
    paths: list[list[int]] = []
    for node, parent in enumerate(tree.parents):
        paths.append((paths[parent] if parent >= 0 else []) + [tokens[node]])
    return paths


def brute_force_match(ids: list[int], min_match: int, max_match: int) -> tuple[int, list[int]]:
    """Longest recurring suffix length and its earlier end positions, most recent first."""
    size = len(ids)
    for length in range(min(max_match, size - 1), min_match - 1, -1):
        suffix = ids[size - length:]
        ends = [end for end in range(size - 2, length - 2, -1)
                if ids[end - length + 1:end + 1] == suffix]
        if ends:
            return length, ends
    return 0, []


# ---- prompt lookup --------------------------------------------------------------------------


def test_longest_suffix_wins_over_more_recent_shorter_match_and_most_recent_longest_is_used():
    # "1 2 3" ends at 2 and 7 (length 3); "2 3" also ends at 11 (length 2, most recent)
    context = [1, 2, 3, 4, 6, 1, 2, 3, 5, 7, 2, 3, 8, 1, 2, 3]
    assert longest_match_ends(np.array(context), 1, 8).tolist() == [7, 2]
    tree = propose(NgramDrafter(), context, TreeShape.chain(3))
    assert tree.tokens.tolist() == [5, 7, 2]
    assert tree.is_chain and tree.q_draft is None


def test_max_match_limits_the_suffix_compared():
    context = [1, 2, 3, 8, 5, 3, 9, 1, 2, 3]
    longest = propose(NgramDrafter(max_match=8), context, TreeShape.chain(3))
    assert longest.tokens.tolist() == [8, 5, 3]
    # with single-token matches both occurrences tie and the most recent one wins
    single = propose(NgramDrafter(max_match=1), context, TreeShape.chain(3))
    assert single.tokens.tolist() == [9, 1, 2]


def test_min_match_rejects_shorter_matches():
    context = [1, 2, 3, 9, 5, 3]  # "3" recurs, "5 3" does not
    assert propose(NgramDrafter(), context, TreeShape.chain(4)).tokens.tolist() == [9, 5, 3]
    assert len(propose(NgramDrafter(min_match=2), context, TreeShape.chain(4))) == 0
    assert longest_match_ends(np.array(context), 2, 8).size == 0


def test_match_does_not_wrap_around_the_start_of_the_context():
    # comparing "before" position 0 would wrap to the end, where 7 7 would fake a longer match
    assert longest_match_ends(np.array([7, 1, 7, 7]), 1, 8).tolist() == [2, 0]
    assert propose(NgramDrafter(), [7, 1, 7, 7], TreeShape.chain(3)).tokens.tolist() == [7]


def test_continuation_is_capped_by_depth_and_by_the_end_of_the_context():
    context = [4, 1, 2, 3, 5, 6, 7, 8, 9, 1, 2]
    assert propose(NgramDrafter(), context, TreeShape.chain(2)).tokens.tolist() == [3, 5]
    long_chain = propose(NgramDrafter(), context, TreeShape.chain(20))
    assert long_chain.tokens.tolist() == [3, 5, 6, 7, 8, 9, 1, 2]
    # a continuation may overlap the matched suffix itself
    assert propose(NgramDrafter(), [1, 2, 3, 1, 2], TreeShape.chain(8)).tokens.tolist() == [3, 1, 2]


def test_chain_that_reaches_the_end_of_the_context_is_extended_by_an_older_agreeing_occurrence():
    # with max_match=2, "7 7" ends at 4, 3, 2, 1: continuations [7], [7, 7], [7, 7, 7], ...
    tree = propose(NgramDrafter(max_match=2), [7, 7, 7, 7, 7, 7], TreeShape.chain(3))
    assert tree.tokens.tolist() == [7, 7, 7]
    assert tree.is_chain


def test_tree_takes_distinct_first_tokens_most_recent_first():
    context = [1, 2, 10, 11, 1, 2, 20, 21, 1, 2, 10, 12, 1, 2, 30, 31, 1, 2]
    tree = propose(NgramDrafter(), context, TreeShape((3, 1, 1)))
    assert tree.tokens.tolist() == [30, 31, 1, 10, 12, 1, 20, 21, 1]
    assert tree.parents == [-1, 0, 1, -1, 3, 4, -1, 6, 7]
    assert len(tree) <= TreeShape((3, 1, 1)).num_nodes
    two = propose(NgramDrafter(), context, TreeShape((2, 1, 1)))
    assert [two.tokens[i].item() for i in two.children(-1)] == [30, 10]
    # only three distinct first tokens exist: a wider root gets three branches
    wide = propose(NgramDrafter(), context, TreeShape((5, 1)))
    assert [wide.tokens[i].item() for i in wide.children(-1)] == [30, 10, 20]
    assert max(wide.depths()) == 2


def test_tree_merges_shared_prefixes():
    context = [1, 2, 10, 11, 1, 2, 20, 21, 1, 2, 10, 12, 1, 2, 30, 31, 1, 2]
    shape = TreeShape((3, 2, 1))
    tree = propose(NgramDrafter(), context, shape)
    tokens = tree.tokens.tolist()
    root_children = tree.children(-1)
    assert [tokens[i] for i in root_children] == [30, 10, 20]  # 10 appears once
    node_10 = root_children[1]
    assert [tokens[i] for i in tree.children(node_10)] == [12, 11]
    assert len(tree) == 11 <= shape.num_nodes
    assert sorted(map(tuple, root_paths(tree))) == sorted(set(map(tuple, root_paths(tree))))


@pytest.mark.parametrize("seed", range(30))
def test_random_contexts_match_brute_force_and_respect_the_shape(seed):
    rng = np.random.default_rng(seed)
    context = rng.integers(0, 4, size=int(rng.integers(2, 80))).tolist()
    shapes = [TreeShape.chain(5), TreeShape((3, 1, 1, 1)), TreeShape((2, 2, 2)), TreeShape((4,))]
    shape = shapes[seed % 4]
    min_match, max_match = int(rng.integers(1, 3)), int(rng.integers(3, 7))
    length, ends = brute_force_match(context, min_match, max_match)
    assert longest_match_ends(np.array(context), min_match, max_match).tolist() == ends
    root_ends = np.flatnonzero(np.array(context[:-1]) == context[-1])[::-1]
    max_length = min(max_match, len(context) - 1)
    for extend in (ngram._extend_all_at_once, ngram._extend_step_by_step):
        if root_ends.size:
            longest, found = extend(np.array(context), root_ends, max_length)
            if longest >= min_match:
                assert (longest, found.tolist()) == (length, ends)
            else:
                assert ends == []

    tree = propose(NgramDrafter(min_match, max_match), context, shape)
    if not ends:
        assert len(tree) == 0
        return
    continuations = [context[end + 1:end + 1 + shape.depth] for end in ends]
    assert root_paths(tree)[len(continuations[0]) - 1] == continuations[0]  # most recent first
    assert len(tree) <= shape.num_nodes
    depths = tree.depths()
    assert max(depths) <= shape.depth
    for node in [-1, *range(len(tree))]:
        children = tree.children(node)
        depth = 0 if node < 0 else depths[node]
        assert len(children) <= (shape.branching[depth] if depth < shape.depth else 0)
        assert len({tree.tokens[i].item() for i in children}) == len(children)
    for path in root_paths(tree):  # every path is copied from a continuation of the match
        assert any(continuation[:len(path)] == path for continuation in continuations)


@pytest.mark.parametrize("seed", range(5))
def test_many_occurrences_use_the_stepwise_match_and_agree_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    context = rng.integers(0, 2, size=400).tolist()  # ~200 occurrences of the root token
    assert np.sum(np.array(context[:-1]) == context[-1]) > ngram._FEW_OCCURRENCES
    for min_match, max_match in ((1, 8), (3, 5), (9, 12)):
        _, ends = brute_force_match(context, min_match, max_match)
        assert longest_match_ends(np.array(context), min_match, max_match).tolist() == ends


def test_max_occurrences_limits_the_branches_read():
    context = [1, 2, 10, 11, 1, 2, 20, 21, 1, 2, 10, 12, 1, 2, 30, 31, 1, 2]
    tree = propose(NgramDrafter(max_occurrences=2), context, TreeShape((3, 1)))
    assert tree.tokens.tolist() == [30, 31, 10, 12]


# ---- protocol and fallbacks -----------------------------------------------------------------


def test_drafter_follows_the_protocol_and_returns_long_tokens_on_the_context_device():
    drafter = NgramDrafter()
    assert isinstance(drafter, Drafter) and drafter.name == "ngram"
    drafter.reset()
    tree = propose(drafter, [5, 6, 7, 5], TreeShape.chain(4))
    drafter.observe(tree, [0])
    assert tree.tokens.dtype == torch.long and tree.tokens.device.type == "cpu"
    assert tree.tokens.tolist() == [6, 7, 5] and tree.q_draft is None


@pytest.mark.parametrize("context", [[], [3], [1, 2, 3, 4]])
def test_no_match_and_no_table_gives_an_empty_tree(context):
    tree = propose(NgramDrafter(), context, TreeShape((2, 1, 1)))
    assert len(tree) == 0 and tree.parents == []


def test_bigram_fallback_chain_follows_the_most_frequent_successor():
    drafter = NgramDrafter(bigram=fitted_table())
    tree = propose(drafter, [6, 4], TreeShape.chain(5))  # 4 never occurred before
    assert tree.tokens.tolist() == [1, 2, 3, 1, 2]
    assert tree.is_chain and tree.q_draft is None


def test_bigram_fallback_tree_gives_the_top_successors_each_continued_greedily():
    tree = propose(NgramDrafter(bigram=fitted_table()), [0, 2], TreeShape((2, 1, 1)))
    assert tree.tokens.tolist() == [3, 4, 1, 1, 2, 2]
    assert tree.parents == [-1, -1, 0, 1, 2, 3]


def test_bigram_fallback_without_successor_or_unknown_token_is_empty():
    drafter = NgramDrafter(bigram=fitted_table())
    assert len(propose(drafter, [3, 7], TreeShape.chain(3))) == 0  # 7 has no successor
    assert len(propose(drafter, [3, 100], TreeShape.chain(3))) == 0  # outside the vocabulary


def test_prompt_lookup_takes_precedence_over_the_bigram_table():
    drafter = NgramDrafter(bigram=fitted_table())
    assert propose(drafter, [2, 6, 2], TreeShape.chain(2)).tokens.tolist() == [6, 2]


def test_constructor_rejects_invalid_match_lengths():
    with pytest.raises(DrafttrainError, match="min_match"):
        NgramDrafter(min_match=0)
    with pytest.raises(DrafttrainError, match="max_match"):
        NgramDrafter(min_match=3, max_match=2)
    with pytest.raises(DrafttrainError, match="max_occurrences"):
        NgramDrafter(max_occurrences=0)


# ---- bigram table ---------------------------------------------------------------------------


def test_bigram_fit_counts_successors_with_ties_broken_by_smaller_id():
    table = fitted_table()
    assert table.successors.dtype == np.int64 and table.successors.shape == (8, 3)
    assert table.successors.tolist() == EXPECTED_SUCCESSORS
    assert table.counts.tolist() == EXPECTED_COUNTS
    assert table.next_tokens(1, 1) == [2]
    assert table.next_tokens(1, 4) == [2, 5]
    assert table.next_tokens(0, 2) == [] and table.next_tokens(99, 2) == []


def test_bigram_fit_keeps_only_top_successors_and_rejects_out_of_vocab_ids():
    table = BigramTable.fit(CORPUS, vocab_size=8, top=1)
    assert table.successors[:, 0].tolist() == [row[0] for row in EXPECTED_SUCCESSORS]
    with pytest.raises(DrafttrainError, match="vocab_size"):
        BigramTable.fit([[1, 2, 9]], vocab_size=8)


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_bigram_round_trip(tmp_path, suffix):
    table = fitted_table()
    path = tmp_path / f"table{suffix}"
    table.save(path)
    loaded = BigramTable.load(path)
    assert np.array_equal(loaded.successors, table.successors)
    assert np.array_equal(loaded.counts, table.counts)
    assert loaded.vocab_size == 8 and loaded.top == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_bigram_json_is_plain_json_with_format_fields(tmp_path):
    path = tmp_path / "table.json"
    fitted_table().save(path)
    document = json.loads(path.read_text())
    assert document["format"] == "drafttrain-bigram" and document["version"] == 1
    assert document["vocab_size"] == 8 and document["top"] == 3
    assert document["successors"] == EXPECTED_SUCCESSORS


def write_json_table(path, **changes):
    document = {"format": "drafttrain-bigram", "version": 1, "vocab_size": 8, "top": 3,
                "successors": EXPECTED_SUCCESSORS, "counts": EXPECTED_COUNTS}
    document.update(changes)
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("changes, field", [
    ({"format": "something-else"}, "format"),
    ({"version": 7}, "version"),
    ({"vocab_size": 9}, "successors"),
    ({"top": 2}, "successors"),
    ({"counts": [[0, 0]] * 8}, "counts"),
    ({"successors": [[1, 2]] + EXPECTED_SUCCESSORS[1:]}, "successors"),
    ({"successors": [[8, -1, -1]] + EXPECTED_SUCCESSORS[1:]}, "successors"),
    ({"successors": [[-2, -1, -1]] + EXPECTED_SUCCESSORS[1:]}, "successors"),
    ({"successors": [[0.5, -1, -1]] + EXPECTED_SUCCESSORS[1:]}, "successors"),
])
def test_bad_json_tables_name_the_file_and_field(tmp_path, changes, field):
    path = write_json_table(tmp_path / "bad_table.json", **changes)
    with pytest.raises(DrafttrainError, match="bad_table.json") as raised:
        BigramTable.load(path)
    assert repr(field) in str(raised.value) and "BigramTable.fit" in str(raised.value)


def test_missing_undecodable_and_badly_named_tables_raise(tmp_path):
    with pytest.raises(DrafttrainError, match="absent.json"):
        BigramTable.load(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DrafttrainError, match="broken.json"):
        BigramTable.load(tmp_path / "broken.json")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(DrafttrainError, match="broken.safetensors"):
        BigramTable.load(tmp_path / "broken.safetensors")
    with pytest.raises(DrafttrainError, match=r"table\.pkl.*\.json, \.safetensors"):
        fitted_table().save(tmp_path / "table.pkl")
    (tmp_path / "table.bin").write_bytes(b"")
    with pytest.raises(DrafttrainError, match="table.bin"):
        BigramTable.load(tmp_path / "table.bin")
    assert not (tmp_path / "table.pkl").exists()


@pytest.mark.parametrize("metadata, tensors, field", [
    ({"format": "other", "version": "1", "vocab_size": "8", "top": "3"}, None, "format"),
    ({"format": "drafttrain-bigram", "version": "1", "vocab_size": "8", "top": "3"},
     {"successors": np.full((8, 3), 8, dtype=np.int64)}, "successors"),
    ({"format": "drafttrain-bigram", "version": "1", "vocab_size": "4", "top": "3"}, None,
     "successors"),
    ({"format": "drafttrain-bigram", "version": "1", "vocab_size": "8", "top": "3"},
     {"counts": np.zeros((8, 2), dtype=np.int64)}, "counts"),
])
def test_bad_safetensors_tables_name_the_file_and_field(tmp_path, metadata, tensors, field):
    arrays = {"successors": np.array(EXPECTED_SUCCESSORS, dtype=np.int64),
              "counts": np.array(EXPECTED_COUNTS, dtype=np.int64)}
    arrays.update(tensors or {})
    path = tmp_path / "bad_table.safetensors"
    save_file(arrays, str(path), metadata=metadata)
    with pytest.raises(DrafttrainError, match="bad_table.safetensors") as raised:
        BigramTable.load(path)
    assert repr(field) in str(raised.value)
