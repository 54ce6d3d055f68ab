"""The review stage: score every kept clip of every split for likely annotation errors.

Reads the built dataset and the run's `asr/` and `nlu/` models; writes `<run>/review/queue.jsonl`
(one line per clip and kind where the model disagrees with the annotation, most suspicious first,
then, unscored, the clips a text kind could not judge because only their own fold carries their label),
`<run>/review/summary.json`, and a section of report.md / report.html. A run without one of the
models still reviews what the other can judge.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config import checked
from pipeline.data.saved import open_saved, require
from pipeline.distributed import pick_device
from pipeline.review.config import ReviewConfig
from pipeline.review.crossfit import account_folds, embed, load_backbone, text_folds
from pipeline.review.suspects import KINDS, Suspect, budget, rank, ranked
from pipeline.runtime import PipelineError
from pipeline.tracking import Tracker, transcripts_allowed

log = logging.getLogger(__name__)

COLUMNS = ["utterance_id", "speaker", "transcript", "text", "intent", "words", "bio_tags", "entities",
           "wake_word_present"]
# Values and reasons of these kinds quote what was said: W&B gets them only where transcripts may go.
QUOTING_KINDS = ("transcript", "entities")


def run_review_stage(cfg: DictConfig, run_dir: Path, dataset_path: Path, tracker: Tracker) -> dict[str, Any]:
    node = OmegaConf.select(cfg, "review", default=None)
    if node is None:
        raise PipelineError("the config has no `review` group; add `- review: default` to the defaults (conf/review/default.yaml)")
    rcfg = checked(node, ReviewConfig, "review")  # types and ranges (folds >= 2, 0 < max_share <= 1)
    # Both models the review runs go on this one device; a GPU that is not there is refused before
    # either pass, whichever model the run has.
    device = pick_device(rcfg.device, "review.device")
    max_share = rcfg.max_share
    run_dir = Path(run_dir)
    splits = _load(Path(dataset_path))
    rows = [{**row, "split": name} for name, split in splits.items() for row in _rows(split)]
    if not rows:
        raise PipelineError(f"dataset {dataset_path} has no clips to review")
    accounts = len({r["speaker"] for r in rows})
    started = time.perf_counter()

    seconds: dict[str, float] = {}
    notes: list[str] = []
    not_judged: dict[str, dict[str, int]] = {}  # per kind, the clips it left unjudged for each reason
    suspects: list[Suspect] = []
    scored_ids: dict[str, set[str]] = {k: set() for k in KINDS}
    extra: dict[str, Any] = {}
    asr_dir, nlu_dir = run_dir / "asr", run_dir / "nlu"
    with_audio = all("audio" in s.column_names for s in splits.values())
    acoustic = (asr_dir / "config.json").exists() and with_audio
    if not acoustic and not (nlu_dir / "config.json").exists():
        raise PipelineError(f"{run_dir}: nothing to review with: no NLU model ({nlu_dir}) and no ASR model "
                            f"({asr_dir}){'' if with_audio else ' for a dataset with audio'}; the review judges the "
                            "annotations with the run's models: train them first (stages=[asr,nlu])")
    # Whole accounts are held out for the wake kind alone (the transcript kind needs no folds, the text
    # kinds hold out texts), so the account count limits review.folds only where the wake kind runs,
    # and is checked here, before the ASR pass. Clips of one account leave nothing to hold out.
    wake_fold = account_folds([r["speaker"] for r in rows], rcfg.folds).fold if acoustic and accounts > 1 else None
    # The text kinds judge the clips with an intent (false wakes have none), holding out whole texts.
    commands = [i for i, r in enumerate(rows) if r["intent"] is not None]
    texts = [" ".join(rows[i]["words"] or []) for i in commands]
    text_fold = text_folds(texts, rcfg.folds) if (nlu_dir / "config.json").exists() else None
    if not (asr_dir / "config.json").exists():
        notes.append(f"transcript and wake kinds skipped: the run has no ASR model ({asr_dir} has no config.json)")
    elif not with_audio:
        notes.append("transcript and wake kinds skipped: the dataset has no audio")
    else:
        found, judged = _acoustic_kinds(cfg, rcfg, device, asr_dir, splits, rows, wake_fold, seconds, notes, not_judged)
        suspects += found
        for kind in ("transcript", "wake"):
            scored_ids[kind] = {r["utterance_id"] for r, yes in zip(rows, judged[kind]) if yes}
    if not (nlu_dir / "config.json").exists():
        notes.append(f"intent and entities kinds skipped: the run has no NLU model ({nlu_dir} has no config.json)")
    elif text_fold is None:
        notes.append("intent and entities kinds skipped: " + ("no clip has an intent" if not commands else
                     f"the {len(commands)} clips with an intent all read one text, and these kinds hold out whole texts"))
    else:
        found, extra, judged = _text_kinds(cfg, rcfg, device, nlu_dir, [rows[i] for i in commands], text_fold, seconds,
                                           notes, not_judged)
        suspects += found
        for kind, mask in judged.items():
            scored_ids[kind] = {rows[i]["utterance_id"] for i, yes in zip(commands, mask) if yes}
    for note in notes:
        log.warning("review: %s", note)

    queue = rank(suspects)  # the judged lines, then the unscored ones (suspects.rank)
    judged_lines = ranked(queue)
    out_dir = run_dir / "review"
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "queue.jsonl").open("w") as f:
        for s in queue:
            f.write(json.dumps(s.as_dict()) + "\n")
    reviewed = budget(len(rows), max_share)
    summary = {
        "clips": len(rows), "accounts": accounts, "folds": rcfg.folds, "max_share": max_share,
        "budget": reviewed, "scored": {k: len(v) for k, v in scored_ids.items()},
        # Judged lines (the model disagrees); the unjudged clips queued after them are counted apart.
        "lines": {k: sum(s.kind == k for s in judged_lines) for k in KINDS},
        "flagged": {k: sum(s.kind == k for s in judged_lines[:reviewed]) for k in KINDS},
        "queued_unjudged": {k: sum(s.kind == k for s in queue[len(judged_lines):]) for k in KINDS},
        "seconds": {**{k: round(v, 2) for k, v in seconds.items()}, "total": round(time.perf_counter() - started, 2)},
        "not_judged": not_judged, "notes": notes, **extra,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    from pipeline.review.report import score_against_noise, section_blocks, write_section

    scoring = score_against_noise(run_dir, queue, summary, scored_ids)
    (out_dir / "noise_scoring.json").unlink(missing_ok=True)
    if scoring:
        (out_dir / "noise_scoring.json").write_text(json.dumps(scoring, indent=2) + "\n")
    write_section(run_dir, section_blocks(queue, summary, scoring, rcfg.top_n))
    _log(cfg, tracker, queue, summary, scoring)
    log.info("review: %d lines in %s; the first %d (%.0f%% of %d clips) hold %s", len(queue), out_dir / "queue.jsonl",
             reviewed, max_share * 100, len(rows), summary["flagged"])
    return {"queue": str(out_dir / "queue.jsonl"), "flagged": summary["flagged"], "seconds": summary["seconds"]}


def _load(path: Path) -> dict[str, Any]:
    """The dataset's non-empty splits, checked to hold the columns the review reads."""
    dd = open_saved(path)
    return {name: split for name in dd if len(split := require(dd, path, name, COLUMNS, "the review", nonempty=False))}


