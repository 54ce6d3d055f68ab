"""Split assignment: a fixed function of the account pseudonym, so splits never drift.

Because a clip's split depends only on (key, account) and the ratios, adding a new batch of
annotations cannot move an existing utterance, and all of one speaker's clips share a split.
"""

from __future__ import annotations

from pipeline.data.privacy import unit_interval


def assign_split(key: bytes, speaker: str, validation: float, test: float) -> str:
    u = unit_interval(key, speaker)
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"
