"""Split assignment: a fixed function of the account pseudonym, so splits never drift.

Because a clip's split depends only on (key, account) and the ratios, adding a new batch of
annotations cannot move an existing utterance, and all of one speaker's clips share a split.
"""

from __future__ import annotations

from pipeline.data.privacy import unit_interval
from pipeline.runtime import PipelineError


def check_ratios(validation: float, test: float) -> None:
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise PipelineError(
            f"data.split.validation={validation}, data.split.test={test}: each must be in [0, 1) and their sum below 1"
        )


def assign_split(key: bytes, speaker: str, validation: float, test: float) -> str:
    u = unit_interval(key, speaker)
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"
