"""Transcript kind: the ASR model finds the annotated transcript much less likely than what it heard."""

from __future__ import annotations

import math
from typing import Any

from pipeline.review.suspects import Suspect


def transcript_suspects(rows: list[dict[str, Any]], gaps: Any, alternatives: list[str]) -> list[Suspect]:
    """One line per clip whose annotation differs from the model's best path.

    The score, 1 - exp(-gap), reads the length-normalised gap (nats per character between the
    best path and the annotation, see `acoustic.transcript_gaps`) as a per-character likelihood
    ratio: 0 when the model finds the annotation as likely as its own reading, near 1 when every
    character of it is much less likely.
    """
    out = []
    for row, gap, alternative in zip(rows, gaps, alternatives):
        if alternative == row["text"]:
            continue
        score = 1.0 if not math.isfinite(gap) else 1.0 - math.exp(-max(float(gap), 0.0))
        why = ("the clip is too short for the annotated text" if not math.isfinite(gap)
               else f"the annotated text is {gap:.2f} nats per character less likely than what the model hears")
        out.append(Suspect(row["utterance_id"], row["split"], "transcript", row["text"], alternative, score,
                           f"{why}: listen and correct the transcript if it says \"{alternative}\""))
    return out
