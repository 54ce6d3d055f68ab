"""One batched pass of the run's ASR model over every clip: what the transcript and wake kinds need.

Both kinds read the same CTC log-probs, so the audio is decoded and the model run once per clip
(the expensive part); each kind's own arithmetic is timed apart, so the report can say what each
kind costs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.asr.devices import flushed_denormals
from pipeline.asr.model import greedy_decode, output_lengths
from pipeline.eval.run import read_batches
from pipeline.eval.wake import keyword_scores
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
    from datasets import Audio

    from pipeline.data.features import SAMPLING_RATE

    audio = split.select_columns(["utterance_id", "audio", "duration", "text"]).cast_column(
        "audio", Audio(sampling_rate=SAMPLING_RATE, decode=False)
    )
    durations = [float(d) for d in audio["duration"]]
    texts = [normalize_text(t or "") for t in audio["text"]]
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    stride = int(np.prod(model.config.conv_stride))
    window = max(1, math.ceil(window_s * SAMPLING_RATE / stride))
    tokenizer = processor.tokenizer
    blank = tokenizer.pad_token_id
    use_mask = bool(getattr(processor.feature_extractor, "return_attention_mask", False))
    device = next(model.parameters()).device
    out = AcousticScores(np.zeros(len(order)), [""] * len(order), np.full(len(order), -np.inf),
                         {"asr_forward": 0.0, "transcript": 0.0, "wake": 0.0})

    waves_of = read_batches(audio, batches, device)  # reads ahead where a core is free
    with flushed_denormals():
        for idx in batches:
            started = time.perf_counter()  # reading the audio counts as the forward pass's cost
            waves = next(waves_of)
            inputs = processor.feature_extractor(waves, sampling_rate=SAMPLING_RATE, padding=True,
                                                 return_tensors="pt", return_attention_mask=use_mask)
            kwargs = {"attention_mask": inputs["attention_mask"].to(device)} if use_mask else {}
            log_probs = model(inputs["input_values"].to(device), **kwargs).logits.float().log_softmax(-1).cpu()
            lengths = output_lengths(model, [len(w) for w in waves])
            lap = time.perf_counter()
            out.seconds["asr_forward"] += lap - started

            targets = [tokenizer(texts[i]).input_ids for i in idx]
            gaps, _ = transcript_gaps(log_probs, lengths, targets, blank)
            alternatives = greedy_decode(tokenizer, log_probs, lengths)  # the best path, read as text
            now = time.perf_counter()
            out.seconds["transcript"] += now - lap
            wake = keyword_scores(log_probs, lengths, keyword, blank, window)
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
