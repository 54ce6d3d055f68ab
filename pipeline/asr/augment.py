"""Real recording conditions for training clips: room reverberation, background noise, the
telephone band and gain; optionally the silence around the speech cut or lengthened, and the voice's
pitch shifted (`asr.augment.conditions`, off unless a config sets it; `data=demo_speech` does).

A model trained on clean espeak-ng voices and a few corpora hears far-field rooms, noisy homes and
8 kHz phone lines badly. Each effect comes from a maintained library: the room from
pyroomacoustics' image-source model (applied with `scipy.signal.fftconvolve`), the noise, trimming
and pitch shift from audiomentations (`AddColorNoise`: white to brown spectra at a random SNR;
`Trim`; `PitchShift` with signalsmith-stretch), the gain from `torchaudio.functional.gain` and the
telephone band from `scipy.signal.resample_poly` down to 8 kHz and back. scipy's FFT convolution and
polyphase resampling cost 2-4 ms a clip where torch's took 25-70 ms (a clip length's FFT size, a
resampling kernel built per call). The collator then scales each clip to zero mean and unit
variance, so the level a gain sets does not reach the model: what a gain changes is the clipping at
full scale after it (an overdriven microphone), on a loud clip from about +2 dB. Every random choice
is drawn from the caller's `torch.Generator`, so a seed gives the same augmented clip in any
process; audiomentations draws from the global `random` and `numpy.random`, so each of its calls
runs under a seed drawn from that generator and the global states are restored afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from scipy.signal import fftconvolve, resample_poly

from pipeline.asr.config import MIN_RT60_S
from pipeline.data.features import SAMPLING_RATE

TELEPHONE_RATE = 8000
ROOMS = 8  # rooms per RT60
MAX_IMAGE_ORDER = 40


@dataclass(frozen=True)
class Conditions:
    """Chance of each effect per augmented clip, and the ranges its strength is drawn from.
    The values come from `asr.augment.conditions` (checked by pipeline.asr.config.ConditionsConfig;
    set by conf/data/demo_speech.yaml), so there are no defaults here; `from_config` turns the framing
    and pitch effects off where a config does not name them (as one written before they were)."""

    reverb_prob: float
    reverb_rt60_s: tuple[float, float]   # RT60 of the simulated room
    noise_prob: float
    noise_snr_db: tuple[float, float]
    telephone_prob: float
    gain_prob: float
    gain_db: tuple[float, float]
    trim_prob: float
    pad_prob: float
    pad_s: tuple[float, float]  # silence added at each end, drawn per end
    pitch_prob: float
    pitch_semitones: tuple[float, float]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any) -> "Conditions":
        return cls(
            reverb_prob=float(cfg["reverb_prob"]), reverb_rt60_s=_pair(cfg["reverb_rt60_s"]),
            noise_prob=float(cfg["noise_prob"]), noise_snr_db=_pair(cfg["noise_snr_db"]),
            telephone_prob=float(cfg["telephone_prob"]),
            gain_prob=float(cfg["gain_prob"]), gain_db=_pair(cfg["gain_db"]),
            trim_prob=float(cfg.get("trim_prob", 0.0)), pad_prob=float(cfg.get("pad_prob", 0.0)),
            pad_s=_pair(cfg.get("pad_s", (0.0, 0.0))),
            pitch_prob=float(cfg.get("pitch_prob", 0.0)), pitch_semitones=_pair(cfg.get("pitch_semitones", (0.0, 0.0))),
        )


def _pair(value: Any) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    return low, high


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _happens(gen: torch.Generator, prob: float) -> bool:
    return torch.rand((), generator=gen).item() < prob


@contextmanager
def _seeded_globals(gen: torch.Generator) -> Iterator[None]:
    """Run a library that draws from the global RNGs under a seed from `gen`, leaving them as they were."""
    seed = int(torch.randint(2**31 - 1, (), generator=gen).item())
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@lru_cache(maxsize=256)
def room_impulse_response(rt60_s: float, room: int) -> torch.Tensor:
    """The impulse response from a talker to a microphone in a shoebox room with this RT60
    (pyroomacoustics' image-source model, absorption from Sabine's formula). Room size and
    positions are fixed by (rt60_s, room), so a process computes each response once and every
    process gets the same one; image order is capped so one costs ~0.05 s (the late tail of a
    long RT60 is shortened)."""
    import pyroomacoustics as pra

    rng = np.random.default_rng([int(round(rt60_s * 1000)), room])
    size = rng.uniform([3.0, 3.0, 2.4], [8.0, 6.0, 3.2])
    absorption, order = pra.inverse_sabine(rt60_s, size)
    shoebox = pra.ShoeBox(size, fs=SAMPLING_RATE, materials=pra.Material(absorption), max_order=min(order, MAX_IMAGE_ORDER))
    source = rng.uniform(0.5, size - 0.5)
    mic = np.clip(source + rng.uniform(-2.5, 2.5, 3) * [1, 1, 0.2], 0.3, size - 0.3)
    shoebox.add_source(source)
    shoebox.add_microphone(mic)
    shoebox.compute_rir()
    rir = torch.tensor(shoebox.rir[0][0], dtype=torch.float32)
    return rir / rir.abs().max()


def reverberate(wave: torch.Tensor, rt60_s: float, gen: torch.Generator) -> torch.Tensor:
    """The clip as heard in one of ROOMS simulated rooms with about this RT60 (rounded to 50 ms,
    so a training run needs a few dozen responses, and at least MIN_RT60_S, the shortest every room
    can have), at its original peak level and length."""
    room = int(torch.randint(ROOMS, (), generator=gen).item())
    rir = room_impulse_response(max(MIN_RT60_S, round(rt60_s * 20) / 20), room)
    wet = torch.from_numpy(fftconvolve(wave.numpy(), rir.numpy())[: wave.shape[-1]].astype(np.float32))
    peak = wet.abs().max()
    return wet * (wave.abs().max() / peak) if peak > 0 else wet


def add_noise(wave: torch.Tensor, snr_db: float, gen: torch.Generator) -> torch.Tensor:
    """Coloured background noise (spectral slope drawn between white and brown) at this SNR."""
    from audiomentations import AddColorNoise

    noise = AddColorNoise(min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=-6.0, max_f_decay=0.0, p=1.0)
    with _seeded_globals(gen):
        out = noise(samples=wave.numpy().astype(np.float32), sample_rate=SAMPLING_RATE)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def telephone(wave: torch.Tensor) -> torch.Tensor:
    """Through an 8 kHz channel and back to 16 kHz: nothing above 4 kHz survives."""
    down = SAMPLING_RATE // TELEPHONE_RATE
    narrow = resample_poly(wave.numpy(), 1, down)
    return torch.from_numpy(resample_poly(narrow, down, 1)[: wave.shape[-1]].astype(np.float32))


def trim_silence(wave: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The clip without its leading and trailing silence (audiomentations' `Trim`, 30 dB below the
    peak). Corpora differ in how much of it a clip keeps: FSDD's digits are cut to the word, Speech
    Commands' sit in a second of room sound."""
    from audiomentations import Trim

    with _seeded_globals(gen):
        out = Trim(top_db=30.0, p=1.0)(samples=wave.numpy().astype(np.float32), sample_rate=SAMPLING_RATE)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)) if out.shape[-1] else wave


