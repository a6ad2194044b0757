"""The search study: resume after a kill, several workers, clear errors, levels.json and plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from search_testkit import tiny_config

from drafttrain.errors import DrafttrainError
from drafttrain.runtime.views import SelfDraftView
from drafttrain.search.config import SearchConfig
from drafttrain.search.study import (
    Level,
    make_sampler,
    make_storage,
    open_study,
    pareto_levels,
    read_levels,
    run_search,
    search,
    write_levels,
    write_plots,
)

REPO = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _complete(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def test_new_study_enqueues_baselines_once(tiny_target, tmp_path):
    config = tiny_config(tiny_target, tmp_path)
    study = open_study(config)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    labels = [t.user_attrs["baseline"] for t in waiting]
    assert labels == ["none", "evenly_spread:0.25", "evenly_spread:0.45", "evenly_spread:0.6"]
    fixed = [t.system_attrs["fixed_params"] for t in waiting]
    assert fixed[0] == {f"{kind}_{i}": False for i in range(3) for kind in ("attn", "mlp")}
    assert sum(fixed[2].values()) == 3  # 0.45 of 6 sublayers
    again = open_study(config)
    assert len(again.get_trials(deepcopy=False)) == 4
    with pytest.raises(DrafttrainError, match="quant_groups=0"):
        open_study(replace(config, quant_groups=1))
    with pytest.raises(DrafttrainError, match="objective='cheap'"):
        open_study(replace(config, objective="multi"))


def test_kill_and_resume(tiny_target, tmp_path):
    """A search SIGKILLed inside its 3rd trial resumes: the 2 finished trials stay as they were, the
    trial that was running is failed once its heartbeat is stale and retried with the same
    parameters, and the study reaches its total of 4 finished trials."""
    config = tiny_config(tiny_target, tmp_path, trials=4, baseline_ratios=[0.5], heartbeat_seconds=1)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from drafttrain.search.config import SearchConfig
        from drafttrain.search.study import build_objective, run_search

        config = SearchConfig(target=Path({str(config.target)!r}), prompts=Path({str(config.prompts)!r}),
                              out=Path({str(config.out)!r}), trials=4, keep_first_last=False, num_prompts=2,
                              max_new_tokens=6, calibration_tokens=48, heartbeat_seconds=1, threads=1,
                              baseline_ratios=[0.5])
        objective = build_objective(config)
        evaluate = objective.evaluate

        def die_in_third_trial(view, trial=None):
            if trial.number == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return evaluate(view, trial)

        objective.evaluate = die_in_third_trial
        run_search(config, objective)
        raise SystemExit("not killed")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    study = open_study(config)
    before = study.get_trials(deepcopy=False)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    deadline = time.time() + 15
    while study.get_trials(deepcopy=False)[2].state == TrialState.RUNNING:  # the grace period: 2 heartbeats
        assert time.time() < deadline, "the killed trial never went stale"
        time.sleep(0.25)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # what every trial start of run_search does
    study = run_search(config)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    for old, new in zip(before[:2], trials[:2]):  # not re-run: same values, same completion time
        assert (new.value, new.datetime_complete, new.params) == (old.value, old.datetime_complete, old.params)
    assert trials[3].params == trials[2].params  # the retry of the killed trial
    assert trials[3].system_attrs.get("failed_trial") == 2
    assert trials[4].params != trials[2].params  # the resumed sampler does not replay the killed one
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["none", "evenly_spread:0.5"]
    # a study at its total runs nothing more; a larger total continues it
    assert len(run_search(config).get_trials(deepcopy=False)) == 5
    assert len(_complete(run_search(replace(config, trials=5)))) == 5


def test_two_workers_share_one_sqlite_study(tiny_target, tmp_path):
    config = tiny_config(tiny_target, tmp_path, trials=6, workers=2)
    study = run_search(config)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))) and len(set(numbers)) == len(numbers)
    baselines = sorted(t.user_attrs["baseline"] for t in finished if "baseline" in t.user_attrs)
    assert baselines == sorted(["none", "evenly_spread:0.25", "evenly_spread:0.45", "evenly_spread:0.6"])


def test_sqlite_hands_each_enqueued_trial_to_one_worker(tmp_path):
    """SQLite has no SELECT FOR UPDATE: without BEGIN IMMEDIATE two workers pop the same trial."""
    config = SearchConfig(out=tmp_path, heartbeat_seconds=0)
    study = optuna.create_study(study_name="race", storage=make_storage(config))
    for i in range(40):
        study.enqueue_trial({"x": i})
    popped: list[int] = []

    def pop_all() -> None:
        mine = optuna.load_study(study_name="race", storage=make_storage(config))
        while (trial_id := mine._pop_waiting_trial_id()) is not None:
            popped.append(trial_id)

    threads = [threading.Thread(target=pop_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(popped) == sorted(set(popped)) and len(popped) == 40


def test_bad_storage_url_is_a_clear_error(tiny_target, tmp_path):
    for url in ("not-a-url", f"sqlite:///{tmp_path}/missing/dir/study.db", "nosuchdb://user:secret@host/db"):
        with pytest.raises(DrafttrainError, match="storage .* cannot be opened") as info:
            open_study(tiny_config(tiny_target, tmp_path, storage=url))
        assert "secret" not in str(info.value)


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(DrafttrainError, match="tpe, random, cmaes, nsga2"):
        make_sampler("grid", 0)
    with pytest.raises(DrafttrainError, match="tpe, random, cmaes, nsga2"):
        SearchConfig(sampler="grid")
    for name in ("tpe", "random", "nsga2"):
        assert isinstance(make_sampler(name, 3), optuna.samplers.BaseSampler)


def _fake_trial(study, number_value, acceptance, cost, spec):
    values = number_value
    trial = optuna.trial.create_trial(
        params={}, distributions={}, values=values,
        user_attrs={"acceptance": acceptance, "cost_ratio": cost, "speedup": 4 * acceptance / (3 * cost + 1),
                    "spec": spec})
    study.add_trial(trial)


def test_pareto_levels_multi_and_single():
    multi = optuna.create_study(directions=["maximize", "minimize"])
    specs = [{"skip_attn": [i], "skip_mlp": [], "act_quant": {}} for i in range(8)]
    points = [(0.95, 0.9), (0.9, 0.7), (0.88, 0.68), (0.8, 0.5), (0.6, 0.3), (0.5, 0.6), (1.0, 1.0)]
    for i, (a, c) in enumerate(points):
        _fake_trial(multi, [a, c], a, c, specs[i])
    _fake_trial(multi, [1.0, 0.2], 1.0, 0.2, {})  # skips nothing: never a level
    levels = pareto_levels(multi, 3)
    # front (draft views only): costs .3 .5 .68 .7 .9; .68 and .7 are closer than min_gap, .7 has
    # the better speedup; 3 of the 4 left, spread evenly, both ends included, most expensive first
    assert [lv.cost_ratio for lv in levels] == [0.9, 0.7, 0.3]
    assert [lv.trial for lv in levels] == [0, 1, 4]
    assert levels[0].spec == SelfDraftView(skip_attn=frozenset({0}))
    assert [lv.cost_ratio for lv in pareto_levels(multi, 10)] == [0.9, 0.7, 0.5, 0.3]

    single = optuna.create_study(direction="maximize")
    for i, (a, c) in enumerate(points):
        _fake_trial(single, [a / c], a, c, specs[i])
    assert [lv.trial for lv in pareto_levels(single, 2)] == [3, 4]  # the two best values
    # trial 1 (cost .7) is within min_gap of trial 2 (.68, better value); trial 6 costs 1.0
    assert [lv.trial for lv in pareto_levels(single, 10)] == [0, 2, 5, 3, 4]  # by cost, descending
    with pytest.raises(DrafttrainError):
        pareto_levels(single, 0)


def test_levels_json_round_trip(tmp_path):
    levels = [Level(SelfDraftView(frozenset({2}), frozenset({3, 5}), ((1, "int8"), (4, "int4"))), 0.81, 0.55, 1.9, 7),
              Level(SelfDraftView(skip_mlp=frozenset({1})), 0.93, 0.8, 1.4, 2)]
    path = write_levels(tmp_path / "levels.json", levels, {"study": "s"})
    data = json.loads(path.read_text())
    assert data["study"] == "s"
    assert SelfDraftView.from_json(data["levels"][0]["spec"]) == levels[0].spec
    assert read_levels(path) == levels
    path.write_text('{"levels": [{"spec": {"skip_attn": [1]}}]}')
    with pytest.raises(DrafttrainError, match="acceptance"):
        read_levels(path)


def test_search_end_to_end_multi(tiny_target, tmp_path):
    config = tiny_config(tiny_target, tmp_path, objective="multi", trials=5, levels=2, sampler="nsga2")
    result = search(config)
    assert (config.out / "config.yaml").is_file()
    assert result.plots == [config.out / "pareto.png"] and result.plots[0].stat().st_size > 0
    assert read_levels(result.levels_path) == result.levels
    assert len(result.levels) <= 2
    single = optuna.load_study(study_name=config.study, storage=config.storage_url())
    assert len(single.trials) == 5
    assert write_plots(optuna.create_study(), tmp_path) == []


def test_search_measured_single(tiny_target, tmp_path):
    config = tiny_config(tiny_target, tmp_path, objective="measured", trials=3, k=2, study="measured")
    result = search(config)
    assert result.plots == [config.out / "history.png"]
    trials = result.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(trials) == 3  # 3 of the 4 baselines: the 4th stays enqueued for a longer run
    assert all(len(t.intermediate_values) == 2 for t in trials)  # one report per calibration prompt
    assert json.loads(result.levels_path.read_text())["objective"] == "measured"
    with pytest.raises(DrafttrainError, match="workers > 1"):
        run_search(replace(config, workers=2), callbacks=[lambda study, trial: None])


def test_precision_space_enqueues_the_int8_copy_and_keeps_its_choices(tiny_target, tmp_path):
    config = tiny_config(tiny_target, tmp_path, quant_groups=1, head_choices=["none", "int8"])
    study = open_study(config)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    int8 = [t for t in waiting if t.user_attrs["baseline"] == "int8"]
    assert len(int8) == 1
    assert int8[0].system_attrs["fixed_params"]["quant_0"] == "int8"
    assert int8[0].system_attrs["fixed_params"]["head"] == "int8"
    with pytest.raises(DrafttrainError, match="quant_choices"):
        open_study(replace(config, quant_choices=["none", "int8"]))
    with pytest.raises(DrafttrainError, match="head_choices"):
        open_study(replace(config, head_choices=[]))
