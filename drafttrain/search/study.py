"""The Optuna study of a self-draft search: open or resume it, run it (one or many processes), export.

The study lives in an RDB storage (SQLite in `out` unless `storage` names another SQLAlchemy
URL), so a killed search resumes where it stopped: finished trials stay, and a trial that was
running when its process died stops sending heartbeats, is failed once the grace period
(2 x `heartbeat_seconds`) has passed, and is retried with the same parameters. A new study starts
with baseline trials (the full target and evenly spread skips at each `baseline_ratios`).

`run_search` optimizes until the study holds `trials` finished (complete or pruned) trials; with
`workers > 1` it spawns that many processes that each open the same study and optimize.
`pareto_levels` picks K draft levels at distinct costs, `write_levels` writes them as
`levels.json`, and `write_plots` draws the optimization history or the Pareto front.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from drafttrain.errors import DrafttrainError
from drafttrain.io import write_atomically
from drafttrain.runtime.views import SelfDraftView
from drafttrain.search.config import SAMPLERS, SearchConfig
from drafttrain.search.objectives import SearchObjective
from drafttrain.search.space import SearchSpace

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

ObjectiveFactory = Callable[[SearchConfig], SearchObjective]


def directions_for(config: SearchConfig) -> list[str]:
    return ["maximize", "minimize"] if config.objective == "multi" else ["maximize"]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler by name: tpe, random, cmaes or nsga2."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError as err:
            raise DrafttrainError("sampler=cmaes needs the `cmaes` package: pip install cmaes "
                                  "(or use sampler=tpe)") from err
        # the space is categorical, which CMA-ES samples with its independent sampler
        return optuna.samplers.CmaEsSampler(seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed),
                                            warn_independent_sampling=False)
    raise DrafttrainError(f"sampler {name!r} is unknown: use one of {', '.join(SAMPLERS)}")


def _masked(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def _heartbeat_kwargs(seconds: int) -> dict:
    """RDBStorage heartbeat settings: stale trials (a dead process) are failed and retried twice.

    Optuna 4.9 renamed `failed_trial_callback` / `RetryFailedTrialCallback` to
    `heartbeat_stale_trial_callback` / `RetryHeartbeatStaleTrialCallback`; both spellings work.
    """
    if seconds <= 0:
        return {}
    storages = optuna.storages
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_interval": seconds,
                "heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
    return {"heartbeat_interval": seconds, "failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=2)}


def make_storage(config: SearchConfig) -> RDBStorage:
    """The study's RDB storage with trial heartbeats and retry of trials whose process died."""
    url = config.storage_url()
    if config.storage is None:
        Path(config.out).mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, **_heartbeat_kwargs(config.heartbeat_seconds))
        if storage.engine.dialect.name == "sqlite":
            _serialize_sqlite(storage.engine)
        return storage
    except Exception as err:  # sqlalchemy, driver and filesystem errors alike
        raise DrafttrainError(
            f"storage {_masked(url)!r} cannot be opened ({type(err).__name__}: {err}). Fix: give a "
            "SQLAlchemy URL such as sqlite:///outputs/search/study.db (its directory must exist) or "
            "postgresql://user@host/db with its driver installed, or leave storage unset to use "
            f"sqlite:///<out>/study.db") from err


def _serialize_sqlite(engine) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    SQLite has no SELECT ... FOR UPDATE, and Python's sqlite3 runs a SELECT outside any
    transaction, so two worker processes can both read an enqueued trial as WAITING and both run
    it. Taking the lock at BEGIN makes each read-then-write atomic across processes.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver stops issuing its own BEGIN

    def on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()  # pooled connections were made without the listeners


def space_for(config: SearchConfig, num_layers: int | None = None) -> SearchSpace:
    if num_layers is None:
        from drafttrain.runtime.loader import read_model_args

        config.require_inputs()
        num_layers = read_model_args(config.target).num_layers
    return SearchSpace(num_layers, config.keep_first_last, config.quant_groups, tuple(config.quant_choices),
                       tuple(config.head_choices))