def shift_pitch(wave: torch.Tensor, semitones: float, gen: torch.Generator) -> torch.Tensor:
    """The voice this many semitones higher (lower if negative) at the same tempo: another voice
    from the same speaker (audiomentations' `PitchShift`, signalsmith-stretch)."""
    from audiomentations import PitchShift

    shift = PitchShift(min_semitones=semitones, max_semitones=semitones, p=1.0, method="signalsmith_stretch")
    with _seeded_globals(gen):
        out = shift(samples=wave.numpy().astype(np.float32), sample_rate=SAMPLING_RATE)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def recording_conditions(wave: torch.Tensor, cfg: Mapping[str, Any] | Any, gen: torch.Generator) -> torch.Tensor:
    """Framing (silence cut, then added), voice (pitch), room, noise, phone line, level: the order a
    recorded voice goes through them.

    Every decision is drawn from `gen` whether or not the effect fires, so one clip's choices do
    not shift the next clip's."""
    c = cfg if isinstance(cfg, Conditions) else Conditions.from_config(cfg)
    reverb, rt60 = _happens(gen, c.reverb_prob), _uniform(gen, *c.reverb_rt60_s)
    noise, snr = _happens(gen, c.noise_prob), _uniform(gen, *c.noise_snr_db)
    phone = _happens(gen, c.telephone_prob)
    gain, gain_db = _happens(gen, c.gain_prob), _uniform(gen, *c.gain_db)
    # Drawn only where configured, so a recipe without them draws what it always drew.
    trim = c.trim_prob > 0 and _happens(gen, c.trim_prob)
    pad = c.pad_prob > 0 and _happens(gen, c.pad_prob)
    head, tail = (_uniform(gen, *c.pad_s), _uniform(gen, *c.pad_s)) if c.pad_prob > 0 else (0.0, 0.0)
    pitch = c.pitch_prob > 0 and _happens(gen, c.pitch_prob)
    semitones = _uniform(gen, *c.pitch_semitones) if c.pitch_prob > 0 else 0.0
    x = wave.float()
    if trim:
        x = trim_silence(x, gen)
    if pad:
        x = torch.cat([torch.zeros(round(head * SAMPLING_RATE)), x, torch.zeros(round(tail * SAMPLING_RATE))])
    if pitch:
        x = shift_pitch(x, semitones, gen)
    if reverb:
        x = reverberate(x, rt60, gen)
    if noise:
        x = add_noise(x, snr, gen)
    if phone:
        x = telephone(x)
    if gain:
        x = AF.gain(x, gain_db)
    return x.clamp(-1.0, 1.0)
