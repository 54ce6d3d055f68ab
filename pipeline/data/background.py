"""Background recordings: long audio without the wake word, to count false accepts per hour.

A device listens all day, so a wake-word threshold is judged on hours of continuous audio (TV,
radio, people in the room), not on the few seconds of negative clips a dataset holds. This module
finds such recordings and assigns each one, whole, to one split, so the threshold tuned on
validation recordings is measured on test recordings it never heard. It accepts:

- a built dataset (a DatasetDict folder): each row of the two splits is one recording;
- an export folder (annotations.jsonl): records `{"audio": <relative path>, "transcript"?, "split"?,
  "recording_id"?}`;
- a folder of audio files, searched recursively; files under a folder named after a split belong
  to it (`train/` is skipped; `dev/`, `val/` and the like are refused rather than guessed), the
  others are assigned by a hash of their path; `<name>.txt` beside a file is its transcript.

Outputs never name a recording as written: a file name or an export's `recording_id` can carry a
device serial or an account number (`kitchen-DSN12345.flac`). Each recording is named by a keyed
pseudonym of that name (`rec_<16 hex>`, pipeline.data.privacy.recording_pseudonym) and its position
in the source, which carries no id: `annotations.jsonl line 4` of an export, `audio file 2` of a
folder (its audio files in path order, from 1), `test row 0` of a dataset.
`python -m pipeline.data.background <source>` prints each pseudonym beside the name it stands for,
on the terminal only, for the operator who holds the key.

The demo's background is synthesised from text that ships with the repository
(data/demo/background.txt and the demo corpus' own sentences) by `ensure_demo_background`, once,
into a cache folder named after a hash of its inputs, as an export folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from pipeline.data.features import AUDIO_EXTENSIONS, FFMPEG_EXTENSIONS, SAMPLING_RATE, SPLITS
from pipeline.data.privacy import recording_pseudonym
from pipeline.data.saved import open_saved
from pipeline.data.schema import json_lines
from pipeline.runtime import PipelineError, first_line, staged_folder, usable_cores
from pipeline.text import normalize_text

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"
# Folder names that mean a split in other projects' layouts; guessing which of ours would be a coin
# toss, so a recording under one is an error that says how to name it.
OTHER_SPLIT_NAMES = ("dev", "val", "valid", "eval", "evaluation", "training", "testing")
# Bump when the recordings written for the same inputs change, so old caches are not reused.
BACKGROUND_VERSION = 1


@dataclass(frozen=True)
class Recording:
    """One background recording. `row` is set when the audio sits in a built dataset's row."""

    # The name as the source writes it (a path relative to it, an export's recording_id): it may hold
    # a device serial, so it is never written out; outputs and errors name `name` and `position`.
    recording_id: str
    split: str
    path: Path  # the audio file, or the built dataset folder when `row` is set
    seconds: float
    transcript: str | None = None
    row: int | None = None
    name: str = ""  # the keyed pseudonym of recording_id (pipeline.data.privacy.recording_pseudonym)
    position: str = ""  # where it sits in the source, without an id: "annotations.jsonl line 4"

    @property
    def label(self) -> str:
        """How an error names the recording: its pseudonym, and where the operator finds it."""
        return f"{self.name} ({self.position})"

    def open(self) -> sf.SoundFile:
        """The audio as a seekable soundfile stream; a dataset row's encoded bytes are the only copy
        held in memory (a few MB for ten minutes of FLAC), the samples are decoded block by block."""
        if self.row is None:
            return sf.SoundFile(self.path)
        from datasets import Audio, load_from_disk

        split = load_from_disk(str(self.path))[self.split].cast_column("audio", Audio(decode=False))
        cell = split[self.row]["audio"]
        data = cell.get("bytes") or Path(cell["path"]).read_bytes()
        return sf.SoundFile(io.BytesIO(data))


def mentions(transcript: str, wake_word: str) -> bool:
    """Whether the wake word occurs as whole word(s): "alexa's" and "alexa" do, "alexander" does not."""
    words, key = normalize_text(transcript).split(), normalize_text(wake_word).split()
    variants = [key, key[:-1] + [key[-1] + "'s"], key[:-1] + [key[-1] + "s"]]
    return any(words[i : i + len(v)] == v for v in variants for i in range(len(words) - len(v) + 1))


