"""The review stage end to end on the tiny espeak-ng dataset, with tiny random ASR and NLU models.

Random models disagree with many annotations; these tests check the queue, the summary, the report
section and the W&B table against each other and against the data, that a missing model skips its
kinds with a note, and that too many folds fail with the number of accounts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasets import load_from_disk
from omegaconf import DictConfig, OmegaConf

from pipeline.runtime import PipelineError
from tests.recording import RecordingTracker

REPO = Path(__file__).resolve().parents[2]
QUEUE_FIELDS = {"utterance_id", "split", "kind", "annotated", "model", "score", "reason", "not_judged"}


def make_run(tmp_path: Path, models: Path, dataset: Path, kinds: tuple[str, ...] = ("asr", "nlu")) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for name in kinds:
        shutil.copytree(models / name, run / name)
    (run / "build_report.json").write_text(json.dumps({"dataset_path": str(dataset)}))
    return run


def review_cfg(**overrides: Any) -> DictConfig:
    cfg = OmegaConf.create({
        "review": OmegaConf.load(REPO / "conf/review/default.yaml"),
        "eval": OmegaConf.load(REPO / "conf/eval/default.yaml"),
        "nlu": OmegaConf.load(REPO / "conf/nlu/tiny.yaml"),
        "logger": {"log_transcripts": "auto"}, "data": {"source": "jsonl"}, "seed": 0,
    })
    cfg.review.folds = 2  # the tiny dataset has 6 accounts
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def one_phrasing(dataset: Path) -> dict[str, set[str]]:
    """Per text kind, the clips with an intent (or a word's entity tag) that one distinct text alone
    carries: the tiny dataset has two such intents and one such entity type."""
    rows = [r for split in load_from_disk(str(dataset)).values() for r in split.remove_columns("audio") if r["intent"]]
    texts: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        for label in [("intent", r["intent"]), *(("entities", t) for t in r["bio_tags"] if t != "O")]:
            texts.setdefault(label, set()).add(r["text"])
    labels = {"intent": lambda r: [r["intent"]], "entities": lambda r: [t for t in r["bio_tags"] if t != "O"]}
    return {kind: {r["utterance_id"] for r in rows if any(len(texts[(kind, x)]) == 1 for x in of(r))}
            for kind, of in labels.items()}


def other_notes(notes: list[str]) -> list[str]:
    """The notes, less those on text-kind clips left unjudged for a label no other fold holds."""
    return [n for n in notes if not re.match(r"(intent|entities) kind: \d+ of \d+ clips not judged", n)]


def test_review_writes_a_ranked_queue_summary_report_and_table(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.review.stage import run_review_stage

    run = make_run(tmp_path, tiny_models, tiny_dataset_path)
    (run / "report.md").write_text("# Evaluation report\n\nheadline\n")
    tracker = RecordingTracker()
    result = run_review_stage(review_cfg(), run, tiny_dataset_path, tracker)

    queue = [json.loads(line) for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    assert queue, "random models must disagree with some annotation"
    assert all(set(line) == QUEUE_FIELDS for line in queue)
    judged = [line for line in queue if line["not_judged"] is None]
    assert queue[: len(judged)] == judged  # the unscored lines come after every ranked one
    scores = [line["score"] for line in judged]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    dd = load_from_disk(str(tiny_dataset_path))
    clips = {uid: name for name in dd for uid in dd[name]["utterance_id"]}
    assert all(clips[line["utterance_id"]] == line["split"] for line in queue)
    assert len({(line["utterance_id"], line["kind"]) for line in queue}) == len(queue)
    by_id = {r["utterance_id"]: r for name in dd for r in dd[name].remove_columns("audio")}
    for line in queue:
        row = by_id[line["utterance_id"]]
        if line["kind"] == "intent":
            assert line["annotated"] == row["intent"] != line["model"]
        elif line["kind"] == "wake":
            assert line["annotated"] == row["wake_word_present"] != line["model"]
        elif line["kind"] == "transcript":
            assert line["annotated"] == row["text"] != line["model"]
        assert line["reason"]

    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["clips"] == len(clips) == 40 and summary["accounts"] == 6
    single = one_phrasing(tiny_dataset_path)
    assert summary["scored"] == {"transcript": 40, "wake": 40, "intent": 30 - len(single["intent"]),
                                 "entities": 30 - len(single["entities"])}
    assert summary["budget"] == 1  # ceil(0.02 * 40)
    assert summary["lines"] == {k: sum(line["kind"] == k for line in judged) for k in summary["lines"]}
    assert summary["queued_unjudged"] == {"transcript": 0, "intent": len(single["intent"]), "wake": 0,
                                          "entities": len(single["entities"])}
    assert len(queue) == sum(summary["lines"].values()) + sum(summary["queued_unjudged"].values())
    assert sum(summary["flagged"].values()) == 1 and summary["flagged"][queue[0]["kind"]] == 1
    assert set(summary["seconds"]) >= {"asr_forward", "transcript", "wake", "text_embedding", "intent", "entities"}
    assert result["flagged"] == summary["flagged"]

    report = (run / "report.md").read_text()
    assert report.startswith("# Evaluation report\n\nheadline") and "## Annotation review" in report
    assert f"review/queue.jsonl holds {len(queue)} lines" in report
    assert "precision at k" not in report  # no planted errors in this run
    html = (run / "report.html").read_text()
    assert "<h2>Annotation review</h2>" in html and html.rstrip().endswith("</html>")
    run_review_stage(review_cfg(), run, tiny_dataset_path, RecordingTracker())  # a second review replaces its section
    assert (run / "report.md").read_text().count("## Annotation review") == 1

    columns, rows = tracker.tables["review_queue"]
    assert len(rows) == len(queue)
    for row in rows:  # data.source=jsonl: no transcript (or entity value quoted from one) goes to W&B
        line = dict(zip(columns, row))
        if line["kind"] in ("transcript", "entities"):
            assert line["annotated"] is line["model"] is line["reason"] is None
    assert tracker.summary["review/intent_flagged"] == summary["flagged"]["intent"]


def test_planted_errors_are_scored_in_the_report(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.review.stage import run_review_stage

    from datasets import DatasetDict

    # One take of "play rock music" annotated as an alarm: an intent the clip's fold is judged on.
    dd = load_from_disk(str(tiny_dataset_path))
    dataset = tmp_path / "swapped"
    DatasetDict({name: split.map(lambda r: {"intent": "alarm_set"} if r["utterance_id"] == "train-0-4" else {})
                 for name, split in dd.items()}).save_to_disk(str(dataset))
    run = make_run(tmp_path, tiny_models, dataset)
    run_review_stage(review_cfg(), run, dataset, RecordingTracker())
    queue = [json.loads(line) for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    intents = [line["utterance_id"] for line in queue if line["kind"] == "intent"]
    assert intents[0] == "train-0-4"
    # Plant the intent kind's first line and one clip it ranks nowhere: precision at k=2 is 1/2. A third
    # on a clip whose intent one fold alone carries is queued unscored, after the ranked lines, and k
    # (the errors among the clips the kind scored) leaves it out.
    single = one_phrasing(dataset)["intent"]
    judged = {r["utterance_id"] for r in dd["train"].remove_columns("audio") if r["intent"]} - single
    unranked = next(u for u in sorted(judged) if u not in intents[:2])
    (run / "label_noise.jsonl").write_text("".join(json.dumps({"utterance_id": u, "kind": "intent"}) + "\n"
                                                  for u in (intents[0], unranked, sorted(single)[0])))
    tracker = RecordingTracker()
    run_review_stage(review_cfg(), run, dataset, tracker)
    scoring = json.loads((run / "review" / "noise_scoring.json").read_text())
    assert scoring["kinds"]["intent"]["planted"] == 2
    assert scoring["kinds"]["intent"]["precision_at_k"] == 0.5
    assert scoring["kinds"]["intent"]["recall_at_max_share"] == 0.5  # the first line (budget 1) is a planted one
    assert scoring["kinds"]["intent"]["recall_ceiling"] == 0.5  # one line for two planted errors
    assert set(scoring["kinds"]["intent"]["cleanlab_find_label_issues"]) == {"flagged", "precision", "precision_at_k"}
    assert tracker.summary["review/intent_precision_at_k"] == 0.5
    # What a second pass over the budget really reads: the queue's first line, of whatever kind.
    first = json.loads((run / "review" / "queue.jsonl").read_text().splitlines()[0])
    found = float(first["kind"] == "intent" and first["utterance_id"] == intents[0]) / 2
    assert scoring["kinds"]["intent"]["recall_in_queue"] == found == tracker.summary["review/intent_recall_in_queue"]
    assert "precision at k" in (run / "report.md").read_text() and "most it can be (1 lines / k)" in (run / "report.md").read_text()
    assert scoring["queued_unjudged"] == {"intent": {"lines": len(single), "planted": 1, "planted_read": 0},
                                          "entities": {"lines": len(one_phrasing(dataset)["entities"]), "planted": 0,
                                                       "planted_read": 0}}
    assert (f"among the unscored lines after the ranked ones, not counted in k: intent 1 of {len(single)}, entities 0 of "
            f"{len(one_phrasing(dataset)['entities'])} (0 of them within the 1 lines a second pass reads)") in (
        run / "report.md").read_text()


def test_a_wake_kind_with_nothing_to_contrast_scores_no_clip_and_says_why(
    tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """Before the fix: on a corpus without false wakes (SLURP) the wake kind judged nothing, yet the
    summary counted every clip as scored for it and planted wake errors were scored at precision 0."""
    from datasets import DatasetDict

    from pipeline.review.stage import run_review_stage

    dd = load_from_disk(str(tiny_dataset_path))
    every = DatasetDict({name: split.map(lambda _: {"wake_word_present": True}) for name, split in dd.items()})
    dataset = tmp_path / "every_clip_a_wake"
    every.save_to_disk(str(dataset))
    run = make_run(tmp_path, tiny_models, dataset)
    planted = dd["train"]["utterance_id"][:3]
    (run / "label_noise.jsonl").write_text("".join(json.dumps({"utterance_id": u, "kind": "wake"}) + "\n" for u in planted))
    run_review_stage(review_cfg(), run, dataset, RecordingTracker())
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["scored"]["wake"] == 0 and summary["scored"]["transcript"] == 40
    assert other_notes(summary["notes"]) == ["wake kind skipped: every clip is marked with the wake word"]
    scoring = json.loads((run / "review" / "noise_scoring.json").read_text()) if (run / "review" / "noise_scoring.json").exists() else {}
    assert "wake" not in (scoring.get("kinds") or {})


def test_a_missing_model_skips_its_kinds_with_a_note(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.review.stage import run_review_stage

    run = make_run(tmp_path, tiny_models, tiny_dataset_path, kinds=("nlu",))
    run_review_stage(review_cfg(), run, tiny_dataset_path, RecordingTracker())
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["scored"]["transcript"] == summary["scored"]["wake"] == 0
    assert other_notes(summary["notes"]) == [f"transcript and wake kinds skipped: the run has no ASR model ({run / 'asr'} has no config.json)"]
    kinds = {json.loads(line)["kind"] for line in (run / "review" / "queue.jsonl").read_text().splitlines()}
    assert kinds <= {"intent", "entities"}
    assert "Note: transcript and wake kinds skipped" in (run / "report.md").read_text()

    # Neither model: nothing could be reviewed, which used to be an empty queue and exit 0.
    shutil.rmtree(run / "nlu")
    shutil.rmtree(run / "review")
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(run))}: nothing to review with: no NLU model .* and no "
                                            r"ASR model .*train them first \(stages=\[asr,nlu\]\)$"):
        run_review_stage(review_cfg(), run, tiny_dataset_path, RecordingTracker())
    assert not (run / "review").exists()


def test_more_folds_than_accounts_is_an_error_naming_the_count(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.review.stage import run_review_stage

    run = make_run(tmp_path, tiny_models, tiny_dataset_path)
    with pytest.raises(PipelineError, match=r"review.folds=7 is more than the 6 accounts"):
        run_review_stage(review_cfg(**{"review.folds": 7}), run, tiny_dataset_path, RecordingTracker())
    assert not (run / "review").exists()



def test_the_account_count_limits_only_the_wake_kind(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: clips from one account could not be reviewed at all, even by a run without an
    ASR model, whose intent and entity kinds hold out texts, not accounts: the review stopped with
    "review.folds=2 is more than the 1 accounts ... set review.folds to at most 1", a value the
    review.folds check itself refuses."""
    from datasets import DatasetDict

    from pipeline.review.stage import run_review_stage

    dd = load_from_disk(str(tiny_dataset_path))
    dataset = tmp_path / "one_account"
    DatasetDict({name: split.map(lambda _: {"speaker": "spk_only"}) for name, split in dd.items()}).save_to_disk(str(dataset))

    (tmp_path / "text").mkdir()
    run = make_run(tmp_path / "text", tiny_models, dataset, kinds=("nlu",))
    run_review_stage(review_cfg(), run, dataset, RecordingTracker())
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["accounts"] == 1 and summary["scored"]["intent"] == 30 - len(one_phrasing(dataset)["intent"])

    (tmp_path / "both").mkdir()
    run = make_run(tmp_path / "both", tiny_models, dataset)
    run_review_stage(review_cfg(), run, dataset, RecordingTracker())
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["scored"]["transcript"] == 40 and summary["scored"]["wake"] == 0
    assert other_notes(summary["notes"]) == ["wake kind skipped: every clip comes from one account, and the wake "
                                             "kind holds out whole accounts to learn its threshold without a clip's "
                                             "own voice"]


def test_clips_without_commands_skip_the_text_kinds_with_a_note(tiny_models: Path, tiny_dataset_path: Path,
                                                                 tmp_path: Path) -> None:
    """Before the fix: a dataset whose clips carry no intent (false wakes and keyword recordings only)
    stopped the whole review, after the ASR pass, with "review.folds=2 is more than the 0 distinct
    texts ... set review.folds to at most 0"; one whose commands all read one text advised at most 1,
    which the review.folds check refuses."""
    from datasets import DatasetDict

    from pipeline.review.crossfit import text_folds
    from pipeline.review.stage import run_review_stage

    dd = load_from_disk(str(tiny_dataset_path))
    dataset = tmp_path / "no_commands"
    DatasetDict({name: split.filter(lambda r: r["intent"] is None) for name, split in dd.items()}).save_to_disk(str(dataset))
    run = make_run(tmp_path, tiny_models, dataset)
    run_review_stage(review_cfg(), run, dataset, RecordingTracker())
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["scored"]["transcript"] == 10 and summary["scored"]["intent"] == summary["scored"]["entities"] == 0
    assert "intent and entities kinds skipped: no clip has an intent" in summary["notes"]
    assert text_folds(["play jazz", "Play  jazz"], 2) is None  # one text: nothing to hold out against

def finished_run(tmp_path: Path, models: Path, dataset: Path) -> Path:
    """A run folder `make review` accepts, made before the review stage existed: its config.yaml has no
    `review` group, so conf/review/default.yaml (5 folds) applies."""
    run = make_run(tmp_path, models, dataset)
    cfg = review_cfg(cache_dir=str(tmp_path / "cache"), **{"logger.name": "none"})
    del cfg["review"]
    OmegaConf.save(cfg, run / "config.yaml")
    return run


def test_make_review_reviews_a_finished_run_with_its_own_config(tiny_models: Path, tiny_dataset_path: Path,
                                                                tmp_path: Path) -> None:
    from pipeline.review.__main__ import main

    run = finished_run(tmp_path, tiny_models, tiny_dataset_path)
    main([str(run), "review.folds=3"])
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["folds"] == 3 and (run / "report.md").exists()
    assert OmegaConf.load(run / "config.yaml").get("review") is None  # the run's own config is left alone


def test_make_review_gives_a_setting_the_runs_config_lacks_its_default(tiny_models: Path, tiny_dataset_path: Path,
                                                                        tmp_path: Path) -> None:
    from pipeline.review.__main__ import main

    run = make_run(tmp_path, tiny_models, tiny_dataset_path)
    cfg = review_cfg(cache_dir=str(tmp_path / "cache"), **{"logger.name": "none", "review.folds": 3})
    del cfg.review["transcript_tempos"]  # a run made before the setting existed
    OmegaConf.save(cfg, run / "config.yaml")
    main([str(run)])
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["folds"] == 3 and summary["seconds"]["transcript"] > 0  # the run's folds, the default tempos


# The folder given to `make review` (next to a finished run), its overrides and the one error line,
# `<run>` standing for the folder.
@pytest.mark.parametrize(("folder", "args", "error"), [
    pytest.param("run", ["review.folds=7"], r"review\.folds=7 is more than the 6 accounts", id="folds-exceed-accounts"),
    pytest.param("no-such-run", [], r"<run>: not a finished run folder", id="not-a-run-folder"),
    pytest.param("run", ["seed=x"], r"^error: seed='x': give a whole number", id="seed-not-a-number"),
    pytest.param("dataset", [], r"^error: <run> is a built dataset, not a run folder", id="a-dataset-folder"),
    pytest.param("run", ["eval.wake_word="], r"^error: the review's wake kind needs eval\.wake_word, which the run's "
                 r"config\.yaml leaves empty; .* eval\.wake_word=<word>$", id="empty-wake-word"),
])
def test_make_review_refuses_in_one_line_naming_the_setting_or_folder(
    folder: str, args: list[str], error: str, tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.review.__main__ import main

    finished_run(tmp_path, tiny_models, tiny_dataset_path)
    run = tmp_path / folder
    if folder == "dataset":  # a cached dataset holds a build report too, without dataset_path
        shutil.copytree(tiny_dataset_path, run)
        (run / "build_report.json").write_text(json.dumps({"fingerprint": "f" * 20}))
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), *args])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(error_lines) == 1
    assert re.search(error.replace("<run>", re.escape(str(run.resolve()))), error_lines[0]), error_lines[0]


