"""The `review` config group (conf/review/default.yaml) as types: what `pipeline.config.checked` holds it to.

A new review setting is declared here as well as in conf/review/default.yaml (which keeps its default)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from pipeline.config import check_device
from pipeline.runtime import PipelineError


@dataclass
class ReviewConfig:
    folds: int = MISSING         # cross-fitting folds: whole accounts (wake), whole texts (intent, entities)
    max_share: float = MISSING   # the share of clips a second pass has time for
    top_n: int = MISSING         # suspects per kind listed in the report
    c: float = MISSING           # inverse L2 strength of the refitted NLU heads
    batch_size: int = MISSING    # clips per ASR forward pass
    device: str = MISSING        # auto | cpu | cuda | cuda:N
    transcript_tempos: list[float] = MISSING  # playback speeds the transcript kind reads clips at

    def validate(self) -> None:
        if self.folds < 2:
            raise PipelineError(f"review.folds={self.folds}: cross-fitting needs at least 2 folds (default 5)")
        if not 0 < self.max_share <= 1:
            raise PipelineError(f"review.max_share={self.max_share}: use a share of clips between 0 and 1 (default 0.02)")
        if self.top_n < 0:
            raise PipelineError(f"review.top_n={self.top_n}: list 0 or more suspects per kind")
        if self.c <= 0:
            raise PipelineError(f"review.c={self.c}: the inverse regularisation strength must be positive")
        if self.batch_size < 1:
            raise PipelineError(f"review.batch_size={self.batch_size}: must be at least 1")
        if not self.transcript_tempos or any(not 0.5 <= t <= 2 for t in self.transcript_tempos):
            raise PipelineError(f"review.transcript_tempos={list(self.transcript_tempos)}: give one or more playback "
                                "speeds between 0.5 and 2 (default [0.85, 1.15]; [1.0] reads clips as recorded)")
        check_device("review.device", self.device)
