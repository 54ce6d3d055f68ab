"""The W&B tracker, checked by reading the offline transaction log back (no server, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.tracking.wandb_offline import read_offline_run, transaction_logs
from pipeline.tracking.wandb_run import make_wandb_tracker, resolve_mode
from pipeline.runtime import configure_environment

REPO = Path(__file__).resolve().parents[2]
SECRET_WORDS = "call jenny fairweather at twelve oak lane"


def _cfg(run_dir: Path, source: str = "jsonl", **logger: object) -> OmegaConf:
    return OmegaConf.create({
        "seed": 7, "run_dir": str(run_dir), "data": {"source": source},
        "logger": {**OmegaConf.load(REPO / "conf" / "logger" / "wandb.yaml"), "project": "test", **logger},
    })


def _fake_run_folder(run_dir: Path) -> None:
    """What the stages leave behind: a build report, two model folders, an evaluation."""
    import matplotlib.pyplot as plt

    dataset = run_dir.parent / "datasets" / "fp123"
    dataset.mkdir(parents=True)
    (dataset / "README.md").write_text("# card\n10 clips\n")
    (dataset / "data.arrow").write_bytes(b"audio and " + SECRET_WORDS.encode())
    (run_dir / "build_report.json").write_text(json.dumps({
        "dataset_path": str(dataset), "fingerprint": "fp123", "records_in": 12, "records_kept": 10,
        "records_quarantined": 2, "splits": {"train": 8, "validation": 1, "test": 1}}))
    for stage in ("asr", "nlu"):
        (run_dir / stage).mkdir()
        (run_dir / stage / "model.safetensors").write_bytes(b"weights")
        (run_dir / stage / f"{stage}_metrics.json").write_text(json.dumps({f"{stage}/best": 0.5}))
    # The character LM's n-grams spell the training transcripts (the audit reads it so).
    (run_dir / "asr" / "lm").mkdir()
    (run_dir / "asr" / "lm" / "char_lm.arpa").write_text(f"-1.0\t{' '.join(SECRET_WORDS)}\n")
    (run_dir / "metrics.json").write_text(json.dumps({"asr/wer": 0.25, "wake/auc": 0.97, "slu/slu_f1": 0.6}))
    (run_dir / "predictions.jsonl").write_text(json.dumps({"reference": SECRET_WORDS}) + "\n")
    (run_dir / "report.md").write_text(f"worst: {SECRET_WORDS}\n")
    plt.plot(np.arange(3))
    plt.savefig(run_dir / "det_curve.png")
    plt.close()


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_resolve_mode_is_offline_without_a_key() -> None:
    assert resolve_mode("auto", {}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k"}) == "online"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode("online", {}) == "online"


def test_run_logs_config_curves_summary_artifacts_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    configure_environment(run_dir, tmp_path / "cache")
    _fake_run_folder(run_dir)
    tracker = make_wandb_tracker(_cfg(run_dir), run_dir, tags=["data", "asr", "nlu", "eval"])
    for step in range(3):
        tracker.log_metrics({"asr/train_loss": 3.0 - step}, step=step * 10)
    for step in range(2):  # NLU counts its own steps from 0 again
        tracker.log_metrics({"nlu/train_loss": 1.0 - step}, step=step)
    tracker.log_summary({"eval/num_clips": 1})
    tracker.log_table("predictions", ["utterance_id", "transcript", "hypothesis", "intent", "wake_word_present"],
                      [["utt_ab12", SECRET_WORDS, SECRET_WORDS, "call_query", True]])
    tracker.finish()

    run_id = (run_dir / "wandb_run_id").read_text().strip()
    [log] = transaction_logs(run_dir / "wandb")
    run = read_offline_run(log)
    assert run.run_id == run_id
    assert run.config["seed"] == 7 and run.config["dataset_fingerprint"] == "fp123"
    # A commit of this repository (HEAD may move on meanwhile: others commit in parallel).
    commit = run.config["git_commit"].removesuffix("-dirty")
    kind = subprocess.run(["git", "cat-file", "-t", commit], cwd=REPO, capture_output=True, text=True).stdout
    assert len(commit) == 40 and kind.strip() == "commit"
    assert sorted(run.tags) == ["asr", "data", "eval", "nlu"]
    asr_rows = [r for r in run.history if "asr/train_loss" in r]
    nlu_rows = [r for r in run.history if "nlu/train_loss" in r]
    assert [r["asr/step"] for r in asr_rows] == [0, 10, 20]
    assert [(r["nlu/step"], r["nlu/train_loss"]) for r in nlu_rows] == [(0, 1.0), (1, 0.0)]
    assert run.summary["asr/wer"] == 0.25 and run.summary["data/fingerprint"] == "fp123"
    assert run.summary["eval/num_clips"] == 1 and "plots/det_curve" in run.summary
    arts = run.artifacts
    assert arts["dataset"]["type"] == "dataset" and arts["dataset"]["metadata"]["fingerprint"] == "fp123"
    assert "README.md" in arts["dataset"]["files"] and all(r.startswith("file://") for r in arts["dataset"]["references"])
    assert arts["asr-model"]["metadata"]["inputs"] == ["dataset:dataset"]
    assert arts["nlu-model"]["metadata"]["inputs"] == ["dataset:dataset"]
    assert arts["evaluation"]["metadata"]["metrics"]["wake/auc"] == 0.97
    assert set(arts["evaluation"]["metadata"]["inputs"]) == {"dataset:dataset", "asr-model:model", "nlu-model:model"}
    assert "predictions.jsonl" not in arts["evaluation"]["files"]
    assert "model.safetensors" in arts["asr-model"]["files"] and not any(f.startswith("lm/") for f in arts["asr-model"]["files"])
    # Transcripts are off for a non-demo corpus: no trace of what was said, anywhere W&B wrote.
    assert b"jenny" not in _all_bytes(run_dir / "wandb")
    assert b"jenny" not in _all_bytes(tmp_path / "cache" / "wandb")
    table = json.loads(next((run_dir / "wandb").rglob("predictions_*.table.json")).read_text())
    assert table["columns"] == ["utterance_id", "intent", "wake_word_present"]

    # The same run folder continues the same W&B run.
    tracker = make_wandb_tracker(_cfg(run_dir), run_dir, tags=["eval"])
    tracker.log_summary({"eval/rerun": 1})
    tracker.finish()
    logs = transaction_logs(run_dir / "wandb")
    assert len(logs) == 2 and {read_offline_run(p).run_id for p in logs} == {run_id}
    # ... without renaming or retagging the entry (an upload would replace the training's own).
    resumed = next(read_offline_run(p) for p in logs if p != log)
    assert resumed.tags == [] and resumed.name in ("", None) and resumed.group in ("", None)


def test_demo_corpus_logs_transcripts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    configure_environment(run_dir, tmp_path / "cache")
    tracker = make_wandb_tracker(_cfg(run_dir, source="demo", log_artifacts=False), run_dir, tags=[])
    tracker.log_table("predictions", ["utterance_id", "transcript"], [["utt_1", SECRET_WORDS]])
    tracker.finish()
    table = json.loads(next((run_dir / "wandb").rglob("predictions_*.table.json")).read_text())
    assert table["columns"] == ["utterance_id", "transcript"] and table["data"][0][1] == SECRET_WORDS


def test_multirun_gives_one_folder_and_one_grouped_run_per_point(tmp_path: Path) -> None:
    # The README's sweep, with no stages so that only the tracking is exercised.
    sweep = tmp_path / "multirun"
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "asr.learning_rate=1e-4,3e-4", "nlu.epochs=3,5", "stages=[]",
         f"hydra.sweep.dir={sweep}", f"cache_dir={tmp_path / 'cache'}", "logger.log_artifacts=false"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    points = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in points] == ["0", "1", "2", "3"]
    runs = [read_offline_run(log) for p in points for log in transaction_logs(p / "wandb")]
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    assert len({r.group for r in runs}) == 1 and runs[0].group.startswith("sweep-")
    assert {(r.config["asr"]["learning_rate"], r.config["nlu"]["epochs"]) for r in runs} == {
        (1e-4, 3), (1e-4, 5), (3e-4, 3), (3e-4, 5)}
    names = sorted(r.name for r in runs)
    assert names[0].startswith("0:") and "asr.learning_rate=0.0001" in names[0] and "nlu.epochs=3" in names[0]
    for point, run in zip(points, runs):
        assert (point / "wandb_run_id").read_text().strip() == run.run_id


def test_wandb_writes_only_where_erasure_looks_even_when_told_elsewhere(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(elsewhere / key.lower()))
    run_dir = tmp_path / "run"
    configure_environment(run_dir, tmp_path / "cache")
    assert os.environ["WANDB_DIR"] == str(run_dir)
    assert os.environ["WANDB_DATA_DIR"] == str(tmp_path / "cache" / "wandb" / "data")
    _fake_run_folder(run_dir)
    tracker = make_wandb_tracker(_cfg(run_dir), run_dir, tags=["eval"])
    tracker.log_summary({"eval/num_clips": 1})
    tracker.finish()
    assert transaction_logs(run_dir / "wandb") and not elsewhere.exists()


def test_identifier_constants_never_reach_the_run(tmp_path: Path) -> None:
    """`data.constants` (and each `data.sources` entry's) may give every record the same device,
    account or annotator id: the uploaded config and a sweep point's name show only that it is set."""
    from pipeline.config import redacted_override

    run_dir = tmp_path / "run"
    configure_environment(run_dir, tmp_path / "cache")
    cfg = _cfg(run_dir, log_artifacts=False)
    cfg.data = {"source": "hf", "constants": {"device_serial": "CONSTSERIAL77", "locale": "en-GB", "annotator_id": None},
                "sources": [{"source": "hf", "constants": {"account_id": "amzn1.account.CONSTACCT"}}]}
    make_wandb_tracker(cfg, run_dir, tags=["data"]).finish()
    [log] = transaction_logs(run_dir / "wandb")
    data = read_offline_run(log).config["data"]
    assert data["constants"] == {"device_serial": "(redacted)", "locale": "en-GB", "annotator_id": None}
    assert data["sources"][0]["constants"] == {"account_id": "(redacted)"}
    assert b"CONSTSERIAL77" not in _all_bytes(run_dir) and b"CONSTACCT" not in _all_bytes(run_dir)
    assert cfg.data.constants.device_serial == "CONSTSERIAL77"  # the run's own config is left as it was
    assert redacted_override("data.constants.account_id=amzn1.account.X") == "data.constants.account_id=(redacted)"
    assert redacted_override("data.sources=[{source: hf, constants: {device_serial: X}}]") == "data.sources=(redacted)"
    assert redacted_override("nlu.epochs=3") == "nlu.epochs=3"
    assert redacted_override("data.columns.account_id=speaker_id") == "data.columns.account_id=speaker_id"


def test_a_deletions_file_named_after_an_account_reaches_w_and_b_as_a_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the fix: data.deletions=<path> (request files are often named after the account they
    delete) went to the W&B run's config, its recorded command line and a sweep point's name."""
    from pipeline.tracking.wandb_run import _for_wandb

    run_dir = tmp_path / "run"
    configure_environment(run_dir, tmp_path / "cache")
    cfg = _cfg(run_dir, log_artifacts=False)
    path = "/requests/req-amzn1.account.ZZACCT0001QQ.jsonl"
    cfg.data = {"source": "jsonl", "deletions": path, "sources": [{"source": "jsonl", "deletions": path}]}
    monkeypatch.setattr(sys, "argv", ["train.py", f"data.deletions={path}", "nlu.epochs=3"])
    make_wandb_tracker(cfg, run_dir, tags=["data"]).finish()
    [log] = transaction_logs(run_dir / "wandb")
    data = read_offline_run(log).config["data"]
    assert data["deletions"] == data["sources"][0]["deletions"] and data["deletions"].startswith("sha256:")
    assert b"ZZACCT0001QQ" not in _all_bytes(run_dir)
    assert cfg.data.deletions == path  # the run's own config keeps it, as its provenance
    assert _for_wandb("data.deletions=req-acct.jsonl").startswith("data.deletions=sha256:")
    assert _for_wandb("data.deletions=null") == "data.deletions=null" and _for_wandb("nlu.epochs=3") == "nlu.epochs=3"


@pytest.mark.slow
def test_an_identifier_constant_typed_on_the_command_line_reaches_no_file(tmp_path: Path) -> None:
    """`data.constants.device_serial=...` (so that a deletion request for the device finds the corpus)
    was redacted in the uploaded config only: Hydra's `.hydra/` files and the sweep's multirun.yaml,
    the run's config.yaml and the W&B run's recorded command line held it raw."""
    from tests.data.test_hf_sources import audiofolder

    folder = audiofolder(tmp_path / "corpus", [{"file_name": f"audio/c{i}.flac", "text": f"clip {i}",
                                                "speaker_id": f"s{i % 3}"} for i in range(9)])
    sweep, cache = tmp_path / "multirun", tmp_path / "cache"
    env = {**os.environ, "WANDB_MODE": "offline", "PIPELINE_CACHE_DIR": str(cache)}
    common = [sys.executable, str(REPO / "train.py"), "stages=[data]", "data=hf", f"data.path={folder}",
              "data.columns.account_id=speaker_id", "logger.log_artifacts=false"]
    done = subprocess.run([*common[:2], "-m", *common[2:], "data.constants.device_serial=CONSTSERIAL77", "seed=1,2",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    points = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(points) == 2 and all((p / "build_report.json").is_file() for p in points)
    # (Hydra's launcher echoes each sweep point's overrides, as typed, to the terminal they were typed in.)
    assert b"CONSTSERIAL77" not in _all_bytes(sweep) + _all_bytes(cache) + done.stderr.encode()
    overrides = OmegaConf.load(points[0] / ".hydra" / "overrides.yaml")
    assert "data.constants.device_serial=(redacted)" in overrides and "data.columns.account_id=speaker_id" in overrides
    assert OmegaConf.load(points[0] / "config.yaml").data.constants.device_serial == "(redacted)"
    [log] = transaction_logs(points[0] / "wandb")
    assert read_offline_run(log).config["data"]["columns"]["account_id"] == "speaker_id"

    # A config error stops the job before any stage: Hydra's record of the command line is redacted first.
    done = subprocess.run([*common, "data.constants.device_serial=CONSTSERIAL77", "seed=x",
                           f"hydra.run.dir={tmp_path / 'refused'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "seed='x'" in done.stderr, done.stderr[-2000:]
    assert b"CONSTSERIAL77" not in _all_bytes(tmp_path / "refused")

    # Every record quarantined with W&B on: the build's error, not a traceback from logging the run.
    bad = audiofolder(tmp_path / "bad", [{"file_name": f"audio/b{i}.flac", "text": "hi", "speaker_id": "s", "_audio": b"\x00garbage" * 50}
                                             for i in range(3)])
    done = subprocess.run([*common[:4], f"data.path={bad}", f"hydra.run.dir={tmp_path / 'bad-run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "every record was quarantined" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_submitit_sweep_leaves_no_pickle_of_an_identifier_constant(tmp_path: Path) -> None:
    """Before the fix: the submitit launcher (hydra/launcher=slurm) keeps each job's pickled config,
    an identifier constant typed on the command line included, in the sweep folder. Its local
    launcher writes the same files."""
    from tests.data.test_hf_sources import audiofolder

    folder = audiofolder(tmp_path / "corpus", [{"file_name": f"audio/c{i}.flac", "text": f"clip {i}",
                                                "speaker_id": f"s{i % 3}"} for i in range(9)])
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=submitit_local",
                           "hydra.launcher.submitit_folder=${hydra.sweep.dir}/.submitit/%j", "stages=[data]", "data=hf",
                           f"data.path={folder}", "data.columns.account_id=speaker_id", "logger=none",
                           "data.constants.device_serial=CONSTSERIAL77", "seed=1,2", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all((sweep / n / "build_report.json").is_file() for n in ("0", "1"))
    assert any((sweep / ".submitit").rglob("*_log.out"))  # submitit's logs stay
    assert not list(sweep.rglob("*.pkl")) and b"CONSTSERIAL77" not in _all_bytes(sweep)


def test_wandb_folders_set_outside_are_replaced_with_a_line_and_a_sweeps_own_silently(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    with caplog.at_level("INFO", logger="pipeline.runtime"):
        configure_environment(tmp_path / "run-0", tmp_path / "cache")
        assert f"WANDB_DIR={tmp_path / 'elsewhere'} replaced by {tmp_path / 'run-0'}" in caplog.text
        caplog.clear()
        configure_environment(tmp_path / "run-1", tmp_path / "cache")  # the next job of a sweep
    assert os.environ["WANDB_DIR"] == str(tmp_path / "run-1") and "replaced" not in caplog.text


def test_erasure_keeps_staged_files_that_a_run_without_deleted_data_has_too(tmp_path: Path) -> None:
    """Every run stages its own tokenizer and config, byte for byte the same: erasing a run built on
    deleted data must not take them from runs that never held any (only its own bytes go)."""
    from pipeline.ops.erase import kept_digests, md5_b64, wandb_manifest
    from pipeline.ops.inventory import Roots

    outputs = tmp_path / "outputs"
    for name, weights in (("erased", b"weights that saw the deleted clips"), ("kept", b"weights that did not")):
        run_dir = outputs / name
        configure_environment(run_dir, tmp_path / "cache")
        dataset = tmp_path / "datasets" / f"fp-{name}"
        dataset.mkdir(parents=True)
        (dataset / "README.md").write_text(f"# {name}\n")
        (run_dir / "build_report.json").write_text(json.dumps({"dataset_path": str(dataset), "fingerprint": f"fp-{name}"}))
        (run_dir / "asr").mkdir()
        (run_dir / "asr" / "tokenizer.json").write_text('{"vocab": "abc"}')
        (run_dir / "asr" / "model.safetensors").write_bytes(weights)
        make_wandb_tracker(_cfg(run_dir), run_dir, tags=["asr"]).finish()
    roots = Roots(cache=tmp_path / "cache", outputs=outputs, multirun=tmp_path / "multirun", registry=tmp_path / "reg",
                  inbox=tmp_path / "inbox", corpus=tmp_path / "corpus", erasure=tmp_path / "erasure")
    erased_digests = wandb_manifest(outputs / "erased")[1]
    shared, own = md5_b64(outputs / "erased" / "asr" / "tokenizer.json"), md5_b64(outputs / "erased" / "asr" / "model.safetensors")
    assert {shared, own} <= erased_digests
    kept = kept_digests(roots, {"fp-erased"})
    assert shared in kept and own not in kept


def test_online_without_a_key_and_an_empty_project_are_one_error_each(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Online without an API key was wandb's traceback (exit 1); an empty project ran to the end and
    logged a run of no project."""
    from pipeline.runtime import PipelineError

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    monkeypatch.setenv("WANDB_MODE", "online")
    run_dir = tmp_path / "run"
    configure_environment(run_dir, tmp_path / "cache")
    with pytest.raises(PipelineError, match=r"^logger.mode resolves to online .* W&B has no API key: set WANDB_API_KEY"):
        make_wandb_tracker(_cfg(run_dir), run_dir, tags=["eval"])
    with pytest.raises(PipelineError, match="^logger.project is empty"):
        make_wandb_tracker(_cfg(run_dir, project=" "), run_dir, tags=["eval"])
