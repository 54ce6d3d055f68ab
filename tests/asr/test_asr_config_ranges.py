"""ASR settings refused before any work, and the stage's runs in a folder that already holds another run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asr_testkit import micro_cfg

from pipeline.asr.checkpoints import checkpoint_steps
from pipeline.asr.config import ASRConfig
from pipeline.asr.model import build_model
from pipeline.asr.train import run_asr_stage
from pipeline.asr.vocab import build_vocab, make_processor
from pipeline.config import checked
from pipeline.runtime import PipelineError
from tests.recording import RecordingTracker


def test_edge_values_inside_the_ranges_are_accepted() -> None:
    typed = checked(micro_cfg("asr.warmup_steps=0", "asr.keep_last=1", "asr.lm_order=null", "asr.cpu_threads=null",
                              "asr.augment.speeds=[1.0]", "asr.max_train_minutes=0.5", "asr.lm_order=1").asr, ASRConfig, "asr")
    assert typed.lm_order == 1 and typed.augment.speeds == [1.0]


def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_a_local_model_that_is_no_wav2vec2_is_refused_before_the_data_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nlu = _folder(tmp_path / "nlu", {"config.json": json.dumps({"model_type": "bert"}), "nlu_labels.json": "{}"})
    bert = _folder(tmp_path / "bert", {"config.json": json.dumps({"model_type": "bert"})})
    empty = _folder(tmp_path / "empty", {})
    cases = {
        str(nlu): "it is an NLU model folder (it has nlu_labels.json)",
        str(bert): "its config.json is a 'bert' model, not wav2vec2",
        str(empty): "no config.json there",
        str(tmp_path / "absent"): "no such folder",
    }
    for source, reason in cases.items():
        with pytest.raises(PipelineError) as err:
            checked(micro_cfg(f"asr.model_name_or_path={source}").asr, ASRConfig, "asr")
        assert str(err.value).startswith(f"asr.model_name_or_path={source}: {reason}")
    monkeypatch.chdir(tmp_path)  # a relative path that exists locally is a folder, not a hub id
    with pytest.raises(PipelineError, match="^asr.model_name_or_path=bert: its config.json is a 'bert' model"):
        checked(micro_cfg("asr.model_name_or_path=bert").asr, ASRConfig, "asr")
    # A hub id is only read when the model is built.
    assert checked(micro_cfg("asr.model_name_or_path=facebook/wav2vec2-base").asr, ASRConfig, "asr")


def test_build_model_refuses_a_config_of_another_model_type(tmp_path: Path) -> None:
    bert = _folder(tmp_path / "bert", {"config.json": json.dumps({"model_type": "bert"})})
    processor = make_processor(build_vocab(["yes", "no"]), tmp_path / "proc", False)
    with pytest.raises(PipelineError, match="^asr.model_name_or_path=.*bert: its config.json is a 'bert' model, not wav2vec2"):
        build_model(micro_cfg(f"asr.model_name_or_path={bert}").asr, processor)


def test_a_fresh_run_replaces_the_checkpoints_of_an_earlier_run_in_its_folder(
    tiny_dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    run_asr_stage(micro_cfg("asr.max_steps=4", "asr.eval_every=2", "asr.lm_order=null"), tmp_path, tiny_dataset_path, RecordingTracker())
    root = tmp_path / "asr" / "checkpoints"
    assert max(checkpoint_steps(root)) == 4
    capsys.readouterr()
    cfg = micro_cfg("asr.max_steps=2", "asr.eval_every=1", "asr.keep_last=1", "asr.resume=never", "asr.lm_order=null")
    run_asr_stage(cfg, tmp_path, tiny_dataset_path, RecordingTracker())
    assert f"removed the 2 checkpoint(s) of an earlier run from {root}" in capsys.readouterr().out
    steps = checkpoint_steps(root)
    assert max(steps) == 2  # the new run's newest is kept; the old run's step 4 is gone


def test_resuming_a_checkpoint_of_another_model_config_is_a_one_line_error(
    tiny_dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    run_asr_stage(micro_cfg("asr.max_steps=2", "asr.eval_every=2", "asr.lm_order=null"), tmp_path, tiny_dataset_path, RecordingTracker())
    checkpoint = checkpoint_steps(tmp_path / "asr" / "checkpoints")[2]
    wider = micro_cfg("asr.resume=auto", "asr.max_steps=4", "asr.model_config.hidden_size=48", "asr.lm_order=null")
    with pytest.raises(PipelineError) as err:
        run_asr_stage(wider, tmp_path, tiny_dataset_path, RecordingTracker())
    assert str(err.value) == (f"checkpoint {checkpoint} was made with another asr.model_config (or asr.model_name_or_path); "
                              "use asr.resume=never or a new run folder")
    # Same model, other seed and max_steps: it resumes, and says the run will differ; a budget below
    # the longest clip is named too.
    capsys.readouterr()
    run_asr_stage(micro_cfg("asr.resume=auto", "seed=8", "asr.max_steps=3", "asr.max_batch_seconds=0.5", "asr.lm_order=null"),
                  tmp_path, tiny_dataset_path, RecordingTracker())
    out = capsys.readouterr().out
    assert "resuming with seed=8 but the checkpoint was made with 7" in out
    assert "resuming with asr.max_steps=3 but the checkpoint was made with 2" in out
    assert "training clip(s) are longer than max_batch_seconds=0.5" in out
