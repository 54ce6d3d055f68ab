"""`make compare` and `make sync` read run folders only: no W&B server involved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.ops.sync import unsynced_runs

REPO = Path(__file__).resolve().parents[2]


def _run_folder(root: Path, name: str, lr: float, wer: float | None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": 1, "run_dir": str(run), "asr": {"learning_rate": lr, "layers": 4}, "nlu": {"epochs": 3}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if wer is not None:
        (run / "metrics.json").write_text(json.dumps({"asr/wer": wer, "slu/slu_f1": 0.5}))
    return run


def test_compare_shows_config_differences_and_headline_metrics(tmp_path: Path) -> None:
    _run_folder(tmp_path / "outputs", "2026-01-01/10-00-00", 1e-4, 0.31)
    _run_folder(tmp_path / "outputs", "2026-01-01/11-00-00", 3e-4, 0.22)
    _run_folder(tmp_path / "outputs", "2026-01-01/12-00-00", 3e-4, None)  # still training
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--last", "5"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    table, paired = result.stdout.split("\n\n")
    header, _rule, *rows = table.splitlines()
    # Evaluated before per-clip results existed: the paired section says which run lacks them.
    assert "outputs/2026-01-01/10-00-00 and outputs/2026-01-01/11-00-00 have no per-clip results" in paired
    assert header.split()[:2] == ["run", "asr.learning_rate"]  # only what differs
    assert "asr.layers" not in header and "run_dir" not in header
    assert "asr/wer" in header and "slu/slu_f1" in header
    assert len(rows) == 3
    assert rows[0].split()[:4] == ["outputs/2026-01-01/10-00-00", "0.0001", "0.3100", "-"]
    assert rows[2].split()[2] == "-"


def test_sync_lists_only_offline_runs_not_yet_uploaded(tmp_path: Path) -> None:
    done = tmp_path / "outputs" / "a" / "wandb" / "offline-run-20260101_000000-aaa"
    todo = tmp_path / "multirun" / "x" / "0" / "wandb" / "offline-run-20260102_000000-bbb"
    for folder, rid in ((done, "aaa"), (todo, "bbb")):
        folder.mkdir(parents=True)
        (folder / f"run-{rid}.wandb").write_bytes(b":W&B")
    (done / "run-aaa.wandb.synced").write_text("")
    assert unsynced_runs([tmp_path / "outputs", tmp_path / "multirun"]) == [todo]
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.sync", "outputs", "multirun", "--dry-run"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "1 offline run(s) to sync" in result.stdout and "bbb" in result.stdout


def test_slurm_launcher_config_composes_with_the_submitit_plugin() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
