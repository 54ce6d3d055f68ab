"""Batched passes of the run's ASR model over every clip: what the transcript and wake kinds need.

The wake kind reads the clips as recorded. The transcript kind reads them again played slightly
faster and slower (`review.transcript_tempos`): a model trained on an annotation that is wrong has
partly learnt that annotation for that very audio (on the demo at 5% noise it repeated 17 of 58
misheard words in training clips word for word), and at a tempo training never used the memory
fades while what the model hears carries over (none repeated; precision at k 0.68 -> 0.83). Each
clip is decoded once; each kind's share of the time is measured apart, so the report can say what
each kind costs.

A clip shorter than the model's receptive field (`pipeline.eval.run.Reader.too_short`: the model
gives it no output frame) is kept out of the forward pass, as evaluation keeps it out, and marked
`too_short`: there is nothing the model heard to set against its annotation, so the review leaves
it unjudged and counts it (pipeline.review.stage).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.asr.collate import speed_perturb
from pipeline.asr.model import greedy_decode
from pipeline.eval.run import Reader, length_batches, map_batches
from pipeline.text import normalize_text


@dataclass
class AcousticScores:
    """Per clip, in the split's order. `transcript_gap[v]`: how much less likely (nats per character)
    the model finds the annotated text than its own best path, with the clip played at the v-th
    transcript tempo; `alternative[v]`: that best path as text; `wake_score`: the keyword log
    posterior the eval stage thresholds (the clip as recorded). `too_short[v]`: the clip, played at
    the v-th tempo, gives the model no output frame (its gap is NaN, its best path empty);
    `wake_too_short`: the same as recorded (its wake score is -inf, as in evaluation)."""

    transcript_gap: np.ndarray
    alternative: list[list[str]]
    wake_score: np.ndarray
    too_short: np.ndarray
    wake_too_short: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


@torch.inference_mode()
def score_clips(
    model: Any, processor: Any, split: Any, keyword: list[int], batch_size: int, window_s: float | None,
    tempos: Sequence[float] = (1.0,),
) -> AcousticScores:
    """The eval stage's reading of every clip (pipeline.eval.run.Reader, map_batches), kept as
    log-probs: as recorded for the wake kind, at each of `tempos` for the transcript kind (1.0 reuses
    the first pass). Batches may run side by side, so each part's time is measured in its thread
    and the pass's wall time is shared out in those proportions (decoding the audio counts as the
    forward pass's)."""
    audio, batches = length_batches(split, batch_size, ["text"])
    texts = [normalize_text(t or "") for t in audio["text"]]
    reader = Reader.for_model(model, processor, keyword, window_s)
    tokenizer = processor.tokenizer
    clips = len(split)
    out = AcousticScores(np.zeros((len(tempos), clips)), [[""] * clips for _ in tempos], np.full(clips, -np.inf),
                         np.zeros((len(tempos), clips), dtype=bool), np.zeros(clips, dtype=bool))

    def hear(waves: list[np.ndarray]) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """The clips of `waves` the model gives a frame (their places in `waves`), and their log-probs and frames."""
        kept = [b for b, short in enumerate(reader.too_short(waves)) if not short]
        if not kept:  # a batch of only such clips would stop the forward pass in its first convolutions
            return kept, None, None
        log_probs, lengths = reader.log_probs([waves[b] for b in kept])
        return kept, log_probs, lengths

    def read(idx: list[int], waves: list[np.ndarray]) -> tuple[tuple[list[int], np.ndarray], list[Any], dict[str, float]]:
        started = time.perf_counter()
        recorded = hear(waves)
        lap = time.perf_counter()
        kept, log_probs, lengths = recorded
        wake = reader.wake_scores(log_probs, lengths) if kept else np.zeros(0)
        now = time.perf_counter()
        targets = [tokenizer(texts[i]).input_ids for i in idx]
        views = []
        for tempo in tempos:
            # A tempo other than 1.0 is a pass only the transcript kind needs: its time is the kind's.
            heard, log_p, frames = recorded if tempo == 1.0 else hear([at_tempo(w, tempo) for w in waves])
            gaps, best = np.full(len(waves), np.nan), [""] * len(waves)
            if heard:
                found, _ = transcript_gaps(log_p, frames, [targets[b] for b in heard], reader.blank)
                for b, gap, text in zip(heard, found, greedy_decode(tokenizer, log_p, frames)):  # best path as text
                    gaps[b], best[b] = gap, text
            views.append((heard, gaps, best))
        spent = {"asr_forward": lap - started, "wake": now - lap, "transcript": time.perf_counter() - now}
        return (kept, wake), views, spent

    started = time.perf_counter()
    spent = dict.fromkeys(("asr_forward", "transcript", "wake"), 0.0)
    for idx, ((kept, wake), views, parts) in map_batches(audio, batches, reader.device, read):
        for v, (heard, gaps, alternatives) in enumerate(views):
            heard_set = set(heard)
            for b, i in enumerate(idx):
                out.transcript_gap[v, i] = gaps[b]
                out.alternative[v][i] = normalize_text(alternatives[b])
                out.too_short[v, i] = b not in heard_set
        kept_set = set(kept)
        for b, i in enumerate(idx):
            out.wake_too_short[i] = b not in kept_set
        for b, score in zip(kept, wake):
            out.wake_score[idx[b]] = float(score)
        for key, value in parts.items():
            spent[key] += value
    wall, total = time.perf_counter() - started, sum(spent.values()) or 1.0
    out.seconds = {key: wall * value / total for key, value in spent.items()}
    return out


def at_tempo(wave: np.ndarray, tempo: float) -> np.ndarray:
    """`wave` played `tempo` times as fast, by training's speed perturbation (pitch moving with it).
    The ratio is held to a fraction with a small denominator (1.15 = 23/20): the resampling filter
    grows with the reduced rates, and 16000/13913 would take minutes per clip."""
    ratio = Fraction(tempo).limit_denominator(20)
    if ratio == 1:
        return wave
    return speed_perturb(np.ascontiguousarray(wave, dtype=np.float32), float(ratio))


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
