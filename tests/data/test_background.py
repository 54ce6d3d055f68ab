"""Background recordings: where they come from, which split each belongs to, the wake-word check on
their transcripts, and the demo's synthesised background (planned in full, synthesised in seconds)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.background import (
    BackgroundKnobs, _texts, background_knobs, ensure_demo_background, hashed_split, load_background, mentions,
    plan_recordings,
)
from pipeline.data.privacy import recording_pseudonym
from pipeline.runtime import PipelineError

SPLITS = ("validation", "test")
KEY = b"test key"


def test_the_wake_word_counts_only_as_a_whole_word() -> None:
    assert mentions("Alexa, play jazz", "alexa") and mentions("is that alexa's voice", "alexa")
    assert not mentions("alexander is coming over", "alexa") and not mentions("a lexus drove past", "alexa")
    assert mentions("ok hey google", "hey google") and not mentions("hey there google", "hey google")


def test_demo_plan_has_several_voices_near_misses_and_no_sentence_in_both_splits() -> None:
    knobs = BackgroundKnobs()
    plans = plan_recordings(_texts(), knobs, SPLITS)
    by_split = {s: [p for p in plans if p["split"] == s] for s in SPLITS}
    assert {s: sum(p["seconds"] for p in ps) / 3600 for s, ps in by_split.items()} == pytest.approx(
        {"validation": 2.2, "test": 2.2})
    for plan in plans:
        assert len({t.voice for t in plan["turns"]}) >= 3
        kinds = Counter(t.kind for t in plan["turns"])
        assert kinds["near_miss"] > 0 and kinds["overheard"] > 0 and kinds["programme"] > kinds["overheard"]
        assert not any(mentions(t.text, "alexa") for t in plan["turns"])
    # Test recordings hold sentences the threshold never met on validation.
    said = {s: {t.text for p in ps for t in p["turns"] if t.kind in ("near_miss", "overheard")} for s, ps in by_split.items()}
    assert said["validation"] and said["test"] and not said["validation"] & said["test"]
    heads = {t.text.split()[0] for p in plans for t in p["turns"] if t.kind == "near_miss"}
    assert {"alexander", "election", "alex", "a"} <= heads
    assert plan_recordings(_texts(), knobs, SPLITS)[3]["turns"] == plans[3]["turns"]  # seeded


def test_demo_background_is_synthesised_once_as_an_export(tmp_path: Path) -> None:
    knobs = background_knobs({"hours": 0.01, "recording_minutes": 0.25})  # 36 s per split, 15 s recordings
    export = ensure_demo_background(knobs, tmp_path, SPLITS)
    recordings = load_background(export, SPLITS, "alexa", KEY)
    assert [r.recording_id for r in recordings] == [f"{s}-{n:03d}" for s in SPLITS for n in range(3)]
    assert [round(r.seconds, 2) for r in recordings] == [15.0, 15.0, 6.0] * 2
    info = sf.info(str(recordings[0].path))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    wave, _ = sf.read(str(recordings[0].path), dtype="float32")
    assert np.abs(wave).max() > 0.3 and np.sqrt(np.mean(wave[wave != 0] ** 2)) > 0.01  # speech over a noise bed
    record = json.loads((export / "annotations.jsonl").read_text().splitlines()[0])
    assert record["segments"][0]["start"] == 0.0 and record["transcript"]
    stamp = (export / "annotations.jsonl").stat().st_mtime_ns
    assert ensure_demo_background(knobs, tmp_path, SPLITS) == export
    assert (export / "annotations.jsonl").stat().st_mtime_ns == stamp  # cached, not synthesised again
    with pytest.raises(PipelineError, match="data.background"):
        background_knobs({"hour": 2})


def test_folders_exports_and_datasets_as_background(tmp_path: Path, tiny_dataset_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    noise = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
    loose = tmp_path / "loose"
    loose.mkdir()
    names = [f"tv-{i}.wav" for i in range(12)]
    for name in names:
        sf.write(loose / name, noise, 16000)
    found = load_background(loose, SPLITS, "alexa", KEY)
    # No split folders: each file goes to the split its name hashes to, so both get some.
    assert {r.recording_id: r.split for r in found} == {n: hashed_split(n, SPLITS) for n in names}
    assert set(r.split for r in found) == set(SPLITS) and found[0].seconds == pytest.approx(0.5)
    # Recordings kept for training are not measured on; files of other types are named, not ignored.
    (loose / "train").mkdir()
    sf.write(loose / "train" / "kitchen.wav", noise, 16000)
    (loose / "memo.amr").write_bytes(b"\x00" * 64)
    with caplog.at_level("WARNING", logger="pipeline.data.background"):
        again = load_background(loose, SPLITS, "alexa", KEY)
    assert {r.recording_id for r in again} == set(names)
    assert "1 file(s) of other types skipped (.amr: 1)" in caplog.text

    export = tmp_path / "export"
    (export / "audio").mkdir(parents=True)
    sf.write(export / "audio/a.wav", noise, 16000)
    lines = [{"audio": "audio/a.wav", "split": "test", "transcript": "the news at six"},
             {"audio": "audio/a.wav", "split": "validation", "recording_id": "b", "transcript": "Alexa, stop"}]
    (export / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(PipelineError, match=rf"background recording {recording_pseudonym(KEY, 'b')} "
                                            r"\(annotations\.jsonl line 2\) .*wake word 'alexa'"):
        load_background(export, SPLITS, "alexa", KEY)
    (export / "annotations.jsonl").write_text(json.dumps({"audio": "../outside.wav"}) + "\n")
    with pytest.raises(PipelineError, match="line 1: audio path"):
        load_background(export, SPLITS, "alexa", KEY)
    # A record of the training split is not evaluation audio; a split of no known name is a mistake.
    lines = [{"audio": "audio/a.wav", "split": "train"}, {"audio": "audio/a.wav", "split": "test", "recording_id": "t"},
             {"audio": "audio/a.wav", "split": "Test", "recording_id": "T"}]
    (export / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in lines[:2]) + "\n")
    assert [(r.recording_id, r.split) for r in load_background(export, SPLITS, "alexa", KEY)] == [("t", "test")]
    (export / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(PipelineError, match=r"annotations\.jsonl line 3: split 'Test' is none of \['validation', 'test'\]"):
        load_background(export, SPLITS, "alexa", KEY)
    (export / "annotations.jsonl").write_text('\n{"recording_id": "r1"}\n')
    with pytest.raises(PipelineError, match=r"annotations\.jsonl line 2: a background record needs an `audio` path "
                                            r"\(a string, relative to the folder\)$"):
        load_background(export, SPLITS, "alexa", KEY)

    # A built dataset's rows are recordings, and one marked as saying the wake word is refused by name.
    with pytest.raises(PipelineError, match=rf"background recording {recording_pseudonym(KEY, 'validation/validation-0-0')} "
                                            r"\(validation row 0\) .*wake_word_present"):
        load_background(tiny_dataset_path, SPLITS, "alexa", KEY)
    with pytest.raises(PipelineError, match="no such file or folder"):
        load_background(tmp_path / "nope", SPLITS, "alexa", KEY)


def test_a_named_folder_without_audio_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    """Falling back to the negative clips would measure false accepts per hour on seconds of audio."""
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    (notes / "test").mkdir(parents=True)
    (notes / "test" / "tv.txt").write_text("the news at six")
    for folder in (empty, notes):
        with pytest.raises(PipelineError, match=rf"^eval\.background={re.escape(str(folder))}: no audio files "
                                                r"\(\.wav, \.flac, \.ogg, \.opus, \.mp3, \.aiff, \.aif, \.m4a, \.aac, \.mp4, \.webm, "
                                                r"\.wma\) under it; point it "
                                                r"at recordings, "
                                                r"or eval\.background=none$"):
            load_background(folder, SPLITS, "alexa", KEY)


def test_a_folder_of_recordings_by_split_folder_and_file_format(tmp_path: Path) -> None:
    """A recording under `dev/` used to be hashed into validation or test as if it sat loose; one in
    an AIFF, Ogg Opus or a phone's .m4a file used to be skipped as a file of another type."""
    noise = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    folder = tmp_path / "bg"
    for sub in ("Validation", "test/kitchen", "train", "loose"):
        (folder / sub).mkdir(parents=True)
    sf.write(folder / "Validation" / "tv.aiff", noise, 16000, format="AIFF")
    sf.write(folder / "test/kitchen" / "radio.opus", noise, 16000, format="OGG", subtype="OPUS")
    sf.write(folder / "train" / "fan.wav", noise, 16000)
    sf.write(folder / "loose" / "hall.flac", noise, 16000)
    found = {r.recording_id: (r.split, round(r.seconds, 2)) for r in load_background(folder, SPLITS, "alexa", KEY)}
    assert found == {"Validation/tv.aiff": ("validation", 1.0), "test/kitchen/radio.opus": ("test", 1.0),
                     "loose/hall.flac": (hashed_split("loose/hall.flac", SPLITS), 1.0)}
    # Scoring the training split (eval.split=train): the test/ folder is another split's, left out.
    assert {r.recording_id for r in load_background(folder, ("validation", "train"), "alexa", KEY)} == {
        "Validation/tv.aiff", "train/fan.wav", "loose/hall.flac"}

    # A phone's AAC recording is decoded by ffmpeg, block by block, resampled to 16 kHz mono.
    import subprocess

    from pipeline.eval.stream import _blocks

    phone = tmp_path / "phone"
    phone.mkdir()
    sf.write(tmp_path / "memo.wav", np.stack([noise, noise], axis=1).repeat(3, axis=0), 48000)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "memo.wav"), str(phone / "memo.m4a")], check=True)
    [memo] = load_background(phone, SPLITS, "alexa", KEY)
    assert memo.recording_id == "memo.m4a" and memo.seconds == pytest.approx(1.0, abs=0.05)
    blocks = list(_blocks(memo, block_s=0.25))
    assert len(blocks) >= 4 and all(b.ndim == 1 for b in blocks)
    assert sum(map(len, blocks)) == pytest.approx(16000, abs=800)
    (phone / "broken.m4a").write_bytes(b"\x00" * 64)
    with pytest.raises(PipelineError, match=rf"background recording {recording_pseudonym(KEY, 'broken.m4a')} "
                                            r"\(audio file 1\): cannot read it as audio"):
        load_background(phone, SPLITS, "alexa", KEY)

    (folder / "dev").mkdir()
    for i in range(2):
        sf.write(folder / "dev" / f"car-{i}.wav", noise, 16000)
    with pytest.raises(PipelineError, match=rf"^eval\.background={re.escape(str(folder))}: 2 recording\(s\) under a "
                                            r"folder named like a split that is none of \['train', 'validation', 'test'\] "
                                            r"\(2 under 'dev'/\); rename it to validation or test \(train/ is skipped\), "
                                            r"or move its recordings out to split them by a hash of their paths$"):
        load_background(folder, SPLITS, "alexa", KEY)