def open_study(config: SearchConfig, *, space: SearchSpace | None = None, worker: int = 0,
               enqueue_baselines: bool = True) -> optuna.Study:
    """Create the study or load the existing one; a new study gets the baseline trials once.

    The sampler's seed is `config.seed`, offset by the worker index and by the number of trials
    already in the study, so that a resumed search draws new views instead of replaying the
    random startup sequence of the process that was killed.
    """
    space = space or space_for(config)
    storage = make_storage(config)
    try:
        existing = len(storage.get_all_trials(storage.get_study_id_from_name(config.study), deepcopy=False))
        new = False
    except KeyError:
        existing, new = 0, True
    directions = directions_for(config)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    # a resumed run, or another worker, must not replay the random stream of an earlier process
    seed = config.seed + 100_003 * worker + existing
    study = optuna.create_study(storage=storage, sampler=make_sampler(config.sampler, seed),
                                pruner=pruner, study_name=config.study, directions=directions,
                                load_if_exists=True)
    # the parameters' choices are part of the settings too: a resumed study keeps them
    settings = {"objective": config.objective, "num_layers": space.num_layers,
                "keep_first_last": space.keep_first_last, "quant_groups": space.quant_groups, "k": config.k,
                "head_choices": list(space.head_choices)}
    if space.quant_groups:
        settings["quant_choices"] = list(space.quant_choices)
    if new:
        for key, value in settings.items():
            study.set_user_attr(key, value)
        if enqueue_baselines:
            enqueue_baseline_trials(study, space, config.baseline_ratios)
    else:
        stored = {key: study.user_attrs.get(key, LEGACY_SETTINGS.get(key, value)) for key, value in settings.items()}
        if [d.name.lower() for d in study.directions] != directions and "objective" not in study.user_attrs:
            stored["objective"] = f"a {len(study.directions)}-objective study"
        changed = {key: (stored[key], value) for key, value in settings.items() if stored[key] != value}
        if changed:
            detail = ", ".join(f"{key}={old!r} (now {new_value!r})" for key, (old, new_value) in changed.items())
            raise DrafttrainError(
                f"study {config.study!r} in {_masked(config.storage_url())} was created with {detail}. "
                "Fix: resume it with its settings, or start another study (study=NAME or another out)")
    return study


# what a study created before a setting was recorded was searched with
LEGACY_SETTINGS = {"quant_choices": ["none", "int8", "int4"], "head_choices": []}


def enqueue_baseline_trials(study: optuna.Study, space: SearchSpace, ratios: Sequence[float]) -> int:
    """Enqueue the full target (no skip), `evenly_spread` at each ratio and, where the space has int8,
    every layer and the head in int8 (`reduced_precision`), without duplicates."""
    seen: list[dict] = []
    views = [("none", SelfDraftView())] + [(f"evenly_spread:{r}", space.evenly_spread(r)) for r in ratios]
    int8 = space.reduced_precision("int8")
    if int8 is not None:
        views.append(("int8", int8))
    for label, view in views:
        params = space.encode(view)
        if params in seen:
            continue
        seen.append(params)
        study.enqueue_trial(params, user_attrs={"baseline": label})
    return len(seen)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def build_objective(config: SearchConfig) -> SearchObjective:
    """The objective the config names, over its target and calibration prompts."""
    import torch

    from drafttrain.evaluation.prompts import load_prompts
    from drafttrain.runtime.loader import eos_token_ids, load_model, load_tokenizer
    from drafttrain.search.objectives import CheapObjective, MeasuredObjective

    config.require_inputs()
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    model = load_model(config.target, dtypes[config.dtype], config.device)
    tokenizer = load_tokenizer(config.target)
    eos = eos_token_ids(config.target, tokenizer)
    prompts = load_prompts(config.prompts, config.num_prompts, tokenizer)
    prompt_ids = [p.token_ids(tokenizer) for p in prompts]
    space = space_for(config, model.args.num_layers)
    if config.objective == "measured":
        return MeasuredObjective(model, prompt_ids, space, k=config.k, max_new_tokens=config.max_new_tokens,
                                 eos=eos, tokenizer=tokenizer, max_cost_fraction=config.max_cost_fraction)
    return CheapObjective.from_decoding(model, prompt_ids, space, config.max_new_tokens,
                                        config.calibration_tokens, eos, k=config.k,
                                        multi=config.objective == "multi",
                                        max_cost_fraction=config.max_cost_fraction)


