"""Intervals for the headline metrics, and paired differences between two models on the same clips.

Why speakers, not clips: the clips of one speaker (account) share a voice, a room and a device, so
they are not independent; resampling clips would make every interval too narrow. Each bootstrap
sample draws as many speakers as the split has, with replacement, and recomputes each metric from
the summed per-clip counts of the drawn speakers: the corpus WER from summed word errors over summed
reference words (Bisani & Ney 2004, "Bootstrap estimates for confidence intervals in ASR
performance evaluation"), F1 from summed TP / FP / FN, rates from summed events. The interval is
the 2.5th to 97.5th percentile of the samples.

False accepts per hour are a count of rare events over a fixed stretch of audio, so they get the
exact Poisson interval (Garwood's, from the chi-square distribution) instead: `poisson_rate_interval`
takes the count and the hours, wherever they come from.

A paired comparison applies the same speaker draws to both models' per-clip results, so what the
speakers have in common cancels and only the difference between the models is left to vary.
The per-clip counts are what `clip_counts` writes into every row of `predictions.jsonl`. False
accepts streamed over hours of background recordings belong to no clip: two models on the same
recordings are paired by drawing recordings instead (`paired_rate_difference`), since the stretches
of one recording share a room and a talker as the clips of one speaker do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.eval.metrics import EDIT_KEYS

CONFIDENCE = 0.95
DEFAULT_SAMPLES = 1000
# Fewer draws cannot place the 2.5th and 97.5th percentiles: with one, the "95%" interval need not
# even hold the point value, and a gate would accept or reject on it.
MIN_SAMPLES = 100
DEFAULT_SEED = 0
# A bootstrap over one speaker (or one background recording) draws the same clips every time: its
# interval has zero width, which would read as certainty. Below this many units there is none.
MIN_UNITS = 2

Stats = Mapping[str, np.ndarray]  # summed per-clip counts, one entry per bootstrap sample


def _ratio(num: str, den: str) -> Callable[[Stats], np.ndarray]:
    def value(s: Stats) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(s[den] > 0, s[num] / np.where(s[den] > 0, s[den], 1.0), np.nan)

    return value


def _f1(prefix: str) -> Callable[[Stats], np.ndarray]:
    """Micro F1 from summed counts; nan on a sample with nothing to find nor found. F1 is undefined
    there: scored 0, the samples that drew no speaker with an entity would drag the interval's lower
    end to 0. (The point value on the whole split keeps `Counts.f1`'s 0: `Metric.empty`.)"""

    def value(s: Stats) -> np.ndarray:
        tp, fp, fn = s[f"{prefix}_tp"], s[f"{prefix}_fp"], s[f"{prefix}_fn"]
        denom = 2 * tp + fp + fn
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), np.nan)

    return value


def _per_hour(num: str, seconds: str) -> Callable[[Stats], np.ndarray]:
    def value(s: Stats) -> np.ndarray:
        hours = s[seconds] / 3600.0
        return np.where(hours > 0, s[num] / np.where(hours > 0, hours, 1.0), np.nan)

    return value


@dataclass(frozen=True)
class Metric:
    """A headline metric as a function of summed per-clip counts (`counts` names what it needs)."""

    key: str
    counts: tuple[str, ...]
    value: Callable[[Stats], np.ndarray]
    higher_is_better: bool
    # A share of clips (events over trials): at 0 or 1 every bootstrap sample is the same, so its
    # interval is the exact binomial one over the speakers instead (`_exact_share_interval`).
    share: bool = False
    # The point value when the whole split gives the metric nothing to count (F1: as Counts.f1).
    empty: float = float("nan")

    @property
    def trials(self) -> tuple[str, ...]:
        """The counts that say a clip counts towards the metric: a ratio's denominator, all of F1's."""
        return self.counts[1:] if len(self.counts) == 2 else self.counts


