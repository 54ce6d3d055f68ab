"""Wake-word detection from the ASR model's CTC output: a score per clip, a threshold, error rates.

Why not a string match on the greedy transcript: that gives a yes/no, so no threshold can trade
false rejects for false accepts and no ROC or DET curve exists. Instead each clip gets the log
posterior of the keyword: the best CTC alignment of the keyword's characters followed by a word
boundary, on the segment of the clip where it fits best, scored against everything else the model
could have emitted there (a filler whose frames cost nothing, i.e. the ratio to the total
probability). The trailing word boundary separates "alexa" from "alexander"; in a clip, the clip's
end counts as one too, since a model never emits a boundary after the last word.

Where in the clip: anywhere by default. A wake-word corpus does not promise the keyword at the
clip's start, and false accepts per hour divide by every second of the negative clips, so every
second is scanned. `window` limits the keyword to the clip's first frames, for device clips that
open at the trigger.

Why not the ratio to the best path: it is exactly 0 whenever the greedy transcript contains the
keyword, so a confident positive and a misheard negative tie at 0 and no threshold separates them
(on the demo, AUC 0.981 against 0.999 for the posterior, with the same ASR model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

NEG_INF = float("-inf")


def keyword_states(keyword_ids: list[int], blank_id: int) -> list[int]:
    """The CTC state sequence of a keyword: blank, k1, blank, k2, ..., kn, blank."""
    states = [blank_id]
    for token in keyword_ids:
        states += [token, blank_id]
    return states


def keyword_scores(
    log_probs: torch.Tensor, lengths: torch.Tensor, keyword_ids: list[int], blank_id: int, window: int | None,
    end_is_boundary: bool = False,
) -> torch.Tensor:
    """Keyword log posterior per clip (batch x frames x vocab log-probs -> batch scores, <= 0).

    A Viterbi pass over `filler* keyword filler*` where filler frames cost nothing, so the result is
    the log-probability of the best keyword alignment on the segment where it fits best. The
    keyword must end within `window` frames of the start (None: anywhere in the clip). A clip too
    short for it scores -inf.
    `end_is_boundary` (the keyword's last token is the word boundary): see `keyword_trace`.
    """
    trace = keyword_trace(log_probs[:, :window].float().numpy(), lengths.numpy(), keyword_ids, blank_id, end_is_boundary)
    return torch.from_numpy(trace.max(axis=1) if trace.shape[1] else np.full(trace.shape[0], NEG_INF))


def keyword_trace(
    emissions: np.ndarray, lengths: np.ndarray, keyword_ids: list[int], blank_id: int, end_is_boundary: bool = False,
) -> np.ndarray:
    """Per frame, the log-probability of the best keyword alignment whose last token is there (batch x frames
    x vocab log-probs -> batch x frames; -inf past a clip's length). The clip score is its maximum;
    the streaming detector compares each frame's value with the threshold.

    `end_is_boundary`: the keyword's last token is the word boundary, and the clip's end may stand
    in for it (the keyword, then blanks to the clip's last frame). A model emits the boundary
    between words, never after the last one, so without this a clip of the wake word alone (how
    wake-word corpora record it) pays for a boundary the model was trained not to emit there. A
    stream has no end, so the streaming detector leaves it off.

    The recursion runs in numpy: its arrays are tiny (batch x keyword states), and per-op overhead
    is what a frame costs (numpy's is several times lower than torch's).
    """
    batch, frames, _ = emissions.shape
    states = keyword_states(keyword_ids, blank_id)
    n_states = len(states)
    emit = emissions[:, :, states]  # batch x frames x states
    # A state may be skipped from two back when it is a token and differs from the token two back
    # (the usual CTC rule: a blank is needed between repeated characters).
    skip = np.array([i >= 2 and states[i] != blank_id and states[i] != states[i - 2] for i in range(n_states)])
    # Entering the keyword: its leading blank or its first token, right after a filler frame; filler
    # frames before the keyword cost nothing, so entering at any frame is free.
    entry = np.where(np.arange(n_states) < 2, 0.0, NEG_INF)
    score = np.full((batch, n_states), NEG_INF)
    trace = np.full((batch, frames), NEG_INF)
    best = np.empty_like(score)
    for t in range(frames):
        np.maximum(score, entry, out=best)
        np.maximum(best[:, 1:], score[:, :-1], out=best[:, 1:])
        np.maximum(best[:, 2:], np.where(skip[2:], score[:, :-2], NEG_INF), out=best[:, 2:])
        score = best + emit[:, t]
        score[t >= lengths] = NEG_INF
        # Ending on the keyword's last token: an alignment that went on through the blank after it
        # would keep one spoken keyword above the threshold for as long as the silence after it
        # lasts, and a stream would count it again after each refractory period. (The clip score,
        # the maximum over frames, is the same either way: such a path scores no more than where
        # its last token ended.)
        trace[:, t] = score[:, -2]
        if end_is_boundary and n_states >= 4:  # a keyword of the boundary alone has no word before it
            # At a clip's last frame: its last word token, or the blank after it, closes the keyword.
            ends = t == lengths - 1
            trace[ends, t] = np.maximum(trace[ends, t], score[ends, -4:-2].max(axis=1))
    return trace


def scanned_seconds(durations: np.ndarray, window_s: float | None) -> np.ndarray:
    """The seconds of each clip the keyword is looked for in: all of it, or with `window_s` (the
    keyword must end that soon after the start) its first `window_s` seconds. False accepts per hour
    divide by these: a second never scanned can hold no false accept."""
    durations = np.asarray(durations, dtype=float)
    return durations if window_s is None else np.minimum(durations, float(window_s))


@dataclass(frozen=True)
class WakeResult:
    threshold: float
    frr: float
    fa_per_hour: float | None  # None: the negative clips hold no seconds to divide by (evaluate_wake)
    auc: float
    eer: float
    positives: int
    negatives: int
    negative_hours: float
    # Set when threshold, FRR and false accepts per hour come from streamed background recordings
    # (pipeline.eval.stream) instead of the negative clips; AUC and EER stay clip-level.
    background_hours: float | None = None
    background_false_accepts: int | None = None


def permitted_false_accepts(target_fa_per_hour: float, hours: float) -> int:
    """How many false accepts `target_fa_per_hour` permits on `hours` of audio: target x hours
    rounded down, with a tolerance so that a product meant to be whole (1.1 per hour over 1/1.1 h
    gives 0.9999999999999999) counts as that whole number. The one rule for the clip-level and the
    background tuning, and for whether a split can hold a permitted false accept at all."""
    return int(math.floor(target_fa_per_hour * hours + 1e-9))


def _allowed_false_accepts(labels: np.ndarray, durations: np.ndarray, target_fa_per_hour: float) -> tuple[float, int]:
    """Hours of negative audio, and how many false accepts the target permits on them."""
    hours = float(durations[~labels].sum()) / 3600.0
    return hours, permitted_false_accepts(target_fa_per_hour, hours)


def tune_threshold(scores: np.ndarray, labels: np.ndarray, durations: np.ndarray, target_fa_per_hour: float) -> float:
    """The most permissive threshold (lowest FRR) whose false accepts per hour on these clips stay
    within the target. Accept means score >= threshold. The threshold sits halfway to the next
    score above the last rejected negative, so it does not hug a single validation clip."""
    neg = np.sort(scores[~labels])[::-1]
    if neg.size == 0:
        raise ValueError("no negative clips to tune the wake-word threshold on")
    _, allowed = _allowed_false_accepts(labels, durations, target_fa_per_hour)
    if allowed >= neg.size:
        # Every clip may be accepted, except one too short to hold the keyword (-inf): the per-clip
        # counts behind the intervals never count such a clip as a detection.
        finite = scores[np.isfinite(scores)]
        return float(finite.min()) if finite.size else 0.0
    floor = float(neg[allowed])  # the highest-scoring negative that must be rejected
    above = np.unique(scores[scores > floor])
    above = above[np.isfinite(above)]
    if above.size == 0:
        return float(np.nextafter(floor, np.inf)) if np.isfinite(floor) else 0.0
    if not np.isfinite(floor):
        return float(above[0]) - 1.0
    return float((floor + above[0]) / 2.0)


@dataclass(frozen=True)
class Tuning:
    """What the validation split could say about the target: shown in the report, because a
    threshold that hinges on one clip is a fact a reader needs next to the FRR it produced."""

    negatives: int
    negative_hours: float
    allowed_false_accepts: int  # false accepts the target permits on this much negative audio
    resolvable: bool  # allowed_false_accepts >= 1: the split can hold at least one permitted false accept
    bounding_index: int | None  # the negative just rejected at the threshold (the hardest one, when 0 are allowed)


def describe_tuning(scores: np.ndarray, labels: np.ndarray, durations: np.ndarray, target_fa_per_hour: float) -> Tuning:
    """The numbers behind `tune_threshold` on the same clips (same rule: the `allowed`-th highest
    negative is the one the threshold must reject)."""
    labels = labels.astype(bool)
    neg_idx = np.flatnonzero(~labels)
    hours, allowed = _allowed_false_accepts(labels, durations, target_fa_per_hour)
    order = neg_idx[np.argsort(-scores[neg_idx], kind="stable")]
    bounding = int(order[allowed]) if allowed < order.size else None
    return Tuning(
        negatives=int(neg_idx.size), negative_hours=hours, allowed_false_accepts=allowed,
        resolvable=allowed >= 1, bounding_index=bounding,
    )


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """Where the false reject and false accept rates cross, interpolated between ROC points."""
    fpr, tpr, _ = roc_curve(labels, _finite(scores))
    fnr = 1.0 - tpr
    diff = fnr - fpr
    i = int(np.argmax(diff <= 0))  # first point where FRR no longer exceeds FAR
    if i == 0:
        return float(fpr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def _finite(scores: np.ndarray) -> np.ndarray:
    """-inf (clip too short for the keyword) becomes just below the lowest finite score."""
    finite = scores[np.isfinite(scores)]
    low = float(finite.min()) - 1.0 if finite.size else -1.0
    return np.where(np.isfinite(scores), scores, low)


def wake_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of keyword scores against the wake flags (-inf scores just below the lowest)."""
    return float(roc_auc_score(np.asarray(labels).astype(bool), _finite(np.asarray(scores, dtype=float))))


def evaluate_wake(
    scores: np.ndarray, labels: np.ndarray, durations: np.ndarray, threshold: float
) -> WakeResult:
    """FRR and false accepts per hour of negative audio at `threshold`, plus ROC AUC and EER.
    False accepts per hour are None when the negative clips' durations sum to 0 s: a rate over no
    audio is no number (NaN would reach metrics.json, where it is not JSON)."""
    labels = labels.astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("wake-word scoring needs both clips with and without the wake word")
    hours = float(durations[~labels].sum()) / 3600.0
    return WakeResult(
        threshold=float(threshold),
        frr=float(np.mean(pos < threshold)),
        fa_per_hour=float(np.sum(neg >= threshold) / hours) if hours > 0 else None,
        auc=wake_auc(labels, scores),
        eer=equal_error_rate(labels, scores),
        positives=int(pos.size),
        negatives=int(neg.size),
        negative_hours=hours,
    )


def plot_det(
    labels: np.ndarray, scores: np.ndarray, result: WakeResult, path: Path, background: dict | None = None
) -> Path:
    """The DET with the tuned operating point marked: FRR against false accepts per hour of
    streamed background audio when `background` (its details: `det`, `frr_at`) has them, else the
    clip-level DET (probit axes, sklearn's display)."""
    if background and background.get("det"):
        return _plot_det_per_hour(background, result, path)
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    from sklearn.metrics import DetCurveDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    DetCurveDisplay.from_predictions(labels.astype(bool), _finite(scores), ax=ax, name="wake word")
    far = float(np.mean(scores[~labels.astype(bool)] >= result.threshold))
    clip = lambda p: min(max(p, 2e-3), 1 - 2e-3)  # noqa: E731 - probit of 0 or 1 is infinite
    ax.plot(norm.ppf(clip(far)), norm.ppf(clip(result.frr)), "o", color="red", label="tuned threshold")
    ax.set_xlabel("false accept rate (clips without the wake word)")
    ax.set_ylabel("false reject rate (clips with it)")
    ax.set_title(f"Wake word DET (EER {result.eer:.3f}, AUC {result.auc:.3f})")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_det_per_hour(background: dict, result: WakeResult, path: Path) -> Path:
    """FRR against false accepts per hour (symmetric-log x axis, so 0 per hour has a place)."""
    import matplotlib.pyplot as plt

    points = sorted(background["det"], key=lambda p: (p["fa_per_hour"], p["frr"]))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.step([p["fa_per_hour"] for p in points], [p["frr"] for p in points], where="post", label="test")
    for rate, frr in (background.get("frr_at") or {}).items():
        ax.plot(float(rate), frr, "s", color="gray", markersize=4)
    ax.plot(result.fa_per_hour, result.frr, "o", color="red",
            label=f"tuned threshold ({result.fa_per_hour:.2f}/h, FRR {result.frr:.3f})")
    ax.set_xscale("symlog", linthresh=0.5)
    ax.set_xlim(left=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"false accepts per hour ({result.background_hours or 0:.2f} h of background)")
    ax.set_ylabel("false reject rate (clips with the wake word)")
    ax.set_title(f"Wake word DET (clip AUC {result.auc:.3f})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