def _rows(split: Any) -> list[dict[str, Any]]:
    data = split.select_columns(COLUMNS).to_dict()
    return [{c: data[c][i] for c in COLUMNS} for i in range(len(split))]


def _acoustic_kinds(cfg: DictConfig, rcfg: ReviewConfig, device: torch.device, asr_dir: Path, splits: dict[str, Any],
                    rows: list[dict[str, Any]], fold: np.ndarray | None, seconds: dict[str, float], notes: list[str],
                    not_judged: dict[str, dict[str, int]]) -> tuple[list[Suspect], dict[str, np.ndarray]]:
    """The transcript and wake kinds' lines, and which clips each judged; why a kind left clips
    unjudged goes into `notes`, and how many for each reason into `not_judged`. `fold`: each clip's
    account fold, None when the clips come from one account (the wake kind then judges none).

    A clip too short for the ASR model (no output frame, as recorded or at a transcript tempo) is
    judged by neither kind: the model heard nothing of it, so the transcript kind would read its
    annotation as impossible and the wake kind its flag as contradicted, whatever was said in it.
    Evaluation scores such clips as empty transcripts; here they are counted and named in a note."""
    from pipeline.asr.model import load_asr
    from pipeline.data.features import SAMPLING_RATE
    from pipeline.eval.run import keyword_ids, receptive_field
    from pipeline.review.acoustic import score_clips
    from pipeline.review.transcript import transcript_suspects
    from pipeline.review.wake import wake_suspects
    from pipeline.text import normalize_text

    ecfg = OmegaConf.select(cfg, "eval", default=None)
    word = normalize_text(str(OmegaConf.select(cfg, "eval.wake_word", default="") or ""))
    if ecfg is None or not word:
        raise PipelineError("the review's wake kind needs eval.wake_word, which the run's config.yaml leaves empty; "
                            "give the word the run's models were evaluated on: python -m pipeline.review <run> "
                            "eval.wake_word=<word>")
    model, processor = load_asr(asr_dir, device)
    keyword = keyword_ids(processor, word, bool(ecfg.wake_word_boundary), asr_dir)
    tempos = [float(t) for t in rcfg.transcript_tempos]
    gaps, alternatives, wake, short, wake_short = [], [[] for _ in tempos], [], [], []
    for name, split in splits.items():
        scores = score_clips(model, processor, split, keyword, rcfg.batch_size, ecfg.wake_window_s, tempos)
        gaps.append(scores.transcript_gap)
        for v, texts in enumerate(scores.alternative):
            alternatives[v] += texts
        wake.append(scores.wake_score)
        short.append(scores.too_short.any(axis=0))
        wake_short.append(scores.wake_too_short)
        for key, value in scores.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    heard, wake_heard = ~np.concatenate(short), ~np.concatenate(wake_short)
    shortest = receptive_field(model)
    for kind, kept, played in (("transcript", heard, f"as recorded or at review.transcript_tempos {tempos}"),
                               ("wake", wake_heard, "as recorded")):
        if not kept.all() and (kind == "transcript" or fold is not None):  # else the wake kind judges none anyway
            count = int((~kept).sum())
            not_judged.setdefault(kind, {})["too_short_for_asr"] = count
            notes.append(f"{kind} kind: {count} of {len(rows)} clips not judged: too short for the ASR model "
                         f"{played} (under its receptive field of {shortest} samples, {shortest / SAMPLING_RATE:.3f} s, "
                         "it gives no output frame); evaluation scores them as empty transcripts, and rebuilding the "
                         f"dataset with data.min_duration_s above {shortest * max(tempos + [1.0]) / SAMPLING_RATE:.3f} "
                         "leaves them out")
    started = time.perf_counter()
    at = np.flatnonzero(heard)
    found = transcript_suspects([rows[i] for i in at], np.concatenate(gaps, axis=1)[:, at],
                                [[texts[i] for i in at] for texts in alternatives], tempos)
    lap = time.perf_counter()
    wake_judged = np.zeros(len(rows), dtype=bool)
    at = np.flatnonzero(wake_heard)
    if fold is None:
        wake_found = []
        notes.append("wake kind skipped: every clip comes from one account, and the wake kind holds out whole "
                     "accounts to learn its threshold without a clip's own voice")
    elif len(at):
        wake_found, judged, wake_note, left = wake_suspects([rows[i] for i in at], np.concatenate(wake)[at], fold[at])
        wake_judged[at] = judged
        if left:
            not_judged.setdefault("wake", {}).update(left)
        if wake_note:
            notes.append(wake_note)
    else:
        wake_found = []
    seconds["transcript"] += lap - started
    seconds["wake"] += time.perf_counter() - lap
    return found + wake_found, {"transcript": heard, "wake": wake_judged}