def load_background(source: Path, splits: tuple[str, str], wake_word: str, key: bytes) -> list[Recording]:
    """The recordings of `source` that fall in `splits` (tune split, eval split), each named by its
    pseudonym under `key` (the pseudonym key of pipeline.data.privacy.load_key).

    A recording whose transcript says the wake word is an error that names it: every detection
    on background audio counts as a false accept, so a hidden positive would be charged to the model.
    """
    source = Path(source)
    if not source.exists():
        raise PipelineError(
            f"eval.background={source}: no such file or folder; give a built dataset, an export folder "
            "(annotations.jsonl) or a folder of audio files, or eval.background=none"
        )
    if (source / "dataset_dict.json").exists():
        recordings = _from_dataset(source, splits, key)
    elif (source / "annotations.jsonl").exists():
        recordings = _from_export(source, splits, key)
    elif source.is_dir():
        recordings = _from_folder(source, splits, key)
    else:
        raise PipelineError(f"eval.background={source}: a folder is expected (a built dataset, an export or audio files)")
    for rec in recordings:
        if rec.transcript and mentions(rec.transcript, wake_word):
            raise PipelineError(
                f"background recording {rec.label} (in {source}) has the wake word {wake_word!r} in its "
                "transcript; background audio must not contain it (every detection there counts as a false "
                "accept): remove the recording or cut the wake word out"
            )
    return sorted(recordings, key=lambda r: (splits.index(r.split), r.recording_id))


def hashed_split(name: str, splits: tuple[str, str]) -> str:
    """Half the recordings to each split, by a hash of the name: stable across runs and machines."""
    return splits[0] if int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 2 == 0 else splits[1]


def _seconds(path: Path, label: str) -> float:
    try:
        if path.suffix.lower() in FFMPEG_EXTENSIONS:
            return ffmpeg_seconds(path, label)
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise PipelineError(f"background recording {label}: cannot read it as audio ({without_path(err, path)})") from err
    return float(info.frames) / float(info.samplerate)


def without_path(err: Exception | str, path: Path) -> str:
    """A decoder's message with the file's path and name taken out: both are the recording's name as
    written, which the message's reader gets as a pseudonym instead."""
    text = str(err)
    for spelling in sorted({str(path), path.as_posix(), path.name} - {"", ".", ".."}, key=len, reverse=True):
        # Whole names only (a file `a.wav` is not in "a wave"), or a path's last part (".../audio/a.wav").
        text = re.sub(rf"(?<![\w.\-]){re.escape(spelling)}(?![\w.\-])", "<file>", text)
    return text


def _named(key: bytes, name: str, position: str, split: str, path: Path, seconds: float | None,
           transcript: str | None, row: int | None = None) -> Recording:
    """A recording with its pseudonym; `seconds` None: read from the file's header."""
    pseudonym = recording_pseudonym(key, name)
    if seconds is None:
        seconds = _seconds(path, f"{pseudonym} ({position})")
    return Recording(name, split, path, seconds, transcript, row, pseudonym, position)


def ffmpeg_blocks(path: Path, block_s: float, label: str) -> Iterator[np.ndarray]:
    """Mono 16 kHz samples of a file libsndfile cannot read, decoded and resampled by ffmpeg one block
    at a time (an hour of phone audio is never held whole). A file whose decoding stops short of its
    end is an error that names it by `label` (`_check_end`; Recording.label, not the path, which may
    hold a serial): its missing hours would silently not be heard."""
    from torchcodec.decoders import AudioDecoder

    decoder = AudioDecoder(str(path), sample_rate=SAMPLING_RATE, num_channels=1)
    end = header_seconds(decoder)
    start, decoded = 0.0, 0
    while True:
        try:
            block = decoder.get_samples_played_in_range(start, start + block_s).data
        except RuntimeError as err:  # past the last frame, or a damaged file
            _check_end(path, label, start, decoded / SAMPLING_RATE, end, block_s,
                       without_path(first_line(err), path), err)
            return
        if not block.shape[-1]:
            _check_end(path, label, start, decoded / SAMPLING_RATE, end, block_s, "no samples", None)
            return
        decoded += block.shape[-1]
        yield block.numpy()[0]
        start += block_s


