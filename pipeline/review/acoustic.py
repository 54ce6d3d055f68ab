"""One batched pass of the run's ASR model over every clip: what the transcript and wake kinds need.

Both kinds read the same CTC log-probs, so the audio is decoded and the model run once per clip
(the expensive part); each kind's own arithmetic is timed apart, so the report can say what each
kind costs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.asr.devices import flushed_denormals
from pipeline.asr.model import greedy_decode
from pipeline.eval.run import Reader, length_batches, read_batches
from pipeline.text import normalize_text


@dataclass
class AcousticScores:
    """Per clip, in the split's order. `transcript_gap`: how much less likely (nats per character)
    the model finds the annotated text than its own best path; `alternative`: that best path as text;
    `wake_score`: the keyword log posterior the eval stage thresholds."""

    transcript_gap: np.ndarray
    alternative: list[str]
    wake_score: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


@torch.inference_mode()
def score_clips(
    model: Any, processor: Any, split: Any, keyword: list[int], batch_size: int, window_s: float
) -> AcousticScores:
    """The eval stage's reading of every clip (pipeline.eval.run.Reader), kept as log-probs for both kinds."""
    audio, batches = length_batches(split, batch_size, ["text"])
    texts = [normalize_text(t or "") for t in audio["text"]]
    reader = Reader.for_model(model, processor, keyword, window_s)
    tokenizer = processor.tokenizer
    out = AcousticScores(np.zeros(len(split)), [""] * len(split), np.full(len(split), -np.inf),
                         {"asr_forward": 0.0, "transcript": 0.0, "wake": 0.0})

    waves_of = read_batches(audio, batches, reader.device)  # reads ahead where a core is free
    with flushed_denormals():
        for idx in batches:
            started = time.perf_counter()  # reading the audio counts as the forward pass's cost
            log_probs, lengths = reader.log_probs(next(waves_of))
            lap = time.perf_counter()
            out.seconds["asr_forward"] += lap - started

            targets = [tokenizer(texts[i]).input_ids for i in idx]
            gaps, _ = transcript_gaps(log_probs, lengths, targets, reader.blank)
            alternatives = greedy_decode(tokenizer, log_probs, lengths)  # the best path, read as text
            now = time.perf_counter()
            out.seconds["transcript"] += now - lap
            wake = reader.wake_scores(log_probs, lengths)
            out.seconds["wake"] += time.perf_counter() - now
            for b, i in enumerate(idx):
                out.transcript_gap[i] = gaps[b]
                out.alternative[i] = normalize_text(alternatives[b])
                out.wake_score[i] = float(wake[b])
    return out


def transcript_gaps(
    log_probs: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]], blank: int
) -> tuple[np.ndarray, torch.Tensor]:
    """(-log P(annotation) - -log P(best path)) / annotation characters, per clip, and the best paths.

    The CTC loss sums over every alignment of the annotation, the best path is the single likeliest
    frame labelling, so the gap is small when the annotation is what the model heard (it may even
    be negative) and grows with every character the model did not hear. Dividing by the length
    keeps long clips from ranking first for their length alone. A clip too short for its annotation
    (no alignment exists) gets +inf: that annotation cannot be what was said in it.
    """
    best_logp, best = log_probs.max(-1)
    frames = torch.arange(log_probs.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    best_nll = -(best_logp * frames).sum(-1)
    target_lengths = torch.tensor([len(t) for t in targets])
    flat = torch.tensor([x for t in targets for x in t], dtype=torch.long)
    nll = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), flat, lengths, target_lengths, blank=blank,
                                       reduction="none", zero_infinity=False)
    gap = (nll - best_nll) / target_lengths.clamp(min=1)
    return gap.numpy().astype(float), best
