"""Transcript kind: the ASR model finds the annotated transcript much less likely than what it heard."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from pipeline.eval.metrics import edit_counts
from pipeline.review.suspects import Suspect
from pipeline.text import normalize_text


def transcript_suspects(rows: list[dict[str, Any]], gaps: Any, alternatives: Sequence[Sequence[str]],
                        tempos: Sequence[float] = (1.0,)) -> list[Suspect]:
    """One line per clip whose annotation differs from the model's best path at one of `tempos` or more.

    `gaps[v]` and `alternatives[v]` are the clips read at the v-th tempo (see `acoustic.score_clips`).
    Each clip's gap (nats per character between the best path and the annotation, see
    `acoustic.transcript_gaps`) is turned back into nats and spread over the words the two texts
    disagree on: a misheard word puts its whole cost on one word, while a voice the model hears
    badly spreads a small cost over many. Gaps are then read within the clip's split: the model has
    trained on the training clips and finds their annotations, wrong ones included, far likelier
    than those of clips it never heard. A clip's score is its share of the split's clips whose
    annotation costs less per disagreeing word, averaged over the tempos (0 at a tempo where the
    texts agree, or where the model finds the annotated text at least as likely as its own reading:
    nothing then speaks against the annotation). On the demo at 5% noise, precision at k rose from
    0.35 with the raw gap to 0.68, and to 0.83 with the two tempos.

    So this score is a rank within the split, not a calibrated probability as the other kinds'
    are: the disputed clips in the top 2% of their split score 0.98 or more whatever the evidence, and
    in the mixed queue this kind's lines come before others' of similar doubt.
    """
    gaps = np.atleast_2d(np.asarray(gaps, dtype=float))
    texts = [normalize_text(r["text"] or "") for r in rows]
    splits = np.array([r["split"] for r in rows])
    views = [_per_word_share(texts, g, a, splits) for g, a in zip(gaps, alternatives)]
    costs = np.array([cost for cost, _ in views])  # tempos x clips
    shares = np.array([share for _, share in views])
    score = shares.mean(axis=0)
    out = []
    for i, row in enumerate(rows):
        if not score[i]:
            continue
        v = int(np.argmax(shares[:, i]))  # the tempo at which the annotation is most in doubt
        alternative = alternatives[v][i]
        at = f" (played at {tempos[v]:g}x)" if tempos[v] != 1.0 else ""
        if not math.isfinite(costs[v, i]):
            why = f"the clip{at} is too short for the annotated text"
        else:  # a line only where the annotation costs more at some tempo (_per_word_share), and that tempo is v
            why = (f"the annotated text costs {costs[v, i]:.1f} nats per disputed word more than what the model hears{at}, "
                   f"as much as or more than {shares[v, i]:.0%} of {row['split']} clips' annotations")
        advice = (f"listen and correct the transcript if it says \"{alternative}\"" if alternative.strip() else
                  "the model hears no words in it: listen for speech, and correct or flag the clip")
        out.append(Suspect(row["utterance_id"], row["split"], "transcript", row["text"], alternative, float(score[i]),
                           f"{why}: {advice}"))
    return out


def _per_word_share(texts: list[str], gaps: np.ndarray, alternatives: Sequence[str],
                    splits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per clip at one tempo: the gap in nats per disputed word, and the share of its split's clips
    whose annotation costs less (0 where the texts agree)."""
    words = np.array([edit_counts(t, a)["word_errors"] if a != t else 0 for t, a in zip(texts, alternatives)])
    per_word = np.array([g * max(len(t), 1) / max(w, 1) if math.isfinite(g) else math.inf
                         for g, t, w in zip(gaps, texts, words)])
    share = np.ones(len(texts))
    for split in set(splits.tolist()):
        mine = splits == split
        finite = np.sort(per_word[mine & np.isfinite(per_word)])
        if len(finite):
            share[mine] = np.where(np.isfinite(per_word[mine]),
                                   np.searchsorted(finite, per_word[mine], side="right") / len(finite), 1.0)
    # No line where the annotated text costs no more than the model's own reading: the CTC sum over
    # alignments can make it as likely as the single best path, and then nothing speaks against it.
    return per_word, np.where((words > 0) & ~(per_word <= 0), share, 0.0)
