"""Clips to padded model inputs, on the fly: decoding, optional augmentation, features, labels.

Features are computed here rather than with `dataset.map`, so the built dataset is the only copy
on disk and changing the feature settings never needs a re-run over the corpus.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT
from omegaconf import DictConfig
from transformers import Wav2Vec2Processor

from pipeline.data.features import SAMPLING_RATE
from pipeline.runtime import PipelineError


class ClipDataset(torch.utils.data.Dataset):
    """One split read with audio undecoded, so clips are decoded (by soundfile) only when batched.

    Decoded clips are kept in memory up to `cache_mb`: a small corpus is trained on for many epochs
    (the demo run: 28), and decoding FLAC was half of the in-step loading time (~14 of ~28 ms a
    CPU step, docs/experiments.md). Past the budget clips are decoded each time, as before; the dataset on
    disk stays the only stored copy. Caching pays only in the training process: DataLoader workers
    are started afresh each epoch and would throw their caches away, so use 0 there.
    """

    def __init__(self, split: Any, cache_mb: float = 0) -> None:
        from datasets import Audio

        if "audio" not in split.column_names:
            raise PipelineError("the dataset has no `audio` column: the ASR stage needs an audio dataset (check cfg.data)")
        self.split = split.select_columns(["utterance_id", "audio", "text", "duration"]).cast_column(
            "audio", Audio(sampling_rate=SAMPLING_RATE, decode=False)
        )
        self.durations: list[float] = [float(d) for d in self.split["duration"]]
        self.cache_mb = float(cache_mb or 0)
        self.cache_bytes_left = int(self.cache_mb * 2**20)
        self._cache: dict[int, tuple[np.ndarray, str]] = {}

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index in self._cache:
            wave, text = self._cache[index]
        else:
            row = self.split[index]
            wave, text = decode_audio(row["audio"], row["utterance_id"]), row["text"] or ""
            if wave.nbytes <= self.cache_bytes_left:
                wave.flags.writeable = False  # augmentation makes new arrays; a cached clip is never changed
                self._cache[index] = (wave, text)
                self.cache_bytes_left -= wave.nbytes
        return {"index": index, "audio": wave, "text": text}


def decode_audio(audio: dict[str, Any], utterance_id: str) -> np.ndarray:
    """Mono float32 at 16 kHz from a stored {bytes, path} audio cell."""
    source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
    if source is None:
        raise PipelineError(f"record {utterance_id}: audio cell has neither bytes nor a path; rebuild the dataset")
    wave, rate = sf.read(source, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if rate != SAMPLING_RATE:
        wave = AF.resample(torch.from_numpy(wave), rate, SAMPLING_RATE).numpy()
    return wave


def plan_augmentation(count: int, cfg: DictConfig | None, seed: int) -> list[float | None] | None:
    """Which clips of an epoch are augmented (None: not), and the speed each is played at.

    Drawn for the whole epoch before batching, so the sampler can group clips by the length they
    will be played at. Drawn per clip inside a batch instead, a 0.9x clip outgrew its neighbours and
    padding rose from 1% to 9% of the compute (docs/experiments.md, "CPU throughput: planned speed
    perturbation")."""
    if cfg is None or float(cfg.get("prob", 0) or 0) <= 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(count, generator=gen) < float(cfg.prob)).tolist()
    speeds = [float(s) for s in (cfg.speeds or [1.0])]
    picks = torch.randint(len(speeds), (count,), generator=gen).tolist()
    return [speeds[pick] if on else None for on, pick in zip(chosen, picks)]


def played_durations(durations: list[float], plan: list[float | None] | None) -> list[float]:
    """Each clip's duration after its planned speed perturbation (speed 1.1 plays it in 1/1.1 the time)."""
    if plan is None:
        return durations
    return [d / (speed or 1.0) for d, speed in zip(durations, plan)]


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> AT.Resample:
    """Kept per speed: building the filter each call was ~40% of resampling a 2.5 s clip."""
    return AT.Resample(orig, new)


def augment(wave: np.ndarray, speed: float, cfg: DictConfig, gen: torch.Generator) -> np.ndarray:
    """Speed perturbation (resampling) and white noise at a random SNR drawn for this clip."""
    x = torch.tensor(wave)  # a copy: cached clips are read-only
    if speed != 1.0:
        with torch.no_grad():
            x = _resampler(int(SAMPLING_RATE * speed), SAMPLING_RATE)(x)
    if cfg.noise_snr_db:
        low, high = (float(v) for v in cfg.noise_snr_db)
        snr = torch.tensor([low + (high - low) * torch.rand((), generator=gen).item()])
        noise = torch.randn(x.shape, generator=gen)
        x = AF.add_noise(x[None], noise[None], snr)[0]
    return x.numpy()


@dataclass
class CTCCollator:
    """Pads a list of clips to the longest one; labels are padded with -100 (ignored by CTC)."""

    processor: Wav2Vec2Processor
    augment_cfg: DictConfig | None = None
    seed: int = 0  # per epoch: noise is drawn from (seed, first clip), so workers agree with a resume
    plan: list[float | None] | None = None  # plan_augmentation's draw for this epoch, by clip index

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        waves = [item["audio"] for item in items]
        if self.augment_cfg is not None and self.plan is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + items[0]["index"])
            speeds = [self.plan[item["index"]] for item in items]
            waves = [w if speed is None else augment(w, speed, self.augment_cfg, gen) for w, speed in zip(waves, speeds)]
        batch = self.processor.feature_extractor(
            waves, sampling_rate=SAMPLING_RATE, padding="longest", return_tensors="pt"
        )
        labels = self.processor.tokenizer([item["text"] for item in items], padding="longest", return_tensors="pt")
        batch["labels"] = labels.input_ids.masked_fill(labels.attention_mask.eq(0), -100)
        batch["texts"] = [item["text"] for item in items]
        batch["input_lengths"] = torch.tensor([len(w) for w in waves])  # the real samples, for decoding
        batch["audio_seconds"] = torch.tensor(sum(len(w) for w in waves) / SAMPLING_RATE)
        return batch