def header_seconds(decoder: Any) -> float | None:
    """The duration the file's header gives: the audio stream's, else the container's (WebM keeps it
    only in its segment header, which torchcodec's public metadata does not show). None: neither has one."""
    seconds = decoder.metadata.duration_seconds_from_header
    if seconds is None:
        try:
            from torchcodec import _core

            seconds = _core.get_container_metadata(decoder._decoder).duration_seconds_from_header
        except Exception:  # noqa: BLE001 - an internal of torchcodec: without it, the stream's alone
            seconds = None
    return float(seconds) if seconds else None


def _check_end(path: Path, label: str, start: float, decoded_s: float, end: float | None, block_s: float, why: str,
               err: Exception | None) -> None:
    """Decoding stopped at `start` seconds: the file's end, or damage that ffmpeg does not read past.
    With a duration in the header, stopping more than a second before it is damage. Without one, a
    fresh decoder asked for what follows `start` tells: audio there means the file goes on."""
    if end is not None:
        if start < end - 1.0:  # its hours would count as heard: refuse it
            raise PipelineError(f"background recording {label}: ffmpeg cannot decode it past {start:.0f} s of the "
                                f"{end:.0f} s its header gives: {decoded_s:.0f} s decoded ({why}); re-encode it or "
                                "take it out") from err
        return
    from torchcodec.decoders import AudioDecoder

    try:
        after = AudioDecoder(str(path), sample_rate=SAMPLING_RATE, num_channels=1).get_samples_played_in_range(
            start, start + block_s).data.shape[-1] / SAMPLING_RATE
    except RuntimeError:  # nothing after `start`: the file's end
        return
    if after > 1.0:
        raise PipelineError(f"background recording {label}: ffmpeg stopped decoding it after {decoded_s:.0f} s ({why}), "
                            f"yet {after:.0f} s more decode from {start:.0f} s on, so the file is damaged there, not "
                            "ended (its header gives no duration to check against); re-encode it or take it out") from err


def ffmpeg_seconds(path: Path, label: str) -> float:
    from torchcodec.decoders import AudioDecoder

    seconds = header_seconds(AudioDecoder(str(path)))
    if seconds is None:  # a header without it: count the samples
        seconds = sum(len(b) for b in ffmpeg_blocks(path, 600.0, label)) / SAMPLING_RATE
    return float(seconds)


def _from_dataset(path: Path, splits: tuple[str, str], key: bytes) -> list[Recording]:
    dd = open_saved(path)
    out = []
    for split in splits:
        if split not in dd:
            continue
        cols = set(dd[split].column_names)
        if "audio" not in cols:
            raise PipelineError(f"eval.background={path}: split {split!r} has no audio column")
        entries = _dataset_entries(split, dd[split])
        text_col = next((c for c in ("text", "transcript") if c in cols), None)
        texts = dd[split][text_col] if text_col else [None] * len(entries)
        present = dd[split]["wake_word_present"] if "wake_word_present" in cols else [False] * len(entries)
        seconds = dd[split]["duration"] if "duration" in cols else None
        for i, (position, name) in enumerate(entries):
            rec = _named(key, name, position, split, path, float(seconds[i]) if seconds else 0.0, texts[i], row=i)
            if present[i]:
                raise PipelineError(f"background recording {rec.label} (in {path}) is marked wake_word_present; "
                                    "background audio must not contain the wake word")
            if seconds is None:
                with rec.open() as f:
                    rec = replace(rec, seconds=f.frames / f.samplerate)
            out.append(rec)
    return out


# Where a recording sits in its source, and its name as written: the loaders and the mapping back
# (`source_names`) must agree on both, or a pseudonym in a report would map to the wrong file.
def _dataset_entries(split_name: str, split: Any) -> list[tuple[str, str]]:
    """A built dataset split's recordings: position ("test row 0") and name ("test/<utterance_id>", or
    the row number without that column)."""
    ids = split["utterance_id"] if "utterance_id" in split.column_names else [str(i) for i in range(len(split))]
    return [(f"{split_name} row {i}", f"{split_name}/{uid}") for i, uid in enumerate(ids)]


def _export_position(line: int) -> str:
    return f"annotations.jsonl line {line}"


def _file_position(number: int) -> str:
    """A folder's audio files in path order (`_audio_files`), from 1."""
    return f"audio file {number}"


def _export_name(record: dict[str, Any]) -> str:
    """An export record's name as written: its recording_id, else its audio path."""
    return str(record.get("recording_id") or record.get("audio"))


