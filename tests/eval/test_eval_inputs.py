"""Settings and inputs the evaluation cannot give honest figures for are refused in one line, before
the ASR pass and before any output is written; the report names the splits it was run on."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from pipeline.runtime import PipelineError
from tests.eval.test_eval_run import eval_cfg
from tests.recording import RecordingTracker


def _variant(tiny_dataset_path: Path, out: Path, change: Callable[[str, Dataset], Dataset]) -> Path:
    """The tiny dataset with `change(split name, split)` applied to each split."""
    dd = load_from_disk(str(tiny_dataset_path))
    DatasetDict({name: change(name, split) for name, split in dd.items()}).save_to_disk(str(out))
    return out


def _evaluate(tmp_path: Path, models: Path, dataset: Path, asr: bool = True, nlu: bool = True,
              **overrides: Any) -> dict[str, Any]:
    from pipeline.eval.run import run_eval_stage

    paths = {**({"asr_model": str(models / "asr")} if asr else {}), **({"nlu_model": str(models / "nlu")} if nlu else {})}
    cfg = eval_cfg(**paths, **{"eval.bootstrap_samples": 100, "eval.background": "none", **overrides})
    return run_eval_stage(cfg, tmp_path / "out", dataset, RecordingTracker())


def _refused(error: str, tmp_path: Path, models: Path, dataset: Path, **kwargs: Any) -> str:
    """The one-line error, checked to leave no output behind and to carry no transcript."""
    with pytest.raises(PipelineError, match=error) as raised:
        _evaluate(tmp_path, models, dataset, **kwargs)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400
    assert "alexa play" not in message and "spk_" not in message
    assert not (tmp_path / "out" / "metrics.json").exists()
    return message


@pytest.mark.parametrize(("overrides", "error"), [
    pytest.param({"eval.split": "validation"},
                 r"^eval\.split and eval\.tune_split are both 'validation': .*; set eval\.tune_split to another split$",
                 id="split-is-the-tune-split"),
    pytest.param({"eval.target_fa_per_hour": -1.0}, r"^eval\.target_fa_per_hour=-1\.0: .*0 or more$", id="negative-target"),
    pytest.param({"eval.target_fa_per_hour": float("inf")}, r"^eval\.target_fa_per_hour=inf: .*0 or more$",
                 id="infinite-target"),
    pytest.param({"eval.bootstrap_samples": 0}, r"^eval\.bootstrap_samples=0: give 100 or more \(fewer cannot place a 95% interval", id="no-bootstrap-samples"),
    pytest.param({"eval.bootstrap_samples": 99}, r"^eval\.bootstrap_samples=99: give 100 or more", id="too-few-bootstrap-samples"),
    pytest.param({"eval.max_unknown_intent_rate": 1.5}, r"^eval\.max_unknown_intent_rate=1\.5: give a share between 0 and 1$",
                 id="unknown-intent-rate-above-one"),
    pytest.param({"eval.max_oov_char_rate": -0.1}, r"^eval\.max_oov_char_rate=-0\.1: give a share between 0 and 1$",
                 id="negative-oov-rate"),
    pytest.param({"eval.worst_n": -1}, r"^eval\.worst_n=-1: give 0 or more$", id="negative-worst-n"),
    pytest.param({"eval.stream_hop_s": 8.0}, r"^eval\.stream_hop_s=8, eval\.stream_window_s=6, eval\.refractory_s=1: the hop "
                 r"must be above 0 and at most the window", id="hop-beyond-the-window"),
    pytest.param({"eval.wake_word": "!!"},
                 r"^eval\.wake_word='!!' has no letters the pipeline keeps after normalisation .*pick a word the ASR "
                 r"model can spell", id="wake-word-of-punctuation"),
    pytest.param({"eval.wake_word": "алекса"}, r"^eval\.wake_word='алекса' has no letters the pipeline keeps",
                 id="wake-word-in-another-script"),
    pytest.param({"eval.wake_word": "Jarvis!"}, r"^eval\.wake_word='Jarvis!' \(scored as 'jarvis'\): none of the \d+ "
                 r"clips of split 'test' labelled wake_word_present says it in its transcript \(their words are not "
                 r"quoted: logger\.log_transcripts is off\); set eval\.wake_word to the wake word of this dataset \(a "
                 r"transcript holds what was said, the wake word included\)$", id="a-wake-word-nobody-says"),
    pytest.param({"eval.wake_word": "Jarvis!", "logger.log_transcripts": True},
                 r"^eval\.wake_word='Jarvis!' \(scored as 'jarvis'\): none of the \d+ "
                 r"clips of split 'test' labelled wake_word_present says it in its transcript \(their commonest first "
                 r"word: 'alexa'\); set eval\.wake_word to the wake word of this dataset", id="a-wake-word-nobody-says-quoted"),
])
def test_settings_that_would_give_wrong_figures_are_refused(
    overrides: dict[str, Any], error: str, tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    _refused(error, tmp_path, tiny_models, tiny_dataset_path, **overrides)


@pytest.mark.parametrize("quote_words", [False, True])
def test_the_wake_word_check_quotes_no_spoken_word_unless_transcripts_may_be_logged(
    quote_words: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """The error and the warning reach the console, which the W&B run captures (logger.console), so
    with logger.log_transcripts off they must not quote what users said. Before the fix: both always
    named the positives' commonest first word ('hey' here)."""
    from omegaconf import OmegaConf

    from pipeline.eval.run import check_wake_word_said

    ecfg = OmegaConf.create({"wake_word": "jarvis"})
    with pytest.raises(PipelineError) as raised:
        check_wake_word_said(ecfg, {"test": ["hey computer lights on", "hey there"]}, quote_words=quote_words)
    assert ("'hey'" in str(raised.value)) is quote_words
    assert "eval.wake_word" in str(raised.value)
    with caplog.at_level("WARNING", logger="pipeline.eval.run"):
        check_wake_word_said(ecfg, {"test": ["jarvis lights on", "hey there", "hey you"]}, quote_words=quote_words)
    assert "only 33% of split test's 3 clips" in caplog.text
    assert ("'hey'" in caplog.text) is quote_words


