"""Real recording conditions (pipeline/asr/augment.py): each effect does what it claims, a seed
gives the same clip, and the default config never applies them."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.asr.augment import add_noise, recording_conditions, reverberate, telephone
from pipeline.asr.collate import augment, augment_settings
from pipeline.asr.config import ASRConfig
from pipeline.config import checked
from pipeline.runtime import PipelineError

SR = 16000
CONF = Path(__file__).resolve().parents[2] / "conf"
ONLY = {"reverb_prob": 0.0, "reverb_rt60_s": [0.5, 0.5], "noise_prob": 0.0, "noise_snr_db": [10, 10],
        "telephone_prob": 0.0, "gain_prob": 0.0, "gain_db": [-6, -6]}


def white(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(int(SR * seconds), generator=torch.Generator().manual_seed(seed))


def share_above(x: torch.Tensor, hz: float) -> float:
    power = np.abs(np.fft.rfft(x.numpy())) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(power[freqs > hz].sum() / power.sum())


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def test_telephone_band_removes_energy_above_4_khz() -> None:
    x = white()
    assert share_above(x, 4200) > 0.4  # white noise: about half its energy is above 4 kHz
    y = telephone(x)
    assert y.shape == x.shape
    assert share_above(y, 4200) < 0.01  # the resampler's transition band ends near 4 kHz
    assert share_above(y, 5000) < 1e-4
    assert rms(y) > 0.6 * rms(x)  # the band below 4 kHz is kept


def test_gain_changes_the_level_by_the_drawn_decibels() -> None:
    x = white()
    y = recording_conditions(x, {**ONLY, "gain_prob": 1.0}, torch.Generator().manual_seed(0))
    assert 20 * np.log10(rms(y) / rms(x)) == pytest.approx(-6.0, abs=0.01)


def test_reverberation_lengthens_the_decay() -> None:
    x = torch.zeros(SR)
    x[:1600] = white(0.1)  # a 100 ms burst, then silence
    y = reverberate(x, 0.6, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    tail = slice(int(0.25 * SR), int(0.6 * SR))  # well after the burst (and the room's direct path)
    assert rms(x[tail]) == 0
    assert rms(y[tail]) > 0.01 * rms(y[:1600])
    longer = reverberate(x, 1.2, torch.Generator().manual_seed(0))
    assert rms(longer[tail]) / rms(longer[:1600]) > rms(y[tail]) / rms(y[:1600])


def test_trimming_cuts_the_silence_at_both_ends_and_keeps_the_word() -> None:
    word = white(0.4, seed=3)
    x = torch.cat([torch.zeros(SR // 2), word, torch.zeros(SR // 2)])
    y = recording_conditions(x, {**ONLY, "trim_prob": 1.0}, torch.Generator().manual_seed(0))
    assert 0.4 * SR <= y.shape[0] <= 0.55 * SR  # the word, within the trimmer's 2048-sample frames
    assert rms(y) == pytest.approx(rms(word), rel=0.2)
    silent = recording_conditions(torch.zeros(SR), {**ONLY, "trim_prob": 1.0}, torch.Generator().manual_seed(0))
    assert silent.shape[0] == SR  # nothing above the floor: the clip is left whole, never emptied


def test_padding_adds_silence_of_the_drawn_length_at_each_end() -> None:
    x = white(0.4)
    y = recording_conditions(x, {**ONLY, "pad_prob": 1.0, "pad_s": [0.25, 0.25]}, torch.Generator().manual_seed(0))
    assert y.shape[0] == x.shape[0] + SR // 2
    assert torch.equal(y[SR // 4 : SR // 4 + x.shape[0]], x)
    assert y[: SR // 4].abs().max() == 0 and y[-SR // 4 :].abs().max() == 0


def test_a_pitch_shift_moves_the_voice_by_the_drawn_semitones_at_the_same_length() -> None:
    t = torch.arange(SR) / SR
    x = 0.3 * torch.sin(2 * torch.pi * 200 * t)
    y = recording_conditions(x, {**ONLY, "pitch_prob": 1.0, "pitch_semitones": [12, 12]}, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    freqs = np.fft.rfftfreq(SR, 1 / SR)
    assert freqs[np.abs(np.fft.rfft(y.numpy())).argmax()] == pytest.approx(400, abs=5)  # an octave up


def test_trimming_padding_and_pitch_off_leave_every_other_draw_as_it_was() -> None:
    every = {**ONLY, "reverb_prob": 0.5, "reverb_rt60_s": [0.2, 0.8], "noise_prob": 0.5, "noise_snr_db": [5, 30],
             "telephone_prob": 0.5, "gain_prob": 0.5, "gain_db": [-12, 6]}
    off = {**every, "trim_prob": 0.0, "pad_prob": 0.0, "pad_s": [0.0, 0.5], "pitch_prob": 0.0, "pitch_semitones": [-3, 3]}
    before, after = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for seed in range(4):  # one generator through several clips, as in a collator's batch
        assert torch.equal(recording_conditions(white(seed=seed), every, before),
                           recording_conditions(white(seed=seed), off, after))


def test_noise_is_added_at_the_drawn_snr() -> None:
    t = torch.arange(SR) / SR
    x = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    y = add_noise(x, 10.0, torch.Generator().manual_seed(0))
    snr = 20 * np.log10(rms(x) / rms(y - x))
    assert snr == pytest.approx(10.0, abs=0.5)


def test_a_seed_gives_the_same_clip_and_leaves_the_global_generators_alone() -> None:
    x = white()
    every = {**ONLY, "reverb_prob": 1.0, "reverb_rt60_s": [0.2, 0.8], "noise_prob": 1.0, "noise_snr_db": [5, 30],
             "telephone_prob": 1.0, "gain_prob": 1.0, "gain_db": [-12, 6],
             "trim_prob": 1.0, "pad_prob": 1.0, "pad_s": [0.0, 0.3], "pitch_prob": 1.0, "pitch_semitones": [-3, 3]}
    random.seed(7)
    np.random.seed(7)
    before = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    a = recording_conditions(x, every, torch.Generator().manual_seed(3))
    assert (random.random(), np.random.rand()) == before
    b = recording_conditions(x, every, torch.Generator().manual_seed(3))
    c = recording_conditions(x, every, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _asr_group(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=list(overrides)).asr


def test_off_by_default_and_on_in_the_speech_recipe() -> None:
    default = _asr_group()
    assert checked(default, ASRConfig, "asr").augment.conditions is None
    x = white().numpy()
    plain = augment(x, 1.0, default.augment, torch.Generator().manual_seed(0))
    assert np.array_equal(plain, x)  # the default's augmentation: speed only (1.0 here), no conditions

    recipe = _asr_group("data=demo_speech")
    typed = checked(recipe, ASRConfig, "asr").augment.conditions
    assert typed is not None and typed.reverb_prob > 0 and typed.telephone_prob > 0
    on = OmegaConf.merge(recipe.augment, {"conditions": {**ONLY, "gain_prob": 1.0}})
    louder = augment(x, 1.0, on, torch.Generator().manual_seed(0))
    assert rms(torch.from_numpy(louder)) == pytest.approx(rms(torch.from_numpy(x)) * 10 ** (-6 / 20), rel=1e-3)


def test_the_collators_settings_read_once_give_the_same_clip_as_the_config() -> None:
    recipe = _asr_group("data=demo_speech", "asr.augment.noise_snr_db=[15,30]")
    every = OmegaConf.merge(recipe.augment, {"conditions": {"reverb_prob": 1.0, "noise_prob": 1.0, "telephone_prob": 1.0, "gain_prob": 1.0}})
    x = white().numpy()
    from_cfg = augment(x, 1.1, every, torch.Generator().manual_seed(5))
    from_settings = augment(x, 1.1, augment_settings(every), torch.Generator().manual_seed(5))
    assert np.array_equal(from_cfg, from_settings) and not np.array_equal(from_cfg[: x.shape[0] // 2], x[: x.shape[0] // 2])


def test_a_bad_chance_or_range_names_the_key() -> None:
    recipe = _asr_group("data=demo_speech", "asr.augment.conditions.noise_prob=1.5")
    with pytest.raises(PipelineError, match="asr.augment.conditions.noise_prob=1.5"):
        checked(recipe, ASRConfig, "asr")
    recipe = _asr_group("data=demo_speech", "asr.augment.conditions.gain_db=[6,-12]")
    with pytest.raises(PipelineError, match="asr.augment.conditions.gain_db"):
        checked(recipe, ASRConfig, "asr")
    recipe = _asr_group("data=demo_speech", "asr.augment.conditions.pad_s=[-0.1,0.5]")
    with pytest.raises(PipelineError, match=r"asr.augment.conditions.pad_s=\[-0.1, 0.5\]: seconds of silence"):
        checked(recipe, ASRConfig, "asr")


def test_a_short_reverberation_time_is_refused_up_front_and_never_crashes_a_batch() -> None:
    """Before the fix: RT60s under ~0.125 s passed the config check (only > 0 was required), and a
    clip that drew one stopped training inside the collator: pyroomacoustics cannot give the larger
    simulated rooms so short a reverberation ("room may be too large for required RT60")."""
    recipe = _asr_group("data=demo_speech", "asr.augment.conditions.reverb_rt60_s=[0.1,0.5]")
    with pytest.raises(PipelineError, match="asr.augment.conditions.reverb_rt60_s"):
        checked(recipe, ASRConfig, "asr")
    x = white(0.2)
    for room_seed in range(16):  # every one of the rooms
        y = reverberate(x, 0.05, torch.Generator().manual_seed(room_seed))
        assert y.shape == x.shape and torch.isfinite(y).all()