# Every headline metric that is an estimate from the test clips. eval/num_clips, eval/audio_hours
# and eval/rtf describe the run itself and get no interval.
METRICS: tuple[Metric, ...] = (
    Metric("asr/wer", ("word_errors", "ref_words"), _ratio("word_errors", "ref_words"), False),
    Metric("asr/cer", ("char_errors", "ref_chars"), _ratio("char_errors", "ref_chars"), False),
    Metric("wake/frr", ("wake_missed", "wake_positives"), _ratio("wake_missed", "wake_positives"), False, share=True),
    Metric("wake/fa_per_hour", ("wake_false_accepts", "wake_negative_seconds"),
           _per_hour("wake_false_accepts", "wake_negative_seconds"), False),
    Metric("nlu/intent_accuracy", ("nlu_intent_correct", "nlu_intent_clips"),
           _ratio("nlu_intent_correct", "nlu_intent_clips"), True, share=True),
    Metric("nlu/entity_f1", ("nlu_entity_tp", "nlu_entity_fp", "nlu_entity_fn"), _f1("nlu_entity"), True, empty=0.0),
    Metric("slu/intent_accuracy", ("slu_intent_correct", "slu_intent_clips"),
           _ratio("slu_intent_correct", "slu_intent_clips"), True, share=True),
    Metric("slu/entity_f1", ("slu_entity_tp", "slu_entity_fp", "slu_entity_fn"), _f1("slu_entity"), True, empty=0.0),
    Metric("slu/slu_f1", ("slu_f1_tp", "slu_f1_fp", "slu_f1_fn"), _f1("slu_f1"), True, empty=0.0),
)
# Not sums of per-clip counts: recomputed from the resampled clips' wake scores.
RANKING_METRICS = {"wake/auc": True, "wake/eer": False}  # key -> higher is better
SHARES = {m.key: m for m in METRICS if m.share}
HIGHER_IS_BETTER = {**{m.key: m.higher_is_better for m in METRICS}, **RANKING_METRICS}
INTERVAL_KEYS = tuple(m.key for m in METRICS) + tuple(RANKING_METRICS)


def poisson_rate_interval(count: int, hours: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Garwood) interval for an event rate per hour from `count` events in `hours` hours.

    With 0 events the lower end is 0 and the upper end is about 3.7 / hours at 95%: one minute
    of quiet audio cannot show that a detector false-accepts less than ~220 times an hour.
    """
    if count < 0 or hours <= 0:
        raise ValueError(f"a rate needs a count >= 0 and hours > 0, got {count} events in {hours} h")
    from scipy.stats import chi2  # imported where used: the ops commands load this module, scipy.stats takes ~0.5 s

    alpha = 1.0 - confidence
    low = 0.0 if count == 0 else chi2.ppf(alpha / 2, 2 * count) / 2
    high = chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2
    return float(low / hours), float(high / hours)


def clip_counts(row: Mapping[str, Any], threshold: float | None) -> dict[str, float]:
    """The per-clip counts every interval and paired comparison is computed from.

    `row` is a predictions.jsonl row with `edit` (see metrics.edit_counts), the wake-word score and
    label, and for clips with an intent the scored intents and entity counts; `threshold` is the
    tuned wake-word threshold, or None when the wake-word metrics were skipped.
    """
    edit = row["edit"]
    out: dict[str, float] = {k: float(edit[k]) for k in EDIT_KEYS}
    if threshold is not None:
        score = row.get("wake_score")
        detected = score is not None and score >= threshold
        positive = bool(row["wake_word_present"])
        out.update(
            wake_positives=float(positive), wake_missed=float(positive and not detected),
            wake_negatives=float(not positive), wake_false_accepts=float(not positive and detected),
            wake_negative_seconds=0.0 if positive else float(row["duration"]),
        )
    for side in ("nlu", "slu"):
        scored = row.get(f"{side}_scored")
        out[f"{side}_intent_clips"] = float(bool(scored))
        out[f"{side}_intent_correct"] = float(bool(scored) and row.get(f"{side}_intent") == row.get("intent"))
        for prefix in (f"{side}_entity", "slu_f1") if side == "slu" else (f"{side}_entity",):
            counts = row.get(f"{prefix}_counts") if scored else None
            for k in ("tp", "fp", "fn"):
                out[f"{prefix}_{k}"] = float(counts[k]) if counts else 0.0
    return out


@dataclass
class ClipTable:
    """Per-clip results of one model on one split, ready to resample by speaker."""

    utterances: list[str]
    speakers: list[str]
    counts: dict[str, np.ndarray]          # name -> per-clip values
    wake_scores: np.ndarray | None = None  # -inf allowed (clip too short for the keyword)
    wake_labels: np.ndarray | None = None


class DuplicateUtteranceError(ValueError):
    """One utterance id on more than one row of a run's per-clip results."""