def test_an_export_record_marked_as_saying_the_wake_word_is_refused(tmp_path: Path) -> None:
    """Before the fix: a built dataset's row marked wake_word_present was refused, but an export
    record so marked (without a transcript that says the word) was streamed as background, and
    every detection of the wake word it holds was charged as a false accept."""
    export = tmp_path / "export"
    (export / "audio").mkdir(parents=True)
    sf.write(export / "audio/a.wav", np.zeros(8000, dtype=np.float32), 16000)
    lines = [{"audio": "audio/a.wav", "split": "test", "recording_id": "quiet"},
             {"audio": "audio/a.wav", "split": "validation", "recording_id": "call", "wake_word_present": True}]
    (export / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(PipelineError, match=rf"annotations\.jsonl line 2: background recording "
                                            rf"{recording_pseudonym(KEY, 'call')} is marked wake_word_present"):
        load_background(export, SPLITS, "alexa", KEY)


def test_the_background_cache_changes_with_the_corpus_voices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix: the cache key held the corpus's sentences but not its voices, so a corpus
    re-voiced with the same sentences reused background audio spoken by the old voices."""
    import shutil

    import pipeline.data.background as background

    demo = tmp_path / "demo"
    shutil.copytree(background.DEMO_DIR, demo)
    monkeypatch.setattr(background, "DEMO_DIR", demo)
    knobs = background_knobs({"hours": 0})  # nothing to speak: only the cache folder is made
    before = ensure_demo_background(knobs, tmp_path / "cache", SPLITS)
    texts, cast = background._texts(), background._voices()
    lines = (demo / "utterances.jsonl").read_text(encoding="utf-8").splitlines()
    (demo / "utterances.jsonl").write_text("".join(json.dumps({**json.loads(line), "voice": "en-us"}) + "\n"
                                                   for line in lines if line.strip()), encoding="utf-8")
    assert background._texts() == texts and background._voices() == ["en-us"] != cast
    assert plan_recordings(texts, background_knobs({"hours": 0.01}), SPLITS)[0]["turns"][0].voice == "en-us"
    assert ensure_demo_background(knobs, tmp_path / "cache", SPLITS) != before


def test_a_transcript_that_is_not_text_is_named(tmp_path: Path) -> None:
    """Before the fix: a number as an export record's transcript crashed the wake-word check inside
    normalize_text (AttributeError), and a `.txt` beside a recording in another encoding raised a bare
    UnicodeDecodeError; neither named the recording."""
    export = tmp_path / "export"
    (export / "audio").mkdir(parents=True)
    sf.write(export / "audio/a.wav", np.zeros(8000, dtype=np.float32), 16000)
    (export / "annotations.jsonl").write_text(json.dumps({"audio": "audio/a.wav", "split": "test", "transcript": 42}) + "\n")
    with pytest.raises(PipelineError, match=rf"annotations\.jsonl line 1: background recording "
                                            rf"{recording_pseudonym(KEY, 'audio/a.wav')}'s transcript is int 42, not a string"):
        load_background(export, SPLITS, "alexa", KEY)
    folder = tmp_path / "folder" / "test"
    folder.mkdir(parents=True)
    sf.write(folder / "kitchen.wav", np.zeros(8000, dtype=np.float32), 16000)
    (folder / "kitchen.txt").write_bytes("la télé".encode("latin-1"))
    with pytest.raises(PipelineError, match=rf"background transcript of {recording_pseudonym(KEY, 'test/kitchen.wav')} "
                                            r"\(audio file 1, the \.txt beside it\): not UTF-8 text \(invalid continuation "
                                            r"byte at byte 4\); save it as UTF-8"):
        load_background(tmp_path / "folder", SPLITS, "alexa", KEY)


def _damaged_webm(tmp_path: Path, name: str, to_pipe: bool, damaged: bool = True) -> Path:
    """40 s of noise as WebM (Opus), which only ffmpeg decodes, its stream header without a duration,
    with a stretch of bytes in the middle overwritten. Written to a pipe, ffmpeg cannot go back to
    put the duration in the container's header either."""
    import subprocess

    wav = tmp_path / "talk.wav"
    sf.write(wav, (np.random.default_rng(1).standard_normal(16000 * 40) * 0.1).astype(np.float32), 16000)
    path = tmp_path / "phone" / name
    path.parent.mkdir(exist_ok=True)
    command = ["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "libopus", "-f", "webm"]
    if to_pipe:
        path.write_bytes(subprocess.run([*command, "-"], check=True, capture_output=True).stdout)
    else:
        subprocess.run([*command, str(path)], check=True)
    if not damaged:
        return path
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + len(data) // 30] = b"\xff" * (len(data) // 30)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command to write a WebM file")
def test_an_ffmpeg_recording_whose_decoding_stops_early_is_named(tmp_path: Path) -> None:
    """Before the fix: a file only ffmpeg decodes, whose header gives no duration, ended without a word
    where decoding stopped (at damage halfway through), so only its first half was heard and its hours
    were those decoded. Now it is an error naming the file, with the length its container gives, or,
    with none, with the audio that still decodes past the point where decoding stopped."""
    from torchcodec.decoders import AudioDecoder

    from pipeline.data.background import ffmpeg_blocks

    seekable = _damaged_webm(tmp_path, "memo.webm", to_pipe=False)
    assert AudioDecoder(str(seekable)).metadata.duration_seconds_from_header is None
    [memo] = load_background(seekable.parent, SPLITS, "alexa", KEY)  # the container's header gives 40 s
    assert memo.seconds == pytest.approx(40.0, abs=0.1)
    with pytest.raises(PipelineError, match=r"^background recording memo-label: ffmpeg cannot decode "
                                            r"it past \d+ s of the 40 s its header gives: \d+ s decoded .*re-encode it "
                                            r"or take it out$"):
        sum(len(b) for b in ffmpeg_blocks(seekable, 5.0, "memo-label"))
    seekable.unlink()

    piped = _damaged_webm(tmp_path, "call.webm", to_pipe=True)  # no duration anywhere
    with pytest.raises(PipelineError, match=r"^background recording call-label: ffmpeg stopped decoding "
                                            r"it after \d+ s .*yet \d+ s more decode from \d+ s on, so the file is "
                                            r"damaged there, not ended .*re-encode it or take it out$"):
        sum(len(b) for b in ffmpeg_blocks(piped, 5.0, "call-label"))
    # The same file undamaged ends where its audio does, without a word.
    whole = _damaged_webm(tmp_path, "whole.webm", to_pipe=True, damaged=False)
    assert sum(len(b) for b in ffmpeg_blocks(whole, 5.0, "whole")) == pytest.approx(16000 * 40, abs=800)


def test_each_pseudonym_maps_back_to_its_recording_on_the_terminal_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reports name a recording by pseudonym and position; whoever holds the key lists, from their own
    source, the name each pseudonym stands for (printed, never written to a file)."""
    from pipeline.data.background import main

    export = tmp_path / "export"
    (export / "audio").mkdir(parents=True)
    sf.write(export / "audio/kitchen-DSN12345.wav", np.zeros(8000, dtype=np.float32), 16000)
    lines = [{"audio": "audio/kitchen-DSN12345.wav", "split": "test"},
             {"audio": "audio/kitchen-DSN12345.wav", "split": "validation", "recording_id": "den-DSN777"}]
    (export / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    loaded = {r.position: r.name for r in load_background(export, SPLITS, "alexa", KEY)}
    monkeypatch.delenv("PIPELINE_PSEUDONYM_KEY", raising=False)
    (tmp_path / "pseudonym.key").write_bytes(KEY + b"\n")
    main([str(export), "--key-file", str(tmp_path / "pseudonym.key")])
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert printed == [[loaded["annotations.jsonl line 1"], "annotations.jsonl line 1", "audio/kitchen-DSN12345.wav"],
                       [loaded["annotations.jsonl line 2"], "annotations.jsonl line 2", "den-DSN777"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "pseudonym.key"]  # nothing written
    # Without the key nothing can be mapped, and no new key is made that would name nothing evaluated.
    with pytest.raises(SystemExit):
        main([str(export), "--key-file", str(tmp_path / "missing.key")])
    assert "no pseudonym key" in capsys.readouterr().err and not (tmp_path / "missing.key").exists()


def test_an_error_about_a_recording_names_it_without_its_file_name(tmp_path: Path) -> None:
    """Errors reach decision.json and the job's log: a recording's file name, which may hold a device
    serial, is given there as its pseudonym and position, also inside the decoder's own message."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "annotations.jsonl").write_text(json.dumps({"audio": "audio/den-DSN12345.wav", "split": "test"}) + "\n")
    with pytest.raises(PipelineError, match=r"annotations\.jsonl line 1: audio file '<file>' does not exist") as caught:
        load_background(export, SPLITS, "alexa", KEY)
    assert "DSN12345" not in str(caught.value)
    folder = tmp_path / "folder" / "test"
    folder.mkdir(parents=True)
    (folder / "hall-DSN12345.wav").write_bytes(b"\x00" * 64)
    with pytest.raises(PipelineError, match=rf"background recording {recording_pseudonym(KEY, 'test/hall-DSN12345.wav')} "
                                            r"\(audio file 1\): cannot read it as audio") as caught:
        load_background(tmp_path / "folder", SPLITS, "alexa", KEY)
    assert "DSN12345" not in str(caught.value)
