"""Safe audio paths, and one clip from file to 16 kHz mono FLAC bytes.

Paths come from annotation files written by other people, so a path is checked *lexically* and
after resolving symlinks before anything opens it: an export must never make the build read
`/etc/passwd` or a file beside the export folder.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio  # imported here, not in the workers, so forked `map` workers start warm

from pipeline.data.features import SAMPLING_RATE

# Peak below which a clip counts as silent (about -60 dBFS): digital silence or a dead microphone.
SILENCE_PEAK = 1e-3


class ClipRejected(Exception):
    """A clip that goes to quarantine; `reason` is one of the build's reason codes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def resolve_audio(root: Path, relative: str, allowed_roots: tuple[Path, ...] = ()) -> Path:
    """The file `relative` names inside `root`; ClipRejected when it is outside or absent.

    After symlinks are resolved the file must still lie under `root`, or under one of
    `allowed_roots` (`data.allowed_roots`): clusters often reach the audio folder through a
    directory symlink, which the owner of the data can vouch for but an annotation file cannot.
    """
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or relative.startswith("~"):
        raise ClipRejected("path_outside_root", f"audio path {relative!r} must be relative to the export folder, without '..'")
    if "\0" in relative:
        raise ClipRejected("missing_audio", f"audio path {relative!r} holds a NUL character, which no file name can")
    root = root.resolve()
    path = root / rel
    try:
        return _inside(root, path, relative, allowed_roots)
    except RuntimeError:  # Python's message names the absolute path
        raise ClipRejected("missing_audio", f"audio path {relative!r} is a symlink loop") from None
    except OSError as err:  # a name too long for the file system, a folder it may not read, ...
        raise ClipRejected("missing_audio", f"audio path {relative!r} cannot be opened ({err.strerror or err})") from None


def _inside(root: Path, path: Path, relative: str, allowed_roots: tuple[Path, ...]) -> Path:
    resolved = path.resolve(strict=False)  # follows symlinks; does not open the file
    if not any(resolved.is_relative_to(r) for r in (root, *(a.resolve() for a in allowed_roots))):
        raise ClipRejected(
            "path_outside_root",
            f"audio path {relative!r} resolves outside the export folder, into {resolved.parent} (a symlinked folder?); "
            "if that folder is trusted, add it to data.allowed_roots",
        )
    if resolved.is_dir():
        raise ClipRejected("missing_audio", f"audio path {relative!r} is a folder, not an audio file")
    if not resolved.is_file():
        raise ClipRejected("missing_audio", f"audio file {relative!r} does not exist in the export folder (looked for {path})")
    return resolved


@dataclass(frozen=True)
class Clip:
    flac: bytes
    duration: float  # seconds, after resampling


# A deleted clip shorter than this stands for no one recording (see identifies_a_recording).
MIN_IDENTIFYING_S = 0.25


def identifies_a_recording(audio: Path | bytes) -> bool:
    """Whether a clip's audio stands for that one recording, so that the same bytes under another id
    are a copy of it: not empty, not silent, not a fraction of a second. Every muted microphone's clip
    of one length has the same bytes; another account's identical silent clip is no copy of anyone's."""
    try:
        clip = load_clip(audio, "clip", 0.0, 3600.0, need_signal=True)
    except Exception:  # noqa: BLE001 - empty, undecodable or silent: nothing that identifies
        return False
    return clip.duration >= MIN_IDENTIFYING_S


@lru_cache(maxsize=8)
def resampler(orig_sr: int) -> torchaudio.transforms.Resample:
    """One resampling kernel per input rate, built once per process (the kernel is the costly part)."""
    return torchaudio.transforms.Resample(orig_sr, SAMPLING_RATE)


# torchaudio's kernel holds (16000 / gcd) x (rate / gcd) taps: 0.7 GB for 11,127 Hz (an old Mac
# rate), 28 GB for 44,101 Hz. Rates that share fewer factors with 16 kHz than this go polyphase.
MAX_KERNEL_PHASES = 1000


def needs_polyphase(rate: int) -> bool:
    return SAMPLING_RATE // math.gcd(rate, SAMPLING_RATE) > MAX_KERNEL_PHASES


