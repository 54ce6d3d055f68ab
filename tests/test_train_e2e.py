"""`train.py` end to end, as `make train` runs it, on a small slice of the embedded demo corpus.

The pipeline runs once (a module fixture); each stage's outputs are then checked by their own test,
so a broken stage fails its own test and the others still report: data, ASR, NLU, evaluation, the
tracker's run id, and no raw identifier anywhere in the outputs. Also the same entry point under
torchrun: two workers, one run folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_config import TINY_ASR

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "data.demo.max_utterances=160", "data.num_proc=1",
    *TINY_ASR, "asr.max_batch_seconds=16", "asr.max_steps=3", "asr.eval_every=3",
    "nlu=tiny", "nlu.epochs=1", "trainer.log_every=1",
    # Background audio for the wake word's false accepts per hour: a recording per split is enough to
    # stream it (the slice's proportional share of the default is 4 recordings, a quarter of the run).
    "data.background.hours=0.5",
]


def _raw_identifiers() -> set[str]:
    raw: set[str] = set()
    for line in (REPO / "data/demo/utterances.jsonl").read_text().splitlines():
        rec = json.loads(line)
        raw.update(str(rec[k]) for k in ("device_serial", "account_id", "annotator_id"))
    return raw


def _run(args: list[str], tmp_path: Path, cmd: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run train.py from `tmp_path` (so its default `outputs/` lands there)."""
    # A fixed key: splits are a keyed hash of the account, and with a fresh random key ~7% of
    # keys leave the 160-clip slice's validation or test split without a false wake, and then
    # no wake-word threshold can be tuned. This key gives validation 8 wake / 3 false-wake
    # clips and test 21 / 6.
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline",
           "PIPELINE_PSEUDONYM_KEY": "e2e-test-key-0"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        (cmd or [sys.executable]) + [str(REPO / "train.py"), *SMALL, *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )


@dataclass(frozen=True)
class TrainRun:
    """The run folder one `train.py` call left, and how that call ended (read when a file is missing)."""

    folder: Path
    done: subprocess.CompletedProcess[str]

    def path(self, name: str) -> Path:
        """`name` inside the run folder; a missing file fails with train.py's exit code and stderr,
        so the test of the stage that should have written it says why."""
        path = self.folder / name
        assert path.exists(), f"{name} missing; train.py exited {self.done.returncode}:\n{self.done.stderr[-3000:]}"
        return path

    def json(self, name: str) -> Any:
        return json.loads(self.path(name).read_text())


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    """`make train` on the small slice, once for every test of this module (it takes minutes)."""
    tmp_path = tmp_path_factory.mktemp("train_e2e")
    folder = tmp_path / "run"
    return TrainRun(folder, _run([f"hydra.run.dir={folder}"], tmp_path))


@pytest.mark.slow
def test_train_exits_cleanly_into_one_run_folder(train_run: TrainRun) -> None:
    assert train_run.done.returncode == 0, train_run.done.stderr[-3000:]
    assert train_run.path("config.yaml").is_file()
    # The cache lists the folder, so erasure and the audit look in it though it is not under outputs/.
    listed = train_run.folder.parent / "cache" / "run_folders.txt"
    assert listed.read_text().splitlines() == [str(train_run.folder.resolve())]


@pytest.mark.slow
def test_data_stage_builds_and_accounts_for_every_record(train_run: TrainRun) -> None:
    report = train_run.json("build_report.json")
    assert report["records_in"] == report["records_kept"] + report["records_quarantined"] == 160
    assert train_run.path("quarantine.jsonl").is_file()
    assert Path(report["dataset_path"]).is_dir()


@pytest.mark.slow
def test_asr_stage_saves_a_model_and_its_metrics(train_run: TrainRun) -> None:
    assert train_run.path("asr/config.json").is_file()
    assert train_run.path("asr/asr_metrics.json").is_file()
    # Each model's card names the dataset it was trained on and its splits (the privacy test below
    # greps it with every other file).
    report = train_run.json("build_report.json")
    for model in ("asr", "nlu"):
        card = train_run.path(f"{model}/README.md").read_text()
        assert f"Dataset `{report['fingerprint']}`" in card and "sources `demo`" in card
        assert ", ".join(f"{name} {n}" for name, n in report["splits"].items()) + " clips" in card


