"""Cascade bundles: export then load, every refusal with its clear error, and atomic export."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import TINY_CORPUS, make_checkpoint, make_tokenizer

from drafttrain.bundle import (
    BundleParts,
    BundleWarning,
    SchedulerSpec,
    export_bundle,
    load_bundle,
)
from drafttrain.bundle import export as export_module
from drafttrain.bundle.manifest import SCHEMA_VERSION
from drafttrain.cli import main
from drafttrain.decoding.engine import GenerationConfig, SpeculativeDecoder
from drafttrain.drafters.base import TreeShape
from drafttrain.errors import DrafttrainError
from drafttrain.runtime import load_model, load_tokenizer
from drafttrain.scheduling.dytc import DyTCSettings

REPO = Path(__file__).parents[2]
SPECS = [{"skip_attn": [], "skip_mlp": [1], "act_quant": {}}, {"skip_attn": [1], "skip_mlp": [1], "act_quant": {}}]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_target, tiny_draft) -> dict:
    """A tiny calibrated cascade (draft0, self0, self1, ngram) from the real calibrate recipe."""
    root = tmp_path_factory.mktemp("calibrated")
    levels = root / "levels.json"
    levels.write_text(json.dumps({"levels": [{"spec": spec, "acceptance": 0.5, "cost_ratio": 0.7, "speedup": 1.0,
                                              "trial": i} for i, spec in enumerate(SPECS)]}))
    prompts = root / "calibration.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"c{i}", "prompt": t}) + "\n" for i, t in enumerate(TINY_CORPUS[:6])))
    assert main(["run", "calibrate", "--config", str(REPO / "configs/tiny/calibrate.yaml"), f"target={tiny_target}",
                 f"prompts={prompts}", f"drafts=[{tiny_draft}]", f"levels={levels}", "self_specs=[]",
                 f"out={root / 'run'}", "threads=1", "latency_tokens=[1,2,4]", "latency_repeats=1",
                 "wandb=disabled"]) == 0
    return {"levels": levels, "predictors": root / "run/predictors.json", "latency": root / "run/latency.json"}


def parts(calibrated, tiny_target, tiny_draft, **changes) -> BundleParts:
    settings = {"target": tiny_target, "predictors": calibrated["predictors"], "latency": calibrated["latency"],
                "drafts": [tiny_draft], "levels": calibrated["levels"],
                "scheduler": SchedulerSpec(k={"ngram": 4, "draft0": 2})}
    settings.update(changes)
    return BundleParts(**settings)


@pytest.fixture()
def bundle_dir(tmp_path, calibrated, tiny_target, tiny_draft) -> Path:
    return export_bundle(parts(calibrated, tiny_target, tiny_draft), tmp_path / "bundle")


def test_round_trip_records_every_file_and_the_target_and_decodes_losslessly(bundle_dir, tiny_target):
    bundle = load_bundle(bundle_dir, tiny_target)
    manifest = bundle.manifest
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert bundle.level_names == ["draft0", "self0", "self1", "ngram"]
    assert {"predictors.json", "latency.json", "scheduler.json", "levels.json",
            "drafts/draft0/model.safetensors", "drafts/draft0/config.json", "drafts/draft0/tokenizer.json"} \
        <= set(manifest["files"])
    assert "manifest.json" not in manifest["files"]
    assert manifest["target"]["model_type"] == "llama" and len(manifest["target"]["weights_sha256"]) == 64
    assert not list(bundle_dir.rglob("*.bin")) and not list(bundle_dir.rglob("*.pt"))
    assert bundle.scheduler.k == {"ngram": 4, "draft0": 2}

    tokenizer = load_tokenizer(tiny_target)
    decoder = SpeculativeDecoder(load_model(tiny_target), tokenizer)
    scheduler = bundle.build_scheduler(decoder)
    prompt = tokenizer(TINY_CORPUS[0]).input_ids
    greedy = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=20)).tokens
    drafted = decoder.generate(prompt, scheduler.drafter, GenerationConfig(max_new_tokens=20, shape=scheduler.shape))
    assert drafted.tokens == greedy
    assert drafted.stats.target_forwards <= 20


def test_archive_round_trip(tmp_path, calibrated, tiny_target, tiny_draft):
    archive = export_bundle(parts(calibrated, tiny_target, tiny_draft), tmp_path / "bundle", archive=True)
    assert archive.name == "bundle.tar.gz" and archive.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar.gz"]  # no staging left behind
    bundle = load_bundle(archive, tiny_target)
    assert bundle.level_names == ["draft0", "self0", "self1", "ngram"]
    assert (bundle.root / "drafts/draft0/model.safetensors").is_file()


def test_sd_level_scheduler_builds_a_fixed_chain(tmp_path, calibrated, tiny_target, tiny_draft):
    spec = SchedulerSpec(name="sd-ngram", k={"ngram": 5})
    bundle = load_bundle(export_bundle(parts(calibrated, tiny_target, tiny_draft, scheduler=spec), tmp_path / "b"),
                         tiny_target)
    scheduler = bundle.build_scheduler(SpeculativeDecoder(load_model(tiny_target), load_tokenizer(tiny_target)))
    assert scheduler.shape == TreeShape.chain(5) and scheduler.drafter.name == "ngram"


def test_dytc_schedules_only_the_levels_its_settings_name(tmp_path, calibrated, tiny_target, tiny_draft):
    spec = SchedulerSpec(dytc=DyTCSettings(levels=["ngram", "draft0"], max_depth=12))
    bundle = load_bundle(export_bundle(parts(calibrated, tiny_target, tiny_draft, scheduler=spec), tmp_path / "b"),
                         tiny_target)
    assert bundle.scheduler.dytc.levels == ["ngram", "draft0"]
    tokenizer = load_tokenizer(tiny_target)
    decoder = SpeculativeDecoder(load_model(tiny_target), tokenizer)
    scheduler = bundle.build_scheduler(decoder)
    assert list(scheduler.drafter.levels) == ["draft0", "ngram"]  # the cascade's order
    prompt = tokenizer(TINY_CORPUS[1]).input_ids
    greedy = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=20)).tokens
    drafted = decoder.generate(prompt, scheduler.drafter, GenerationConfig(max_new_tokens=20, shape=scheduler.shape))
    assert drafted.tokens == greedy and set(drafted.stats.drafted) <= {"draft0", "ngram"}
    missing = SchedulerSpec(dytc=DyTCSettings(levels=["self5"]))
    with pytest.raises(DrafttrainError, match=r"self5"):
        missing.check_levels(bundle.level_names)
    with pytest.raises(DrafttrainError, match="twice"):
        DyTCSettings(levels=["ngram", "ngram"])


def test_a_changed_file_is_refused(bundle_dir, tiny_target):
    predictors = bundle_dir / "predictors.json"
    predictors.write_text(predictors.read_text().replace("}", " }", 1))
    with pytest.raises(DrafttrainError, match=r"changed file predictors\.json"):
        load_bundle(bundle_dir, tiny_target)


def test_a_missing_file_is_refused(bundle_dir, tiny_target):
    (bundle_dir / "drafts/draft0/model.safetensors").unlink()
    with pytest.raises(DrafttrainError, match=r"missing file drafts/draft0/model\.safetensors"):
        load_bundle(bundle_dir, tiny_target)


def test_an_extra_file_is_refused(bundle_dir, tiny_target):
    (bundle_dir / "drafts/draft0/pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(DrafttrainError, match=r"unexpected file drafts/draft0/pytorch_model\.bin"):
        load_bundle(bundle_dir, tiny_target)


def test_a_different_target_is_refused(bundle_dir, tmp_path, tiny_target):
    other = make_checkpoint(tmp_path / "other", "llama", seed=7, tokenizer_dir=tiny_target)
    with pytest.raises(DrafttrainError, match=r"different target.*weights.*model\.safetensors differs"):
        load_bundle(bundle_dir, other)


def test_a_different_tokenizer_is_refused(bundle_dir, tmp_path, tiny_target):
    copy = Path(shutil.copytree(tiny_target, tmp_path / "retokenized"))
    make_tokenizer(copy, extra_text="a different corpus entirely, with other merges: zzzz qqqq")
    with pytest.raises(DrafttrainError, match=r"different tokenizer.*tokenizer\.json differs"):
        load_bundle(bundle_dir, copy)


def test_a_newer_schema_is_refused_before_anything_else(bundle_dir, tiny_target):
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    (bundle_dir / "latency.json").unlink()  # the schema check comes first
    with pytest.raises(DrafttrainError, match=r"schema_version 2 is newer than this drafttrain reads.*upgrade"):
        load_bundle(bundle_dir, tiny_target)


def test_not_a_bundle(tmp_path, tiny_target):
    with pytest.raises(DrafttrainError, match="manifest.json is missing"):
        load_bundle(tmp_path, tiny_target)
    with pytest.raises(DrafttrainError, match="does not exist"):
        load_bundle(tmp_path / "nowhere", tiny_target)


def test_latency_from_other_hardware_is_a_warning(tmp_path, calibrated, tiny_target, tiny_draft):
    latency = json.loads(calibrated["latency"].read_text())
    latency["fingerprint"]["device"] = "cuda: NVIDIA H100 80GB HBM3"
    other = tmp_path / "latency-h100.json"
    other.write_text(json.dumps(latency))
    path = export_bundle(parts(calibrated, tiny_target, tiny_draft, latency=other), tmp_path / "bundle")
    with pytest.warns(BundleWarning, match="other hardware.*H100.*re-run `drafttrain run calibrate`"):
        bundle = load_bundle(path, tiny_target)
    assert len(bundle.warnings) == 1


def test_an_interrupted_export_leaves_nothing_and_keeps_the_old_bundle(tmp_path, monkeypatch, calibrated,
                                                                       tiny_target, tiny_draft):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module.SchedulerSpec, "save", interrupted)  # after drafts and levels are written
    for archive in (False, True):
        with pytest.raises(KeyboardInterrupt):
            export_bundle(parts(calibrated, tiny_target, tiny_draft), tmp_path / "fresh", archive=archive)
        assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    old = export_bundle(parts(calibrated, tiny_target, tiny_draft), tmp_path / "bundle")
    before = json.loads((old / "manifest.json").read_text())
    monkeypatch.setattr(export_module.SchedulerSpec, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(parts(calibrated, tiny_target, tiny_draft, scheduler=SchedulerSpec(name="sd-ngram")), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert json.loads((old / "manifest.json").read_text()) == before
    load_bundle(old, tiny_target)


def test_export_refuses_an_uncalibrated_level(tmp_path, calibrated, tiny_target, tiny_draft):
    with pytest.raises(DrafttrainError, match=r"level draft1 .* has no acceptance predictors"):
        export_bundle(parts(calibrated, tiny_target, tiny_draft, drafts=[tiny_draft, tiny_draft]), tmp_path / "b")
    with pytest.raises(DrafttrainError, match=r"level\(s\) \['self7'\]"):
        export_bundle(parts(calibrated, tiny_target, tiny_draft, scheduler=SchedulerSpec(name="sd-self7")),
                      tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_export_refuses_a_draft_with_another_tokenizer(tmp_path, calibrated, tiny_target):
    draft = make_checkpoint(tmp_path / "draft", "llama", seed=3)
    make_tokenizer(draft, extra_text="other merges zzzz qqqq")
    with pytest.raises(DrafttrainError, match="different tokenizer"):
        export_bundle(parts(calibrated, tiny_target, draft, drafts=[draft]), tmp_path / "b")


def test_an_archive_with_a_link_is_refused(tmp_path, tiny_target):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("bundle/manifest.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        data = tarfile.TarInfo("bundle/x.json")
        data.size = 2
        tar.addfile(data, io.BytesIO(b"{}"))
    with pytest.raises(DrafttrainError, match="not a regular file or directory"):
        load_bundle(archive, tiny_target)


def test_the_scheduler_runs_the_row_kernels_the_latency_was_timed_with(tmp_path, calibrated, tiny_target,
                                                                        tiny_draft):
    import torch

    from drafttrain.calibration.latency import LatencyProfile, hardware_fingerprint

    profile = LatencyProfile.load(calibrated["latency"])
    profile.fingerprint = hardware_fingerprint("cpu", torch.float32)
    profile.row_kernels = {"target": {2: "output_major_t", 3: "output_major"}, "draft0": {1: "output_major_t"}}
    latency = profile.save(tmp_path / "latency.json")
    bundle = load_bundle(export_bundle(parts(calibrated, tiny_target, tiny_draft, latency=latency), tmp_path / "b"),
                         tiny_target)
    tokenizer = load_tokenizer(tiny_target)
    decoder = SpeculativeDecoder(load_model(tiny_target), tokenizer)
    prompt = tokenizer(TINY_CORPUS[2]).input_ids
    greedy = decoder.generate(prompt, None, GenerationConfig(max_new_tokens=20)).tokens
    scheduler = bundle.build_scheduler(decoder)
    assert decoder.target.row_kernels == {2: "output_major_t", 3: "output_major"}
    assert scheduler.drafter.levels["draft0"].model.row_kernels == {1: "output_major_t"}
    drafted = decoder.generate(prompt, scheduler.drafter, GenerationConfig(max_new_tokens=20, shape=scheduler.shape))
    assert drafted.tokens == greedy
