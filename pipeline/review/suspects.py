"""One line of the review queue, and the ranking across kinds.

Every kind scores a clip from 0 to 1 by how likely its annotation is wrong, and lines of all kinds
are ranked in one queue: a person works down it, and with time for `review.max_share` of the
clips, reviews its first lines. Intent, wake and entities scores are the out-of-fold models'
probabilities; the transcript score is the clip's rank within its split (pipeline.review.transcript),
so the order across kinds is a rough one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("transcript", "intent", "wake", "entities")


@dataclass
class Suspect:
    utterance_id: str  # as in the dataset; its account is only ever a keyed pseudonym
    split: str
    kind: str
    annotated: Any
    model: Any
    score: float  # how likely the annotation is wrong, 0..1 (each kind's module says how)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score": round(float(self.score), 6)}


def rank(suspects: list[Suspect]) -> list[Suspect]:
    """Most suspicious first; ties by kind and id, so the same scores give the same queue."""
    return sorted(suspects, key=lambda s: (-s.score, KINDS.index(s.kind), s.utterance_id))


def budget(clips: int, max_share: float) -> int:
    """How many queue lines a review of `max_share` of the clips covers (at least one)."""
    return max(1, math.ceil(max_share * clips)) if clips else 0