# A run file cut or edited by hand: one error line naming it, not omegaconf's or a parser's traceback.
@pytest.mark.parametrize(("name", "content", "error"), [
    pytest.param("config.yaml", "", r"<run>/config\.yaml is not the config a run writes \(ValueError: it has no "
                 r"cache_dir\)", id="empty-config"),
    pytest.param("config.yaml", "a: [", r"<run>/config\.yaml is not the config a run writes \(\w+: ", id="config-not-yaml"),
    pytest.param("build_report.json", "", r"<run>/build_report\.json is empty; re-run the `data` stage", id="empty-report"),
    pytest.param("build_report.json", "{}", r"<run>/build_report\.json has no `dataset_path` key", id="no-dataset-path"),
])
def test_make_review_names_a_broken_run_file(name: str, content: str, error: str, tiny_models: Path,
                                             tiny_dataset_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.review.__main__ import main

    run = finished_run(tmp_path, tiny_models, tiny_dataset_path)
    (run / name).write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run)])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(error_lines) == 1
    assert re.search(error.replace("<run>", re.escape(str(run.resolve()))), error_lines[0]), error_lines[0]


@pytest.mark.parametrize("content", ["not json", "{}"])
def test_make_review_names_a_broken_nlu_folder(content: str, tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.review.__main__ import main

    run = finished_run(tmp_path, tiny_models, tiny_dataset_path)
    (run / "nlu" / "config.json").unlink()  # a copy of the tiny models' folder, not a link to it
    (run / "nlu" / "config.json").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run)])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(error_lines) == 1
    assert error_lines[0].startswith(f"error: {run.resolve() / 'nlu'}: its config or tokenizer does not load (")
    assert error_lines[0].endswith("re-run the `nlu` stage (stages=[nlu]) to write the folder again")


