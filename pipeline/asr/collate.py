"""Clips to padded model inputs, on the fly: decoding, optional augmentation, features, labels.

Features are computed here rather than with `dataset.map`, so the built dataset is the only copy
on disk and changing the feature settings never needs a re-run over the corpus.

This runs once per clip of every epoch, in a loader worker on a GPU machine, so it is written to
spend its time in libsndfile and numpy rather than in Python: a batch's FLAC bytes are read from
Arrow in one query, speed perturbation is one matrix product with a cached filter, and features
and labels are written straight into the padded arrays (bench/loader_throughput.py measures it).
The values are the same as those of the feature extractor and tokenizer of the processor.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from omegaconf import DictConfig, OmegaConf
from transformers import Wav2Vec2Processor

from pipeline.asr.augment import recording_conditions
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
        columns = ["utterance_id", "audio", "text", "duration"] + (["source"] if "source" in split.column_names else [])
        self.split = split.select_columns(columns).cast_column("audio", Audio(sampling_rate=SAMPLING_RATE, decode=False))
        self.durations: list[float] = [float(d) for d in self.split["duration"]]
        self.sources: list[str] | None = list(self.split["source"]) if "source" in columns else None  # asr.source_weights
        self.cache_mb = float(cache_mb or 0)
        self.cache_bytes_left = int(self.cache_mb * 2**20)
        self._cache: dict[int, tuple[np.ndarray, str]] = {}
        self._arrow: Any = None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A whole batch of clips (the DataLoader asks for them this way): one Arrow query for the
        clips not in the cache, whose bytes go to soundfile without becoming Python objects."""
        indices = [int(i) for i in indices]
        missing = [i for i in indices if i not in self._cache]
        fresh: dict[int, tuple[np.ndarray, str]] = {}
        if missing:
            if self._arrow is None:  # a view, made once: `with_format` deep-copies the dataset's state
                self._arrow = self.split.with_format("arrow")
            table = self._arrow[missing]
            audio = table.column("audio").combine_chunks()
            blobs, paths = audio.field("bytes"), audio.field("path")
            ids, texts = table.column("utterance_id").to_pylist(), table.column("text").to_pylist()
            for k, index in enumerate(missing):
                blob = blobs[k]
                cell = {"bytes": blob.as_buffer() if blob.is_valid else None, "path": paths[k].as_py()}
                wave = decode_audio(cell, ids[k])
                fresh[index] = (wave, texts[k] or "")
                if wave.nbytes <= self.cache_bytes_left and index not in self._cache:
                    wave.flags.writeable = False  # augmentation makes new arrays; a cached clip is never changed
                    self._cache[index] = fresh[index]
                    self.cache_bytes_left -= wave.nbytes
        items = []
        for index in indices:
            wave, text = self._cache.get(index) or fresh[index]
            items.append({"index": index, "audio": wave, "text": text})
        return items


class Plays(torch.utils.data.Dataset):
    """An epoch's plays of a ClipDataset (sampler.played_clips): position k is clip `clips[k]`, and
    its item carries k as its index, so the augmentation plan and the collator's draws are per play.
    With `asr.source_weights={fsdd: 2}` each FSDD clip is then heard twice with different speeds,
    rooms and noise instead of twice the same way."""

    def __init__(self, dataset: ClipDataset, clips: list[int | tuple[int, int]], gap_s: float = 0.0) -> None:
        self.dataset, self.clips, self.gap = dataset, clips, np.zeros(round(gap_s * SAMPLING_RATE), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.__getitems__([position])[0]

    def _parts(self, position: int) -> tuple[int, ...]:
        """The clips of a play: one, or two for a spliced play (sampler.spliced_plays), joined by the gap."""
        play = self.clips[int(position)]
        return play if isinstance(play, tuple) else (play,)

    def __getitems__(self, positions: list[int]) -> list[dict[str, Any]]:
        parts = [self._parts(p) for p in positions]
        flat = iter(self.dataset.__getitems__([i for part in parts for i in part]))
        items = []
        for part, p in zip(parts, positions):
            got = [next(flat) for _ in part]
            wave = got[0]["audio"] if len(got) == 1 else np.concatenate([got[0]["audio"], self.gap, got[1]["audio"]])
            items.append({"index": int(p), "audio": wave, "text": " ".join(item["text"] for item in got)})
        return items

    def durations(self) -> list[float]:
        gap = self.gap.shape[0] / SAMPLING_RATE
        durations = self.dataset.durations
        return [durations[part[0]] if len(part) == 1 else durations[part[0]] + gap + durations[part[1]]
                for part in map(self._parts, range(len(self.clips)))]


def decode_audio(audio: dict[str, Any], utterance_id: str) -> np.ndarray:
    """Mono float32 at 16 kHz from a stored {bytes, path} audio cell (bytes may be any buffer)."""
    blob = audio.get("bytes")
    source = io.BytesIO(blob) if blob is not None and len(blob) else audio.get("path")
    if source is None:
        raise PipelineError(f"record {utterance_id}: audio cell has neither bytes nor a path; rebuild the dataset")
    if isinstance(source, io.BytesIO) and bytes(memoryview(blob)[:4]) == b"fLaC" and _miniaudio() is not None:
        # dr_flac (miniaudio) decodes the stored FLAC to the same floats as libsndfile in half the time,
        # and decoding is most of a loader worker's work.
        miniaudio = _miniaudio()
        try:
            decoded = miniaudio.flac_read_f32(bytes(blob))
        except miniaudio.DecodeError as err:
            raise PipelineError(f"record {utterance_id}: the stored FLAC does not decode ({err}); rebuild the dataset") from err
        wave, rate = np.frombuffer(decoded.samples, dtype=np.float32), decoded.sample_rate
        if decoded.nchannels > 1:
            wave = wave.reshape(-1, decoded.nchannels)
    else:
        wave, rate = sf.read(source, dtype="float32")
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if rate != SAMPLING_RATE:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, SAMPLING_RATE).numpy()
    return wave