def _optimize(study: optuna.Study, objective: SearchObjective, config: SearchConfig, n_trials: int,
              callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
    stop_at_total = MaxTrialsCallback(config.trials, states=FINISHED)
    study.optimize(objective, n_trials=n_trials, callbacks=[stop_at_total, *callbacks])


def _set_threads(config: SearchConfig) -> None:
    import torch

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    elif config.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))


def _worker(config: SearchConfig, factory: ObjectiveFactory, index: int, n_trials: int) -> None:
    """One worker process: open the shared study, build its own objective, optimize its share."""
    try:
        _set_threads(config)
        study = open_study(config, worker=index, enqueue_baselines=False)
        _optimize(study, factory(config), config, n_trials)
    except DrafttrainError as err:
        print(f"drafttrain search worker {index}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_search(config: SearchConfig, objective: SearchObjective | None = None, *,
               factory: ObjectiveFactory = build_objective,
               callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> optuna.Study:
    """Optimize until the study holds `config.trials` finished trials; returns the study.

    workers = 1 runs in this process with `objective` (default: `factory(config)`); workers > 1
    spawns that many processes, each building its objective with `factory` (which must be a
    module-level function, to be picklable) and optimizing a share of the remaining trials.
    """
    if objective is not None and objective.directions != directions_for(config):
        raise DrafttrainError(f"the objective optimizes {objective.directions}, but objective="
                              f"{config.objective!r} needs {directions_for(config)}")
    if config.workers > 1 and (objective is not None or callbacks):
        raise DrafttrainError("workers > 1 build their objectives in their own processes: pass a "
                              "module-level factory (not an objective or callbacks), or set workers=1")
    study = open_study(config, space=objective.space if objective is not None else None)
    remaining = config.trials - finished_trials(study)
    if remaining <= 0:
        return study
    if config.workers == 1:
        _set_threads(config)
        _optimize(study, objective if objective is not None else factory(config), config, remaining, callbacks)
        return study
    workers = min(config.workers, remaining)
    shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(config, factory, i, share), name=f"search-worker-{i}")
                 for i, share in enumerate(shares)]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    except BaseException:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
        raise
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if failed:
        raise DrafttrainError(f"search worker(s) failed: {', '.join(f'{n} (exit code {c})' for n, c in failed)}; "
                              f"their messages are above. The study keeps every finished trial: rerun to resume")
    return study


# ---------------------------------------------------------------- levels


