"""Evaluating any model on any labelled set: an ASR model alone, an NLU model alone, labels without
intents, and every metric per data source. What cannot be computed is left out of metrics.json and
the report says why; the evaluation does not stop."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from datasets import DatasetDict, load_from_disk

from pipeline.eval import metrics as M
from pipeline.runtime import PipelineError
from tests.eval.test_eval_run import eval_cfg
from tests.recording import RecordingTracker

ASR = {"asr/wer", "asr/cer", "asr/wer_greedy", "asr/cer_greedy", "eval/rtf"}
WAKE = {"wake/frr", "wake/fa_per_hour", "wake/auc", "wake/eer", "wake/threshold"}
BACKGROUND = {"wake/frr_at_0.5_fa_per_hour", "wake/frr_at_1_fa_per_hour", "wake/frr_at_2_fa_per_hour",
              "wake/frr_at_5_fa_per_hour", "wake/background_hours"}
NLU = {"nlu/intent_accuracy", "nlu/intent_macro_f1", "nlu/entity_f1"}
SLU = {"slu/intent_accuracy", "slu/intent_macro_f1", "slu/entity_f1", "slu/slu_f1"}


def variant(tiny_dataset_path: Path, out: Path, fn: Any) -> Path:
    dd = load_from_disk(str(tiny_dataset_path))
    DatasetDict({k: fn(v) for k, v in dd.items()}).save_to_disk(str(out))
    return out


def evaluate(out: Path, dataset: Path, **models: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    from pipeline.eval.run import run_eval_stage

    metrics = run_eval_stage(eval_cfg(**models, **{"eval.bootstrap_samples": 100}), out, dataset, RecordingTracker())
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert not [k for k in ASR | WAKE | NLU | SLU if k in metrics and metrics[k] is None]  # left out, never null
    return metrics, json.loads((out / "eval_details.json").read_text()), (out / "report.md").read_text()


def test_asr_model_alone_and_per_source_metrics(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    two = variant(tiny_dataset_path, tmp_path / "two_sources",
                  lambda ds: ds.add_column("source", ["fsdd" if i % 2 else "export" for i in range(len(ds))]))
    metrics, details, report = evaluate(tmp_path / "asr_only", two, asr_model=str(tiny_models / "asr"))
    headline = {k for k in metrics if not k.startswith("by_source/") and not k.endswith(("_ci_low", "_ci_high"))}
    assert ASR | WAKE <= headline and not headline & (NLU | SLU)
    assert details["not_computed"]["nlu/intent_accuracy"].startswith("no NLU model was evaluated")
    assert "Not computed (no NLU model was evaluated (pass nlu_model=<folder>)): `nlu/intent_accuracy`" in report
    # Per source: the clips split between the sources, and each WER is that source's own.
    rows = [json.loads(x) for x in (tmp_path / "asr_only" / "predictions.jsonl").read_text().splitlines()]
    for name in ("fsdd", "export"):
        mine = [r for r in rows if r["source"] == name]
        assert metrics[f"by_source/{name}/eval/num_clips"] == len(mine) == 4
        assert metrics[f"by_source/{name}/asr/wer"] == pytest.approx(
            M.wer([r["reference"] for r in mine], [r["hypothesis"] for r in mine]))
        assert f"by_source/{name}/wake/frr" in metrics
        # No background recordings: the headline false accepts per hour come from the clips, and so
        # does each source's.
        assert f"by_source/{name}/wake/fa_per_hour" in metrics
    assert details["not_computed"]["wake/background_hours"].startswith("no background recordings were streamed")
    assert metrics["by_source/fsdd/eval/num_clips"] + metrics["by_source/export/eval/num_clips"] == metrics["eval/num_clips"]
    assert "## Per source" in report and "| metric | fsdd | export |" in report.replace("export | fsdd", "fsdd | export")


def test_nlu_model_alone_on_a_text_only_set(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    text_only = variant(tiny_dataset_path, tmp_path / "text", lambda ds: ds.remove_columns("audio"))
    metrics, details, report = evaluate(tmp_path / "nlu_only", text_only, nlu_model=str(tiny_models / "nlu"))
    headline = {k for k in metrics if not k.endswith(("_ci_low", "_ci_high"))}
    assert headline == NLU | {"eval/num_clips", "eval/audio_hours", "eval/bootstrap_samples"}
    # Every key the report shows as n/a has its reason, the background's five included.
    assert set(details["not_computed"]) == ASR | WAKE | BACKGROUND | SLU
    assert "Wake-word metrics not computed" not in report and "Worst utterances" not in report


def test_labels_without_intents_leave_the_nlu_metrics_out(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    no_intents = variant(tiny_dataset_path, tmp_path / "plain",
                         lambda ds: ds.map(lambda ex: {"intent": None, "scenario": None, "entities": [], "bio_tags": []}))
    metrics, details, report = evaluate(tmp_path / "both", no_intents, asr_model=str(tiny_models / "asr"),
                                        nlu_model=str(tiny_models / "nlu"))
    assert ASR <= set(metrics) and not set(metrics) & (NLU | SLU)
    assert {details["not_computed"][k] for k in NLU | SLU} == {"split 'test' has no clip with an intent"}
    assert "split 'test' has no clip with an intent" in report


# An empty run folder (`<run>` in the error) and what is passed for the tiny_models.
@pytest.mark.parametrize(("overrides", "error"), [
    pytest.param({}, r"<run>: no ASR model here \(<run>/asr\) and no NLU model \(<run>/nlu\); "
                     r".* asr_model=<folder>, nlu_model=<folder> or both", id="no-model-at-all"),
    pytest.param({"nlu_model": "<run>/missing"}, r"nlu_model=<run>/missing: no such folder", id="nlu-model-not-a-folder"),
    pytest.param({"asr_model": "<run>/missing"}, r"asr_model=<run>/missing: no such folder", id="asr-model-not-a-folder"),
])
def test_no_usable_model_is_one_clear_error_naming_the_folder(
    overrides: dict[str, str], error: str, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    from pipeline.eval.run import run_eval_stage

    cfg = eval_cfg(**{key: value.replace("<run>", str(tmp_path)) for key, value in overrides.items()})
    with pytest.raises(PipelineError, match=error.replace("<run>", re.escape(str(tmp_path)))):
        run_eval_stage(cfg, tmp_path, tiny_dataset_path, RecordingTracker())


def test_per_source_false_accepts_only_when_clips_give_the_headline_rate() -> None:
    """With background recordings the headline `wake/fa_per_hour` is their rate, which belongs to no
    source; a per-source rate from negative clips would be another quantity under the same key."""
    from pipeline.eval.coverage import by_source

    rows = [{"source": "demo", "duration": 3600.0, "reference": "", "hypothesis": "", "greedy_hypothesis": "",
             "wake_word_present": present, "wake_score": score}
            for present, score in ((True, 2.0), (True, -5.0), (False, 1.0), (False, -3.0))]
    clips_only = by_source(rows, {"wake/frr": 0.5}, threshold=0.0)["demo"]
    assert clips_only["wake/frr"] == 0.5
    assert clips_only["wake/fa_per_hour"] == 0.5  # one false accept in two hours of negative clips
    with_background = by_source(rows, {"wake/frr": 0.5, "wake/background_hours": 2.2}, threshold=0.0)["demo"]
    assert with_background["wake/frr"] == 0.5 and "wake/fa_per_hour" not in with_background


def test_a_split_of_one_speaker_says_why_its_figures_have_no_interval(tiny_models: Path, tiny_dataset_path: Path,
                                                                      tmp_path: Path) -> None:
    """metrics.json leaves the bounds null; the report used to promise 95% intervals and show none."""
    one = variant(tiny_dataset_path, tmp_path / "one", lambda ds: ds.map(lambda ex: {"speaker": "acct_one"}))
    metrics, _, report = evaluate(tmp_path / "out", one, asr_model=str(tiny_models / "asr"),
                                  nlu_model=str(tiny_models / "nlu"))
    assert metrics["asr/wer_ci_low"] is None and metrics["asr/wer"] is not None
    assert re.search(r"No interval for `asr/wer`, .*`nlu/intent_accuracy`.*: an interval needs two or more speakers", report)
    two, _, report = evaluate(tmp_path / "out2", tiny_dataset_path, asr_model=str(tiny_models / "asr"))
    assert two["asr/wer_ci_low"] is not None and "No interval" not in report


def test_a_split_where_every_clip_is_its_own_speaker_says_its_intervals_resample_clips(
        tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    """A source without speaker ids makes each clip its own account; the report said the intervals
    resample speakers, with no word that here they resample clips."""
    own = variant(tiny_dataset_path, tmp_path / "own", lambda ds: ds.map(lambda ex: {"speaker": f"acct_{ex['utterance_id']}"}))
    metrics, details, report = evaluate(tmp_path / "out", own, asr_model=str(tiny_models / "asr"))
    assert details["test_data"]["speakers"] == details["test_data"]["clips"] == metrics["eval/num_clips"]
    assert "Every test clip has a speaker of its own" in report
    _, details, report = evaluate(tmp_path / "out2", tiny_dataset_path, asr_model=str(tiny_models / "asr"))
    assert details["test_data"]["speakers"] < details["test_data"]["clips"] and "speaker of its own" not in report


def test_a_split_without_speaker_ids_counts_each_clip_as_the_unit_its_intervals_resample(
        tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    """A dataset made elsewhere may leave `speaker` empty: its intervals resample clips, and the
    report must say so. Before the fix `test_data.speakers` counted the missing speaker as one (1
    speaker of 10 clips), and the report said nothing of clips being resampled."""
    bare = variant(tiny_dataset_path, tmp_path / "bare", lambda ds: ds.map(lambda ex: {"speaker": None}))
    metrics, details, report = evaluate(tmp_path / "out", bare, asr_model=str(tiny_models / "asr"))
    assert details["test_data"]["speakers"] == details["test_data"]["clips"] == metrics["eval/num_clips"] > 1
    assert metrics["asr/wer_ci_low"] is not None and "Every test clip has a speaker of its own" in report


def test_whether_a_split_or_source_has_entities_is_read_from_the_entities_scored() -> None:
    """With eval.slu_scoring=slurp the entity scores count against SLURP's fillers
    (`scoring_entities`), not the dataset's own entities. Before the fix: label_reasons and by_source
    read `gold_entities`, so a split whose dataset entities are empty but whose SLURP fillers are
    not had its entity F1 left out as "no clip with an entity", and the opposite case reported an
    entity F1 over no gold entity at all."""
    from pipeline.eval.coverage import by_source, label_reasons

    slurp_only = [{"intent": "play_music", "gold_entities": [], "scoring_entities": [{"type": "artist", "value": "x"}]}]
    assert "nlu/entity_f1" not in label_reasons("test", slurp_only, None, True, True)
    dataset_only = [{"intent": "play_music", "gold_entities": [{"type": "artist", "value": "x"}], "scoring_entities": []}]
    assert label_reasons("test", dataset_only, None, True, True)["nlu/entity_f1"] == "split 'test' has no clip with an entity"

    def row(source: str, gold: list[dict[str, str]], tp: float, fn: float) -> dict[str, Any]:
        counts = {"nlu_entity_tp": tp, "nlu_entity_fp": 0.0, "nlu_entity_fn": fn}
        return {"source": source, "reference": "", "duration": 1.0, "intent": "play_music", "nlu_intent": "play_music",
                "nlu_scored": True, "gold_entities": gold, "counts": counts}

    rows = [row("slurp", [], 1.0, 1.0), row("other", [{"type": "artist", "value": "x"}], 0.0, 0.0)]
    per_source = by_source(rows, {"nlu/intent_accuracy": 1.0, "nlu/entity_f1": 0.5}, None)
    assert per_source["slurp"]["nlu/entity_f1"] == pytest.approx(2 / 3)
    assert "nlu/entity_f1" not in per_source["other"]
