"""`python retrain.py` as a scheduler runs it: a mistyped override is a config error (exit 2) with a
decision.json, and two jobs started in the same second get two run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.ops.registry import retrain_lock

REPO = Path(__file__).resolve().parents[2]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PIPELINE_PSEUDONYM_KEY": "cli-test-key", "PIPELINE_CACHE_DIR": str(tmp / "cache"),
            "PIPELINE_INBOX": str(tmp / "inbox"), "PIPELINE_REGISTRY_DIR": str(tmp / "registry"),
            "WANDB_MODE": "disabled"}


def _start(tmp: Path, *overrides: str) -> subprocess.Popen:
    # Run from tmp, so the default run folder (outputs/retrain/...) lands there.
    return subprocess.Popen([sys.executable, str(REPO / "retrain.py"), "logger=none", *overrides], cwd=tmp,
                            env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_mistyped_override_is_a_config_error_with_a_decision(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    job = _start(tmp_path, "retrain.forse=true", f"hydra.run.dir={tmp_path / 'run'}")
    _out, err = job.communicate(timeout=120)
    assert job.returncode == 2, err
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "config_error" and decision["exit_code"] == 2
    assert "retrain.forse=true: Could not override 'retrain.forse'" in decision["reason"]
    assert str(tmp_path / "run" / "decision.json") in err.splitlines()[-1]
    [logged] = [json.loads(line) for line in (tmp_path / "registry" / "decisions.jsonl").read_text().splitlines()]
    assert logged["decision"] == "config_error" and logged["run_dir"] == str(tmp_path / "run")


def test_jobs_started_together_get_their_own_folders(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    with retrain_lock(tmp_path / "registry" / "retrain.lock", tmp_path / "holder"):
        jobs = [_start(tmp_path), _start(tmp_path)]
        results = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [4, 4], results
    folders = sorted((tmp_path / "outputs" / "retrain").glob("*/*"))
    assert len(folders) == 2 and not (tmp_path / "holder").exists()
    decisions = [json.loads((f / "decision.json").read_text()) for f in folders]
    assert [d["decision"] for d in decisions] == ["busy", "busy"]
    assert {d["run_dir"] for d in decisions} == {str(f) for f in folders}
    logged = [json.loads(line) for line in (tmp_path / "registry" / "decisions.jsonl").read_text().splitlines()]
    assert sorted(d["run_dir"] for d in logged) == [str(f) for f in folders]


def test_an_unknown_top_level_key_stops_the_job_before_the_intake(tmp_path: Path) -> None:
    """`+stage=[data]` (or a misspelt key in one's own YAML) reached the stages only after the inbox's
    batches were taken, and the error named conf/config.yaml."""
    batch = tmp_path / "inbox" / "b1"
    batch.mkdir(parents=True)
    (batch / "annotations.jsonl").write_text("")
    job = _start(tmp_path, "+stage=[data]", f"hydra.run.dir={tmp_path / 'run'}")
    _out, err = job.communicate(timeout=120)
    assert job.returncode == 2, err
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "config_error"
    assert decision["reason"].startswith("stage is not a top-level setting") and "conf/retrain.yaml" in decision["reason"]
    assert (batch / "annotations.jsonl").is_file()  # still waiting in the inbox
