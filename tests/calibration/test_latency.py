"""Latency calibration: timing calls, the monotone fit, and the JSON profile with its validation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import runtime_model

from drafttrain.calibration.latency import (
    FORM,
    TERM_NAMES,
    LatencyModel,
    LatencyProfile,
    Timing,
    context_buckets,
    cpu_model_name,
    fingerprint_differences,
    fit_latency,
    hardware_fingerprint,
    mape,
    mape_by_level,
    measure,
    model_forward_call,
    ngram_call,
    robust_average,
    shape_factors,
    split_timings,
    token_count_shape,
    tune_row_kernels,
)
from drafttrain.drafters import NgramDrafter
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import SelfDraftView
from drafttrain.runtime.row_kernels import available_kernels

TOKENS = (1, 2, 4, 8, 16, 32, 64)
CONTEXTS = (32, 64, 128, 512, 959)
KNOWN = (4e-3, 2e-5, 1.5e-3, 2e-6, 1.4e-7, 3e-5)  # one per term of FORM


def synthetic_timings(coefficients, level: str = "target", noise: float = 0.0, seed: int = 0) -> list[Timing]:
    rng = np.random.default_rng(seed)
    c0, c1, c2, c3, c4, c5 = coefficients
    timings = []
    for n in TOKENS:
        for length in CONTEXTS:
            seconds = c0 + c1 * n + c2 * math.sqrt(n) + c3 * length + c4 * n * length + c5 * math.log1p(length)
            timings.append(Timing(level, n, length, seconds * (1 + noise * rng.standard_normal())))
    return timings


def fitted_profile() -> LatencyProfile:
    fit = synthetic_timings(KNOWN) + synthetic_timings((1e-4, 1e-6, 0, 1e-7, 0, 2e-6), level="ngram")
    held_out = [Timing("target", 3, 300, 0.006), Timing("ngram", 3, 300, 0.0002)]
    fingerprint = {"device": "cpu: Test CPU", "dtype": "float32", "threads": 2, "torch": "2.13.0"}
    return LatencyProfile.from_timings(fingerprint, fit, held_out)


# ---- fitting --------------------------------------------------------------------------------


def test_fit_recovers_known_coefficients():
    model = fit_latency(synthetic_timings(KNOWN))["target"]
    assert len(model.coefficients) == len(TERM_NAMES)
    assert model.coefficients == pytest.approx(KNOWN, rel=1e-6)


def test_predictions_are_monotone_in_tokens_and_context():
    model = fit_latency(synthetic_timings(KNOWN, noise=0.1))["target"]
    tokens, contexts = np.meshgrid(np.arange(1, 129), np.arange(0, 2048, 16), indexing="ij")
    seconds = model.predict(tokens, contexts)
    assert seconds.shape == tokens.shape
    assert np.all(np.diff(seconds, axis=0) >= 0) and np.all(np.diff(seconds, axis=1) >= 0)


def test_negative_intercept_data_gives_non_negative_coefficients():
    timings = [Timing("x", n, length, -1e-3 + 2e-3 * n + 1e-5 * length) for n in TOKENS for length in CONTEXTS]
    model = fit_latency(timings)["x"]
    assert all(c >= 0 for c in model.coefficients)
    assert model.coefficients[0] == 0.0  # an unconstrained fit would give -1e-3
    assert model.predict(1, 0) >= 0
    with pytest.raises(ValueError):
        LatencyModel((-1.0,) + (0.0,) * (len(TERM_NAMES) - 1))


def test_fit_rejects_non_positive_seconds():
    with pytest.raises(DrafttrainError, match="positive"):
        fit_latency([Timing("x", 1, 32, 0.0), Timing("x", 2, 32, 1.0)])


def test_mape_against_hand_computed_values():
    constant_one = LatencyModel((1.0,) + (0.0,) * (len(TERM_NAMES) - 1))
    timings = [Timing("a", 1, 32, 2.0), Timing("a", 4, 64, 0.5)]
    assert mape(constant_one, timings) == pytest.approx((0.5 + 1.0) / 2)
    per_level = mape_by_level({"a": constant_one}, timings + [Timing("b", 1, 1, 1.0)])
    assert per_level == {"a": pytest.approx(0.75)}  # levels without a model are skipped


def test_robust_average_drops_the_extremes():
    assert robust_average([1.0, 2.0, 3.0, 100.0, 4.0]) == pytest.approx(3.0)
    assert robust_average([1.0, 3.0]) == pytest.approx(2.0)
    assert robust_average([5.0]) == 5.0


def test_split_timings_holds_out_points_off_the_grid():
    timings = [Timing("a", n, length, 1.0) for n in (1, 3) for length in (32, 48)]
    fit, held_out = split_timings(timings, (1,), (32,))
    assert [(t.tokens, t.context) for t in fit] == [(1, 32)]
    assert len(held_out) == 3


def test_context_buckets():
    fit, held_out = context_buckets(1024, 64)
    assert fit == [32, 64, 128, 512, 959]
    assert held_out == [48, 96, 320, 735]
    fit, _ = context_buckets(1 << 15, 64)
    assert len(fit) == 5 and fit[0] == 32 and fit[-1] == (1 << 15) - 65
    assert context_buckets(4096, 64, max_context=100)[0] == [32, 64, 100]
    with pytest.raises(DrafttrainError, match="positions"):
        context_buckets(64, 64)


# ---- the measured token-count shape ------------------------------------------------------------


def test_token_count_shape_is_the_geometric_mean_ratio_per_count():
    smooth = LatencyModel(KNOWN)
    bumps = {1: 1.0, 2: 1.3, 3: 1.5, 4: 0.9}  # a CPU's irregular curve: 3 tokens cost more than 4
    timings = [Timing("target", n, length, smooth.predict(n, length) * factor * (1.1 if length == 64 else 1 / 1.1))
               for n, factor in bumps.items() for length in (64, 512)]
    shape = token_count_shape(smooth, timings)
    assert np.allclose(shape, [bumps[n] for n in sorted(bumps)])  # the 1.1 and 1 / 1.1 cancel
    pinned = token_count_shape(smooth, [Timing(t.level, t.tokens, t.context, t.seconds * 0.8) for t in timings],
                               anchors=(1, 2, 4))  # timed 20% faster than the fit: the anchors undo the level
    assert np.allclose(pinned, np.array(shape) / (1.0 * 1.3 * 0.9) ** (1 / 3))
    shaped = LatencyModel(KNOWN, shape)
    assert math.isclose(shaped.predict(3, 300), smooth.predict(3, 300) * 1.5)
    assert shaped.predict(3, 300) > shaped.predict(4, 300)  # the shape may break monotonicity; it is measured
    assert shaped.predict(9, 300) == smooth.predict(9, 300)  # past the shape: the smooth fit
    assert np.allclose(shaped.predict(np.array([1, 2, 3, 4, 9]), 300),
                       [shaped.predict(n, 300) for n in (1, 2, 3, 4, 9)])


def test_shape_factors_cover_whole_counts_inside_the_shape_only():
    assert shape_factors((2.0, 3.0), np.array([0, 1, 2, 3, 1.5])).tolist() == [1.0, 2.0, 3.0, 1.0, 1.0]


def test_token_count_shape_needs_every_count():
    timings = [Timing("target", n, 64, 0.01) for n in (1, 2, 4)]
    with pytest.raises(ValueError, match=r"\[3\] were not timed"):
        token_count_shape(LatencyModel(KNOWN), timings)
    with pytest.raises(ValueError, match="shape factors"):
        LatencyModel(KNOWN, (1.0, 0.0))


def test_a_shaped_profile_round_trips_and_a_bad_factor_is_named(tmp_path: Path):
    profile = fitted_profile()
    profile.models["target"] = LatencyModel(profile.models["target"].coefficients, (1.0, 1.2, 1.4, 0.9))
    loaded = LatencyProfile.load(profile.save(tmp_path / "latency.json"))
    assert loaded.models == profile.models and loaded.predict("target", 3, 100) == profile.predict("target", 3, 100)
    document = profile.to_json()
    assert "shape" not in document["levels"]["ngram"]
    document["levels"]["target"]["shape"][1] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DrafttrainError, match=r"'levels.target.shape\[1\]'.*drafttrain run calibrate"):
        LatencyProfile.load(path)


def test_row_kernel_plans_round_trip_and_a_bad_kernel_is_named(tmp_path: Path):
    profile = fitted_profile()
    profile.row_kernels = {"target": {2: "output_major_t", 16: "output_major"}}
    loaded = LatencyProfile.load(profile.save(tmp_path / "latency.json"))
    assert loaded.row_kernels == profile.row_kernels
    document = profile.to_json()
    assert document["levels"]["target"]["row_kernels"] == {"2": "output_major_t", "16": "output_major"}
    assert "row_kernels" not in document["levels"]["ngram"]
    for bad, problem in (({"2": "fastest"}, "kernel 'fastest' for 2 rows is unknown"),
                         ({"two": "output_major"}, "expected row counts")):
        document["levels"]["target"]["row_kernels"] = bad
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(document))
        with pytest.raises(DrafttrainError, match=rf"'levels.target.row_kernels'.*{problem}"):
            LatencyProfile.load(path)


def test_a_profile_applies_its_row_kernels_on_its_own_hardware_only():
    model = runtime_model(0, vocab=16, layers=2)
    profile = fitted_profile()
    profile.row_kernels = {"target": {2: "output_major_t"}}
    assert profile.apply_row_kernels("target", model) == {}  # profiled on "cpu: Test CPU"
    profile.fingerprint = hardware_fingerprint(model.device, model.dtype)
    assert profile.apply_row_kernels("target", model) == {2: "output_major_t"} == model.row_kernels
    assert profile.apply_row_kernels("draft0", model) == {}


def test_tuning_keeps_the_kernel_that_times_fastest_at_each_row_count():
    model = runtime_model(1, vocab=16, layers=1)
    slow = {1: "output_major", 2: "input_major", 3: "output_major_t"}  # the kernel that costs more, per count
    fast = {1: "input_major", 2: "output_major_t", 3: "output_major"}
    timed = []

    def call(tokens: int, context: int) -> None:
        kernel = model.row_kernels.get(tokens, "input_major")
        timed.append((tokens, kernel))
        time.sleep(0.001 if kernel == fast[tokens] else 0.006 if kernel == slow[tokens] else 0.003)

    plan = tune_row_kernels(model, call, [1, 2, 3], context=8, repeats=3, warmup=1)
    assert plan == {2: "output_major_t", 3: "output_major"} == model.row_kernels  # count 1 keeps the default
    runnable = available_kernels(model.dtype)  # every kernel this build runs is timed, onednn included where it can
    assert len(timed) == 3 * len(runnable) * 4 and {kernel for _, kernel in timed} == set(runnable)


def test_tuning_times_each_forward_after_the_work_that_precedes_it_in_decoding():
    """A kernel that is fastest warm may be slowest cold: with `before` (untimed, run before every
    timed call) the plan is the cold winner's."""
    model = runtime_model(1, vocab=16, layers=1)
    state = {"cold": False, "before": 0, "timed": 0}

    def evict() -> None:
        state["cold"] = True
        state["before"] += 1
        time.sleep(0.004)  # untimed: must not count against any kernel

    def call(tokens: int, context: int) -> None:
        kernel = model.row_kernels.get(tokens, "input_major")
        state["timed"] += 1
        fast = "output_major_t" if state["cold"] else "input_major"
        time.sleep(0.001 if kernel == fast else 0.004)
        state["cold"] = False

    assert tune_row_kernels(model, call, [1], context=8, repeats=3, warmup=1) == {}
    assert tune_row_kernels(model, call, [1], context=8, repeats=3, warmup=1, before=evict) == {1: "output_major_t"}
    assert state["before"] == 4 * len(available_kernels(model.dtype)) == state["timed"] / 2