@lru_cache(maxsize=1)
def _miniaudio() -> Any:
    """The miniaudio module, or None where it is not installed (soundfile decodes everything then)."""
    try:
        import miniaudio
    except ImportError:
        return None
    return miniaudio


def plan_augmentation(count: int, cfg: DictConfig | None, seed: int) -> list[float | None] | None:
    """Which plays of an epoch are augmented (None: not), and the speed each is played at.

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
def _resample_filter(orig: int, new: int) -> tuple[torch.Tensor, int, int, int]:
    """torchaudio's windowed-sinc filter for orig -> new Hz as a (taps, phases) matrix, built once per speed.

    Applied as one matrix product over strided windows of the clip it gives torchaudio's
    `Resample` output (the same floats on the demo clips) in about a third of the time on one core."""
    import torchaudio.transforms as AT

    resampler = AT.Resample(orig, new)
    gcd = math.gcd(orig, new)
    kernel = resampler.kernel[:, 0].T.contiguous()  # (taps, new // gcd)
    return kernel, int(resampler.width), orig // gcd, new // gcd


def speed_perturb(wave: np.ndarray, speed: float) -> np.ndarray:
    """The clip played `speed` times as fast (resampled from 16 kHz x speed to 16 kHz). The rate is
    rounded, not truncated: 16000 x 1.15 is 18399.999... in floats, and 16000/18399 would need a
    filter of 16,000 phases."""
    kernel, width, orig, new = _resample_filter(round(SAMPLING_RATE * speed), SAMPLING_RATE)
    padded = torch.from_numpy(np.pad(wave, (width, width + orig)))
    # torch rather than numpy for the product: it keeps to torch's thread count (one in a loader
    # worker), where numpy's BLAS threads busy-wait against the training process for the cores.
    windows = padded.unfold(0, kernel.shape[0], orig)
    return (windows @ kernel).reshape(-1)[: math.ceil(new * wave.shape[0] / orig)].numpy()


def augment_settings(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """`asr.augment` as plain Python values, made once per collator: reading the DictConfig for every
    clip took ~9% of the augmentation's time (2.07 against 1.89 ms a clip; a plain dict is read ~35x
    faster)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def augment(wave: np.ndarray, speed: float, cfg: DictConfig | Mapping[str, Any], gen: torch.Generator) -> np.ndarray:
    """Speed perturbation (resampling) and white noise at a random SNR drawn for this clip, then the
    recording conditions. `cfg` is `asr.augment` or its `augment_settings` (the collator's)."""
    x = speed_perturb(wave, speed) if speed != 1.0 else np.array(wave)  # a copy: cached clips are read-only
    if cfg.get("noise_snr_db"):
        low, high = (float(v) for v in cfg["noise_snr_db"])
        snr = torch.tensor([low + (high - low) * torch.rand((), generator=gen).item()])
        noise = torch.randn(x.shape, generator=gen)
        x = AF.add_noise(torch.from_numpy(x)[None], noise[None], snr)[0].numpy()
    if cfg.get("conditions"):  # room, noise, phone line, gain (pipeline.asr.augment)
        x = recording_conditions(torch.from_numpy(x), cfg["conditions"], gen).numpy()
    return x


