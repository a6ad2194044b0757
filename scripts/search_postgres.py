"""A real distributed self-draft search: two workers sharing one Optuna study through PostgreSQL.

Installs PostgreSQL from the OS packages if it is missing (apt-get, as root), starts a throwaway
server on 127.0.0.1 in a temporary directory, runs `--workers` concurrent `drafttrain search`
processes on one study through it, prints every trial with the process that ran it, and stops
the server. Workers on other machines would use the same command with the server's address.

    python scripts/search_postgres.py --target DIR --prompts CALIBRATION.jsonl [--trials 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        print("installing PostgreSQL from the OS packages ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` OS user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_server(bin_dir: Path, data_dir: Path, port: int) -> None:
    if os.geteuid() == 0:
        shutil.chown(data_dir.parent, "postgres")
    subprocess.run(as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth", "trust"]),
                   check=True, stdout=subprocess.DEVNULL)
    options = f"-p {port} -k {data_dir.parent} -c listen_addresses=127.0.0.1"
    subprocess.run(as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-w", "-l",
                                str(data_dir.parent / "server.log"), "start"]), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                "drafttrain"]), check=True)


def stop_server(bin_dir: Path, data_dir: Path) -> None:
    subprocess.run(as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"]),
                   stdout=subprocess.DEVNULL)


def run_workers(url: str, options, out: Path) -> None:
    command = [sys.executable, "-m", "drafttrain.cli", "search", "--config", str(REPO / "configs/tiny/search.yaml"),
               "--target", str(options.target), "--prompts", str(options.prompts), "--storage", url,
               "--study", options.study, "--trials", str(options.trials), "--objective", "cheap"]
    workers = [subprocess.Popen(command + ["--out", str(out / f"worker{i}")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(options.workers)]
    for worker in workers:
        _, errors = worker.communicate(timeout=options.timeout)
        if worker.returncode != 0:
            raise SystemExit(f"a worker failed:\n{errors[-3000:]}")


def show_trials(url: str, study_name: str) -> list:
    import optuna

    trials = optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
    for trial in trials:
        print(f"trial {trial.number:3d} {trial.state.name:8s} worker {trial.user_attrs.get('worker', '?'):24s} "
              f"value {trial.value if trial.values else '-'}")
    by_worker = collections.Counter(t.user_attrs.get("worker") for t in trials)
    print(f"{len(trials)} trials in study {study_name!r}, by worker: {dict(by_worker)}")
    return trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True, help="calibration prompts (not eval prompts)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--study", default="distributed")
    parser.add_argument("--port", type=int, default=55432)
    parser.add_argument("--timeout", type=int, default=900)
    options = parser.parse_args()
    bin_dir = postgres_bin()
    workdir = Path(tempfile.mkdtemp(prefix="drafttrain-pg-"))
    data_dir = workdir / "data"
    url = f"postgresql://postgres@127.0.0.1:{options.port}/drafttrain"
    start_server(bin_dir, data_dir, options.port)
    try:
        run_workers(url, options, workdir)
        trials = show_trials(url, options.study)
    finally:
        stop_server(bin_dir, data_dir)
        shutil.rmtree(workdir, ignore_errors=True)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    workers = {t.user_attrs.get("worker") for t in finished}
    return 0 if len(finished) >= options.trials and len(workers) >= min(2, options.workers) else 1


if __name__ == "__main__":
    sys.exit(main())