def _text_kinds(cfg: DictConfig, rcfg: ReviewConfig, device: torch.device, nlu_dir: Path, rows: list[dict[str, Any]],
                fold: np.ndarray, seconds: dict[str, float], notes: list[str],
                not_judged: dict[str, dict[str, int]]) -> tuple[list[Suspect], dict[str, Any], dict[str, np.ndarray]]:
    """The intent and entities kinds' lines, cleanlab's verdict, and which clips each judged. A clip
    whose label (intent, or a word's entity tag) no other fold of texts holds is left unjudged
    (crossfit.seen_elsewhere: one phrasing of a class reads as a certain mislabel); how many, and
    of which labels, goes into `notes` and `not_judged`, and each such clip gets an unscored line,
    queued after the ranked ones: an annotation error that makes a new label (a span widened by a
    word) lies in one fold too, and left out of the queue no one would see it."""
    from pipeline.review import entities, intent
    from pipeline.review.crossfit import ONE_FOLD

    if not rows:
        return [], {}, {}
    started = time.perf_counter()
    encoder, tokenizer, max_length = load_backbone(cfg.get("nlu") or {}, nlu_dir, int(cfg.get("seed", 0)), device)
    embeddings = embed(encoder, tokenizer, [r["words"] for r in rows], max_length)
    lap = time.perf_counter()
    seconds["text_embedding"] = lap - started
    found, cleanlab, intent_judged = intent.intent_suspects(rows, embeddings.pooled, fold, rcfg.c)
    now = time.perf_counter()
    seconds["intent"] = now - lap
    entity_found, entity_judged, unseen_tags = entities.entity_suspects(rows, embeddings.words, embeddings.pooled, fold, rcfg.c)
    seconds["entities"] = time.perf_counter() - now
    judged = {"intent": intent_judged, "entities": entity_judged}
    unseen = {"intent": sorted({r["intent"] for r, yes in zip(rows, intent_judged) if not yes}), "entities": unseen_tags}
    held = intent.one_fold_lines(rows, intent_judged) + entities.one_fold_lines(rows, entity_judged, unseen_tags)
    what = {"intent": "intent", "entities": "entity tag"}
    for kind, mask in judged.items():
        if mask.all():
            continue
        left, names = int((~mask).sum()), unseen[kind]
        not_judged.setdefault(kind, {})[ONE_FOLD] = left
        notes.append(f"{kind} kind: {left} of {len(rows)} clips not judged: each has an {what[kind]} annotated on "
                     f"texts of one fold only, often one phrasing ({len(names)}: {', '.join(names[:5])}"
                     f"{', ...' if len(names) > 5 else ''}), which the model fitted without that fold never saw, so "
                     "it would call every such clip mislabelled; they are queued after every ranked line, unscored "
                     f"(not_judged: {ONE_FOLD}), to check by hand (an annotation error that makes a new label would "
                     "look the same); or add phrasings of these labels")
    return found + entity_found + held, {"cleanlab": cleanlab}, judged


def _log(cfg: DictConfig, tracker: Tracker, queue: list[Suspect], summary: dict[str, Any], scoring: dict[str, Any]) -> None:
    allowed = transcripts_allowed(cfg)
    columns = ["utterance_id", "split", "kind", "score", "annotated", "model", "reason", "not_judged"]
    rows = []
    for s in queue:
        quoted = s.kind in QUOTING_KINDS and not allowed
        rows.append([s.utterance_id, s.split, s.kind, None if s.score is None else round(s.score, 4),
                     None if quoted else json.dumps(s.annotated), None if quoted else json.dumps(s.model),
                     None if quoted else s.reason, s.not_judged])
    tracker.log_table("review_queue", columns, rows)
    figures: dict[str, Any] = {f"review/{k}_flagged": v for k, v in summary["flagged"].items()}
    figures.update({f"review/{k}_seconds": v for k, v in summary["seconds"].items()})
    for kind, score in (scoring.get("kinds") or {}).items():
        figures[f"review/{kind}_precision_at_k"] = score["precision_at_k"]
        figures[f"review/{kind}_recall_in_queue"] = score["recall_in_queue"]
    tracker.log_summary(figures)
