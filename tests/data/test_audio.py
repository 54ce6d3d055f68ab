"""One clip's checks (pipeline.data.audio.load_clip): what a rejection says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.audio import ClipRejected, load_clip, needs_polyphase, resample_polyphase


@pytest.mark.parametrize(("samples", "max_s", "error"), [
    (3199, 5.0, r"^0\.1999 s is under data\.min_duration_s=0\.2$"),    # 0.1999375 s: "0.20 s" read as the limit
    (1600, 5.0, r"^0\.10 s is under data\.min_duration_s=0\.2$"),
    (80001, 5.0, r"^5\.0001 s is over data\.max_duration_s=5\.0$"),
    (80074, 5.004, r"^5\.005 s is over data\.max_duration_s=5\.004$"),  # 5.0046 s: "5.00 s" is under it
])
def test_a_clip_outside_the_length_limits_is_said_to_be_on_its_side_of_the_limit(
        tmp_path: Path, samples: int, max_s: float, error: str) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, np.full(samples, 0.1, dtype=np.float32), 16000)
    with pytest.raises(ClipRejected, match=error):
        load_clip(path, "clip.wav", 0.2, max_s, need_signal=True)


@pytest.mark.parametrize("rate", [11127, 44101, 22050, 8000])
def test_any_sample_rate_comes_out_at_16_khz_with_its_pitch(rate: int, tmp_path: Path) -> None:
    """An odd rate (11,127 Hz, an old Mac's; 44,101 Hz) shares almost no factor with 16 kHz, and the
    resampling kernel built for it took 0.7 GB and 28 GB: a worker killed for memory, no message."""
    import io

    t = np.arange(rate) / rate
    sf.write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate)
    clip = load_clip(tmp_path / "a.wav", "a.wav", 0.1, 5.0, True)
    wave, sr = sf.read(io.BytesIO(clip.flac))
    assert sr == 16000 and len(wave) == 16000 and clip.duration == pytest.approx(1.0)
    assert np.argmax(np.abs(np.fft.rfft(wave))) == 440  # 1 Hz bins over one second


def test_polyphase_resampling_runs_along_time_for_channels_first_audio() -> None:
    """scipy resamples along axis 0 by default: a (2, samples) array came back as 3 channels."""
    rate = 11127
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    stereo = resample_polyphase(np.stack([tone, tone]), rate)
    assert needs_polyphase(rate) and stereo.shape == (2, 16000)
    assert np.allclose(stereo[0], resample_polyphase(tone, rate))


def test_a_long_file_only_ffmpeg_reads_is_refused_from_its_header_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libsndfile cannot read an AAC header, so a phone memo was decoded and resampled whole (6.8 GB
    for 30 minutes) before its length was checked; ffmpeg's header states the length."""
    import subprocess

    import pipeline.data.audio as audio

    sf.write(tmp_path / "memo.wav", np.full(16000 * 12, 0.1, dtype=np.float32), 16000)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "memo.wav"), str(tmp_path / "memo.m4a")], check=True)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded before the length check")

    monkeypatch.setattr(audio, "_decode", no_decoding)
    with pytest.raises(ClipRejected, match=r"^12\.\d+ s is over data\.max_duration_s=5\.0$"):
        load_clip(tmp_path / "memo.m4a", "memo.m4a", 0.2, 5.0, need_signal=True)
    with pytest.raises(ClipRejected, match=r"s is over data\.max_duration_s=5\.0$"):
        load_clip((tmp_path / "memo.m4a").read_bytes(), "row 3", 0.2, 5.0, need_signal=True)
    monkeypatch.undo()
    assert load_clip(tmp_path / "memo.m4a", "memo.m4a", 0.2, 30.0, need_signal=True).duration == pytest.approx(12.0, abs=0.1)


def test_a_clip_whose_aac_header_overstates_its_length_is_measured_decoded(tmp_path: Path) -> None:
    """A raw AAC stream's header length is estimated from its first frames: a 28.8 s memo that opens
    quietly states 30.4 s, and was refused under a 30 s limit without being decoded."""
    import subprocess

    from pipeline.data.audio import _ffmpeg_header_seconds

    memo = tmp_path / "memo.aac"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=d=28.8:a=0.5:r=44100:seed=1",
                    "-af", "volume='if(lt(t,4),0.0001,1)':eval=frame", "-c:a", "aac", "-q:a", "2", "-f", "adts",
                    str(memo)], check=True)
    assert _ffmpeg_header_seconds(memo) > 30.0
    assert load_clip(memo, "memo.aac", 0.2, 30.0, need_signal=True).duration == pytest.approx(28.8, abs=0.1)
    with pytest.raises(ClipRejected, match=r"^28\.\d+ s is over data\.max_duration_s=25\.0$"):
        load_clip(memo, "memo.aac", 0.2, 25.0, need_signal=True)  # decoded, then measured
