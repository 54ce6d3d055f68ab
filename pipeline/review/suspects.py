"""One line of the review queue, and the ranking across kinds.

Every kind scores a clip from 0 to 1 by how likely its annotation is wrong, and lines of all kinds
are ranked in one queue: a person works down it, and with time for `review.max_share` of the
clips, reviews its first lines. Intent, wake and entities scores are the out-of-fold models'
probabilities; the transcript score is the clip's rank within its split (pipeline.review.transcript),
so the order across kinds is a rough one.

A clip a text kind could not judge because only its own fold carries its label (crossfit.seen_elsewhere)
still gets a line, after every ranked one and without a score: a label one fold alone holds is
what a rare label with one phrasing looks like, and also what an annotation error that makes a
new label looks like, so a person has to see it, but ranking it among scored lines would put
every such clip at the top.
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
    score: float | None  # how likely the annotation is wrong, 0..1 (each kind's module says how); None: not scored
    reason: str
    # None for a ranked line; for a clip the kind could not judge, why (a `not_judged` key of summary.json)
    not_judged: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score": None if self.score is None else round(float(self.score), 6)}


def rank(suspects: list[Suspect]) -> list[Suspect]:
    """The judged lines most suspicious first, ties by kind and id, so the same scores give the same
    queue; then the lines of clips a kind could not judge, by kind, split and id: they have no
    score to rank by, and above the judged lines every one of them would read as the most doubtful."""
    judged = sorted((s for s in suspects if s.not_judged is None),
                    key=lambda s: (-(s.score or 0.0), KINDS.index(s.kind), s.utterance_id))
    held = sorted((s for s in suspects if s.not_judged is not None),
                  key=lambda s: (KINDS.index(s.kind), s.split, s.utterance_id))
    return judged + held


def ranked(queue: list[Suspect]) -> list[Suspect]:
    """The queue's judged lines (its first part): what the kinds' counts and the scoring against
    planted errors read."""
    return [s for s in queue if s.not_judged is None]


def budget(clips: int, max_share: float) -> int:
    """How many queue lines a review of `max_share` of the clips covers (at least one)."""
    return max(1, math.ceil(max_share * clips)) if clips else 0