def padded_length(longest: int, buckets: tuple[int, ...] | None) -> int:
    """Samples a batch is padded to: its longest clip, or the smallest bucket that holds it.

    Buckets keep a compiled model (`asr.compile`) to a few input shapes instead of one per batch;
    a clip longer than the largest bucket pads to a multiple of it."""
    if not buckets:
        return longest
    for size in buckets:
        if longest <= size:
            return size
    return math.ceil(longest / buckets[-1]) * buckets[-1]


def bucketed_durations(durations: list[float], buckets: tuple[int, ...] | None) -> list[float]:
    """Each clip's seconds as a batch that holds it is padded: its bucket's (`asr.compile`).

    Batches are packed to `max_batch_seconds` of padded audio. Packed on the clips' own lengths, a
    compiled run's batches held up to one bucket step more than that (1.7x with 4 buckets over 2-10 s
    clips), beyond what the memory probe had measured."""
    if not buckets:
        return durations
    return [padded_length(math.ceil(d * SAMPLING_RATE), buckets) / SAMPLING_RATE for d in durations]


def normalized_batch(waves: list[np.ndarray], length: int, masked: bool) -> np.ndarray:
    """Zero-mean, unit-variance clips in one (clips, length) zero-padded array.

    The feature extractor's arithmetic (`Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`), done
    in place: with an attention mask the statistics are the clip's own and padding stays 0; without
    one (group-norm models) they cover the padded row, as there."""
    out = np.zeros((len(waves), length), dtype=np.float32)
    for row, wave in zip(out, waves):
        n = wave.shape[0]
        row[:n] = wave
        part = row[:n] if masked else row
        mean, std = part.mean(), np.sqrt(part.var() + 1e-7)
        part -= mean
        part /= std
    return out


@dataclass
class CharLabels:
    """The tokenizer's label ids for a transcript, by a dictionary lookup per character.

    Same ids as the Wav2Vec2CTCTokenizer (spaces become the word delimiter, unknown characters
    `<unk>`); a transcript that could hold a special token's text goes through the tokenizer itself."""

    tokenizer: Any
    vocab: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.vocab = dict(self.tokenizer.get_vocab())
        tok = self.tokenizer
        self.delimiter = tok.word_delimiter_token
        self.plain = not getattr(tok, "do_lower_case", False) and not tok.get_added_vocab().keys() - {tok.unk_token, tok.pad_token, self.delimiter}
        self.unk = self.vocab[tok.unk_token]

    def __call__(self, text: str) -> list[int]:
        if not self.plain or "<" in text:
            return self.tokenizer(text).input_ids
        get, unk = self.vocab.get, self.unk
        return [get(ch, unk) for ch in text.replace(" ", self.delimiter)]


@dataclass
class CTCCollator:
    """Pads a list of clips to the longest one; labels are padded with -100 (ignored by CTC)."""

    processor: Wav2Vec2Processor
    augment_cfg: DictConfig | None = None
    seed: int = 0  # per epoch: noise is drawn from (seed, first play), so workers agree with a resume
    plan: list[float | None] | None = None  # plan_augmentation's draw for this epoch, by item index (a play)
    pad_buckets: tuple[int, ...] | None = None  # padded lengths in samples (asr.compile); None: the longest clip

    def __post_init__(self) -> None:
        self.labels = CharLabels(self.processor.tokenizer)
        self.masked = bool(self.processor.feature_extractor.return_attention_mask)
        self.settings = augment_settings(self.augment_cfg) if self.augment_cfg is not None else None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        waves = [item["audio"] for item in items]
        if self.augment_cfg is not None and self.plan is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + items[0]["index"])
            speeds = [self.plan[item["index"]] for item in items]
            waves = [w if speed is None else augment(w, speed, self.settings, gen) for w, speed in zip(waves, speeds)]
        lengths = [int(w.shape[0]) for w in waves]
        length = padded_length(max(lengths), self.pad_buckets)
        batch: dict[str, Any] = {"input_values": torch.from_numpy(normalized_batch(waves, length, self.masked))}
        if self.masked:
            mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int32))
        texts = [item["text"] for item in items]
        ids = [self.labels(text) for text in texts]
        # At least one column: a batch whose transcripts are all empty (false wakes of noise alone)
        # still trains towards blanks, where labels of width 0 made Wav2Vec2ForCTC's check of the
        # largest label id fail (`max()` of an empty tensor) and stopped the run.
        labels = np.full((len(ids), max([1, *map(len, ids)])), -100, dtype=np.int64)
        for row, seq in zip(labels, ids):
            row[: len(seq)] = seq
        batch["labels"] = torch.from_numpy(labels)
        batch["texts"] = texts
        batch["input_lengths"] = torch.tensor(lengths)  # the real samples, for decoding
        batch["audio_seconds"] = torch.tensor(sum(lengths) / SAMPLING_RATE)
        return batch