def check_unique_utterances(utterances: Sequence[str], where: str = "") -> None:
    """Refuse per-clip results that hold an utterance id twice (`where` names whose, e.g. " in the
    baseline's per-clip results"). Runs are paired by id, and each row is a clip the bootstrap
    draws: a repeated id would pair one clip twice, or keep only one of its rows, without a word.
    The dataset build drops repeated ids, so a repeat is a file written twice into or joined from
    two evaluations."""
    rows: dict[str, list[int]] = {}
    for number, utterance in enumerate(utterances, 1):
        rows.setdefault(utterance, []).append(number)
    repeated = next(((u, n) for u, n in rows.items() if len(n) > 1), None)
    if repeated is not None:
        utterance, numbers = repeated
        raise DuplicateUtteranceError(
            f"utterance id {utterance} appears {len(numbers)} times (rows {', '.join(map(str, numbers[:-1]))} and "
            f"{numbers[-1]}){where}: each clip must be one row to pair runs by id; re-evaluate the run "
            "(`python evaluate.py run=<run folder>`) to write its per-clip results afresh")


def resampling_unit(row: Mapping[str, Any]) -> str:
    """The unit a clip is resampled with: its speaker as text, or the clip itself without one.

    A speaker may be numbered, and 0 is a speaker like any other. Missing is None or the empty
    string: "" is how a table (a CSV cell, a string column) writes no speaker, and the dataset
    build never takes it for an id (pipeline.data.sources reads a speaker the same way); taken
    as one, every clip without a speaker would pool into one made-up speaker of unrelated people."""
    speaker = row.get("speaker")
    return f"clip:{row['utterance_id']}" if speaker is None or speaker == "" else str(speaker)


def clip_table(rows: Sequence[Mapping[str, Any]]) -> ClipTable:
    """From predictions.jsonl rows (each with `counts`); a clip without a speaker is its own unit
    (`resampling_unit`)."""
    if not rows:
        raise ValueError("no clips to resample")
    missing = next((r.get("utterance_id", "?") for r in rows if not isinstance(r.get("counts"), Mapping)), None)
    if missing is not None:
        raise ValueError(f"clip {missing} has no per-clip counts (`counts`); re-evaluate the run to write them")
    check_unique_utterances([str(r["utterance_id"]) for r in rows])
    names = sorted(set.intersection(*(set(r["counts"]) for r in rows)))
    table = ClipTable(
        utterances=[str(r["utterance_id"]) for r in rows],
        speakers=[resampling_unit(r) for r in rows],
        counts={n: np.array([float(r["counts"][n]) for r in rows]) for n in names},
    )
    if "wake_positives" in table.counts:
        table.wake_scores = np.array([-np.inf if r.get("wake_score") is None else float(r["wake_score"]) for r in rows])
        table.wake_labels = np.array([bool(r["wake_word_present"]) for r in rows])
    return table


