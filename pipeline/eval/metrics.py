"""Scores for transcripts, intents and entities, each a plain function of references and predictions.

Every function takes already-aligned lists (one item per clip) so that the same code scores gold
transcripts, ASR hypotheses and any slice of them. Texts go through `normalize_text` here, not in
the callers, so a WER can never be computed on un-normalised strings by accident.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import jiwer

from pipeline.text import normalize_text

Entity = dict[str, Any]  # {"type", "value", ...}: only type and value are scored
EDIT_KEYS = ("word_errors", "ref_words", "char_errors", "ref_chars")  # one clip's counts, `edit_counts`


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: total word errors over total reference words (not a mean of per-clip WERs). A clip
    whose transcript is empty is not scored: in a corpus that labels only, empty means not
    transcribed, so words heard there cannot be told from errors (sclite and jiwer 4 would count
    them as insertions)."""
    totals = _totals(references, hypotheses)
    return totals["word_errors"] / totals["ref_words"]


def cer(references: list[str], hypotheses: list[str]) -> float:
    totals = _totals(references, hypotheses)
    return totals["char_errors"] / totals["ref_chars"]


def error_rates(references: list[str], hypotheses: list[str]) -> tuple[float, float]:
    """(WER, CER) from one alignment of each clip: `wer` and `cer` called apart align every clip twice."""
    totals = _totals(references, hypotheses)
    return totals["word_errors"] / totals["ref_words"], totals["char_errors"] / totals["ref_chars"]


def has_words(references: Iterable[str]) -> bool:
    """Whether any reference has a word to score a WER against (a corpus that labels only has none)."""
    return any(normalize_text(r) for r in references)


def utterance_wer(reference: str, hypothesis: str) -> float:
    return wer([reference], [hypothesis])


def edit_counts(reference: str, hypothesis: str) -> dict[str, int]:
    """One clip's word and character errors and reference lengths (normalised like `wer`).

    Summed over clips they give the corpus WER and CER exactly, which is what lets a bootstrap
    recompute both from resampled clips (Bisani & Ney 2004) without re-aligning any text.
    A clip whose reference is empty after normalisation counts nothing, as in `wer`.
    """
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return dict.fromkeys(EDIT_KEYS, 0)
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    return {
        "word_errors": words.substitutions + words.deletions + words.insertions,
        "ref_words": len(ref.split()),
        "char_errors": chars.substitutions + chars.deletions + chars.insertions,
        "ref_chars": len(ref),
    }


def _totals(references: list[str], hypotheses: list[str]) -> dict[str, int]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    totals = Counter()
    for ref, hyp in zip(references, hypotheses):
        totals.update(edit_counts(ref, hyp))
    if not totals["ref_words"]:
        raise ValueError("every reference is empty after normalisation")
    return totals