def resample_polyphase(mono: np.ndarray, rate: int) -> np.ndarray:
    """`rate` -> 16 kHz with scipy's polyphase filter, whose size grows with the larger factor alone.
    Along the last axis: a (channels, samples) array is resampled in time, not across channels."""
    from scipy.signal import resample_poly

    common = math.gcd(rate, SAMPLING_RATE)
    return resample_poly(mono, SAMPLING_RATE // common, rate // common, axis=-1).astype(np.float32)


def _resample(mono: np.ndarray, orig_sr: int) -> np.ndarray:
    """Resample with oneDNN off: its convolution caches one primitive per input length, so with
    clips of every length a worker's memory grew ~0.2 MB per clip (and it was 4x slower)."""
    if needs_polyphase(orig_sr):
        return resample_polyphase(mono, orig_sr)
    previous = torch.backends.mkldnn.enabled  # not flags(): it prints a TF32 notice on every call
    torch.backends.mkldnn.enabled = False
    try:
        return resampler(orig_sr)(torch.from_numpy(mono)).numpy()
    finally:
        torch.backends.mkldnn.enabled = previous


def _decode(audio: Path | bytes, relative: str) -> tuple[np.ndarray, int]:
    """(channels-first float32 samples, rate) via libsndfile, falling back to ffmpeg (torchcodec)."""
    try:
        wave, sr = sf.read(_readable(audio), dtype="float32", always_2d=True)
        return wave.T, int(sr)
    except (sf.LibsndfileError, RuntimeError, ValueError) as sf_err:
        try:
            from torchcodec.decoders import AudioDecoder

            samples = AudioDecoder(audio if isinstance(audio, bytes) else str(audio)).get_all_samples()
            return samples.data.numpy().astype(np.float32), int(samples.sample_rate)
        except Exception:  # noqa: BLE001 - any decoder failure means the same thing here
            raise ClipRejected("unreadable_audio",
                               f"cannot decode {_named(audio, relative)} ({_why(sf_err, audio, relative)})") from None


# ffmpeg's header length of an ADTS AAC stream is a bitrate estimate, 5% over on a memo that opens
# quietly: a clip is refused before decoding only when the header states this many times the limit.
FFMPEG_HEADER_MARGIN = 1.5


def _ffmpeg_header_seconds(audio: Path | bytes) -> float | None:
    """The length ffmpeg's header states, None where it states none (a stream) or cannot be read."""
    try:
        from torchcodec.decoders import AudioDecoder

        seconds = AudioDecoder(audio if isinstance(audio, bytes) else str(audio)).metadata.duration_seconds_from_header
    except Exception:  # noqa: BLE001 - _decode reports an unreadable file
        return None
    return float(seconds) if seconds is not None else None


def _why(err: Exception, audio: Path | bytes, relative: str) -> str:
    """libsndfile's reason without its `Error opening <name>: ` prefix: that name is the absolute
    path (whose folders may be named after an account) or a BytesIO repr (a memory address, new
    on every run). Any other message has the path swapped for the name the caller gave."""
    if isinstance(err, sf.LibsndfileError):
        return err.error_string
    return str(err) if isinstance(audio, bytes) else str(err).replace(str(audio), relative)


def _named(audio: Path | bytes, relative: str) -> str:
    """How a quarantine detail names the clip: `relative` is a path the caller made safe to show,
    or `row N` for the encoded bytes a Hugging Face dataset stores."""
    return f"the audio of {relative}" if isinstance(audio, bytes) else f"audio file {relative!r}"


def _readable(audio: Path | bytes) -> Path | io.BytesIO:
    return io.BytesIO(audio) if isinstance(audio, bytes) else audio


def _beside(seconds: float, limit: float) -> str:
    """`seconds` to two decimals, or to as many more as it takes to print it on its side of the
    limit ("0.20 s is under data.min_duration_s=0.2" for a clip of 0.1999 s)."""
    for digits in range(2, 7):
        text = f"{seconds:.{digits}f}"
        if (float(text) > limit) == (seconds > limit) and float(text) != limit:
            return text
    return repr(seconds)


def load_clip(audio: Path | bytes, relative: str, min_s: float, max_s: float, need_signal: bool) -> Clip:
    """Decode, check and re-encode one clip (a file, or the encoded bytes a Hugging Face dataset
    stores); the length check runs on the header before decoding so an hours-long file is rejected
    without being read. Re-encoding also drops any tags the input file carried.

    Every detail names the clip by `relative` alone, never by `audio`: the caller passes a name
    fit for the quarantine file (identifiers redacted), while the path may not be."""
    if (len(audio) if isinstance(audio, bytes) else os.path.getsize(audio)) == 0:
        raise ClipRejected("unreadable_audio", f"{_named(audio, relative)} is empty")
    try:
        info = sf.info(_readable(audio))
        header = info.frames / info.samplerate if info.samplerate > 0 else None
    except (sf.LibsndfileError, RuntimeError):
        # Not a libsndfile format (AAC, ...): _decode tries ffmpeg, whose header length of a raw AAC
        # stream is estimated from its first frames' bitrate; only a clear excess is refused unread.
        header = _ffmpeg_header_seconds(audio)
        if header is not None and header <= max_s * FFMPEG_HEADER_MARGIN:
            header = None
    if header is not None and header > max_s:
        raise ClipRejected("too_long", f"{_beside(header, max_s)} s is over data.max_duration_s={max_s}")
    wave, sr = _decode(audio, relative)
    if wave.size == 0 or sr <= 0:
        raise ClipRejected("unreadable_audio", f"{_named(audio, relative)} holds no samples")
    mono = wave.mean(axis=0)
    if not np.isfinite(mono).all():
        raise ClipRejected("unreadable_audio", f"{_named(audio, relative)} holds NaN or infinite samples")
    if sr != SAMPLING_RATE:
        mono = _resample(np.ascontiguousarray(mono), sr)
    duration = len(mono) / SAMPLING_RATE
    if duration > max_s:
        raise ClipRejected("too_long", f"{_beside(duration, max_s)} s is over data.max_duration_s={max_s}")
    if duration < min_s:
        raise ClipRejected("too_short", f"{_beside(duration, min_s)} s is under data.min_duration_s={min_s}")
    if need_signal and float(np.abs(mono).max()) < SILENCE_PEAK:
        raise ClipRejected("silent_audio", "the audio is silent but the transcript is not empty")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(mono, -1.0, 1.0), SAMPLING_RATE, format="FLAC", subtype="PCM_16")
    return Clip(buffer.getvalue(), duration)
