"""Wake-flag kind: the keyword score contradicts `wake_word_present`."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from pipeline.eval.wake import wake_auc
from pipeline.review.crossfit import out_of_fold_probs
from pipeline.review.suspects import Suspect

log = logging.getLogger(__name__)
MIN_AUC = 0.6  # below it the keyword score says too little about the flags to contradict one
# The `not_judged` reason of a clip in a fold whose other folds carry one wake flag only: the other
# flag is in that one fold of accounts (as the text kinds' crossfit.ONE_FOLD, a label in one fold).
FLAG_IN_ONE_FOLD = "flag_in_one_fold"


def wake_suspects(rows: list[dict[str, Any]], wake_scores: np.ndarray,
                  fold: np.ndarray) -> tuple[list[Suspect], np.ndarray, str | None, dict[str, int]]:
    """One line per clip whose flag the score contradicts (P(annotated flag | score) < 0.5), which
    clips the kind judged (the summary counts only those as scored for it), a note on the clips
    it could not judge (None: it judged every clip), and how many of those it left unjudged for
    a reason the summary's `not_judged` counts ({FLAG_IN_ONE_FOLD: n}; empty where it judged every clip
    or skipped the kind as a whole, which the note says).

    The keyword log posterior (the eval stage's wake score) becomes P(wake word said) through a
    logistic fit on the other folds' clips, so the threshold is learnt from the annotations
    without judging a clip by its own flag. Score: 1 - P(annotated flag). A fold whose other folds
    hold only one of the flags (a corpus whose false wakes come from one or two accounts) has no
    threshold to learn: the fit would give the missing flag no chance at all and call every clip of
    it wrong, however clearly its score agrees, so that fold's clips are not judged.
    """
    labels = np.array([bool(r["wake_word_present"]) for r in rows])
    nobody = np.zeros(len(rows), dtype=bool)
    if labels.all() or not labels.any():  # nothing to contrast a clip with (a corpus without false wakes)
        return [], nobody, f"wake kind skipped: every clip is marked {'with' if labels.all() else 'without'} the wake word", {}
    finite = np.isfinite(wake_scores)
    floor = float(wake_scores[finite].min()) - 1.0 if finite.any() else -1.0
    x = np.where(finite, wake_scores, floor).reshape(-1, 1)
    auc = wake_auc(labels, wake_scores)
    if auc < MIN_AUC:
        # A score that barely tells the flags apart leaves the fit at the flags' shares: every clip of
        # the rarer flag would be "contradicted", whatever was said in it.
        return [], nobody, (f"wake kind skipped: the keyword score tells the wake flags apart with AUC {auc:.2f} "
                            f"(< {MIN_AUC:.1f})"), {}
    contrasted = {int(k): bool(labels[fold != k].any() and not labels[fold != k].all()) for k in np.unique(fold)}
    judged = np.array([contrasted[int(k)] for k in fold])
    present = out_of_fold_probs(x, labels.astype(int), fold, 2, c=100.0)[:, 1]
    out = []
    for row, said, p, score, judge in zip(rows, labels, present, wake_scores, judged):
        p_annotated = p if said else 1.0 - p
        if not judge or p_annotated >= 0.5:
            continue
        heard = f"keyword score {score:.1f}" if math.isfinite(score) else "a clip too short for the keyword"
        claim = ("marked as saying the wake word, but the model barely hears it" if said
                 else "marked as a false wake, but the model hears the wake word")
        out.append(Suspect(row["utterance_id"], row["split"], "wake", bool(said), not bool(said), 1.0 - p_annotated,
                           f"{claim} ({heard}, P(wake word)={p:.2f}): listen to its first seconds and fix the flag"))
    if judged.all():
        return out, judged, None, {}
    left = int((~judged).sum())
    note = (f"wake kind: {left} of {len(rows)} clips not judged: the other folds' clips carry one "
            "wake flag only, so no threshold can be learnt for them without their own accounts (the clips with "
            "the rarer flag come from few accounts)")
    return out, judged, note, {FLAG_IN_ONE_FOLD: left}