@pytest.mark.slow
def test_nlu_stage_saves_a_model_and_its_test_scores(train_run: TrainRun) -> None:
    nlu_test = train_run.json("nlu/nlu_metrics.json")["test"]
    assert isinstance(nlu_test["intent_accuracy"], float) and isinstance(nlu_test["entity_f1"], float)


@pytest.mark.slow
def test_eval_stage_writes_every_headline_metric_predictions_and_reports(train_run: TrainRun) -> None:
    metrics = train_run.json("metrics.json")
    for key in ["asr/wer", "asr/cer", "wake/frr", "wake/fa_per_hour", "wake/auc", "wake/eer",
                "nlu/intent_accuracy", "nlu/entity_f1", "slu/intent_accuracy", "slu/entity_f1",
                "slu/slu_f1", "eval/num_clips", "eval/audio_hours", "eval/rtf"]:
        assert isinstance(metrics[key], (int, float)), key
    for name in ["predictions.jsonl", "report.md", "report.html"]:
        assert train_run.path(name).is_file(), name


@pytest.mark.slow
def test_nlu_stage_test_scores_are_the_eval_stage_nlu_metrics(train_run: TrainRun) -> None:
    """One metric, one computation: same clips, same saved model, same pipeline.eval.metrics functions."""
    nlu_test = train_run.json("nlu/nlu_metrics.json")["test"]
    metrics = train_run.json("metrics.json")
    assert nlu_test["intent_accuracy"] == metrics["nlu/intent_accuracy"]
    assert nlu_test["entity_f1"] == metrics["nlu/entity_f1"]


@pytest.mark.slow
def test_tracker_records_its_run_id_in_the_run_folder(train_run: TrainRun) -> None:
    assert train_run.path("wandb_run_id").read_text().strip()


@pytest.mark.slow
def test_no_raw_identifier_in_the_run_or_the_built_dataset(train_run: TrainRun) -> None:
    """Privacy: no raw serial, account or annotator id in any file of the run or the built dataset."""
    raw = _raw_identifiers()
    dataset = Path(train_run.json("build_report.json")["dataset_path"])
    for folder in (train_run.folder, dataset):
        for path in folder.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                blob = path.read_bytes()
                leaked = [r for r in raw if r.encode() in blob]
                assert not leaked, f"{path} contains raw identifiers {leaked[:3]}"


@pytest.mark.slow
def test_torchrun_workers_share_one_run_folder(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    # No hydra.run.dir: the default clock-named folder would differ between workers started apart.
    done = _run(["stages=[data,asr,nlu]", "logger=none"], tmp_path,
                cmd=[torchrun, "--standalone", "--nproc_per_node=2"])
    assert done.returncode == 0, done.stderr[-3000:]
    # DDP's extra graph walk per step, for weights that every step uses anyway.
    assert "find_unused_parameters=True" not in done.stderr
    runs = [p for p in (tmp_path / "outputs").rglob("build_report.json")]
    assert len(runs) == 1, runs
    run = runs[0].parent
    assert json.loads((run / "asr/asr_metrics.json").read_text())["steps"] == 3
    assert json.loads((run / "nlu/nlu_metrics.json").read_text())["test"]["intent_accuracy"] >= 0
    assert (run / ".hydra/config.yaml").exists()


@pytest.mark.slow
def test_under_torchrun_a_data_error_is_one_line_per_process(tmp_path: Path) -> None:
    """Rank 0's error stopped it; rank 1, waiting for the dataset, printed the broken connection's
    traceback (a RuntimeError from gloo)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    missing = tmp_path / "nope.jsonl"
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(REPO / "train.py"), "data=jsonl",
                           f"data.path={missing}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env={**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    ours = sorted(line for line in done.stderr.splitlines() if line.startswith("error: "))
    assert len(ours) == 2, done.stderr[-3000:]
    assert ours[0] == f"error: data.path={missing}: file not found; check the path"
    assert ours[1].startswith("error: rank 1: another process stopped while this one waited for it to build the "
                              "dataset (") and ours[1].endswith("); its error is above")
    assert "RuntimeError" not in done.stderr, done.stderr[-3000:]
