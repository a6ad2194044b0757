"""drafttrain.tracking: offline wandb runs record config, summary, files and artifacts; disabled is free.

wandb (0.31) writes an offline run as <dir>/wandb/offline-run-<time>-<id>/ holding run-<id>.wandb
(the record log of config, history, summary, files and artifacts that `wandb sync` uploads),
files/ (saved files) and logs/; it writes no config.yaml or wandb-summary.json offline, so the
tests look for their values in the .wandb record log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drafttrain.errors import DrafttrainError
from drafttrain.tracking import redacted, resolve_mode, tracked_run

REPO = Path(__file__).parents[1]


@pytest.fixture
def no_wandb_env(monkeypatch):
    """Tests choose the mode themselves, whatever WANDB_MODE the suite sets."""
    monkeypatch.delenv("WANDB_MODE", raising=False)


def only_run_dir(out: Path) -> Path:
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def run_python(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter that imports this checkout, with no WANDB_MODE set."""
    env = {key: value for key, value in os.environ.items() if key != "WANDB_MODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=cwd,
                          env=env)


def test_offline_run_records_config_summary_files_and_artifact(tmp_path):
    # wandb's service writes the record log asynchronously: `finish()` returns before it is flushed,
    # and it is complete once the process has exited (wandb tears its service down at exit). So the
    # run happens in its own process, as in a CLI command, and the test reads the log afterwards.
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "cascade.json").write_text("{}")
    (tmp_path / "report.md").write_text("# marker-report\n")
    out = tmp_path / "out"
    script = ("from drafttrain.tracking import tracked_run\n"
              "config = {'target': 'marker-target', 'storage': 'postgresql://me:s3cret@db/study'}\n"
              f"with tracked_run('calibrate', config, {str(out)!r}) as run:\n"
              "    run.log_metrics({'speedup': 1.5})\n"
              "    run.log_summary({'marker_summary_key': 0.25})\n"
              "    run.log_files(['report.md', 'missing.png'])\n"
              "    run.log_artifact('bundle', 'marker-bundle', 'cascade-bundle')\n")
    done = run_python(script, tmp_path)
    run_dir = only_run_dir(out)
    assert f"wandb sync {run_dir}" in done.stdout
    records = next(run_dir.glob("run-*.wandb")).read_bytes()
    for text in (b"marker-target", b"calibrate", b"marker_summary_key", b"speedup", b"marker-bundle",
                 b"cascade-bundle", b"cascade.json", b"report.md"):
        assert text in records, text
    assert b"s3cret" not in records
    assert (run_dir / "files" / "report.md").read_text() == "# marker-report\n"


def test_an_exception_fails_the_run_and_propagates(tmp_path, no_wandb_env, monkeypatch):
    import wandb

    exit_codes = []
    finish = wandb.Run.finish

    def spy(self, exit_code=None):
        exit_codes.append(exit_code)
        finish(self, exit_code=exit_code)

    monkeypatch.setattr(wandb.Run, "finish", spy)
    with pytest.raises(RuntimeError, match="boom"), tracked_run("search", {}, tmp_path):
        raise RuntimeError("boom")
    assert exit_codes == [1]
    assert only_run_dir(tmp_path).is_dir()


def test_disabled_mode_writes_nothing_and_never_imports_wandb(tmp_path):
    script = ("import sys\nfrom drafttrain.tracking import tracked_run\n"
              f"with tracked_run('search', {{'a': 1}}, {str(tmp_path / 'out')!r}, mode='disabled') as run:\n"
              "    run.log_metrics({'x': 1}); run.log_summary({'y': 2}); run.log_files(['report.md'])\n"
              "    run.log_artifact('levels.json', 'levels', 'levels')\n"
              "print('wandb' in sys.modules)\n")
    done = run_python(script, tmp_path)
    assert done.stdout.strip() == "False"
    assert list(tmp_path.iterdir()) == []


def test_wandb_mode_in_the_environment_only_turns_tracking_down(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("offline") == resolve_mode("online") == "disabled"
    with tracked_run("calibrate", {}, tmp_path / "out", mode="offline") as run:
        assert run.run is None
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_mode("offline") == "offline" and resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode("online") == "offline"
    with pytest.raises(DrafttrainError, match="use one of"):
        resolve_mode("cloud")


def test_passwords_in_urls_are_masked():
    config = {"storage": "postgresql://me:s3cret@db:5432/optuna", "paths": ["sqlite:///out/study.db"], "k": 3}
    assert redacted(config) == {"storage": "postgresql://me:***@db:5432/optuna",
                                "paths": ["sqlite:///out/study.db"], "k": 3}
