"""An ASR model folder that is incomplete, or is an NLU model folder, given as `asr_model=`: one error
naming the folder and the file, through the eval stage as `python evaluate.py asr_model=<folder>
dataset=<dataset>` reaches it (and once through evaluate.py itself, for the exit code)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runtime import PipelineError
from tests.eval.test_eval_run import eval_cfg, save_tiny_asr
from tests.recording import RecordingTracker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_asr(tiny_dataset_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("asr") / "asr"
    save_tiny_asr(tiny_dataset_path, folder)
    return folder


def nlu_folder(tmp_path: Path) -> Path:
    """What the nlu stage saves, as far as telling the folders apart goes: a config.json and its labels."""
    folder = tmp_path / "nlu"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "nlu_labels.json").write_text(json.dumps({"intents": ["play_music"], "tags": ["O"]}))
    return folder


@pytest.mark.parametrize("removed", ["model.safetensors", "vocab.json", "tokenizer_config.json", "processor_config.json"])
def test_a_missing_file_is_named_with_the_folder(removed: str, tiny_asr: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.eval.run import run_eval_stage

    folder = tmp_path / "asr"
    shutil.copytree(tiny_asr, folder)
    (folder / removed).unlink()
    with pytest.raises(PipelineError) as err:
        run_eval_stage(eval_cfg(asr_model=str(folder)), tmp_path / "eval", tiny_dataset_path, RecordingTracker())
    assert str(err.value) == (f"{folder}: the ASR model folder lacks {removed}; copy the whole folder the `asr` stage "
                              "saved (<run>/asr), or re-run the `asr` stage")


def test_cut_weights_are_an_error_naming_the_folder(tiny_asr: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.eval.run import run_eval_stage

    folder = tmp_path / "asr"
    shutil.copytree(tiny_asr, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PipelineError, match=rf"^{folder}: the model \(config.json, model.safetensors\) does not load"):
        run_eval_stage(eval_cfg(asr_model=str(folder)), tmp_path / "eval", tiny_dataset_path, RecordingTracker())


def test_an_nlu_folder_as_asr_model_says_to_pass_it_as_nlu_model(tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.eval.run import run_eval_stage

    folder = nlu_folder(tmp_path)
    with pytest.raises(PipelineError, match=rf"^{folder} is an NLU model folder \(it has nlu_labels.json\); pass it as nlu_model="):
        run_eval_stage(eval_cfg(asr_model=str(folder)), tmp_path / "eval", tiny_dataset_path, RecordingTracker())


def test_evaluate_py_exits_2_with_one_line(tiny_dataset_path: Path, tmp_path: Path) -> None:
    folder = nlu_folder(tmp_path)
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"asr_model={folder}",
                           f"dataset={tiny_dataset_path}", "logger=none"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {folder} is an NLU model folder (it has nlu_labels.json); pass it as nlu_model=, "
                      "and an ASR model folder (<run>/asr) as asr_model="]


def test_a_run_folder_given_as_a_model_names_the_model_folder_inside_it(tiny_asr: Path, tmp_path: Path) -> None:
    """`asr_model=<run>` said "run the `asr` stage first" though <run>/asr was there."""
    from pipeline.asr.model import load_asr
    from pipeline.nlu.model import NLUModel

    run = tmp_path / "run"
    shutil.copytree(tiny_asr, run / "asr")
    nlu_folder(run)
    with pytest.raises(PipelineError, match=rf"^{run} is a run folder; its ASR model is {run / 'asr'}: pass that"):
        load_asr(run)
    with pytest.raises(PipelineError, match=rf"^{run} is a run folder; its NLU model is {run / 'nlu'}: pass that"):
        NLUModel.from_pretrained(run)


def test_an_asr_folder_as_nlu_model_says_to_pass_it_as_asr_model(tiny_asr: Path) -> None:
    """It was told that tokenizer.json and nlu_labels.json were missing from the NLU model folder."""
    from pipeline.nlu.model import NLUModel

    with pytest.raises(PipelineError, match=rf"^{tiny_asr} is an ASR model folder \(it has vocab.json\); pass it as asr_model="):
        NLUModel.from_pretrained(tiny_asr)
