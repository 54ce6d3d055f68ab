"""Which metrics an evaluation can compute, and every metric per data source.

An evaluation may have an ASR model, an NLU model or both, and a labelled set may lack intents,
entities or clips with (or without) the wake word. A metric that cannot be computed is left out of
metrics.json (a null or a zero would read as a result); `not_computed` says why, in
eval_details.json and in the report. Per source (the dataset's `source` column, one per input of a
multi-source build) every computed metric is recomputed on that source's clips alone, as
`by_source/<name>/<key>`, because a pooled WER hides a corpus the model does badly on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M
from pipeline.runtime import PipelineError

ASR_KEYS = ("asr/wer", "asr/cer", "asr/wer_greedy", "asr/cer_greedy", "eval/rtf")
WAKE_KEYS = ("wake/frr", "wake/fa_per_hour", "wake/auc", "wake/eer", "wake/threshold")
FA_RATES = (0.5, 1.0, 2.0, 5.0)  # false accepts per hour at which the test FRR is read off the DET
# Only when background recordings were streamed (pipeline.eval.stream).
BACKGROUND_KEYS = (*(f"wake/frr_at_{r:g}_fa_per_hour" for r in FA_RATES), "wake/background_hours")
NLU_INTENT_KEYS = ("nlu/intent_accuracy", "nlu/intent_macro_f1")
NLU_ENTITY_KEYS = ("nlu/entity_f1",)
SLU_INTENT_KEYS = ("slu/intent_accuracy", "slu/intent_macro_f1")
SLU_ENTITY_KEYS = ("slu/entity_f1", "slu/slu_f1")
# Every key metrics.json can hold (besides by_source/<source>/<key>), e.g. for checking a gate rule's name.
ALL_KEYS = (*ASR_KEYS, *WAKE_KEYS, *BACKGROUND_KEYS, *NLU_INTENT_KEYS, *NLU_ENTITY_KEYS, *SLU_INTENT_KEYS,
            *SLU_ENTITY_KEYS, "eval/num_clips", "eval/audio_hours")


def models_to_evaluate(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, Path | None]:
    """(ASR folder, NLU folder), either None when absent: `asr_model=` / `nlu_model=` when given, else
    the run's own `asr/` and `nlu/` where they exist. At least one is needed."""
    given = {kind: OmegaConf.select(cfg, f"{kind}_model", default=None) for kind in ("asr", "nlu")}
    found: dict[str, Path | None] = {}
    for kind, value in given.items():
        if value:
            path = Path(str(value))
            if not path.is_dir():
                raise PipelineError(f"{kind}_model={path}: no such folder; pass a saved {kind.upper()} model folder")
            found[kind] = path
        else:
            found[kind] = run_dir / kind if (run_dir / kind / "config.json").is_file() else None
    if found["asr"] is None and found["nlu"] is None:
        raise PipelineError(
            f"{run_dir}: no ASR model here ({run_dir / 'asr'}) and no NLU model ({run_dir / 'nlu'}); pass run=<a finished "
            "run folder>, or asr_model=<folder>, nlu_model=<folder> or both, with dataset=<built dataset folder>"
        )
    return found["asr"], found["nlu"]


def model_reasons(asr_dir: Path | None, nlu_dir: Path | None) -> dict[str, str]:
    """The metrics a missing model rules out (SLU needs both: the NLU reads the ASR transcripts)."""
    out: dict[str, str] = {}
    if asr_dir is None:
        why = "no ASR model was evaluated (pass asr_model=<folder>)"
        out.update(dict.fromkeys((*ASR_KEYS, *WAKE_KEYS, *BACKGROUND_KEYS, *SLU_INTENT_KEYS, *SLU_ENTITY_KEYS), why))
    if nlu_dir is None:
        why = "no NLU model was evaluated (pass nlu_model=<folder>)"
        out.update({k: why for k in (*NLU_INTENT_KEYS, *NLU_ENTITY_KEYS, *SLU_INTENT_KEYS, *SLU_ENTITY_KEYS) if k not in out})
    return out


def label_reasons(split: str, with_intent: Sequence[Mapping[str, Any]], wake_skipped: str | None,
                  have_asr: bool, have_nlu: bool, have_words: bool = True) -> dict[str, str]:
    """The metrics the labels rule out: no transcript, no intent, no entity, no clip with or without
    the wake word. Entities are those the scores count against (`scoring_entities`, set by
    pipeline.eval.run._scoring_gold: SLURP's fillers under eval.slu_scoring=slurp, which may differ
    from the dataset's own); rows without that key fall back to the dataset's `gold_entities`."""
    out: dict[str, str] = {}
    if have_asr and not have_words:
        out.update(dict.fromkeys((k for k in ASR_KEYS if k != "eval/rtf"), f"split {split!r} has no clip with a transcript"))
    if have_asr and wake_skipped:
        out.update(dict.fromkeys((*WAKE_KEYS, *BACKGROUND_KEYS), wake_skipped))
    if have_nlu:
        understanding = (*NLU_INTENT_KEYS, *NLU_ENTITY_KEYS, *((*SLU_INTENT_KEYS, *SLU_ENTITY_KEYS) if have_asr else ()))
        if not with_intent:
            out.update(dict.fromkeys(understanding, f"split {split!r} has no clip with an intent"))
        elif not any(r["scoring_entities"] if "scoring_entities" in r else r.get("gold_entities") for r in with_intent):
            entity = (*NLU_ENTITY_KEYS, *(SLU_ENTITY_KEYS if have_asr else ()))
            out.update(dict.fromkeys(entity, f"split {split!r} has no clip with an entity"))
    return out