def _from_export(folder: Path, splits: tuple[str, str], key: bytes) -> list[Recording]:
    from pipeline.data.audio import ClipRejected, resolve_audio

    out = []
    for line in json_lines(folder / "annotations.jsonl"):
        n, record = line.number, line.record
        if record is None:
            if line.error is None:  # blank
                continue
            raise PipelineError(f"{folder}/annotations.jsonl line {n}: {line.error}")
        audio = record.get("audio")
        if not isinstance(audio, str) or not audio:
            raise PipelineError(f"{folder}/annotations.jsonl line {n}: a background record needs an `audio` path "
                                "(a string, relative to the folder)")
        try:
            path = resolve_audio(folder, audio)
        except ClipRejected as err:
            raise PipelineError(f"{folder}/annotations.jsonl line {n}: {without_path(err.detail, Path(audio))}") from err
        name = _export_name(record)
        pseudonym = recording_pseudonym(key, name)
        split = record.get("split") or hashed_split(name, splits)
        if split == "train":  # background kept for training, not for measuring
            continue
        if record.get("wake_word_present"):
            raise PipelineError(f"{folder}/annotations.jsonl line {n}: background recording {pseudonym} is marked "
                                "wake_word_present; background audio must not contain the wake word (every detection "
                                "there counts as a false accept): remove the record or cut the wake word out")
        if split not in splits:
            raise PipelineError(f"{folder}/annotations.jsonl line {n}: split {split!r} is none of {list(splits)} "
                                "(or train, which evaluation skips); fix the record's split, or leave it out to "
                                "split the recordings by a hash of their names")
        transcript = record.get("transcript")
        if transcript is not None and not isinstance(transcript, str):
            raise PipelineError(f"{folder}/annotations.jsonl line {n}: background recording {pseudonym}'s transcript is "
                                f"{type(transcript).__name__} {transcript!r}, not a string; write it as text or leave it out")
        out.append(_named(key, name, _export_position(n), split, path, None, transcript))
    return out


def _audio_files(folder: Path) -> tuple[list[Path], Counter[str]]:
    """A folder's audio files in path order (a recording's position is its place here, from 1), and
    the count of other files by type."""
    every = [p for p in folder.rglob("*") if p.is_file()]
    files = sorted(p for p in every if p.suffix.lower() in AUDIO_EXTENSIONS)
    other = Counter(p.suffix.lower() or p.name for p in every if p.suffix.lower() not in (*AUDIO_EXTENSIONS, ".txt"))
    return files, other


def _from_folder(folder: Path, splits: tuple[str, str], key: bytes) -> list[Recording]:
    """A folder someone named as background: one without any audio is a wrong path, not a reason to
    fall back to the negative clips, whose false accepts per hour measure far less."""
    files, other = _audio_files(folder)
    if not files:
        raise PipelineError(f"eval.background={folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under it; "
                            "point it at recordings, or eval.background=none")
    if other:  # a format nothing here decodes: convert it, or it is not heard
        log.warning("eval.background=%s: %d file(s) of other types skipped (%s); convert recordings to %s",
                    folder, sum(other.values()), ", ".join(f"{k}: {n}" for k, n in other.most_common(5)),
                    ", ".join(AUDIO_EXTENSIONS))
    out, unnamed = [], Counter()
    for number, path in enumerate(files, 1):
        name = path.relative_to(folder).as_posix()
        folders = [part.lower() for part in path.relative_to(folder).parts[:-1]]
        named = [s for s in splits if s in folders]
        if not named and any(f in SPLITS for f in folders):  # another split's (train: kept for training)
            continue
        if not named and (alias := next((f for f in folders if f in OTHER_SPLIT_NAMES), None)):
            unnamed[alias] += 1
            continue
        split = named[0] if named else hashed_split(name, splits)
        position = _file_position(number)
        sidecar = path.with_suffix(".txt")
        try:
            transcript = sidecar.read_text(encoding="utf-8") if sidecar.exists() else None
        except UnicodeDecodeError as err:
            raise PipelineError(f"background transcript of {recording_pseudonym(key, name)} ({position}, the .txt "
                                f"beside it): not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8, "
                                "or remove it") from None
        out.append(_named(key, name, position, split, path, None, transcript))
    if unnamed:
        alias, n = unnamed.most_common(1)[0]
        raise PipelineError(
            f"eval.background={folder}: {sum(unnamed.values())} recording(s) under a folder named like a split "
            f"that is none of {list(SPLITS)} ({n} under {alias!r}/); rename it to {' or '.join(splits)} "
            "(train/ is skipped), or move its recordings out to split them by a hash of their paths"
        )
    return out


