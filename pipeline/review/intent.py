"""Intent kind: the NLU, judging without the clip's text (every clip that reads it held out), confidently
disagrees with the intent."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.review.crossfit import ONE_FOLD, out_of_fold_probs, seen_elsewhere
from pipeline.review.suspects import Suspect


def intent_suspects(rows: list[dict[str, Any]], pooled: np.ndarray, fold: np.ndarray,
                    c: float) -> tuple[list[Suspect], dict[str, Any], np.ndarray]:
    """Lines for clips whose intent the out-of-fold model does not pick, ranked by cleanlab's label
    quality (self-confidence: the probability the model gives the annotated intent); score 1 - that.

    Also returns cleanlab's own verdict, `find_label_issues` (confident learning's pruning by the
    estimated noise per class pair) on the same probabilities, to compare the ranking against, and
    which clips were judged: a clip whose intent no other fold holds (an intent with one phrasing)
    is not, by either, since the model judging it never saw that intent (crossfit.seen_elsewhere).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    classes = sorted({r["intent"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r["intent"]] for r in rows])
    judged = seen_elsewhere(labels, fold)
    probs = out_of_fold_probs(pooled, labels, fold, len(classes), c)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    issues = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence") if len(classes) > 1 else []
    out = []
    for row, q, p, judge in zip(rows, quality, probs, judged):
        best = int(p.argmax())
        if not judge or classes[best] == row["intent"]:
            continue
        out.append(Suspect(row["utterance_id"], row["split"], "intent", row["intent"], classes[best], 1.0 - float(q),
                           f"an intent classifier on the NLU backbone, fitted without this text, reads {classes[best]} (p={p[best]:.2f}) and gives "
                           f"{row['intent']} p={q:.2f}: check which intent the speaker meant"))
    # Both over the judged clips: an intent the model never saw is always "wrong" and would say nothing.
    right = (probs.argmax(1) == labels)[judged]
    cleanlab = {"find_label_issues": [rows[int(i)]["utterance_id"] for i in issues if judged[int(i)]],
                "classes": len(classes), "accuracy_out_of_fold": float(right.mean()) if len(right) else None}
    return out, cleanlab, judged


def one_fold_lines(rows: list[dict[str, Any]], judged: np.ndarray) -> list[Suspect]:
    """Unscored lines (not_judged: ONE_FOLD) for the clips intent_suspects left unjudged: an intent
    only texts of the clip's own fold carry is a rare intent with one phrasing, or an annotation
    error that named an intent no other text has, and no model here tells the two apart."""
    texts: dict[str, set[str]] = {}
    for row, judge in zip(rows, judged):
        if not judge:
            texts.setdefault(row["intent"], set()).add(" ".join(row["words"] or []))
    return [Suspect(row["utterance_id"], row["split"], "intent", row["intent"], None, None,
                    f"not scored: only texts of this clip's fold carry the intent {row['intent']} "
                    f"({_texts(len(texts[row['intent']]))}), so the classifier judging it never saw that intent: "
                    "check by hand whether the speaker meant it (a rare intent, or one named by mistake)",
                    ONE_FOLD)
            for row, judge in zip(rows, judged) if not judge]


def _texts(n: int) -> str:
    return "one text" if n == 1 else f"{n} texts"