def test_a_single_split_folder_is_refused_without_its_rows(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    single = tiny_dataset_path / "test"
    message = _refused(rf"^dataset {re.escape(str(single))} is a single split, not a dataset of splits; pass the folder "
                       r"holding dataset_dict\.json \(python train\.py stages=\[data\] builds one\)$",
                       tmp_path, tiny_models, single)
    assert "utterance_id" not in message
    _refused(r"is not a saved dataset", tmp_path, tiny_models, tmp_path)  # a folder that is no dataset at all


@pytest.mark.parametrize(("asr", "nlu", "split", "dropped", "missing"), [
    pytest.param(True, True, "test", ["intent"], "['intent']", id="both-tiny_models-no-intent"),
    pytest.param(False, True, "test", ["entities", "speaker"], "['entities', 'speaker']", id="nlu-only"),
    pytest.param(True, False, "test", ["wake_word_present"], "['wake_word_present']", id="asr-only"),
    pytest.param(True, False, "validation", ["text"], "['text']", id="tune-split-without-references"),
])
def test_a_dataset_without_a_column_evaluation_reads_names_split_and_columns(
    asr: bool, nlu: bool, split: str, dropped: list[str], missing: str, tiny_models: Path, tiny_dataset_path: Path,
    tmp_path: Path,
) -> None:
    dataset = _variant(tiny_dataset_path, tmp_path / "data",
                       lambda name, ds: ds.remove_columns(dropped) if name == split else ds)
    _refused(rf"^dataset {re.escape(str(dataset))} split '{split}' lacks the column\(s\) {re.escape(missing)} "
             r"evaluation reads; rebuild it with `python train\.py stages=\[data\]`$",
             tmp_path, tiny_models, dataset, asr=asr, nlu=nlu)


def test_without_an_asr_model_the_tuning_split_is_not_read(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    dataset = _variant(tiny_dataset_path, tmp_path / "data",
                       lambda name, ds: ds.remove_columns(["text", "audio"]) if name == "validation" else ds)
    metrics = _evaluate(tmp_path, tiny_models, dataset, asr=False)
    assert metrics["nlu/intent_accuracy"] is not None


def test_intents_the_nlu_model_never_learned_stop_the_evaluation(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    """A model trained on other intents scores as a weak model, not as the wrong model, unless checked.
    Test intents renamed: 4 of the 6 clips with an intent get names the model has no label for."""
    renamed = {"play_music": "music_likeness", "alarm_set": "alarm_query"}
    dataset = _variant(tiny_dataset_path, tmp_path / "data",
                       lambda name, ds: ds.map(lambda ex: {"intent": renamed.get(ex["intent"], ex["intent"])})
                       if name == "test" else ds)
    gold = [i for i in load_from_disk(str(dataset))["test"]["intent"] if i]
    share = sum(i in renamed.values() for i in gold) / len(gold)
    assert 0 < share < 1
    message = _refused(rf"^dataset {re.escape(str(dataset))} split 'test': {share:.1%} of the clips with an intent "
                       rf"have an intent {re.escape(str(tiny_models / 'nlu'))}/nlu_labels\.json lacks \(e\.g\. .*\); evaluate "
                       r"with the NLU model trained on this dataset's intents \(or raise eval\.max_unknown_intent_rate\)$",
                       tmp_path, tiny_models, dataset, asr=False)
    assert "music_likeness" in message and "alarm_query" in message
    # Allowed up to the share: the clips count as errors, and the evaluation runs.
    metrics = _evaluate(tmp_path, tiny_models, dataset, asr=False, **{"eval.max_unknown_intent_rate": share})
    assert metrics["nlu/intent_accuracy"] <= 1 - share


def test_the_unknown_intent_check_runs_before_the_asr_pass(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    dataset = _variant(tiny_dataset_path, tmp_path / "data",
                       lambda name, ds: ds.map(lambda ex: {"intent": "general_quirky" if ex["intent"] else None}))
    broken_asr = tmp_path / "models"
    (broken_asr / "asr").mkdir(parents=True)
    (broken_asr / "asr" / "config.json").write_text("{}")  # loading it would fail with another error
    (broken_asr / "nlu").symlink_to(tiny_models / "nlu")
    _refused(r"100\.0% of the clips with an intent have an intent .* \(e\.g\. general_quirky\)", tmp_path, broken_asr, dataset)


def test_an_explicit_background_folder_without_audio_is_refused(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "background"
    folder.mkdir()
    (folder / "notes.txt").write_text("the news at six")
    _refused(rf"^eval\.background={re.escape(str(folder))}: no audio files \(\.wav, \.flac, \.ogg, \.opus, \.mp3, \.aiff, \.aif, "
             r"\.m4a, \.aac, \.mp4, \.webm, \.wma\) under it; "
             r"point it at recordings, or eval\.background=none$",
             tmp_path, tiny_models, tiny_dataset_path, **{"eval.background": str(folder), "privacy.key_env": None,
                                                            "privacy.key_file": str(tmp_path / "pseudonym.key")})


def test_the_report_names_the_splits_it_was_run_on(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    _evaluate(tmp_path, tiny_models, tiny_dataset_path, **{"eval.split": "validation", "eval.tune_split": "test"})
    report = (tmp_path / "out" / "report.md").read_text()
    details = json.loads((tmp_path / "out" / "eval_details.json").read_text())
    assert details["test_data"]["split"] == "validation"
    assert "hours of validation background audio" in report and "(validation DET)" in report
    assert re.search(r"tuned on test clips\); validation: \d+ clips with and \d+ without the wake word", report)
    assert "test DET" not in report and "hours of test background" not in report


def test_evaluating_the_training_split_says_what_its_figures_mean(tiny_models: Path, tiny_dataset_path: Path,
                                                                 tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pipeline.eval.run"):
        metrics = _evaluate(tmp_path, tiny_models, tiny_dataset_path, asr=False, **{"eval.split": "train"})
    assert metrics["eval/num_clips"] == len(load_from_disk(str(tiny_dataset_path))["train"])
    assert "eval.split=train: the models learned from these clips" in caplog.text


def test_evaluating_a_model_without_a_dataset_says_to_give_one(tiny_models: Path, tmp_path: Path) -> None:
    """The error named the new evaluation folder's build_report.json, which no one had made."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(repo / "evaluate.py"), f"asr_model={tiny_models / 'asr'}", "logger=none"],
                          cwd=tmp_path, env={**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: no dataset to evaluate on: give dataset=<built dataset folder>" in done.stderr


def test_clips_too_short_for_the_model_score_as_empty_transcripts(
    tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A clip shorter than the feature encoder's receptive field (165 samples for the tiny model; 400,
    0.025 s, for wav2vec2) has no output frame. Built with a low data.min_duration_s, such clips sort
    into one batch. Before the fix: that batch crashed the first convolutions with a bare RuntimeError
    naming no clip. Now each scores as an empty transcript that can never be accepted as the wake word,
    and the log and report count them."""
    import io

    import numpy as np
    import soundfile as sf
    from datasets import Audio

    buffer = io.BytesIO()
    sf.write(buffer, np.full(100, 0.01, dtype="float32"), 16000, format="WAV")
    short = {"bytes": buffer.getvalue(), "path": None}

    def shorten(name: str, ds: Dataset) -> Dataset:
        if name != "test":
            return ds
        features = ds.features.copy()
        ds = ds.cast_column("audio", Audio(sampling_rate=16000, decode=False))
        ds = ds.map(lambda ex, i: {"audio": short, "duration": 100 / 16000} if i < 2 else {}, with_indices=True)
        return ds.cast(features)

    dataset = _variant(tiny_dataset_path, tmp_path / "data", shorten)
    with caplog.at_level("WARNING", logger="pipeline.eval.run"):
        metrics = _evaluate(tmp_path, tiny_models, dataset, **{"eval.batch_size": 2})
    assert metrics["asr/wer"] is not None
    rows = {r["utterance_id"]: r for r in map(json.loads, (tmp_path / "out" / "predictions.jsonl").read_text().splitlines())}
    for uid in ("test-0-0", "test-0-1"):
        assert rows[uid]["hypothesis"] == "" and rows[uid]["wake_score"] is None and not rows[uid]["wake_detected"]
    details = json.loads((tmp_path / "out" / "eval_details.json").read_text())
    assert details["asr_too_short"] == {"test": 2}
    assert "2 clip(s) of split test are too short for the ASR model" in caplog.text
    assert "Split test: 2 clip(s) too short for the ASR model" in (tmp_path / "out" / "report.md").read_text()


def test_negative_clips_of_no_duration_leave_false_accepts_per_hour_out_with_the_reason(
    tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """False accepts per hour divide by the negative clips' seconds. Before the fix: when those summed
    to 0 (a `duration` column of zeros) evaluate_wake returned NaN, and metrics.json held a bare NaN,
    which is not JSON. Now the metric is left out and not_computed says why."""
    def no_seconds(name: str, ds: Dataset) -> Dataset:
        return ds.map(lambda ex: {"duration": 0.0} if not ex["wake_word_present"] else {}) if name == "test" else ds

    dataset = _variant(tiny_dataset_path, tmp_path / "data", no_seconds)
    _evaluate(tmp_path, tiny_models, dataset)

    def no_constant(name: str) -> None:
        raise AssertionError(f"metrics.json holds {name}, which is not JSON")

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=no_constant)
    assert "wake/fa_per_hour" not in metrics and metrics["wake/frr"] is not None
    details = json.loads((tmp_path / "out" / "eval_details.json").read_text(), parse_constant=no_constant)
    assert details["not_computed"]["wake/fa_per_hour"].startswith("the clips of split 'test' without the wake word")