@pytest.mark.parametrize(("dataset", "error"), [
    pytest.param("single", r"<dataset> is a single split, not a dataset of splits", id="single-dataset"),
    pytest.param("no-bio-tags", r"<dataset> split .train. lacks the column\(s\) \[.bio_tags.\] the review reads",
                 id="missing-column"),
])
def test_make_review_refuses_a_dataset_it_cannot_read_naming_split_and_column(
    dataset: str, error: str, tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.review.__main__ import main

    dd = load_from_disk(str(tiny_dataset_path))
    path = tmp_path / dataset
    (dd["train"] if dataset == "single" else dd.remove_columns("bio_tags")).save_to_disk(str(path))
    run = finished_run(tmp_path, tiny_models, path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run)])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(error_lines) == 1
    assert re.search(error.replace("<dataset>", re.escape(str(path))), error_lines[0]), error_lines[0]
    assert not any(uid in error_lines[0] for uid in dd["train"]["utterance_id"])  # splits and columns, never rows


def stages_config(run: Path, tmp_path: Path, *overrides: str) -> DictConfig:
    """train.py's config for `overrides` with hydra.run.dir=<run>, as @hydra.main hands it to the job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[*overrides, "logger=none", f"cache_dir={tmp_path / 'cache'}"],
                      return_hydra_config=True)
    with open_dict(cfg):  # what @hydra.main sets up before the job: the run folder, ${hydra:...}
        cfg.hydra.runtime.output_dir = str(run)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    return cfg


def test_stages_review_runs_after_the_others_in_the_run_folder(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.stages import run_stages

    run = make_run(tmp_path, tiny_models, tiny_dataset_path)
    cfg = stages_config(run, tmp_path, "stages=[review]", "nlu=tiny", "review.folds=4")
    results = run_stages(cfg)
    assert results["review"]["queue"] == str(run / "review" / "queue.jsonl")
    assert json.loads((run / "review" / "summary.json").read_text())["folds"] == 4


def test_stages_review_on_a_finished_run_reviews_with_the_runs_config_and_keeps_it(
    tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """The defaults say nlu=minilm; the run was made with nlu=tiny: its config.yaml stays so, and the
    review loads the tiny backbone (the MiniLM one is not in this offline cache)."""
    from pipeline.stages import run_stages

    run = finished_run(tmp_path, tiny_models, tiny_dataset_path)
    nlu = OmegaConf.to_container(OmegaConf.load(run / "config.yaml").nlu)
    results = run_stages(stages_config(run, tmp_path, "stages=[review]", "review.folds=4"))
    recorded = OmegaConf.load(run / "config.yaml")
    assert OmegaConf.to_container(recorded.nlu) == nlu and recorded.review.folds == 4
    assert results["review"]["queue"] == str(run / "review" / "queue.jsonl")
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["folds"] == 4 and summary["scored"]["intent"] == 30 - len(one_phrasing(tiny_dataset_path)["intent"])


def test_a_later_call_that_fails_leaves_the_runs_config_as_it_was(
    tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """The record describes the models in the folder: a retry that failed changed none of them."""
    from pipeline.stages import run_stages

    run = finished_run(tmp_path, tiny_models, tiny_dataset_path)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(PipelineError, match=r"review.folds=7 is more than the 6 accounts"):
        run_stages(stages_config(run, tmp_path, "stages=[review]", "review.folds=7"))
    assert (run / "config.yaml").read_bytes() == before


def test_stages_review_in_a_new_folder_points_to_make_review_and_writes_nothing(tmp_path: Path) -> None:
    from pipeline.stages import run_stages

    run = tmp_path / "new"
    with pytest.raises(PipelineError, match=r"build_report\.json does not exist; .*make review RUN=<run folder>"):
        run_stages(stages_config(run, tmp_path, "stages=[review]"))
    assert not (run / "config.yaml").exists()


def test_a_demo_build_with_label_noise_lists_the_planted_errors_of_its_kept_clips_in_the_run(tmp_path: Path) -> None:
    from pipeline.data.label_noise import copy_manifest

    cfg = OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "data": OmegaConf.load(REPO / "conf/data/demo.yaml")})
    assert copy_manifest(cfg, tmp_path, set()) is None  # label_noise 0: nothing planted, no file
    cfg.data.demo.max_utterances = 40
    cfg.data.demo.label_noise = 0.1
    (tmp_path / "all").mkdir()
    copy_manifest(cfg, tmp_path / "all", set())  # builds the noisy export
    export = [json.loads(line) for line in (tmp_path / "cache").rglob("annotations.noise-v2-0.1-0.jsonl").__next__().read_text().splitlines()]
    # The build keeps some clips and quarantines others (deleted, flagged): only the kept ones' lines
    # reach the run folder, since the manifest names a clip by its raw id and quotes its transcript.
    ids = sorted(r["utterance_id"] for r in export)
    kept = set(ids[: len(ids) // 2])
    path = copy_manifest(cfg, tmp_path, kept)
    assert path == tmp_path / "label_noise.jsonl"
    planted = [json.loads(line) for line in path.read_text().splitlines()]
    assert planted and {p["kind"] for p in planted} <= {"transcript", "intent", "wake", "entities"}
    assert {p["utterance_id"] for p in planted} <= kept
    everything = [json.loads(line) for line in copy_manifest(cfg, tmp_path / "all", set(ids)).read_text().splitlines()]
    assert len(everything) > len(planted)
    # The demo as one of several sources (data=demo_speech): its planted errors were never listed.
    several = OmegaConf.create({"cache_dir": cfg.cache_dir, "data": {"source": "sources", "sources": [
        {"source": "jsonl", "name": "b7", "path": "/exports/b7/annotations.jsonl"},
        {"source": "demo", "name": "demo", "demo": cfg.data.demo}]}})
    (tmp_path / "several").mkdir()
    assert copy_manifest(several, tmp_path / "several", kept).read_text() == path.read_text()
    # Rebuilt in the same folder without label noise: the earlier build's manifest goes.
    cfg.data.demo.label_noise = 0
    assert copy_manifest(cfg, tmp_path, kept) is None and not path.exists()


def test_each_tempo_reads_its_own_audio_in_any_order(tiny_models: Path, tiny_dataset_path: Path) -> None:
    from pipeline.asr.model import load_asr
    from pipeline.eval.run import keyword_ids
    from pipeline.review.acoustic import score_clips

    model, processor = load_asr(tiny_models / "asr")
    keyword = keyword_ids(processor, "alexa", True, tiny_models / "asr")
    split = load_from_disk(str(tiny_dataset_path))["train"]
    both = score_clips(model, processor, split, keyword, 4, 2.0, [0.85, 1.0])
    recorded = score_clips(model, processor, split, keyword, 4, 2.0, [1.0])
    faster = score_clips(model, processor, split, keyword, 4, 2.0, [1.15])
    np.testing.assert_allclose(both.transcript_gap[1], recorded.transcript_gap[0], rtol=1e-4, atol=1e-4)
    assert both.alternative[1] == recorded.alternative[0]
    assert not np.allclose(both.transcript_gap[0], both.transcript_gap[1])  # 0.85x is heard otherwise
    np.testing.assert_allclose(faster.wake_score, recorded.wake_score, rtol=1e-4, atol=1e-4)  # wake: as recorded
    assert set(both.seconds) == {"asr_forward", "transcript", "wake"} and both.seconds["transcript"] > 0


def test_make_review_holds_the_run_as_being_written(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """train.py and evaluate.py hold `<run>/.writing` while they write, so `make erase` waits for them;
    the review writes into the run too (its queue quotes transcripts) and did not."""
    from pipeline import run_folder
    from pipeline.review import stage
    from pipeline.review.__main__ import main

    run = finished_run(tmp_path, tiny_models, tiny_dataset_path)
    seen: list[bool] = []
    monkeypatch.setattr(stage, "run_review_stage", lambda cfg, run_dir, dataset, tracker:
                        seen.append(run_folder.being_written(run_dir)) or {})
    main([str(run)])
    assert seen == [True] and not run_folder.being_written(run)


class _Placed(Exception):
    """Raised by a stand-in for a model's first forward pass, once it has seen where the model is."""