@dataclass(frozen=True)
class Level:
    """One exported draft level: a view with its scores and the trial that found it."""

    spec: SelfDraftView
    acceptance: float
    cost_ratio: float
    speedup: float
    trial: int

    def to_json(self) -> dict:
        return {"spec": self.spec.to_json(), "acceptance": self.acceptance, "cost_ratio": self.cost_ratio,
                "speedup": self.speedup, "trial": self.trial}

    @classmethod
    def from_json(cls, data: dict, source: str = "levels.json") -> Level:
        try:
            return cls(SelfDraftView.from_json(data["spec"], source), float(data["acceptance"]),
                       float(data["cost_ratio"]), float(data["speedup"]), int(data["trial"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DrafttrainError(f"{source}: a level must hold spec, acceptance, cost_ratio, speedup and "
                                  f"trial ({type(err).__name__}: {err})") from err

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> Level | None:
        attrs = trial.user_attrs
        if not all(key in attrs for key in ("spec", "acceptance", "cost_ratio", "speedup")):
            return None
        return cls(SelfDraftView.from_json(attrs["spec"], f"trial {trial.number}"), float(attrs["acceptance"]),
                   float(attrs["cost_ratio"]), float(attrs["speedup"]), trial.number)


def _is_draft(level: Level) -> bool:
    """A usable draft level: it leaves something out and is cheaper than the target."""
    view = level.spec
    return bool(view.skip_attn or view.skip_mlp or view.act_quant) and level.cost_ratio < 1.0


def pareto_levels(study: optuna.Study, k: int, min_gap: float = 0.05) -> list[Level]:
    """Up to `k` draft levels at costs at least `min_gap` apart, most expensive first.

    Multi-objective: points of the Pareto front of (acceptance, cost ratio) among the draft
    views (the full target, which would dominate on acceptance, is left out), spread evenly over
    cost (the cheapest and the most accurate included). Single-objective: the best trials by
    value, skipping any whose cost is within `min_gap` of a level already chosen.
    Views that skip nothing, or cost as much as the target, are never levels.
    """
    if k <= 0:
        raise DrafttrainError(f"levels={k} is invalid: export at least one level")
    multi = len(study.directions) > 1
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    candidates: list[Level] = []
    seen: set[str] = set()
    for trial in trials:
        level = Level.from_trial(trial)
        key = json.dumps(level.spec.to_json(), sort_keys=True) if level else ""
        if level is None or not _is_draft(level) or key in seen:
            continue
        seen.add(key)
        candidates.append(level)
    if multi:
        front = [lv for lv in candidates if not any(_dominates(other, lv) for other in candidates)]
        chosen: list[Level] = []
        for level in sorted(front, key=lambda lv: (lv.cost_ratio, -lv.acceptance)):
            if chosen and level.cost_ratio - chosen[-1].cost_ratio < min_gap:
                if level.speedup > chosen[-1].speedup:
                    chosen[-1] = level
                continue
            chosen.append(level)
        if len(chosen) > k:
            picks = ([max(range(len(chosen)), key=lambda i: chosen[i].speedup)] if k == 1 else
                     sorted({round(j * (len(chosen) - 1) / (k - 1)) for j in range(k)}))
            chosen = [chosen[i] for i in picks]
    else:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        values = {trial.number: trial.value for trial in trials}
        by_value = sorted(candidates, key=lambda lv: -sign * values[lv.trial])
        chosen = []
        for level in by_value:
            if len(chosen) == k:
                break
            if all(abs(level.cost_ratio - other.cost_ratio) >= min_gap for other in chosen):
                chosen.append(level)
    return sorted(chosen, key=lambda lv: -lv.cost_ratio)


def _dominates(a: Level, b: Level) -> bool:
    """a is at least as accurate and as cheap as b, and better in one."""
    return (a.acceptance >= b.acceptance and a.cost_ratio <= b.cost_ratio
            and (a.acceptance > b.acceptance or a.cost_ratio < b.cost_ratio))


def write_levels(path: str | Path, levels: Sequence[Level], meta: dict | None = None) -> Path:
    """Write `{"levels": [...], **meta}` as JSON, atomically."""
    data = dict(meta or {})
    data["levels"] = [level.to_json() for level in levels]
    return write_atomically(path, json.dumps(data, indent=2) + "\n")


def read_levels(path: str | Path) -> list[Level]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DrafttrainError(f"levels file {path} does not exist: run `drafttrain search` first") from err
    except json.JSONDecodeError as err:
        raise DrafttrainError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
        raise DrafttrainError(f'{path}: expected an object {{"levels": [...]}}')
    return [Level.from_json(item, f"{path} level {i}") for i, item in enumerate(data["levels"])]


# ---------------------------------------------------------------- plots


def write_plots(study: optuna.Study, out: str | Path) -> list[Path]:
    """history.png (single objective) or pareto.png (multi), written atomically; [] without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    out = Path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if len(study.directions) > 1:
            axes = optuna_plots.plot_pareto_front(study, target_names=["acceptance", "cost ratio"])
            name = "pareto.png"
        else:
            axes = optuna_plots.plot_optimization_history(study, target_name="speedup")
            name = "history.png"
    figure = axes.figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return [write_atomically(out / name, buffer.getvalue())]


# ---------------------------------------------------------------- the whole search


@dataclass
class SearchResult:
    study: optuna.Study
    levels: list[Level]
    levels_path: Path
    plots: list[Path]


def search(config: SearchConfig, factory: ObjectiveFactory = build_objective) -> SearchResult:
    """`drafttrain search`: run (or resume) the study, then write levels.json, config and plots."""
    from drafttrain.config import save_config

    config.require_inputs()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    study = run_search(config, factory=factory)
    levels = pareto_levels(study, config.levels)
    meta = {"study": config.study, "objective": config.objective, "k": config.k,
            "target": str(config.target), "trials": finished_trials(study)}
    path = write_levels(out / "levels.json", levels, meta)
    return SearchResult(study, levels, path, write_plots(study, out))
