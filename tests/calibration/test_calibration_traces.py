"""Trace recording: per-node outcomes by hand, agreement with the decoder's verification, CSV round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runtime_model

from drafttrain.calibration.traces import (
    TRACE_COLUMNS,
    TraceRecorder,
    Traces,
    draft_row_features,
    greedy_outcomes,
    parents_on_path,
    sampling_outcomes,
)
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.decoding.sampling import SamplingParams
from drafttrain.drafters import ModelDrafter, NgramDrafter, SelfDrafter, TreeShape
from drafttrain.drafters.base import DraftTree
from drafttrain.errors import DrafttrainError
from drafttrain.runtime.views import SelfDraftView

GREEDY = SamplingParams(0.0)


def test_greedy_outcomes_compare_each_node_with_the_argmax_after_its_parent():
    # root row 0, node i row i + 1; tree: 0 <- root, 1 <- 0, 2 <- root, 3 <- 2
    tree = DraftTree(torch.tensor([5, 6, 7, 8]), [-1, 0, -1, 2])
    argmax = torch.tensor([5, 9, 3, 8, 0])  # after root: 5; after node 0: 9; after node 2: 8
    assert greedy_outcomes(tree, argmax).tolist() == [1.0, 0.0, 0.0, 1.0]


def test_sampling_outcomes_are_min_one_p_over_q():
    p_target = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    q_draft = torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.2, 0.6]])
    tree = DraftTree(torch.tensor([0, 2]), [-1, 0], q_draft)
    np.testing.assert_allclose(sampling_outcomes(tree, p_target).numpy(), [1.0, 1.0])  # 0.5/0.25, 0.8/0.6
    tree = DraftTree(torch.tensor([1, 0]), [-1, 0], q_draft)
    np.testing.assert_allclose(sampling_outcomes(tree, p_target).numpy(), [0.3 / 0.5, 0.1 / 0.2])
    point_mass = DraftTree(torch.tensor([1, 2]), [-1, 0])  # n-gram: q = 1, outcome = p
    np.testing.assert_allclose(sampling_outcomes(point_mass, p_target).numpy(), [0.3, 0.8])


def test_draft_row_features_by_hand():
    q_draft = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    q_token, entropy, margin = draft_row_features(DraftTree(torch.tensor([1, 0]), [-1, 0], q_draft))
    np.testing.assert_allclose(q_token, [0.3, 1.0])
    np.testing.assert_allclose(entropy, [-(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)), 0.0],
                               atol=1e-6)
    np.testing.assert_allclose(margin, [0.2, 1.0], atol=1e-7)
    assert np.isnan(draft_row_features(DraftTree(torch.tensor([1]), [-1]))[0]).all()


def test_parents_on_path():
    assert parents_on_path([-1, 0, 1, -1, 3], [0]).tolist() == [True, True, False, True, False]


@pytest.fixture(scope="module")
def decoder():
    return SpeculativeDecoder(runtime_model(seed=0, vocab=16, layers=3))


CHAIN4 = TreeShape.chain(4)


def record(decoder, drafter, sampling=GREEDY, shape=CHAIN4, prompts=((1, 2, 3, 1, 2),)):
    recorder = TraceRecorder(sampling)
    for index, prompt in enumerate(prompts):
        recorder.prompt = f"p{index}"
        decoder.generate(list(prompt), drafter, GenerationConfig(24, sampling, shape, seed=index), trace=recorder)
    return recorder.traces()


def test_greedy_traces_agree_with_the_decoders_verification(decoder):
    drafter = ModelDrafter(runtime_model(seed=1, vocab=16, layers=2), 16)
    traces = record(decoder, drafter, prompts=((1, 2, 3, 1, 2), (4, 4, 5)))
    assert len(traces) > 0 and set(traces.levels()) == {"draft"}
    judged = traces.for_fitting()
    # a node whose parent was accepted is accepted by the verifier exactly when its outcome is 1
    np.testing.assert_array_equal(judged["on_path"], judged["outcome"] == 1.0)
    assert (traces["q_token"] > 0).all() and (traces["margin"] >= 0).all()
    assert traces["match_length"].tolist() == [-1] * len(traces)
    for name in TRACE_COLUMNS:
        assert len(traces[name]) == len(traces)


def test_tree_traces_mark_parents_and_paths(decoder):
    drafter = SelfDrafter(decoder, SelfDraftView(skip_mlp=frozenset({1})))
    traces = record(decoder, drafter, shape=TreeShape((2, 2)))
    assert set(traces["depth"].tolist()) == {1, 2}
    judged = traces.for_fitting()
    np.testing.assert_array_equal(judged["on_path"], judged["outcome"] == 1.0)


def test_ngram_traces_carry_match_lengths(decoder):
    traces = record(decoder, NgramDrafter(), prompts=((1, 2, 3, 4, 1, 2, 3, 4, 1, 2),))
    assert len(traces) and (traces["match_length"] >= 1).all()
    assert np.isnan(traces["q_token"]).all()


def test_sampling_traces_record_expected_acceptance(decoder):
    drafter = ModelDrafter(runtime_model(seed=1, vocab=16, layers=2), 16)
    traces = record(decoder, drafter, sampling=SamplingParams(0.8))
    assert set(traces.modes()) == {"t0.8"}
    assert ((traces["outcome"] >= 0) & (traces["outcome"] <= 1)).all()
    assert not np.isin(traces["outcome"], (0.0, 1.0)).all()  # fractional min(1, p/q) values


def test_csv_round_trip_and_prompt_folds(decoder, tmp_path):
    traces = record(decoder, NgramDrafter(), prompts=[(1, 2, 3, 1, 2, 3, i % 5) for i in range(6)])
    path = traces.save_csv(tmp_path / "traces.csv")
    loaded = Traces.load_csv(path)
    for name in TRACE_COLUMNS:
        expected, actual = traces[name], loaded[name]
        if expected.dtype == np.float64:
            np.testing.assert_array_equal(np.isnan(expected), np.isnan(actual))
            np.testing.assert_array_equal(expected[~np.isnan(expected)], actual[~np.isnan(actual)])
        else:
            assert expected.tolist() == actual.tolist(), name
    folds = loaded.prompt_folds(3, seed=0)
    prompt_fold = {}
    for prompt, fold in zip(loaded["prompt"].tolist(), folds.tolist()):
        assert prompt_fold.setdefault(prompt, fold) == fold  # a prompt's rows share one fold
    assert sorted(np.bincount(list(prompt_fold.values())).tolist()) == [2, 2, 2]
    with pytest.raises(DrafttrainError, match="cannot be split into 7 folds"):
        loaded.prompt_folds(7)


def test_malformed_trace_files_are_clear_errors(tmp_path):
    with pytest.raises(DrafttrainError, match="does not exist"):
        Traces.load_csv(tmp_path / "none.csv")
    (tmp_path / "header.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DrafttrainError, match="header"):
        Traces.load_csv(tmp_path / "header.csv")
    row = ["greedy", "self0", "p", "0", "0", "-1", "1", "5", "3", "0.5", "1.0", "0.1", "-1", "True", "maybe", "1.0"]
    (tmp_path / "value.csv").write_text(",".join(TRACE_COLUMNS) + "\n" + ",".join(row) + "\n")
    with pytest.raises(DrafttrainError, match="malformed"):
        Traces.load_csv(tmp_path / "value.csv")