def source_names(source: Path) -> list[tuple[str, str]]:
    """(position, name as written) of every recording of a background source, in every split: what
    `python -m pipeline.data.background` maps pseudonyms back to."""
    source = Path(source)
    if (source / "dataset_dict.json").exists():
        dd = open_saved(source)
        return [entry for split in dd for entry in _dataset_entries(split, dd[split])]
    if (source / "annotations.jsonl").exists():
        return [(_export_position(line.number), _export_name(line.record))
                for line in json_lines(source / "annotations.jsonl")
                if line.record is not None and isinstance(line.record.get("audio"), str) and line.record["audio"]]
    if source.is_dir():
        return [(_file_position(i), p.relative_to(source).as_posix()) for i, p in enumerate(_audio_files(source)[0], 1)]
    raise PipelineError(f"{source}: no such folder; give the background source that eval.background named (a built "
                        "dataset, an export folder or a folder of audio files)")


# --- The demo's synthesised background -------------------------------------------------------


@dataclass(frozen=True)
class BackgroundKnobs:
    """The `data.background` block of the demo. `workers` only changes speed (not in the cache key)."""

    hours: float = 2.2  # per split; a run with data.demo.max_utterances gets a proportional share
    recording_minutes: float = 10.0  # length of one recording
    near_miss_share: float = 0.05  # of spoken lines: "alexander ...", "a lexus ...", "election ..."
    command_share: float = 0.25  # of spoken lines: commands without the wake word, overheard chatter
    noise_db: tuple[float, float] = (-50.0, -38.0)  # the room noise bed's level range, dBFS
    seed: int = 0
    workers: int | None = None


def background_knobs(block: Mapping[str, Any] | None) -> BackgroundKnobs:
    block = dict(block or {})
    known = BackgroundKnobs.__dataclass_fields__
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise PipelineError(f"unknown key(s) {unknown} in data.background; known: {sorted(known)}")
    if "noise_db" in block:
        block["noise_db"] = tuple(float(v) for v in block["noise_db"])
    knobs = BackgroundKnobs(**block)
    if not (isinstance(knobs.hours, (int, float)) and knobs.hours >= 0):
        raise PipelineError(f"data.background.hours={knobs.hours!r}: use hours per split, >= 0")
    if not knobs.recording_minutes > 0:
        raise PipelineError(f"data.background.recording_minutes={knobs.recording_minutes!r}: use minutes > 0")
    if not 0 <= knobs.near_miss_share + knobs.command_share <= 1:
        raise PipelineError("data.background.near_miss_share + command_share must lie between 0 and 1")
    return knobs


def ensure_demo_background(knobs: BackgroundKnobs, cache_dir: Path, splits: tuple[str, str]) -> Path:
    """The export folder of the demo's background recordings, synthesised on first use.

    Like the demo clips, the audio is a pure function of shipped text, knobs and the espeak-ng
    version, so it lives in `<cache_dir>/demo_background/<key>/` and appears there only complete.
    """
    from pipeline.data.demo import espeak_version

    espeak = espeak_version()
    texts = _texts()
    # The voices too: plan_recordings casts each recording from the corpus's voices (_voices).
    h = hashlib.sha256(json.dumps([BACKGROUND_VERSION, espeak, texts, _voices(), list(splits),
                                   {k: v for k, v in asdict(knobs).items() if k != "workers"}]).encode())
    out = Path(cache_dir) / "demo_background" / h.hexdigest()[:16]
    if (out / "annotations.jsonl").exists():
        return out
    with staged_folder(out, marker="annotations.jsonl") as tmp:
        (tmp / "audio").mkdir()
        started = time.perf_counter()
        plans = plan_recordings(texts, knobs, splits)
        workers = knobs.workers or usable_cores()
        records = [_render(plan, tmp, workers) for plan in plans]
        with open(tmp / "annotations.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        log.info("demo: synthesised %.2f h of background audio (%d recordings) in %.1f s",
                 sum(r["duration"] for r in records) / 3600, len(records), time.perf_counter() - started)
    return out


