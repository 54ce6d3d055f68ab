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


def wake_suspects(rows: list[dict[str, Any]], wake_scores: np.ndarray, fold: np.ndarray) -> tuple[list[Suspect], str | None]:
    """One line per clip whose flag the score contradicts (P(annotated flag | score) < 0.5), and why
    the kind judged nothing when it could not (the summary then counts no clip as scored for it).

    The keyword log posterior (the eval stage's wake score) becomes P(wake word said) through a
    logistic fit on the other folds' clips, so the threshold is learnt from the annotations
    without judging a clip by its own flag. Score: 1 - P(annotated flag).
    """
    labels = np.array([bool(r["wake_word_present"]) for r in rows])
    if labels.all() or not labels.any():  # nothing to contrast a clip with (a corpus without false wakes)
        return [], f"wake kind skipped: every clip is marked {'with' if labels.all() else 'without'} the wake word"
    finite = np.isfinite(wake_scores)
    floor = float(wake_scores[finite].min()) - 1.0 if finite.any() else -1.0
    x = np.where(finite, wake_scores, floor).reshape(-1, 1)
    auc = wake_auc(labels, wake_scores)
    if auc < MIN_AUC:
        # A score that barely tells the flags apart leaves the fit at the flags' shares: every clip of
        # the rarer flag would be "contradicted", whatever was said in it.
        return [], (f"wake kind skipped: the keyword score tells the wake flags apart with AUC {auc:.2f} "
                    f"(< {MIN_AUC:.1f})")
    present = out_of_fold_probs(x, labels.astype(int), fold, 2, c=100.0)[:, 1]
    out = []
    for row, said, p, score in zip(rows, labels, present, wake_scores):
        p_annotated = p if said else 1.0 - p
        if p_annotated >= 0.5:
            continue
        heard = f"keyword score {score:.1f}" if math.isfinite(score) else "a clip too short for the keyword"
        claim = ("marked as saying the wake word, but the model barely hears it" if said
                 else "marked as a false wake, but the model hears the wake word")
        out.append(Suspect(row["utterance_id"], row["split"], "wake", bool(said), not bool(said), 1.0 - p_annotated,
                           f"{claim} ({heard}, P(wake word)={p:.2f}): listen to its first seconds and fix the flag"))
    return out, None