def leave_out(metrics: dict[str, Any], not_computed: Mapping[str, str]) -> dict[str, Any]:
    """metrics without the keys that could not be computed (and their interval bounds)."""
    drop = {k for key in not_computed for k in (key, f"{key}_ci_low", f"{key}_ci_high")}
    return {k: v for k, v in metrics.items() if k not in drop}


def clip_counts(row: Mapping[str, Any], threshold: float | None) -> dict[str, float]:
    """B.clip_counts for a clip that may have no ASR result (an NLU-only evaluation): no edit counts.
    A negative clip's seconds are those the keyword was looked for in (`wake_seconds`: less than its
    duration under eval.wake_window_s), as in the headline false accepts per hour."""
    if "wake_seconds" in row:
        row = {**row, "duration": row["wake_seconds"]}
    if "edit" in row:
        return B.clip_counts(row, threshold)
    counts = B.clip_counts({**row, "edit": dict.fromkeys(M.EDIT_KEYS, 0)}, threshold)
    return {k: v for k, v in counts.items() if k not in M.EDIT_KEYS}


def add_sources(split: Any, rows: list[dict[str, Any]]) -> bool:
    """Copy the dataset's `source` column into the rows; False for a dataset without one."""
    if "source" not in split.column_names:
        return False
    for row, source in zip(rows, split.select_columns(["source"])["source"]):
        row["source"] = source
    return True


def by_source(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], threshold: float | None) -> dict[str, dict[str, float]]:
    """Every computed headline metric again on each source's clips. A metric a source cannot give
    (its clips have no intent, no entity, or only one side of the wake word) is left out for it."""
    from pipeline.eval.wake import evaluate_wake

    out: dict[str, dict[str, float]] = {}
    for name in sorted({str(r["source"]) for r in rows if r.get("source") is not None}):
        clips = [r for r in rows if r.get("source") == name]
        m: dict[str, float] = {"eval/num_clips": len(clips),
                               "eval/audio_hours": sum(float(r["duration"]) for r in clips) / 3600.0}
        refs = [r["reference"] for r in clips]
        if "asr/wer" in metrics and M.has_words(refs):
            hyps, greedy = [r["hypothesis"] for r in clips], [r["greedy_hypothesis"] for r in clips]
            m.update({"asr/wer": M.wer(refs, hyps), "asr/cer": M.cer(refs, hyps),
                      "asr/wer_greedy": M.wer(refs, greedy), "asr/cer_greedy": M.cer(refs, greedy)})
        if "wake/frr" in metrics and threshold is not None:
            labels = np.array([bool(r["wake_word_present"]) for r in clips])
            scores = np.array([-math.inf if r.get("wake_score") is None else float(r["wake_score"]) for r in clips])
            durations = np.array([float(r.get("wake_seconds", r["duration"])) for r in clips])  # as clip_counts
            # With background recordings, the headline false accepts per hour come from them, which
            # belong to no source; a per-source figure from negative clips would be another quantity.
            clip_rate = not metrics.get("wake/background_hours")
            if labels.any() and not labels.all():
                result = evaluate_wake(scores, labels, durations, threshold)
                m.update({"wake/frr": result.frr, "wake/auc": result.auc, "wake/eer": result.eer})
                if clip_rate and result.fa_per_hour is not None:
                    m["wake/fa_per_hour"] = result.fa_per_hour
            elif labels.any():
                m["wake/frr"] = float(np.mean(scores < threshold))
            elif durations.sum() > 0 and clip_rate:
                m["wake/fa_per_hour"] = float(np.sum(scores >= threshold) / (durations.sum() / 3600.0))
        for side in ("nlu", "slu"):
            if f"{side}/intent_accuracy" not in metrics:
                continue
            scored = [r for r in clips if r.get(f"{side}_scored")]
            if not scored:
                continue
            intents = M.intent_scores([r["intent"] for r in scored], [r[f"{side}_intent"] for r in scored])
            m[f"{side}/intent_accuracy"] = intents["accuracy"]
            m[f"{side}/intent_macro_f1"] = intents["macro_f1"]
            # Entities as scored (SLURP's fillers under eval.slu_scoring=slurp, not the dataset's): the
            # gold count in the clip's entity counts (every gold entity is a tp or an fn).
            if any(r["counts"].get(f"{side}_entity_tp", 0.0) + r["counts"].get(f"{side}_entity_fn", 0.0) for r in scored):
                for prefix, key in ((f"{side}_entity", f"{side}/entity_f1"), ("slu_f1", "slu/slu_f1")):
                    if key in metrics and (side == "slu" or prefix != "slu_f1"):
                        m[key] = M.Counts(*(sum(r["counts"].get(f"{prefix}_{k}", 0.0) for r in scored)
                                            for k in ("tp", "fp", "fn"))).f1()
        out[name] = m
    return out


def by_source_keys(per_source: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"by_source/{name}/{key}": value for name, m in per_source.items() for key, value in m.items()}


def not_computed_notes(not_computed: Mapping[str, str]) -> list[str]:
    """One report line per reason: which metrics were left out of metrics.json and why."""
    keys_by_reason: dict[str, list[str]] = {}
    for key, why in not_computed.items():
        keys_by_reason.setdefault(why, []).append(key)
    return [f"Not computed ({why}): " + ", ".join(f"`{k}`" for k in keys) + "."
            for why, keys in keys_by_reason.items()]


def source_table(per_source: Mapping[str, Mapping[str, float]]) -> tuple[list[str], list[list[str]]] | None:
    """Metric rows by source columns (`n/a` where a source cannot give that metric)."""
    if not per_source:
        return None
    names = list(per_source)
    keys = list(dict.fromkeys(k for m in per_source.values() for k in m))

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
        return str(value)

    return ["metric", *names], [[f"`{k}`", *(cell(per_source[n].get(k)) for n in names)] for k in keys]
