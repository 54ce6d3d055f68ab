"""The `eval` config group (conf/eval/default.yaml) as types: what `pipeline.config.checked` holds it to.

A new eval setting is declared here as well as in the YAML (which keeps its default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.config import check_device, choice
from pipeline.eval.bootstrap import MIN_SAMPLES
from pipeline.runtime import PipelineError


@dataclass
class EvalConfig:
    split: str = MISSING
    tune_split: str = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    cpu_fft_positional_conv: Any = MISSING   # auto | true | false (pipeline/asr/fft_conv.py)
    wake_word: str = MISSING
    wake_window_s: Optional[float] = MISSING  # null: the whole clip
    wake_word_boundary: bool = MISSING
    target_fa_per_hour: float = MISSING
    background: Optional[str] = MISSING  # auto | none | a path
    min_background_hours: float = MISSING
    refractory_s: float = MISSING
    stream_window_s: float = MISSING
    stream_hop_s: float = MISSING
    stream_batch_size: int = MISSING
    duration_buckets: list[float] = MISSING
    worst_n: int = MISSING
    max_oov_char_rate: float = MISSING
    max_unknown_intent_rate: float = MISSING
    decoder: str = MISSING
    beam_size: int = MISSING
    beam_size_token: int = MISSING
    beam_threshold: float = MISSING
    lm_weights: list[float] = MISSING
    bootstrap_samples: int = MISSING
    bootstrap_seed: int = MISSING
    slu_scoring: str = MISSING
    slurp_gold: Optional[str] = MISSING

    def validate(self) -> None:
        check_device("eval.device", self.device)
        choice("eval.decoder", self.decoder, ("auto", "greedy", "lm"))
        fft = self.cpu_fft_positional_conv
        if not (isinstance(fft, bool) or fft == "auto"):
            raise PipelineError(f"eval.cpu_fft_positional_conv={fft!r}: give auto, true or false")
        choice("eval.slu_scoring", self.slu_scoring, ("project", "slurp"))
        if self.split == self.tune_split:
            # The LM weight and the wake-word threshold would be tuned on the very clips they are scored on.
            raise PipelineError(f"eval.split and eval.tune_split are both {self.split!r}: the LM weight and the "
                                "wake-word threshold would be tuned on the clips they are scored on; "
                                "set eval.tune_split to another split")
        for key in ("batch_size", "stream_batch_size", "beam_size", "beam_size_token"):
            if getattr(self, key) < 1:
                raise PipelineError(f"eval.{key}={getattr(self, key)}: must be at least 1")
        if self.bootstrap_samples < MIN_SAMPLES:
            raise PipelineError(f"eval.bootstrap_samples={self.bootstrap_samples}: give {MIN_SAMPLES} or more (fewer "
                                "cannot place a 95% interval, and the retraining gate decides on it)")
        if not 0 <= self.target_fa_per_hour < float("inf"):  # NaN too
            raise PipelineError(f"eval.target_fa_per_hour={self.target_fa_per_hour}: give false accepts per hour, 0 or more")
        for key in ("max_unknown_intent_rate", "max_oov_char_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise PipelineError(f"eval.{key}={getattr(self, key)}: give a share between 0 and 1")
        for key in ("worst_n", "min_background_hours"):
            if not getattr(self, key) >= 0:
                raise PipelineError(f"eval.{key}={getattr(self, key)}: give 0 or more")
        check_stream(self.stream_window_s, self.stream_hop_s, self.refractory_s)
        if self.wake_window_s is not None and self.wake_window_s <= 0:
            raise PipelineError(f"eval.wake_window_s={self.wake_window_s}: give a number of seconds above 0, or null for the whole clip")
        if not self.duration_buckets:
            raise PipelineError("eval.duration_buckets is empty; give the slice edges in seconds, e.g. [2.0, 4.0, 8.0]")


def check_stream(window_s: float, hop_s: float, refractory_s: float) -> None:
    """The background stream's window, hop and refractory period (pipeline.eval.stream.StreamSettings)."""
    if not 0 < hop_s <= window_s or not refractory_s >= 0:
        raise PipelineError(
            f"eval.stream_hop_s={hop_s:g}, eval.stream_window_s={window_s:g}, eval.refractory_s={refractory_s:g}: "
            "the hop must be above 0 and at most the window (the difference is the context each scored frame "
            "gets), the refractory period 0 or more")