# ---- profile file ---------------------------------------------------------------------------


def test_profile_json_round_trip_predicts_identically(tmp_path: Path):
    profile = fitted_profile()
    assert set(profile.mape) == {"target", "ngram"}
    path = profile.save(tmp_path / "latency.json")
    loaded = LatencyProfile.load(path)
    tokens, contexts = np.meshgrid(np.arange(1, 65), np.arange(0, 1024, 7))
    for level in ("target", "ngram"):
        assert np.array_equal(loaded.models[level].predict(tokens, contexts),
                              profile.models[level].predict(tokens, contexts))
        assert loaded.predict(level, 5, 300) == profile.predict(level, 5, 300)
    assert loaded.fingerprint == profile.fingerprint
    assert loaded.mape == profile.mape and loaded.grid == profile.grid
    assert LatencyProfile.from_json(profile.to_json()).models == profile.models
    document = json.loads(path.read_text())
    assert document["format"] == "drafttrain-latency" and document["version"] == 1
    assert document["levels"]["target"]["form"] == FORM


def test_profile_predict_unknown_level():
    with pytest.raises(DrafttrainError, match="no level 'draft'"):
        fitted_profile().predict("draft", 1, 32)


def _break(document: dict, change: str) -> dict:
    if change == "missing levels":
        del document["levels"]
    elif change == "negative coefficient":
        document["levels"]["target"]["coefficients"][2] = -1e-3
    elif change == "wrong coefficient count":
        document["levels"]["target"]["coefficients"].pop()
    elif change == "wrong format":
        document["format"] = "drafttrain-bigram"
    elif change == "newer version":
        document["version"] = 2
    elif change == "threads not an int":
        document["fingerprint"]["threads"] = "2"
    elif change == "missing device":
        del document["fingerprint"]["device"]
    elif change == "infinite coefficient":
        document["levels"]["ngram"]["coefficients"][0] = math.inf
    return document