def wer_by_slice(
    references: list[str], hypotheses: list[str], slices: list[str]
) -> dict[str, dict[str, float]]:
    """WER and clip count per slice value (speaker, intent, duration bucket...)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(slices):
        groups[str(key)].append(i)
    out: dict[str, dict[str, float]] = {}
    for key in sorted(groups):
        idx = groups[key]
        if has_words(references[i] for i in idx):
            out[key] = {
                "wer": wer([references[i] for i in idx], [hypotheses[i] for i in idx]),
                "clips": sum(has_words([references[i]]) for i in idx),  # the clips scored
            }
    return out


def duration_bucket(seconds: float, edges: list[float]) -> str:
    """'<2s', '2-4s', '>=8s' style labels, so slices sort and read naturally in the report."""
    edges = sorted(edges)
    if seconds < edges[0]:
        return f"<{edges[0]:g}s"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= seconds < hi:
            return f"{lo:g}-{hi:g}s"
    return f">={edges[-1]:g}s"


def intent_scores(gold: list[str], predicted: list[str]) -> dict[str, float]:
    """Accuracy and macro F1 over the intents in gold.

    The macro mean runs over the gold intents only: an intent that is only ever predicted (e.g.
    `no_command` on a clip that has an intent) is no class of the test set, so it is not averaged
    in as a zero-F1 class; the wrong prediction still costs the true intent's recall.
    """
    if not gold:
        raise ValueError("no intents to score")
    accuracy = sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)
    from sklearn.metrics import f1_score  # here: its import costs every job that reads a metric name ~0.4 s

    labels = sorted(set(gold))
    macro = f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)
    return {"accuracy": float(accuracy), "macro_f1": float(macro)}


@dataclass
class Counts:
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0

    def f1(self) -> float:
        """F1 from counts; 0 when nothing was predicted nor expected (no entities to find)."""
        denom = 2 * self.tp + self.fp + self.fn
        return 0.0 if denom == 0 else 2 * self.tp / denom


def _key(entity: Entity, normalize: bool = True) -> tuple[str, str]:
    value = str(entity["value"])
    return str(entity["type"]), normalize_text(value) if normalize else value


def entity_scores(gold: list[list[Entity]], predicted: list[list[Entity]], normalize: bool = True) -> dict[str, Any]:
    """Exact-match entity F1: a prediction counts when its type and normalised value match a gold
    entity of the same clip, one to one. Values, not offsets, are compared, so the same function
    scores predictions on ASR hypotheses, whose offsets mean nothing against the transcript.
    `normalize=False` compares the strings as given (SLURP's scorer does)."""
    per_type: dict[str, Counts] = defaultdict(Counts)
    for gold_ents, pred_ents in zip(gold, predicted, strict=True):
        remaining = Counter(_key(e, normalize) for e in gold_ents)
        for ent in pred_ents:
            key = _key(ent, normalize)
            if remaining[key] > 0:
                remaining[key] -= 1
                per_type[key[0]].tp += 1
            else:
                per_type[key[0]].fp += 1
        for (etype, _), left in remaining.items():
            per_type[etype].fn += left
    return _summarise(per_type)


def _summarise(per_type: dict[str, Counts]) -> dict[str, Any]:
    total = Counts(
        sum(c.tp for c in per_type.values()),
        sum(c.fp for c in per_type.values()),
        sum(c.fn for c in per_type.values()),
    )
    return {
        "f1": total.f1(),
        "per_type": {t: {"f1": c.f1(), "tp": c.tp, "fp": c.fp, "fn": c.fn} for t, c in sorted(per_type.items())},
    }


def word_distance(gold: str, predicted: str) -> float:
    """SLURP's word-level distance: the WER of the predicted value against the gold one (uncapped)."""
    return float(jiwer.wer(gold, predicted)) if gold else float(bool(predicted))


def char_distance(gold: str, predicted: str) -> float:
    """SLURP's character-level distance: Levenshtein distance over the longer string's length."""
    longest = max(len(gold), len(predicted))
    if longest == 0:
        return 0.0
    if not gold or not predicted:
        return 1.0
    out = jiwer.process_characters(gold, predicted)
    return (out.substitutions + out.deletions + out.insertions) / longest


def _distance_counts(
    gold: list[list[Entity]], predicted: list[list[Entity]], distance: Any, normalize: bool = True
) -> dict[str, Counts]:
    """SLURP's span-distance counts: each prediction pairs with the closest still-unmatched gold
    entity of its type; the pair is one true positive plus its distance as both FP and FN."""
    per_type: dict[str, Counts] = defaultdict(Counts)
    for gold_ents, pred_ents in zip(gold, predicted, strict=True):
        left = [_key(e, normalize) for e in gold_ents]
        for ent in pred_ents:
            etype, value = _key(ent, normalize)
            candidates = [(distance(g_value, value), j) for j, (g_type, g_value) in enumerate(left) if g_type == etype]
            if candidates:
                d, j = min(candidates)
                per_type[etype].tp += 1
                per_type[etype].fp += d
                per_type[etype].fn += d
                left.pop(j)
            else:
                per_type[etype].fp += 1
        for g_type, _ in left:
            per_type[g_type].fn += 1
    return per_type


def slu_f1(gold: list[list[Entity]], predicted: list[list[Entity]], normalize: bool = True) -> dict[str, Any]:
    """SLU-F1 as SLURP scores it: word- and character-distance counts summed, then one F1
    (P = 2TP / (2TP + FP_word + FP_char)), not the mean of two F1 scores."""
    word = _distance_counts(gold, predicted, word_distance, normalize)
    char = _distance_counts(gold, predicted, char_distance, normalize)
    combined: dict[str, Counts] = {}
    for etype in set(word) | set(char):
        w, c = word.get(etype, Counts()), char.get(etype, Counts())
        combined[etype] = Counts(w.tp + c.tp, w.fp + c.fp, w.fn + c.fn)
    return _summarise(combined)


def total_counts(scores: dict[str, Any]) -> dict[str, float]:
    """The summed TP / FP / FN behind an `entity_scores` or `slu_f1` result (all types together):
    per clip, what a bootstrap adds up to recompute the micro F1."""
    per_type = scores["per_type"].values()
    return {k: float(sum(c[k] for c in per_type)) for k in ("tp", "fp", "fn")}


def understanding_scores(
    gold_intents: list[str], predicted_intents: list[str],
    gold_entities: list[list[Entity]], predicted_entities: list[list[Entity]],
) -> dict[str, float]:
    """Intent accuracy and micro entity precision, recall and F1 (exact type, normalised value), from
    the same functions as the eval stage's `nlu/` metrics, so the NLU stage's validation and test
    scores agree with them on the same clips."""
    entities = entity_scores(gold_entities, predicted_entities)
    counts = total_counts(entities)
    predicted, expected = counts["tp"] + counts["fp"], counts["tp"] + counts["fn"]
    return {
        "intent_accuracy": intent_scores(gold_intents, predicted_intents)["accuracy"],
        "entity_precision": counts["tp"] / predicted if predicted else 0.0,
        "entity_recall": counts["tp"] / expected if expected else 0.0,
        "entity_f1": entities["f1"],
    }


def tag_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    """Span F1 over BIO tag sequences (seqeval, CoNLL rules), 0 when gold has no entity at all:
    the NLU's per-epoch model selection, which sees tags rather than entity strings."""
    from seqeval.metrics import f1_score as seqeval_f1

    if not any("-" in t for seq in gold for t in seq):
        return 0.0
    return float(seqeval_f1(gold, predicted))


SLU_SCORING = ("project", "slurp")


def slurp_gold_entities(record: dict[str, Any]) -> list[Entity]:
    """Gold entities of one SLURP record as SLURP's scorer builds them: each filler is the record's
    tokens over the entity's span, lower-cased and joined by spaces ("jessica 's", not the
    annotation's "jessica's"), with no other normalisation."""
    tokens = record["tokens"]
    return [
        {"type": str(e["type"]), "value": " ".join(str(tokens[i]["surface"]).lower() for i in e["span"])}
        for e in record.get("entities") or []
    ]


def slurp_scores(
    gold_intents: list[str], gold: list[list[Entity]],
    predicted_intents: list[str | None], predicted: list[list[Entity] | None],
) -> dict[str, Any]:
    """Intent accuracy, span F1 and SLU-F1 exactly as SLURP's scorer counts them: gold fillers as
    given (see `slurp_gold_entities`), predicted strings as given, and a record without a
    prediction (None) skipped rather than counted as an error (its coverage rule)."""
    keep = [i for i, p in enumerate(predicted) if p is not None and predicted_intents[i] is not None]
    if not keep:
        raise ValueError("no SLURP record has a prediction; nothing to score")
    gold_kept, pred_kept = [gold[i] for i in keep], [predicted[i] for i in keep]
    intents = [gold_intents[i] for i in keep]
    return {
        "intent_accuracy": sum(intents[k] == predicted_intents[i] for k, i in enumerate(keep)) / len(keep),
        "entity": entity_scores(gold_kept, pred_kept, normalize=False),  # type: ignore[arg-type]
        "slu": slu_f1(gold_kept, pred_kept, normalize=False),  # type: ignore[arg-type]
        "records": len(gold),
        "scored": len(keep),
    }


def worst_utterances(rows: Iterable[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The `n` clips with the highest WER (ties: longest reference first), for a person to read."""
    scored = [r for r in rows if r.get("wer") is not None]
    return sorted(scored, key=lambda r: (-r["wer"], -len(r["reference"]), r["utterance_id"]))[:n]