def _texts() -> dict[str, list[list[str]]]:
    """The shipped sentences by kind: programmes (lists of consecutive sentences), near misses, and
    overheard lines (the demo's commands with the wake word taken off, and its overheard speech)."""
    programmes: list[list[str]] = []
    current: list[str] = []
    for line in (DEMO_DIR / "background.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        if line:
            current.append(line)
        elif current:
            programmes.append(current)
            current = []
    if current:
        programmes.append(current)
    near, overheard = set(), set()
    with open(DEMO_DIR / "utterances.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            words = record["transcript"].split()
            if record["kind"] == "near_miss":
                near.add(record["transcript"])
            elif record["kind"] == "command" and words[0] == "alexa" and len(words) > 2:
                overheard.add(" ".join(words[1:]))
            elif record["kind"] == "background":
                overheard.add(record["transcript"])
    return {"programmes": programmes, "near_miss": [[s] for s in sorted(near)], "overheard": [[s] for s in sorted(overheard)]}


def _voices() -> list[str]:
    with open(DEMO_DIR / "utterances.jsonl", encoding="utf-8") as f:
        return sorted({json.loads(line)["voice"] for line in f})


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch: a few sentences in one voice, then a pause."""

    kind: str  # programme | near_miss | overheard | noise
    text: str
    voice: str
    speed: int
    pitch: int
    pause_s: float


def plan_recordings(texts: dict[str, list[list[str]]], knobs: BackgroundKnobs, splits: tuple[str, str]) -> list[dict[str, Any]]:
    """What each recording says, and in which voices. Sentences are divided between the splits by
    a hash, so test recordings hold sentences the threshold never met on validation."""
    rng = random.Random(knobs.seed)
    voices = _voices()
    pools = {
        split: {kind: [group for group in groups if hashed_split(group[0], splits) == split] or groups
                for kind, groups in texts.items()}
        for split in splits
    }
    # ~11 s of speech plus a pause per turn; recordings are planned a little long and cut to length.
    per_recording = knobs.recording_minutes * 60.0
    n_recordings = math.ceil(knobs.hours * 3600.0 / per_recording - 1e-9) if knobs.hours > 0 else 0
    plans = []
    for split in splits:
        for n in range(n_recordings):
            seconds = min(per_recording, knobs.hours * 3600.0 - n * per_recording)
            cast = rng.sample(voices, k=min(len(voices), rng.randint(3, 6)))
            people = [(v, rng.randint(140, 185), rng.randint(35, 70)) for v in cast]
            turns, planned = [], 0.0
            while planned < seconds * 1.15 + 30:
                voice, speed, pitch = rng.choice(people)
                draw = rng.random()
                if draw < knobs.near_miss_share:
                    kind, text = "near_miss", rng.choice(pools[split]["near_miss"])[0]
                elif draw < knobs.near_miss_share + knobs.command_share:
                    kind, text = "overheard", rng.choice(pools[split]["overheard"])[0]
                elif draw < 0.98:
                    programme = rng.choice(pools[split]["programmes"])
                    start = rng.randrange(len(programme))
                    kind, text = "programme", " ".join(programme[start : start + rng.randint(2, 4)])
                else:
                    kind, text = "noise", ""
                pause = rng.uniform(0.3, 2.5)
                turns.append(Turn(kind, text, voice, speed, pitch, pause))
                planned += (len(text.split()) / (speed / 60.0) if text else rng.uniform(2.0, 6.0)) + pause
            plans.append({"recording_id": f"{split}-{n:03d}", "split": split, "seconds": seconds, "turns": turns,
                          "noise_db": rng.uniform(*knobs.noise_db), "seed": rng.randrange(2**31)})
    return plans


def _speak(turn: Turn) -> np.ndarray:
    """One turn spoken by espeak-ng, at 16 kHz."""
    cmd = ["espeak-ng", "-v", turn.voice, "-s", str(turn.speed), "-p", str(turn.pitch), "--stdout", turn.text]
    done = subprocess.run(cmd, capture_output=True)
    if done.returncode != 0:
        raise PipelineError(f"espeak-ng failed on background text {turn.text[:40]!r} (voice {turn.voice}): "
                            f"{done.stderr.decode(errors='replace').strip() or done.returncode}")
    wave, sr = sf.read(io.BytesIO(done.stdout), dtype="float32")
    if sr == SAMPLING_RATE:
        return wave
    from pipeline.data.audio import resampler

    # Not audio's oneDNN-off resample: turns are spoken in threads, and that switch is process-wide.
    return resampler(int(sr))(torch.from_numpy(wave)).numpy()


def _render(plan: dict[str, Any], folder: Path, workers: int) -> dict[str, Any]:
    """Speak the turns (espeak-ng processes in parallel), join them with pauses over a noise bed,
    cut to length and write 16-bit FLAC; return the export record with each segment's times."""
    rng = np.random.default_rng(plan["seed"])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        waves = list(pool.map(lambda t: _speak(t) if t.text else None, plan["turns"]))
    total = int(plan["seconds"] * SAMPLING_RATE)
    audio = np.zeros(total, dtype=np.float32)
    segments, pos = [], 0
    for turn, wave in zip(plan["turns"], waves):
        if pos >= total:
            break
        if wave is None:  # a burst of louder noise: a door, applause, a passing car
            n = int(rng.uniform(2.0, 6.0) * SAMPLING_RATE)
            wave = (rng.standard_normal(n) * 0.03 * np.hanning(n)).astype(np.float32)
        else:
            wave = wave * np.float32(rng.uniform(0.5, 1.0) / max(float(np.abs(wave).max()), 1e-6))
        end = min(total, pos + len(wave))
        audio[pos:end] += wave[: end - pos]
        segments.append({"start": round(pos / SAMPLING_RATE, 3), "end": round(end / SAMPLING_RATE, 3),
                         "kind": turn.kind, "voice": turn.voice, "text": turn.text})
        pos = end + int(turn.pause_s * SAMPLING_RATE)
    audio += _noise_bed(total, plan["noise_db"], rng)
    np.clip(audio, -1.0, 1.0, out=audio)
    name = f"audio/{plan['recording_id']}.flac"
    sf.write(folder / name, audio, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
    return {"recording_id": plan["recording_id"], "audio": name, "split": plan["split"],
            "duration": total / SAMPLING_RATE,
            "transcript": " ".join(s["text"] for s in segments if s["text"]), "segments": segments}


def _noise_bed(n: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Room noise: white noise leaned towards low frequencies (one-pole low-pass mixed with the
    white), at `level_db` dBFS RMS."""
    from scipy.signal import lfilter

    white = rng.standard_normal(n).astype(np.float32)
    low = lfilter([0.05], [1.0, -0.95], white).astype(np.float32)
    bed = 0.3 * white + low
    bed *= np.float32(10 ** (level_db / 20.0) / max(float(np.sqrt(np.mean(bed**2))), 1e-9))
    return bed


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.data.background <source>`: each recording's pseudonym, position and name as
    written, one a line, on the terminal only: for the operator who holds the key to find the
    recording a report or eval_details.json names. Nothing is written to a file."""
    import argparse
    import os

    from pipeline.data.privacy import load_key
    from pipeline.runtime import fail

    parser = argparse.ArgumentParser(prog="python -m pipeline.data.background", description=main.__doc__)
    parser.add_argument("source", help="the background source eval.background named")
    parser.add_argument("--key-env", default="PIPELINE_PSEUDONYM_KEY", help="privacy.key_env (wins when set)")
    parser.add_argument("--key-file", default=None,
                        help="privacy.key_file; default <cache_dir>/pseudonym.key, cache_dir from PIPELINE_CACHE_DIR or ./.cache")
    args = parser.parse_args(argv)
    key_file = Path(args.key_file or Path(os.environ.get("PIPELINE_CACHE_DIR") or ".cache") / "pseudonym.key")
    try:
        if not os.environ.get(args.key_env) and not key_file.is_file():  # a new key would name nothing evaluated
            raise PipelineError(f"no pseudonym key: {args.key_env} is unset and {key_file} does not exist; give the key "
                                "the evaluation used (--key-file, or that environment variable)")
        key = load_key(args.key_env, key_file)
        for position, name in source_names(Path(args.source)):
            print(f"{recording_pseudonym(key, name)}\t{position}\t{name}")
    except PipelineError as err:
        fail(str(err))


if __name__ == "__main__":
    main()