def resample_counts(n_units: int, samples: int, seed: int) -> np.ndarray:
    """samples x n_units: how often each unit (speaker) is drawn in each bootstrap sample."""
    if samples < MIN_SAMPLES:
        raise ValueError(f"bootstrap samples must be >= {MIN_SAMPLES}, got {samples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(samples, n_units))
    out = np.zeros((samples, n_units))
    np.add.at(out, (np.arange(samples)[:, None], draws), 1.0)
    return out


def _clip_weights(table: ClipTable, samples: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """samples x clips: each clip's weight is how often its speaker was drawn."""
    units = sorted(set(table.speakers))
    index = {u: i for i, u in enumerate(units)}
    draws = resample_counts(len(units), samples, seed)
    return draws[:, [index[s] for s in table.speakers]], units


def _sums(table: ClipTable, weights: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: weights @ table.counts[n] for n in names}


def _ranking_samples(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """ROC AUC and EER once per row of `weights` (how often each clip was drawn), all rows at once:
    the weighted ROC curve of each sample from cumulative sums over the clips sorted by score, as
    sklearn's `roc_curve` builds it, then the trapezoid area and the FRR = FAR crossing (the same
    interpolation as pipeline.eval.wake.equal_error_rate). nan where a sample lacks a class."""
    finite = scores[np.isfinite(scores)]
    scores = np.where(np.isfinite(scores), scores, (finite.min() - 1.0) if finite.size else -1.0)
    order = np.argsort(-scores, kind="stable")
    ranked, positive = scores[order], labels[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(ranked) != 0), ranked.size - 1]  # one ROC point per distinct score
    w = weights[:, order]
    tp = np.cumsum(w * positive, axis=1)[:, last]
    fp = np.cumsum(w * ~positive, axis=1)[:, last]
    pos, neg = tp[:, -1:], fp[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.hstack([np.zeros_like(pos), tp / pos])
        fpr = np.hstack([np.zeros_like(neg), fp / neg])
    auc = np.trapezoid(tpr, fpr, axis=1)
    diff = (1.0 - tpr) - fpr
    i = np.maximum(np.argmax(diff <= 0, axis=1), 1)  # the first point where FRR no longer exceeds FAR
    rows = np.arange(len(w))
    d0, d1 = diff[rows, i - 1], diff[rows, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(d0 != d1, d0 / (d0 - d1), 0.0)
    eer = fpr[rows, i - 1] + step * (fpr[rows, i] - fpr[rows, i - 1])
    valid = (pos[:, 0] > 0) & (neg[:, 0] > 0)
    return {"wake/auc": np.where(valid, auc, np.nan), "wake/eer": np.where(valid, eer, np.nan)}


def _metric_samples(table: ClipTable, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric the table can give, once per bootstrap sample (row of `weights`)."""
    out: dict[str, np.ndarray] = {}
    for metric in METRICS:
        if all(n in table.counts for n in metric.counts):
            out[metric.key] = np.asarray(metric.value(_sums(table, weights, metric.counts)), dtype=float)
    if table.wake_scores is not None and table.wake_labels is not None:
        out.update(_ranking_samples(table.wake_labels, table.wake_scores, weights))
    return out


EMPTY = {m.key: m.empty for m in METRICS}


def point_values(table: ClipTable) -> dict[str, float]:
    """The metrics on the clips as they are (every clip once): equal to the stage's own figures."""
    values = _metric_samples(table, np.ones((1, len(table.speakers))))
    return {k: EMPTY.get(k, np.nan) if np.isnan(v[0]) else float(v[0]) for k, v in values.items()}


# Below this share of bootstrap samples on which a metric is defined (e.g. a sample that drew no
# speaker with a wake-word positive has no FRR), the few that are would make an interval of chance.
MIN_DEFINED = 0.5


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    defined = values[np.isfinite(values)]
    if defined.size == 0 or defined.size < MIN_DEFINED * values.size:
        return None
    values = defined
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def intervals(
    table: ClipTable, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED, confidence: float = CONFIDENCE,
) -> dict[str, tuple[float, float] | None]:
    """Speaker-bootstrap interval of every metric the table can give (None where no sample could
    compute it, e.g. a split without wake-word positives)."""
    weights, units = _clip_weights(table, samples, seed)
    drawn = _metric_samples(table, weights)
    if len(units) < MIN_UNITS:
        return dict.fromkeys(drawn)
    few = _too_few_units([table])  # e.g. every wake-word positive from one speaker: each draw has it or not
    found = {key: None if key in few else _percentiles(values, confidence) for key, values in drawn.items()}
    # Every draw alike (each speaker scores the same, or a share of 0 or 1): a zero-width interval would
    # read as certainty. A share gets its exact interval over the speakers; any other metric none.
    for key, ci in found.items():
        if ci is not None and _zero_width(ci):
            found[key] = _exact_share_interval(table, SHARES[key], confidence) if key in SHARES else None
    return found


def _zero_width(ci: tuple[float, float]) -> bool:
    """Whether every draw gave the same value. Within rounding, not exactly: SLU-F1 sums fractional
    distances, so draws of speakers who all score alike can differ in the last bit, and a width of
    1e-16 would pass for an interval."""
    return math.isclose(ci[0], ci[1], rel_tol=1e-9, abs_tol=1e-12)


def _too_few_units(tables: Sequence[ClipTable]) -> set[str]:
    """The metric keys that fewer than MIN_UNITS speakers count towards in `tables` (for AUC and
    EER: with positives, or with negatives): their draws repeat the same few, so no interval."""
    few = {m.key for m in METRICS if len(_units_counted(tables, m)) < MIN_UNITS}
    return few if _ranking_units(tables) else few | set(RANKING_METRICS)


def _units_counted(tables: Sequence[ClipTable], metric: Metric) -> set[str]:
    """The speakers whose clips count towards `metric` in any of `tables` (a trial, an entity, a
    second of negative audio): with fewer than MIN_UNITS, every draw repeats the same few."""
    return {s for t in tables if all(n in t.counts for n in metric.trials)
            for s, *values in zip(t.speakers, *(t.counts[n] for n in metric.trials)) if any(values)}


def _ranking_units(tables: Sequence[ClipTable]) -> bool:
    """Whether AUC and EER can vary from draw to draw: two or more speakers with wake-word positives,
    and two or more with negatives."""
    for t in tables:
        if t.wake_labels is None:
            continue
        speakers = np.array(t.speakers)
        if min(len(set(speakers[t.wake_labels])), len(set(speakers[~t.wake_labels]))) < MIN_UNITS:
            return False
    return True


def _exact_share_interval(table: ClipTable, metric: Metric, confidence: float) -> tuple[float, float] | None:
    """The Clopper-Pearson interval of a share that every bootstrap draw gives alike, counting each
    speaker as one trial: a share of 0 or 1 (no wake-word clip missed, every intent right), or one
    every speaker has (each got 1 of 2 intents right), where k = share x speakers need not be whole
    (the beta quantiles take any k). The bootstrap would give a zero-width interval; by speaker (as
    the bootstrap resamples), since a speaker's clips fail together more than independent clips would."""
    events, trials = (table.counts[name] for name in metric.counts)
    n = len(_units_counted([table], metric))
    if n < MIN_UNITS or trials.sum() <= 0:
        return None
    from scipy.stats import beta

    k = n * float(events.sum()) / float(trials.sum())
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def interval_metrics(
    table: ClipTable, metrics: Mapping[str, Any], samples: int, seed: int, confidence: float = CONFIDENCE,
    rates: Mapping[str, tuple[int, float]] | None = None,
) -> dict[str, float | None]:
    """`<key>_ci_low` / `<key>_ci_high` for every interval key in `metrics`, plus
    `eval/bootstrap_samples`: what metrics.json, the report and W&B get.

    wake/fa_per_hour uses the exact Poisson interval on the count over the hours: by default the
    clips' false accepts over their negative hours; `rates` ({key: (count, hours)}) gives a rate
    measured elsewhere (e.g. detections over hours of streamed background audio) its own."""
    found = intervals(table, samples, seed, confidence)
    counts = table.counts
    if "wake_false_accepts" in counts and counts["wake_negative_seconds"].sum() > 0:
        found["wake/fa_per_hour"] = poisson_rate_interval(
            int(round(counts["wake_false_accepts"].sum())), counts["wake_negative_seconds"].sum() / 3600.0, confidence
        )
    for key, (count, hours) in (rates or {}).items():
        found[key] = poisson_rate_interval(int(count), float(hours), confidence) if hours > 0 else None
    out: dict[str, float | None] = {}
    for key in INTERVAL_KEYS:
        if key in metrics:
            ci = found.get(key) if metrics[key] is not None else None
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = ci if ci else (None, None)
    out["eval/bootstrap_samples"] = samples
    return out


@dataclass(frozen=True)
class Difference:
    """`other` minus `base` on the same clips, with the paired bootstrap interval of that difference."""

    key: str
    base: float
    other: float
    difference: float
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool
    # What the bootstrap drew, when not the Paired's speakers (e.g. "14 background recordings").
    resampled: str | None = None
    # Why ci_low / ci_high are None (e.g. "one speaker"), for the gate and compare to say.
    why_no_interval: str | None = None
    # Background recordings only the base run, and only the other, streamed: not in the pairing, and
    # named in `resampled`, so a pairing over part of either run's background never reads as whole.
    left_out: tuple[int, int] = (0, 0)

    @property
    def verdict(self) -> str:
        """better / worse when the whole interval lies on one side of zero, else no detectable difference."""
        if self.ci_low is None or self.ci_high is None:
            return "no interval"
        if self.ci_low > 0 or self.ci_high < 0:
            improved = (self.ci_low > 0) == self.higher_is_better
            return "better" if improved else "worse"
        return "no detectable difference"


@dataclass(frozen=True)
class Paired:
    differences: dict[str, Difference]
    clips: int
    speakers: int
    samples: int


def align(base: ClipTable, other: ClipTable) -> tuple[ClipTable, ClipTable]:
    """Both tables on the clips they share, in one order; the same clip must have the same speaker,
    and each run must hold a clip once (`check_unique_utterances`)."""
    check_unique_utterances(base.utterances, " in the baseline's per-clip results")
    check_unique_utterances(other.utterances, " in the other run's per-clip results")
    position = {u: i for i, u in enumerate(other.utterances)}
    shared = [i for i, u in enumerate(base.utterances) if u in position]
    if not shared:
        raise ValueError("the two runs share no clip; they were not evaluated on the same test data")
    mine, theirs = shared, [position[base.utterances[i]] for i in shared]
    clash = next((base.utterances[i] for i, j in zip(mine, theirs) if base.speakers[i] != other.speakers[j]), None)
    if clash is not None:
        raise ValueError(f"clip {clash} has a different speaker in the two runs: not the same test data")
    return _subset(base, mine), _subset(other, theirs)


def _subset(table: ClipTable, idx: list[int]) -> ClipTable:
    return ClipTable(
        utterances=[table.utterances[i] for i in idx],
        speakers=[table.speakers[i] for i in idx],
        counts={k: v[idx] for k, v in table.counts.items()},
        wake_scores=None if table.wake_scores is None else table.wake_scores[idx],
        wake_labels=None if table.wake_labels is None else table.wake_labels[idx],
    )


def paired_differences(
    base: ClipTable, other: ClipTable, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> Paired:
    """`other - base` for every metric both tables give, on their shared clips, each with the
    interval from one set of speaker draws applied to both models."""
    base, other = align(base, other)
    weights, units = _clip_weights(base, samples, seed)
    base_point, other_point = point_values(base), point_values(other)
    base_samples, other_samples = _metric_samples(base, weights), _metric_samples(other, weights)
    differences = {}
    few = _too_few_units([base, other])
    for key in base_samples.keys() & other_samples.keys():
        b, o = base_point[key], other_point[key]
        if len(units) < MIN_UNITS:
            ci, why = None, "one speaker"
        elif key in few:
            ci, why = None, "fewer than two speakers count towards the metric"
        else:
            ci, why = _paired_interval(other_samples[key] - base_samples[key], confidence, "speakers")
        differences[key] = Difference(key, b, o, o - b, *(ci or (None, None)), HIGHER_IS_BETTER[key],
                                      why_no_interval=why)
    ordered = {k: differences[k] for k in INTERVAL_KEYS if k in differences}
    return Paired(ordered, clips=len(base.speakers), speakers=len(units), samples=samples)


def _paired_interval(differences: np.ndarray, confidence: float,
                     units: str) -> tuple[tuple[float, float] | None, str | None]:
    """The interval of a paired difference over its bootstrap draws, or None and why not.

    As for a single run (`intervals`), a difference every draw gives alike within rounding
    (`_zero_width`: each speaker, or recording, moves by the same amount) gets no interval: [d, d]
    would read as certainty, and the verdict as proven. Unlike a single run's share, there is no
    exact interval to fall back on: the speakers' own difference is not a count of events."""
    ci = _percentiles(differences, confidence)
    if ci is None:
        return None, f"undefined on most resampled sets of {units}"
    if _zero_width(ci):
        return None, f"every resampled set of {units} gives the same difference"
    return ci, None


SAME_AUDIO_S = 0.05  # scored seconds of one recording in two runs: within a frame or two is the same audio


def paired_rate_difference(
    base: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]], samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED, confidence: float = CONFIDENCE, key: str = "wake/fa_per_hour",
) -> Difference:
    """`other - base` false accepts per hour over the background recordings both streamed, with the
    interval from one set of recording draws applied to both models. Each entry is
    {"recording", "seconds", "false_accepts", "digest"}, as the evaluation writes them
    (eval_details.json: wake_background.per_recording). A recording is the same in both runs when
    its name and its samples' digest are: device recordings cut into fixed-length chunks share
    names and lengths from folder to folder. Entries written before the digest existed cannot
    tell, and are refused. Recordings only one run streamed are left out of the pairing, and
    counted in `left_out` and `resampled`: the rates paired are then over part of the background."""
    theirs = {str(r["recording"]): r for r in other}
    shared = [r for r in base if str(r["recording"]) in theirs]
    left_out = (len(base) - len(shared), len(theirs) - len(shared))
    if not shared:
        raise ValueError("the two runs streamed no background recording in common")
    for r in shared:
        mine, its = r.get("digest"), theirs[str(r["recording"])].get("digest")
        if not mine or not its:
            raise ValueError(f"background recording {r['recording']} has no digest of its audio in "
                             f"{'the baseline' if not mine else 'the other run'} (evaluated before digests were "
                             "written): cannot tell whether both runs heard the same audio; re-evaluate it with "
                             "`python evaluate.py run=<run>`")
        if mine != its:
            raise ValueError(f"background recording {r['recording']} is other audio in the two runs (its samples' "
                             "digests differ): evaluated on different background folders")
        mine, its = float(r["seconds"]), float(theirs[str(r["recording"])]["seconds"])
        # The scored seconds leave out the first window's left context, a whole number of the model's
        # frames: models of 20 and 30 ms frames differ there by up to a frame on the same audio.
        if not np.isclose(mine, its, rtol=0, atol=SAME_AUDIO_S):
            raise ValueError(f"background recording {r['recording']} lasts {mine:.2f} s in one run and {its:.2f} s "
                             "in the other: not the same audio")
    # Each run's rate over its own scored seconds (which may differ by a frame, above): over the other
    # run's seconds it would miss the run's own metrics.json, and callers would drop the pairing.
    base_s = np.array([float(r["seconds"]) for r in shared])
    other_s = np.array([float(theirs[str(r["recording"])]["seconds"]) for r in shared])
    base_fa = np.array([float(r["false_accepts"]) for r in shared])
    other_fa = np.array([float(theirs[str(r["recording"])]["false_accepts"]) for r in shared])
    if base_s.sum() <= 0 or other_s.sum() <= 0:
        raise ValueError("the shared background recordings have no scored audio")
    rate = _per_hour("false_accepts", "seconds")  # the same rate the clip metrics use
    weights = resample_counts(len(shared), samples, seed)
    drawn = {name: rate({"false_accepts": weights @ fa, "seconds": weights @ seconds})
             for name, fa, seconds in (("base", base_fa, base_s), ("other", other_fa, other_s))}
    b = float(rate({"false_accepts": base_fa.sum(), "seconds": base_s.sum()}))
    o = float(rate({"false_accepts": other_fa.sum(), "seconds": other_s.sum()}))
    if len(shared) < MIN_UNITS:
        ci, why = None, "one recording"
    else:
        ci, why = _paired_interval(drawn["other"] - drawn["base"], confidence, "background recordings")
    drawn_over = f"{len(shared)} background recording{'s' if len(shared) != 1 else ''}"
    if any(left_out):
        drawn_over += f"; left out: {left_out[0]} only the baseline streamed, {left_out[1]} only the other run"
    return Difference(key, b, o, o - b, *(ci or (None, None)), HIGHER_IS_BETTER[key], resampled=drawn_over,
                      why_no_interval=why, left_out=left_out)