@pytest.mark.parametrize(("change", "field", "fix"), [
    ("missing levels", "'levels'", "drafttrain run calibrate"),
    ("negative coefficient", "'levels.target.coefficients[2]'", "drafttrain run calibrate"),
    ("wrong coefficient count", "'levels.target.coefficients'", "drafttrain run calibrate"),
    ("wrong format", "'format'", "drafttrain run calibrate"),
    ("newer version", "'version'", "upgrade drafttrain"),
    ("threads not an int", "'fingerprint.threads'", "drafttrain run calibrate"),
    ("missing device", "'fingerprint.device'", "drafttrain run calibrate"),
    ("infinite coefficient", "'levels.ngram.coefficients[0]'", "drafttrain run calibrate"),
])
def test_load_rejects_malformed_profiles(tmp_path: Path, change: str, field: str, fix: str):
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(_break(fitted_profile().to_json(), change)))  # json writes inf as Infinity
    with pytest.raises(DrafttrainError) as error:
        LatencyProfile.load(path)
    message = str(error.value)
    assert str(path) in message and field in message and fix in message


def test_load_rejects_missing_and_non_json_files(tmp_path: Path):
    with pytest.raises(DrafttrainError, match="does not exist: run `drafttrain run calibrate`"):
        LatencyProfile.load(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "drafttrain-latency", ')
    with pytest.raises(DrafttrainError, match="not readable JSON"):
        LatencyProfile.load(broken)
    broken.write_text("[1, 2]")
    with pytest.raises(DrafttrainError, match="JSON object"):
        LatencyProfile.load(broken)


# ---- hardware -------------------------------------------------------------------------------


def test_hardware_fingerprint_and_differences():
    here = hardware_fingerprint("cpu", torch.float32)
    assert here["device"].startswith("cpu: ") and here["dtype"] == "float32"
    assert here["threads"] == torch.get_num_threads() and here["torch"] == torch.__version__
    assert fingerprint_differences(here, dict(here)) == []
    elsewhere = dict(here, device="cpu: Other CPU", threads=here["threads"] + 1)
    differences = fingerprint_differences(elsewhere, here)
    assert len(differences) == 2
    assert differences[0] == f"device: {here['device']!r} here vs 'cpu: Other CPU' in the profile"
    assert differences[1].startswith("threads: ")
    profile = fitted_profile()
    assert any(line.startswith("device:") for line in profile.check_hardware(here))


def test_reports_name_the_cpu_model_as_the_fingerprint_does():
    from drafttrain.cli import device_name

    model = cpu_model_name()
    assert model and hardware_fingerprint("cpu", torch.float32)["device"] == f"cpu: {model}"
    assert device_name("cpu", 3) == f"cpu {model}, 3 threads (torch {torch.__version__})"


# ---- measuring ------------------------------------------------------------------------------


def test_measure_times_every_level_at_every_point(one_thread):
    model = runtime_model(0, vocab=16, layers=2, max_pos=128)
    text = torch.tensor([1, 2, 3, 4, 1, 2, 3, 5] * 3)
    calls = {"target": model_forward_call(model),
             "self": model_forward_call(model, SelfDraftView(skip_attn=frozenset({1}))),
             "ngram": ngram_call(NgramDrafter(), text)}  # contexts longer than the text: it wraps
    timings = measure(calls, (1, 4), (8, 40), repeats=3, warmup=1)
    assert sorted((t.level, t.tokens, t.context) for t in timings) == sorted(
        (level, n, length) for level in calls for n in (1, 4) for length in (8, 40))
    assert all(t.seconds > 0 for t in timings)


def test_measure_interleaves_levels_at_each_point():
    order: list[tuple[str, int, int]] = []

    def recorder(level: str):
        return lambda tokens, context: order.append((level, tokens, context))

    levels = ("target", "self", "ngram")
    timings = measure({level: recorder(level) for level in levels}, (1, 2), (16, 32), repeats=3, warmup=2)
    assert len(timings) == 3 * 4
    assert len(order) == (2 + 3) * 4 * 3
    for start in range(0, len(order), 3):  # every visit of a point runs each level once, in turn
        visit = order[start:start + 3]
        assert [level for level, _, _ in visit] == list(levels)
        assert len({(n, length) for _, n, length in visit}) == 1
    points = [(n, length) for level, n, length in order if level == "target"]
    for sweep in range(5):  # each sweep visits every grid point once
        assert sorted(points[sweep * 4:(sweep + 1) * 4]) == [(1, 16), (1, 32), (2, 16), (2, 32)]


def test_ngram_call_indexes_all_but_a_steps_tokens_before_the_timed_proposal():
    from drafttrain.calibration.latency import NGRAM_STEP_TOKENS

    text = torch.arange(24) % 7
    drafter = NgramDrafter()
    call = ngram_call(drafter, text)
    call.prepare(2, 12)  # the first window at context 12 ends where the first copy of the text does
    assert drafter.index.tokens == text[12:24 - NGRAM_STEP_TOKENS].tolist()
    call(2, 12)
    assert drafter.index.tokens == text[12:24].tolist()  # the timed call only extends the index
    assert call.visits[2, 12] == 1  # prepare and its call read one window
    call(2, 12)  # without `prepare`: the next window
    assert call.visits[2, 12] == 2 and len(drafter.index.tokens) == 12


def test_a_calls_prepare_runs_before_the_clock_starts(monkeypatch):
    import drafttrain.calibration.latency as latency

    events: list[str] = []

    class Prepared:
        def prepare(self, tokens: int, context: int) -> None:
            events.append(f"prepare {tokens} {context}")

        def __call__(self, tokens: int, context: int) -> None:
            events.append("call")

    monkeypatch.setattr(latency.time, "perf_counter", lambda: events.append("clock") or 0.0)
    latency._seconds(Prepared(), 3, 40)
    assert events == ["prepare 3 40", "clock", "call", "clock"]


def test_forward_call_checks_the_model_size():
    model = runtime_model(0, max_pos=64)
    call = model_forward_call(model)
    call(4, 60)
    with pytest.raises(DrafttrainError, match="64 positions"):
        call(8, 60)
    with pytest.raises(DrafttrainError, match="layers"):
        model_forward_call(model, SelfDraftView(skip_mlp=frozenset({7})))