@pytest.mark.parametrize("resolved", ["cpu", "meta"])
def test_review_device_places_the_nlu_encoder_where_it_places_the_asr_model(
    resolved: str, tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """review.device holds for both models the review runs, each seen at its first forward pass (in a
    run folder with that model alone). review.device=cpu puts both on the CPU; "meta" stands for a
    device other than the CPU (a GPU, which this test cannot count on): review.device resolved to
    it, both models must be there. Before the fix: the ASR model went to review.device and the NLU
    encoder stayed on the CPU ({'asr': 'meta', 'nlu': 'cpu'})."""
    import torch

    from pipeline.review import acoustic, stage

    if resolved != "cpu":
        monkeypatch.setattr(stage, "pick_device", lambda wanted, key: torch.device(resolved))
    seen: dict[str, str] = {}

    def first_use(name: str) -> Any:
        def record(model: Any, *args: Any, **kwargs: Any) -> Any:
            seen[name] = str(next(model.parameters()).device)
            raise _Placed
        return record

    monkeypatch.setattr(acoustic, "score_clips", first_use("asr"))
    monkeypatch.setattr(stage, "embed", first_use("nlu"))
    for kind in ("asr", "nlu"):
        (tmp_path / kind).mkdir()
        run = make_run(tmp_path / kind, tiny_models, tiny_dataset_path, kinds=(kind,))
        with pytest.raises(_Placed):
            stage.run_review_stage(review_cfg(**{"review.device": "cpu"}), run, tiny_dataset_path, RecordingTracker())
    assert seen == {"asr": resolved, "nlu": resolved}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_review_device_cuda_without_a_gpu_is_refused_for_the_nlu_encoder_too(
    tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """The ASR model's own error (pipeline.distributed.pick_device), also for a run with only an NLU
    model. Before the fix: no error; the NLU encoder ran on the CPU, whatever review.device said."""
    from pipeline.review.stage import run_review_stage

    run = make_run(tmp_path, tiny_models, tiny_dataset_path, kinds=("nlu",))
    with pytest.raises(PipelineError, match=r"^review\.device=cuda but no CUDA GPU is visible; use review\.device=cpu \(or auto\)$"):
        run_review_stage(review_cfg(**{"review.device": "cuda"}), run, tiny_dataset_path, RecordingTracker())
    assert not (run / "review").exists()


def _with_short_clips(tiny_dataset_path: Path, out: Path, split: str, count: int, samples: int = 100) -> Path:
    """The tiny dataset with the first `count` clips of `split` cut to `samples` samples (the tiny
    ASR model's receptive field is 165 samples)."""
    import io

    import soundfile as sf
    from datasets import Audio, DatasetDict

    buffer = io.BytesIO()
    sf.write(buffer, np.full(samples, 0.01, dtype="float32"), 16000, format="WAV")
    short = {"bytes": buffer.getvalue(), "path": None}
    dd = load_from_disk(str(tiny_dataset_path))
    features = dd[split].features.copy()
    cut = dd[split].cast_column("audio", Audio(sampling_rate=16000, decode=False)).map(
        lambda ex, i: {"audio": short, "duration": samples / 16000} if i < count else {}, with_indices=True)
    DatasetDict({**dict(dd), split: cut.cast(features)}).save_to_disk(str(out))
    return out


def test_clips_too_short_for_the_asr_model_are_read_as_nothing_heard(tiny_models: Path, tiny_dataset_path: Path,
                                                                     tmp_path: Path) -> None:
    """Before the fix: a batch of only such clips stopped the forward pass in its first convolutions."""
    from pipeline.asr.model import load_asr
    from pipeline.eval.run import keyword_ids, receptive_field
    from pipeline.review.acoustic import score_clips

    dataset = _with_short_clips(tiny_dataset_path, tmp_path / "data", "train", 2)
    model, processor = load_asr(tiny_models / "asr")
    assert receptive_field(model) > 100
    keyword = keyword_ids(processor, "alexa", True, tiny_models / "asr")
    split = load_from_disk(str(dataset))["train"]
    scores = score_clips(model, processor, split, keyword, 2, 2.0, [0.85, 1.0])
    short = np.arange(len(split)) < 2
    assert (scores.too_short == short).all() and (scores.wake_too_short == short).all()
    assert np.isnan(scores.transcript_gap[:, short]).all() and np.isfinite(scores.transcript_gap[:, ~short]).all()
    assert all(alternative[i] == "" for alternative in scores.alternative for i in (0, 1))
    assert np.isneginf(scores.wake_score[short]).all()
    whole = score_clips(model, processor, load_from_disk(str(tiny_dataset_path))["train"], keyword, 2, 2.0, [0.85, 1.0])
    np.testing.assert_allclose(scores.transcript_gap[:, ~short], whole.transcript_gap[:, ~short], rtol=1e-4, atol=1e-4)


def test_clips_too_short_for_the_asr_model_are_left_unjudged_and_counted(tiny_models: Path, tiny_dataset_path: Path,
                                                                          tmp_path: Path) -> None:
    """Before the fix: such clips stopped the review (a batch of only them), or, beside longer clips,
    got no frame and were queued as "too short for the annotated text", a line about nothing heard."""
    from pipeline.review.stage import run_review_stage

    dataset = _with_short_clips(tiny_dataset_path, tmp_path / "data", "test", 3)
    short_ids = set(load_from_disk(str(dataset))["test"]["utterance_id"][:3])
    run = make_run(tmp_path, tiny_models, dataset)
    run_review_stage(review_cfg(**{"review.batch_size": 2}), run, dataset, RecordingTracker())
    queue = [json.loads(line) for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    assert not [line for line in queue if line["kind"] in ("transcript", "wake") and line["utterance_id"] in short_ids]
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["not_judged"]["transcript"] == {"too_short_for_asr": 3}
    assert summary["not_judged"]["wake"] == {"too_short_for_asr": 3}
    assert summary["scored"]["transcript"] == summary["clips"] - 3
    note = next(n for n in summary["notes"] if n.startswith("transcript kind: 3 of 40 clips not judged"))
    assert "too short for the ASR model" in note and "data.min_duration_s" in note
    assert "Note: transcript kind: 3 of 40 clips not judged" in (run / "report.md").read_text()


def test_a_label_with_one_phrasing_is_queued_unscored_after_the_ranked_lines(tiny_models: Path,
                                                                            tiny_dataset_path: Path,
                                                                            tmp_path: Path) -> None:
    """Earlier: the tiny dataset's two intents read in one text each (weather_query,
    iot_hue_lightoff) held the top ten lines of the queue at score 1.0, and the one-phrasing place
    entity the next five: folds hold out whole texts, so the model judging those clips never saw
    their label, and called every one of them mislabelled. Before the fix: those clips were left
    out of the queue altogether, so an annotation error that makes such a label was never shown."""
    from pipeline.review.stage import run_review_stage
    from pipeline.review.suspects import KINDS

    single = one_phrasing(tiny_dataset_path)
    assert len(single["intent"]) == 10 and len(single["entities"]) == 5
    run = make_run(tmp_path, tiny_models, tiny_dataset_path, kinds=("nlu",))
    tracker = RecordingTracker()
    run_review_stage(review_cfg(), run, tiny_dataset_path, tracker)
    text = (run / "review" / "queue.jsonl").read_text()
    queue = [json.loads(line) for line in text.splitlines()]
    judged = [line for line in queue if line["not_judged"] is None]
    assert not [line for line in judged if line["kind"] in single and line["utterance_id"] in single[line["kind"]]]
    held = queue[len(judged):]
    assert [(line["kind"], line["utterance_id"]) for line in held] == sorted(
        ((kind, u) for kind, ids in single.items() for u in ids),
        key=lambda x: (KINDS.index(x[0]), next(line["split"] for line in held if line["utterance_id"] == x[1]), x[1]))
    assert all(line["not_judged"] == "label_in_one_fold" and line["score"] is None and line["model"] is None
               and line["reason"].startswith("not scored: only texts of this clip's fold carry the ") for line in held)
    assert {line["annotated"] for line in held if line["kind"] == "intent"} == {"iot_hue_lightoff", "weather_query"}
    assert all('"paris" B-place_name' in line["reason"] for line in held if line["kind"] == "entities")
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["not_judged"] == {kind: {"label_in_one_fold": len(ids)} for kind, ids in single.items()}
    assert summary["queued_unjudged"] == {"transcript": 0, "intent": 10, "wake": 0, "entities": 5}
    assert summary["scored"]["intent"] == 30 - len(single["intent"])
    intent_note = next(n for n in summary["notes"] if n.startswith("intent kind: 10 of 30 clips not judged"))
    assert "(2: iot_hue_lightoff, weather_query)" in intent_note and "one phrasing" in intent_note
    assert "queued after every ranked line, unscored (not_judged: label_in_one_fold)" in intent_note
    assert any(n.startswith("entities kind: 5 of 30 clips not judged") and "(1: B-place_name)" in n
               for n in summary["notes"])
    issues = summary["cleanlab"]["find_label_issues"]
    assert not set(issues) & single["intent"]
    report = (run / "report.md").read_text()
    assert "After the ranked lines the queue holds 15 unscored ones (intent 10, entities 5;" in report
    assert "## Queued unscored: labels one fold carries" in report
    columns, rows = tracker.tables["review_queue"]
    assert [dict(zip(columns, row))["not_judged"] for row in rows] == [line["not_judged"] for line in queue]
    run_review_stage(review_cfg(), run, tiny_dataset_path, RecordingTracker())
    assert (run / "review" / "queue.jsonl").read_text() == text  # the same order again


def test_a_span_widened_into_a_new_tag_reaches_the_queue(tiny_models: Path, tiny_dataset_path: Path,
                                                         tmp_path: Path) -> None:
    """Before the fix: a span widened by one word onto "music" made an I-music_genre tag no other text
    carries; the clip was left unjudged and out of the queue, so no annotator saw the error, and its
    planted error was counted nowhere in noise_scoring.json."""
    from datasets import DatasetDict

    from pipeline.data.annotations import bio_tags, resolve_spans
    from pipeline.review.stage import run_review_stage

    def widen(row: dict[str, Any]) -> dict[str, Any]:
        if row["utterance_id"] != "train-1-0":  # "alexa play jazz music", the genre "jazz"
            return {}
        spans = resolve_spans(row["transcript"], [{"type": "music_genre", "value": "jazz music"}])
        return {"entities": [e.as_dict() for e in spans], "bio_tags": bio_tags(row["transcript"], spans)[1]}

    dd = load_from_disk(str(tiny_dataset_path))
    dataset = tmp_path / "widened"
    DatasetDict({name: split.map(widen) for name, split in dd.items()}).save_to_disk(str(dataset))
    run = make_run(tmp_path, tiny_models, dataset, kinds=("nlu",))
    (run / "label_noise.jsonl").write_text(json.dumps({"utterance_id": "train-1-0", "kind": "entities"}) + "\n")
    run_review_stage(review_cfg(), run, dataset, RecordingTracker())
    queue = [json.loads(line) for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    line = next(line for line in queue if line["kind"] == "entities" and line["utterance_id"] == "train-1-0")
    assert line["not_judged"] == "label_in_one_fold" and line["score"] is None
    assert line["annotated"] == [{"type": "music_genre", "value": "jazz music"}]
    assert '"music" I-music_genre' in line["reason"]
    assert queue.index(line) >= sum(other["not_judged"] is None for other in queue)  # after every ranked line
    summary = json.loads((run / "review" / "summary.json").read_text())
    assert summary["not_judged"]["entities"] == {"label_in_one_fold": 6}  # its own and the five "paris" takes
    scoring = json.loads((run / "review" / "noise_scoring.json").read_text())
    assert "entities" not in scoring["kinds"]  # not a scored clip: no k, no precision at k
    assert scoring["queued_unjudged"]["entities"] == {"lines": 6, "planted": 1, "planted_read": 0}
    # A second pass over every clip reads past the ranked lines into the unscored ones: the planted
    # error there is one it finds, counted apart from k.
    run_review_stage(review_cfg(**{"review.max_share": 1.0}), run, dataset, RecordingTracker())
    scoring = json.loads((run / "review" / "noise_scoring.json").read_text())
    queue = [json.loads(line) for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    assert scoring["lines_reviewed"] >= len(queue)
    assert scoring["queued_unjudged"]["entities"] == {"lines": 6, "planted": 1, "planted_read": 1}
    assert "(1 of them within the" in (run / "report.md").read_text()


def test_the_wake_kind_counts_the_clips_of_a_fold_without_both_flags(tiny_models: Path, tiny_dataset_path: Path,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix: those clips were named in a note, but summary.json's `not_judged` had no
    count of them, as it has of every other kind's unjudged clips."""
    from datasets import DatasetDict

    import pipeline.review.wake as wake
    from pipeline.review.stage import run_review_stage

    # The tiny random ASR model cannot tell the flags apart (the kind would be skipped as a whole).
    monkeypatch.setattr(wake, "wake_auc", lambda labels, scores: 1.0)
    dd = load_from_disk(str(tiny_dataset_path))
    dataset = tmp_path / "false_wakes_of_one_account"
    DatasetDict({name: split.map(lambda r: {"wake_word_present": r["speaker"] != "spk_test_0"})
                 for name, split in dd.items()}).save_to_disk(str(dataset))
    run = make_run(tmp_path, tiny_models, dataset, kinds=("asr",))
    run_review_stage(review_cfg(), run, dataset, RecordingTracker())
    summary = json.loads((run / "review" / "summary.json").read_text())
    left = summary["clips"] - summary["scored"]["wake"]
    assert 0 < left < summary["clips"]
    assert summary["not_judged"] == {"wake": {"flag_in_one_fold": left}}
    assert any(n.startswith(f"wake kind: {left} of 40 clips not judged") for n in summary["notes"])
    queue = [json.loads(line) for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    assert all(line["not_judged"] is None for line in queue)  # only the text kinds queue their unjudged clips
