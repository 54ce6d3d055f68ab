"""The data build on small canonical exports: reason codes, privacy, deletions, splits, caching."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, Dataset, Features, Value, load_from_disk
from omegaconf import DictConfig, OmegaConf

from pipeline.data.build import REASONS, run_data_stage
from pipeline.data.features import dataset_features
from pipeline.data.privacy import key_id, load_key, pseudonym, utterance_pseudonym
from pipeline.data.splits import assign_split
from pipeline.data.schema import json_lines
from pipeline.runtime import PipelineError
from pipeline.tracking import NullTracker

KEY_ENV = "PIPELINE_TEST_DATA_KEY_UNSET"


def tone(seconds: float, sr: int = 22050, amp: float = 0.4, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def record(i: int, account: str | None = None, **over: Any) -> dict[str, Any]:
    base = {
        "utterance_id": f"u{i:03d}",
        "audio": f"audio/u{i:03d}.wav",
        "transcript": "alexa play jazz music",
        "intent": "play_music",
        "entities": [{"type": "music_genre", "value": "jazz"}],
        "wake_word_present": True,
        "device_serial": f"SERIAL-RAW-{i:04d}",
        "account_id": account or f"ACCOUNT-RAW-{i % 7:02d}",
        "annotator_id": "ANNOTATOR-RAW-01",
        "recorded_at": "2026-01-01T00:00:00Z",
        "flags": [],
        "locale": "en-US",
    }
    base.update(over)
    return base


def write_export(root: Path, lines: list[dict[str, Any] | str], name: str = "annotations.jsonl") -> Path:
    """Write the jsonl, and a 1 s tone at `audio/<utterance_id>.wav` where a record names that file."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for line in lines:
        if isinstance(line, dict) and line.get("audio") == f"audio/{line['utterance_id']}.wav":
            path = root / line["audio"]
            if not path.exists():
                sf.write(path, tone(1.0, freq=300 + 7 * len(line["utterance_id"])), 22050)
    path = root / name
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def make_cfg(tmp_path: Path, **data: Any) -> DictConfig:
    return OmegaConf.create({
        "cache_dir": str(tmp_path / "cache"),
        "privacy": {"key_env": KEY_ENV, "key_file": str(tmp_path / "cache" / "pseudonym.key")},
        "data": {"source": "jsonl", "deletions": None, "min_duration_s": 0.2, "max_duration_s": 5.0,
                 "quarantine_flags": ["sensitive"], "split": {"validation": 0.25, "test": 0.25},
                 "num_proc": 1, **data},
    })


def build(tmp_path: Path, run: str = "run", **data: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run_dir = tmp_path / run
    report = run_data_stage(make_cfg(tmp_path, **data), run_dir, NullTracker())
    assert json.loads((run_dir / "build_report.json").read_text()) == report
    quarantine = [json.loads(x) for x in (run_dir / "quarantine.jsonl").read_text().splitlines()]
    if report["dataset_path"] is not None:
        # The run lists its clips by pseudonym only: what erasure matches once the dataset is gone.
        lines = [line.split() for line in (run_dir / "dataset_clips.txt").read_text().splitlines()]
        assert all(re.fullmatch(r"(utt|acct|dev)_[0-9a-f]{16}", name) for names in lines for name in names)
        key = load_key(KEY_ENV, tmp_path / "cache" / "pseudonym.key")
        dd = load_from_disk(report["dataset_path"])
        clips = sorted((utterance_pseudonym(key, row["utterance_id"]), *[row[c] for c in ("speaker", "device") if row[c]],
                        *([utterance_pseudonym(key, row["copy_of"])] if row["copy_of"] else []))
                       for ds in dd.values() for row in ds.select_columns(["utterance_id", "speaker", "device", "copy_of"]))
        assert [tuple(names) for names in lines] == clips
    return report, quarantine


def split_of(dataset_path: str) -> dict[str, str]:
    dd = load_from_disk(dataset_path)
    return {uid: name for name, ds in dd.items() for uid in ds["utterance_id"]}


@pytest.fixture(scope="module")
def every_reason(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One export with good clips and at least one record per reason code, built once."""
    tmp = tmp_path_factory.mktemp("every_reason")
    root = tmp / "export"
    (root / "audio").mkdir(parents=True)
    outside = tmp / "outside.wav"
    sf.write(outside, tone(1.0), 22050)
    os.symlink(outside, root / "audio" / "link.wav")
    (root / "audio" / "empty.wav").write_bytes(b"")
    (root / "audio" / "text.wav").write_text("this is not audio at all\n")
    sf.write(root / "audio" / "full.wav", tone(1.0), 22050)
    (root / "audio" / "truncated.wav").write_bytes((root / "audio" / "full.wav").read_bytes()[:30])
    sf.write(root / "audio" / "short.wav", tone(0.1), 22050)
    sf.write(root / "audio" / "long.wav", tone(6.0, sr=8000), 8000)
    sf.write(root / "audio" / "silent.wav", np.zeros(22050, dtype=np.float32), 22050)
    sf.write(root / "audio" / "stereo.wav", tone(1.5, sr=44100, channels=2), 44100)
    # A fixed key, so the account of the training-only clip below is known to be held out.
    key = b"every-reason-key"
    (tmp / "cache").mkdir()
    (tmp / "cache" / "pseudonym.key").write_bytes(key)
    (tmp / "cache" / "pseudonym.key").chmod(0o600)
    held_out = next(a for a in (f"ACCOUNT-RAW-HELD-{n}" for n in range(100))
                    if assign_split(key, pseudonym(key, "acct", a), 0.25, 0.25) != "train")
    lines: list[dict[str, Any] | str] = [record(i) for i in range(12)]
    lines[3] = record(3, intent=None, wake_word_present=False, entities=[], transcript="alexander went home")
    lines[4] = record(4, audio="audio/stereo.wav", entities=None, annotation="alexa play [music_genre : jazz] music")
    lines[5] = record(5, copy_of="u099")  # kept: a copy whose original is not in this export
    held_split = assign_split(key, pseudonym(key, "acct", held_out), 0.25, 0.25)
    crossed = next(i for i in range(6, 12) if assign_split(key, pseudonym(key, "acct", f"ACCOUNT-RAW-{i % 7:02d}"), 0.25, 0.25)
                   != held_split)
    lines += [
        "{not json",
        '["a", "list"]',
        record(20, wake_word_present="yes"),                                  # invalid_record (schema)
        record(21, audio="audio/nope.wav"),                                   # missing_audio
        record(22, audio="audio/empty.wav"),                                  # unreadable_audio
        record(23, audio="audio/text.wav"),                                   # unreadable_audio
        record(24, audio="audio/truncated.wav"),                              # unreadable_audio
        record(25, audio="../outside.wav"),                                   # path_outside_root
        record(26, audio=str(outside)),                                       # path_outside_root
        record(27, audio="audio/link.wav"),                                   # path_outside_root
        record(0, audio="audio/u001.wav"),                                    # duplicate_id
        record(28, entities=[{"type": "music_genre", "value": "rock"}]),      # bad_annotation
        record(29, entities=None, annotation="alexa play [music_genre : jazz music"),  # bad_annotation
        record(30, audio="audio/short.wav"),                                  # too_short
        record(31, audio="audio/long.wav"),                                   # too_long
        record(32, audio="audio/silent.wav"),                                 # silent_audio
        record(33, flags=["sensitive"], audio="audio/never-opened.wav"),      # flagged
        record(34, transcript="call my secret friend", entities=[]),          # deleted (utterance)
        record(35, account="ACCOUNT-RAW-DELETED"),                            # deleted (account)
        record(36, device_serial="SERIAL-RAW-DELETED"),                       # deleted (device)
        record(37, copy_of="u034"),                                           # deleted (a copy of u034)
        record(38, account=held_out, train_only=True),                        # train_only
        record(39, transcript="alexa play jazz music on serial-raw-0039"),   # identifier_in_text
        record(40, account=held_out, copy_of=f"u{crossed:03d}"),             # copy_in_other_split
    ]
    write_export(root, lines)
    deletions = tmp / "deletions.jsonl"
    deletions.write_text(
        '{"utterance_id": "u034"}\n{"account_id": "ACCOUNT-RAW-DELETED"}\n{"device_serial": "SERIAL-RAW-DELETED"}\n'
    )
    report, quarantine = build(tmp, path=str(root / "annotations.jsonl"), deletions=str(deletions))
    return {"tmp": tmp, "root": root, "report": report, "quarantine": quarantine, "lines": lines}


def test_every_input_line_ends_in_exactly_one_place(every_reason: dict[str, Any]) -> None:
    report, quarantine = every_reason["report"], every_reason["quarantine"]
    assert report["records_in"] == len(every_reason["lines"]) == 36
    assert report["records_in"] == report["records_kept"] + report["records_quarantined"]
    assert report["records_kept"] == 12 and sum(report["splits"].values()) == 12
    assert report["records_quarantined"] == len(quarantine) == 24
    assert report["quarantine_reasons"] == {
        "bad_annotation": 2, "deleted": 4, "duplicate_id": 1, "flagged": 1, "identifier_in_text": 1, "invalid_record": 3,
        "missing_audio": 1, "path_outside_root": 3, "silent_audio": 1, "too_long": 1, "too_short": 1,
        "unreadable_audio": 3, "train_only": 1, "copy_in_other_split": 1,
    }
    assert set(report["quarantine_reasons"]) == set(REASONS)
    by_id = {q.get("utterance_id"): q["reason"] for q in quarantine}
    assert by_id["u021"] == "missing_audio" and by_id["u027"] == "path_outside_root"
    assert by_id["u031"] == "too_long" and by_id["u033"] == "flagged" and by_id["u000"] == "duplicate_id"
    assert {q["line"] for q in quarantine if "line" in q} == {13, 14}
    assert all(q["detail"] for q in quarantine)
    # A valid record's line names its account by pseudonym, so a later request for the account finds
    # it (a flagged clip's line, and a clip the audio pass refused); not an invalid or deleted one's.
    with_speaker = {q["reason"] for q in quarantine if q.get("speaker", "").startswith("acct_")}
    assert {"flagged", "too_long", "too_short", "silent_audio", "bad_annotation", "train_only",
            "identifier_in_text", "copy_in_other_split"} <= with_speaker
    assert not {"invalid_record", "deleted"} & with_speaker


def test_dataset_columns_audio_and_text(every_reason: dict[str, Any]) -> None:
    dd = load_from_disk(every_reason["report"]["dataset_path"])
    rows = {r["utterance_id"]: r for ds in dd.values() for r in ds}
    assert set(rows) == {f"u{i:03d}" for i in range(12)}
    for ds in dd.values():
        assert ds.features == dataset_features(with_source=True)
        assert set(ds["source"]) <= {"jsonl"}
    stereo = rows["u004"]
    samples = stereo["audio"].get_all_samples()
    assert samples.sample_rate == 16000 and samples.data.shape[0] == 1
    assert stereo["duration"] == pytest.approx(1.5, abs=0.01)
    assert samples.data.shape[1] == pytest.approx(24000, abs=2)
    assert stereo["entities"] == [{"type": "music_genre", "value": "jazz", "start": 11, "end": 15}]
    assert stereo["bio_tags"] == ["O", "O", "B-music_genre", "O"]
    assert rows["u000"]["text"] == "alexa play jazz music" and rows["u000"]["scenario"] == "play"
    assert rows["u003"]["intent"] is None and rows["u003"]["wake_word_present"] is False
    assert rows["u005"]["copy_of"] == "u099" and rows["u000"]["copy_of"] is None  # erasure looks it up
    card = (Path(every_reason["report"]["dataset_path"]) / "README.md").read_text()
    assert "false-wake share: 8.3%" in card and "| play_music | 11 |" in card and "| deleted | 4 |" in card
    assert "splits are assigned by a keyed hash of the account (the speaker where the source names one, else each clip is its own), so no account is in two splits." in card


def test_no_raw_identifier_in_any_output(every_reason: dict[str, Any]) -> None:
    tmp = every_reason["tmp"]
    raw = [b"ACCOUNT-RAW", b"SERIAL-RAW", b"ANNOTATOR-RAW", b"u034", b"u035", b"u036", b"secret friend"]
    outputs = [p for d in (tmp / "run", tmp / "cache" / "datasets") for p in d.rglob("*") if p.is_file()]
    assert len(outputs) > 5
    for path in outputs:
        content = path.read_bytes()
        for value in raw:
            assert value not in content, f"{value!r} found in {path}"
    deleted = [q for q in every_reason["quarantine"] if q["reason"] == "deleted"]
    assert all(q["utterance_id"].startswith("utt_") and set(q) == {"source", "utterance_id", "reason", "detail"} for q in deleted)
    dd = load_from_disk(every_reason["report"]["dataset_path"])
    assert all(s.startswith("acct_") for s in dd["train"]["speaker"])
    assert all(s.startswith("dev_") for s in dd["train"]["device"])
    key_file = tmp / "cache" / "pseudonym.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_splits_are_account_disjoint(every_reason: dict[str, Any]) -> None:
    dd = load_from_disk(every_reason["report"]["dataset_path"])
    speakers = {name: set(ds["speaker"]) for name, ds in dd.items()}
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]


def test_same_inputs_reuse_the_build_and_give_identical_splits(every_reason: dict[str, Any]) -> None:
    tmp, first = every_reason["tmp"], every_reason["report"]
    again, quarantine = build(tmp, run="run2", path=str(every_reason["root"] / "annotations.jsonl"),
                              deletions=str(tmp / "deletions.jsonl"), num_proc=2)
    assert again["reused"] is True and first["reused"] is False
    assert again["fingerprint"] == first["fingerprint"] and again["splits"] == first["splits"]
    assert quarantine == every_reason["quarantine"]


def test_rebuild_from_scratch_is_deterministic_and_new_batches_do_not_move_clips(tmp_path: Path) -> None:
    root = tmp_path / "export"
    first = [record(i, account=f"ACCOUNT-RAW-{i:02d}") for i in range(16)]
    path = write_export(root, first)
    # A fixed key: with a fresh random one, 16 accounts at 25% / 25% left a split empty about 2% of the time.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "pseudonym.key").write_text("11" * 32)
    report, _ = build(tmp_path, run="a", path=str(path), num_proc=2)
    before = split_of(report["dataset_path"])
    assert len(set(before.values())) == 3

    # Same inputs in a fresh cache (same key): same fingerprint, same bytes of split assignment.
    os.makedirs(tmp_path / "other", exist_ok=True)
    (tmp_path / "other" / "cache").mkdir()
    (tmp_path / "other" / "cache" / "pseudonym.key").write_bytes((tmp_path / "cache" / "pseudonym.key").read_bytes())
    fresh, _ = build(tmp_path / "other", run="b", path=str(path), num_proc=1)
    assert fresh["reused"] is False and fresh["fingerprint"] == report["fingerprint"]
    assert split_of(fresh["dataset_path"]) == before

    # A new batch: the old clips keep their split; new clips of old accounts join that account's split.
    batch = first + [record(100 + i, account=f"ACCOUNT-RAW-{i:02d}") for i in range(16)] + [
        record(200 + i, account=f"ACCOUNT-RAW-NEW-{i}") for i in range(8)]
    path = write_export(root, batch)
    grown, _ = build(tmp_path, run="c", path=str(path))
    after = split_of(grown["dataset_path"])
    assert grown["fingerprint"] != report["fingerprint"] and len(after) == 40
    assert all(after[uid] == split for uid, split in before.items())
    assert all(after[f"u{100 + i:03d}"] == after[f"u{i:03d}"] for i in range(16))


def test_changed_audio_content_changes_the_fingerprint(tmp_path: Path) -> None:
    root = tmp_path / "export"
    path = write_export(root, [record(i) for i in range(3)])
    first, _ = build(tmp_path, run="a", path=str(path))
    sf.write(root / "audio" / "u001.wav", tone(1.0, freq=900), 22050)
    second, _ = build(tmp_path, run="b", path=str(path))
    assert second["fingerprint"] != first["fingerprint"] and second["reused"] is False


def test_config_errors_are_one_line_pipeline_errors(tmp_path: Path) -> None:
    path = write_export(tmp_path / "export", [record(0)])
    with pytest.raises(PipelineError, match="data.source='tsv' is not one of: jsonl, demo"):
        build(tmp_path, path=str(path), source="tsv")
    with pytest.raises(PipelineError, match="data.path=.*nope.jsonl: file not found"):
        build(tmp_path, path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(PipelineError, match="data.deletions=.*gone.jsonl: file not found"):
        build(tmp_path, path=str(path), deletions=str(tmp_path / "gone.jsonl"))
    with pytest.raises(PipelineError, match="data.split"):
        build(tmp_path, path=str(path), split={"validation": 0.6, "test": 0.5})
    assert not (tmp_path / "cache" / "datasets").exists()


def test_files_named_after_their_account_show_neither_in_ids_nor_in_quarantine_details(tmp_path: Path) -> None:
    """Corpora name audio files after the speaker (FSDD's `0_george_0`). The id and every quarantine
    detail that names such a file show the pseudonyms, while the reason still says what is wrong."""
    export = tmp_path / "export"
    owner = "Acct-Raw-77"
    lines = [record(i, account=owner, utterance_id=f"{owner}-{i}", audio=f"audio/{owner}-{i}.wav") for i in range(4)]
    write_export(export, lines)
    # write_export gave each a 1 s tone: audio/<owner>-0.wav is kept
    (export / f"audio/{owner}-1.wav").write_bytes(b"")                  # empty: found when decoding
    (export / f"audio/{owner}-2.wav").write_bytes(b"not audio at all")  # undecodable
    (export / f"audio/{owner}-3.wav").unlink()                          # missing: found before any audio is read
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert report["records_kept"] == 1
    assert sorted(q["reason"] for q in quarantine) == ["missing_audio", "unreadable_audio", "unreadable_audio"]
    outputs = (tmp_path / "run" / "quarantine.jsonl").read_text() + json.dumps(report)
    assert owner.lower() not in outputs.lower()
    assert all(q["utterance_id"].startswith("utt_") for q in quarantine)
    assert any("is empty" in q["detail"] for q in quarantine) and any("cannot decode" in q["detail"] for q in quarantine)
    dd = load_from_disk(report["dataset_path"])
    [kept] = [r["utterance_id"] for ds in dd.values() for r in ds.remove_columns("audio")]
    assert kept == pseudonym((tmp_path / "cache" / "pseudonym.key").read_bytes().strip(), "utt", f"{owner}-0")


def test_an_audio_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "audio" / "adir.wav").mkdir(parents=True)
    write_export(export, [record(0), record(1, audio="audio/adir.wav")])
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert report["records_kept"] == 1
    key = load_key(KEY_ENV, tmp_path / "cache" / "pseudonym.key")
    assert quarantine == [{"source": "jsonl", "utterance_id": "u001", "speaker": pseudonym(key, "acct", "ACCOUNT-RAW-01"),
                           "device": pseudonym(key, "dev", "SERIAL-RAW-0001"), "reason": "missing_audio",
                           "detail": "audio path 'audio/adir.wav' is a folder, not an audio file"}]


def test_undecodable_embedded_audio_is_named_by_its_row(tmp_path: Path) -> None:
    """A Hugging Face dataset stores encoded bytes, not files: the detail names the row, the same on
    every run (no in-memory object, whose address changes per run)."""
    wav = io.BytesIO()
    sf.write(wav, tone(1.0), 22050, format="WAV")
    clips = [wav.getvalue(), b"not audio at all" * 40, b""]
    Dataset.from_dict(
        {"audio": [{"bytes": c, "path": None} for c in clips], "transcript": ["alexa stop"] * 3,
         "speaker_id": ["s1", "s2", "s3"]},
        features=Features({"audio": Audio(), "transcript": Value("string"), "speaker_id": Value("string")}),
    ).save_to_disk(str(tmp_path / "saved"))
    report, quarantine = build(tmp_path, source="hf", path=str(tmp_path / "saved"))
    assert report["records_kept"] == 1
    assert [(q["row"], q["reason"], q["detail"]) for q in quarantine] == [
        (1, "unreadable_audio", "cannot decode the audio of row 1 (Format not recognised.)"),
        (2, "unreadable_audio", "the audio of row 2 is empty"),
    ]


def test_the_build_report_names_the_key_its_pseudonyms_were_made_with(tmp_path: Path) -> None:
    """In the dataset's report and the run's: erasure lists a cached dataset's clips into a run folder
    later, under the key the dataset was built with. A dataset built before reports named it, reused,
    was built under this key (the fingerprint hashes it in): the run's report names it."""
    path = write_export(tmp_path / "export", [record(i) for i in range(8)])
    report, _ = build(tmp_path, path=str(path))
    current = key_id(load_key(KEY_ENV, tmp_path / "cache" / "pseudonym.key"))
    dataset_report = Path(report["dataset_path"]) / "build_report.json"
    assert report["pseudonym_key_id"] == current == json.loads(dataset_report.read_text())["pseudonym_key_id"]
    older = json.loads(dataset_report.read_text())
    del older["pseudonym_key_id"]
    dataset_report.write_text(json.dumps(older) + "\n")
    again, _ = build(tmp_path, run="run2", path=str(path))
    assert again["reused"] is True and again["pseudonym_key_id"] == current
    assert "pseudonym_key_id" not in json.loads(dataset_report.read_text())


def test_a_build_that_keeps_nothing_leaves_no_earlier_clip_list_in_its_run_folder(tmp_path: Path) -> None:
    """Paired with the new build report's fingerprint, the earlier build's list would name clips
    the run never held."""
    path = write_export(tmp_path / "export", [record(i) for i in range(8)])
    build(tmp_path, path=str(path))
    assert (tmp_path / "run" / "dataset_clips.txt").is_file()
    flagged = write_export(tmp_path / "flagged", [record(i, flags=["sensitive"]) for i in range(8)])
    with pytest.raises(PipelineError, match="quarantined"):
        build(tmp_path, path=str(flagged))
    assert not (tmp_path / "run" / "dataset_clips.txt").exists()


def test_lines_and_paths_python_cannot_take_are_quarantined_and_the_build_goes_on(tmp_path: Path) -> None:
    """Each of these stopped the whole build with a traceback, no report written: a lone UTF-16
    surrogate escape (an exporter cutting an emoji in two) in an account or a transcript, an integer
    of over 4,300 digits, a digit run too long to spell as a number, a NUL in an audio path, a file
    name too long for the file system, a symlink loop. A surrogate in a key the record does not read
    (`notes`) keeps it, as other keys are ignored; a request may name such an id."""
    export = tmp_path / "export"
    lines: list[dict[str, Any] | str] = [record(i) for i in range(6)]
    good = json.dumps(record(6))
    lines += [
        good.replace('"ACCOUNT-RAW-06"', '"ACCOUNT-RAW-06\\ud83d"'),                       # line 7
        json.dumps(record(7)).replace('"alexa play jazz music"', '"alexa play jazz music \\udc00"'),  # line 8
        json.dumps(record(8))[:-1] + ', "recorded_at": ' + "1" * 5000 + "}",               # line 9
        json.dumps(record(9)).replace('"en-US"', '"en-US", "flags": ["\\ud83d\\ude00"]'),   # a whole pair: kept
        record(10, audio="audio/u010\u0000.wav"),
        record(11, audio="audio/" + "x" * 300 + ".wav"),
        record(12, audio="audio/loop.wav"),
        record(13, transcript="alexa play jazz music " + "7" * 4400),
        json.dumps(record(14)).replace('"en-US"', '"en-US", "notes": "cut emoji \\ud83d"'),  # kept
    ]
    write_export(export, lines)
    os.symlink("loop.wav", export / "audio" / "loop.wav")
    for name in ("u006", "u007", "u009", "u014"):
        (export / "audio" / f"{name}.wav").write_bytes((export / "audio" / "u004.wav").read_bytes())
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text('{"utterance_id": "u005"}\n{"account_id": "X\\ud800"}\n')
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"), deletions=str(deletions))

    assert report["records_in"] == len(lines) == 15
    assert report["records_in"] == report["records_kept"] + report["records_quarantined"]
    by = {q.get("utterance_id", q.get("line")): (q["reason"], q["detail"]) for q in quarantine}
    # The schema refuses half a character in a field it reads (it was the pseudonym's encoding that crashed).
    surrogate = "Input should be a valid string, unable to parse raw data as a unicode string"
    assert by["u006"] == ("invalid_record", f"account_id: {surrogate}")
    assert by["u007"] == ("invalid_record", "transcript: a \\u escape of half a character (a lone UTF-16 surrogate, as an "
                                            "exporter that cuts an emoji in two writes); fix the line")
    assert by[9] == ("invalid_record", "a number too long to read (over 4,300 digits); write it as a string or fix the exporter")
    assert by["u010"] == ("missing_audio", "audio path 'audio/u010\\x00.wav' holds a NUL character, which no file name can")
    assert by["u011"][0] == "missing_audio" and "cannot be opened (File name too long)" in by["u011"][1]
    assert by["u012"] == ("missing_audio", "audio path 'audio/loop.wav' is a symlink loop")
    assert report["quarantine_reasons"]["deleted"] == 1
    assert str(tmp_path) not in json.dumps(by["u011"]) + json.dumps(by["u012"])
    rows = {r["utterance_id"]: r for ds in load_from_disk(report["dataset_path"]).values() for r in ds.remove_columns("audio")}
    assert set(rows) == {"u000", "u001", "u002", "u003", "u004", "u009", "u013", "u014"}
    assert rows["u013"]["text"] == "alexa play jazz music " + " ".join(["seven"] * 4400)


def test_an_export_whose_lines_end_in_a_bare_carriage_return_is_read_line_by_line(tmp_path: Path) -> None:
    """Old Mac tools end lines in CR alone: the whole file was one line, one invalid_record for every clip."""
    export = tmp_path / "export"
    write_export(export, [record(i) for i in range(6)])
    lines = (export / "annotations.jsonl").read_text().splitlines()
    (export / "annotations.jsonl").write_bytes(("\r".join(lines[:3] + ["{not json"] + lines[3:]) + "\r").encode())
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert (report["records_in"], report["records_kept"]) == (7, 6)
    assert [(q["line"], q["reason"]) for q in quarantine] == [(4, "invalid_record")]


def test_a_file_of_carriage_returns_with_one_line_appended_by_a_unix_tool_is_read_line_by_line(tmp_path: Path) -> None:
    """`echo >>` put a LF after the last CR line: the file was one LF line, its records one invalid_record.
    In a LF line that parses, a CR between fields is JSON whitespace and splits nothing."""
    export = tmp_path / "export"
    write_export(export, [record(i) for i in range(6)])
    lines = (export / "annotations.jsonl").read_text().splitlines()
    (export / "annotations.jsonl").write_bytes(("\r".join(lines[:5]) + "\r" + lines[5] + "\n").encode())
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert (report["records_in"], report["records_kept"], quarantine) == (6, 6, [])
    (tmp_path / "spaced.jsonl").write_bytes((lines[0].replace(', "audio"', ',\r "audio"') + "\n" + lines[1] + "\n").encode())
    assert [line.record["utterance_id"] for line in json_lines(tmp_path / "spaced.jsonl")] == ["u000", "u001"]
    # A raw CR inside a string: one bad line, and the next keeps its number.
    (tmp_path / "cr_in_string.jsonl").write_bytes((lines[0].replace("alexa ", "alexa\r") + "\n" + lines[1] + "\n").encode())
    read = [(line.number, line.record is None) for line in json_lines(tmp_path / "cr_in_string.jsonl")]
    assert read == [(1, True), (2, False)]


def test_training_only_copy_of_a_held_out_clip_under_another_account_is_quarantined(tmp_path: Path) -> None:
    """Before the fix: a `train_only` clip was kept whenever its own account was in training, so a
    re-rendering (`copy_of`) of a test clip, exported under another account, put that test
    utterance into the training split. Now it is quarantined as train_only, wherever its original
    comes in the export."""
    key = b"copy-of-split-key"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "pseudonym.key").write_bytes(key)

    def split(account: str) -> str:
        return assign_split(key, pseudonym(key, "acct", account), 0.25, 0.25)

    tested = next(a for a in (f"ACCOUNT-RAW-T{n}" for n in range(100)) if split(a) == "test")
    trained = next(a for a in (f"ACCOUNT-RAW-R{n}" for n in range(100)) if split(a) == "train")
    lines = [record(1, account=trained, copy_of="u000", train_only=True),  # before its original
             record(0, account=tested),
             record(2, account=trained, copy_of="u003", train_only=True),  # a copy of a training clip: kept
             record(3, account=trained)]
    report, quarantine = build(tmp_path, path=str(write_export(tmp_path / "export", lines)))
    splits = split_of(report["dataset_path"])
    assert splits == {"u000": "test", "u002": "train", "u003": "train"}
    assert [(q["utterance_id"], q["reason"]) for q in quarantine] == [("u001", "train_only")]
    assert quarantine[0]["speaker"] == pseudonym(key, "acct", trained)
    assert report["records_kept"] == 3 and report["records_quarantined"] == 1


def test_a_copy_under_an_account_in_another_split_than_its_original_is_quarantined(tmp_path: Path) -> None:
    """Before the fix: only a `train_only` copy followed its original. A copy that is not
    train_only (another take or wording of an utterance, exported under another account) took its
    own account's split, so a test utterance's re-rendering was trained on, and a training
    utterance's copy was tested. Now such a copy is quarantined as copy_in_other_split, wherever it
    comes in the export; copies in their original's split, and copies of clips not in the
    export, are kept."""
    key = b"copy-across-splits-key"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "pseudonym.key").write_bytes(key)

    def split(account: str) -> str:
        return assign_split(key, pseudonym(key, "acct", account), 0.25, 0.25)

    tested = [a for a in (f"ACCOUNT-RAW-T{n}" for n in range(100)) if split(a) == "test"][:2]
    trained = [a for a in (f"ACCOUNT-RAW-R{n}" for n in range(100)) if split(a) == "train"][:2]
    lines = [record(1, account=trained[0], copy_of="u000"),   # a training copy of a test clip, before it
             record(0, account=tested[0]),
             record(2, account=trained[1]),
             record(3, account=tested[1], copy_of="u002"),     # a test copy of a training clip
             record(4, account=tested[1], copy_of="u000"),     # another test account, same split: kept
             record(5, account=trained[1], copy_of="u002"),    # same account: kept
             record(6, account=tested[0], copy_of="u099")]     # the original is not here: kept
    report, quarantine = build(tmp_path, path=str(write_export(tmp_path / "export", lines)))
    assert split_of(report["dataset_path"]) == {"u000": "test", "u002": "train", "u004": "test", "u005": "train",
                                                "u006": "test"}
    assert [(q["utterance_id"], q["reason"]) for q in quarantine] == [("u001", "copy_in_other_split"),
                                                                      ("u003", "copy_in_other_split")]
    assert "re-renders a clip in test" in quarantine[0]["detail"] and "account is in train" in quarantine[0]["detail"]
    assert quarantine[1]["speaker"] == pseudonym(key, "acct", tested[1])
    assert report["records_kept"] == 5 and report["records_quarantined"] == 2


def test_an_account_id_with_spaces_around_it_shares_the_account_split(tmp_path: Path) -> None:
    """Before the fix: the split was a hash of the account id exactly as exported, so one person's
    clips written as "ACCOUNT" and "ACCOUNT " (an exporter's padding) fell into two splits, the
    test clips of a voice that training had heard, under two pseudonyms; and a deletion request for
    "ACCOUNT" left the padded clips in the dataset. Ids are read without the spaces around them."""
    key = b"padded-account-key"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "pseudonym.key").write_bytes(key)

    def split(account: str) -> str:
        return assign_split(key, pseudonym(key, "acct", account), 0.25, 0.25)

    account = next(a for a in (f"ACCOUNT-RAW-{n}" for n in range(500))
                   if split(a) == "test" and split(a + " ") == "train")
    lines = [record(0, account=account), record(1, account=account + " "), record(2, account="\t" + account)]
    report, quarantine = build(tmp_path, path=str(write_export(tmp_path / "export", lines)))
    assert quarantine == []
    assert split_of(report["dataset_path"]) == {"u000": "test", "u001": "test", "u002": "test"}
    speakers = {r["speaker"] for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert speakers == {pseudonym(key, "acct", account)}
    # A request for the id as the person gives it deletes every form of it, and the padded request too.
    for asked in (account, f"  {account} "):
        (tmp_path / "deletions.jsonl").write_text(json.dumps({"account_id": asked}) + "\n")
        with pytest.raises(PipelineError, match=r"every record was quarantined \(3 of 3\); most common reason: deleted \(3\)"):
            build(tmp_path, run="deleted", path=str(tmp_path / "export" / "annotations.jsonl"),
                  deletions=str(tmp_path / "deletions.jsonl"))


def test_an_id_with_spaces_around_it_is_still_kept_out_of_ids_and_text(tmp_path: Path) -> None:
    """Before the fix: an account or annotator id written with spaces around it (" ACCT7731 ") was
    searched for spaces included, so an utterance id "ACCT7731-0001" stayed raw in the dataset's
    utterance_id column and a transcript saying "ANNOTATOR-RAW-01" was kept with the id in it,
    although the account and annotator are read (and pseudonymised) without the spaces."""
    lines = [record(i) for i in range(4)]
    lines[0].update(account_id=" ACCT7731 ", utterance_id="ACCT7731-0001", audio="audio/ACCT7731-0001.wav")
    lines[1].update(annotator_id="  ANNOTATOR-RAW-01", transcript="alexa play jazz music ANNOTATOR-RAW-01 now")
    report, quarantine = build(tmp_path, path=str(write_export(tmp_path / "export", lines)))
    assert [(q["utterance_id"], q["reason"]) for q in quarantine] == [("u001", "identifier_in_text")]
    key = (tmp_path / "cache" / "pseudonym.key").read_bytes().strip()
    assert split_of(report["dataset_path"]).keys() == {pseudonym(key, "utt", "ACCT7731-0001"), "u002", "u003"}
    rows = [r for ds in load_from_disk(report["dataset_path"]).values() for r in ds.remove_columns("audio")]
    assert not [r for r in rows if "ACCT7731" in json.dumps(r) or "ANNOTATOR-RAW" in json.dumps(r)]


def _case_key(tmp_path: Path) -> bytes:
    key = b"case-account-key"
    (tmp_path / "cache").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache" / "pseudonym.key").write_bytes(key)
    return key


def test_account_ids_differing_only_in_case_are_named_by_position_and_stay_two_accounts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An export may write one account as "amzn1.account.AB12" and "amzn1.account.ab12". The build
    cannot know whether that is one person: it keeps them two accounts (two pseudonyms, each its own
    split, as before), but says where the records are, naming no raw id, so that the export can be
    fixed (one account's clips in train and test, a deletion request taking one spelling only)."""
    key = _case_key(tmp_path)

    def split(account: str) -> str:
        return assign_split(key, pseudonym(key, "acct", account), 0.25, 0.25)

    upper = next(a for a in (f"amzn1.account.CASEACCT{n}X" for n in range(500)) if split(a) != split(a.lower()))
    lower = upper.lower()
    lines = [record(0, account=upper), record(1, account=lower), record(2, account="ACCOUNT-RAW-PLAIN"),
             record(3, account=upper), record(4, device_serial="serial-raw-0000")]
    caplog.set_level("INFO")
    report, quarantine = build(tmp_path, path=str(write_export(tmp_path / "export", lines)))
    assert quarantine == []
    # Two accounts, as without the check: each spelling its own pseudonym and split.
    assert split_of(report["dataset_path"]) == {"u000": split(upper), "u001": split(lower),
                                                "u002": split("ACCOUNT-RAW-PLAIN"), "u003": split(upper),
                                                "u004": split(record(4)["account_id"])}
    speakers = {r["utterance_id"]: r["speaker"] for ds in load_from_disk(report["dataset_path"]).values()
                for r in ds.remove_columns("audio")}
    assert speakers["u000"] == speakers["u003"] == pseudonym(key, "acct", upper)
    assert speakers["u001"] == pseudonym(key, "acct", lower)

    found = report["ids_differing_only_in_case"]
    assert found["account_id"] == {"groups": 1, "where": [{"spellings": [
        {"records": 2, "at": [{"source": "jsonl", "line": 1}, {"source": "jsonl", "line": 4}]},
        {"records": 1, "at": [{"source": "jsonl", "line": 2}]}]}]}
    assert found["device_serial"] == {"groups": 1, "where": [{"spellings": [
        {"records": 1, "at": [{"source": "jsonl", "line": 1}]},
        {"records": 1, "at": [{"source": "jsonl", "line": 5}]}]}]}
    warning = caplog.text
    assert "1 account id(s)" in warning and "1 device serial(s)" in warning
    assert "write the export's ids in one case" in warning and "split as different accounts" in warning
    # A build reusing the finished dataset says so again, and its run's report names the same records.
    again, _ = build(tmp_path, run="again", path=str(tmp_path / "export" / "annotations.jsonl"))
    assert again["reused"] is True and again["ids_differing_only_in_case"] == found
    assert caplog.text.count("differ only in letter case") == 2

    # No output of the build and no log line holds either spelling (nor any other raw id).
    raw = [upper, lower, "ACCOUNT-RAW", "SERIAL-RAW", "serial-raw", "ANNOTATOR-RAW"]
    outputs = [p for d in (tmp_path / "run", tmp_path / "cache" / "datasets") for p in d.rglob("*") if p.is_file()]
    for path in outputs:
        content = path.read_bytes()
        for value in raw:
            assert value.encode() not in content, f"{value!r} found in {path}"
    assert not [value for value in raw if value in caplog.text]


def test_ids_equal_in_case_or_plainly_different_are_not_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _case_key(tmp_path)
    lines = [record(0, account="amzn1.account.AB12"), record(1, account="amzn1.account.AB12"),
             record(2, account="amzn1.account.AB13"), record(3, account=" amzn1.account.AB12 ")]
    caplog.set_level("WARNING", logger="pipeline.data.build")
    report, _ = build(tmp_path, path=str(write_export(tmp_path / "export", lines)))
    assert report["ids_differing_only_in_case"] == {"account_id": {"groups": 0, "where": []},
                                                    "device_serial": {"groups": 0, "where": []}}
    assert "differ only in letter case" not in caplog.text


def test_ids_differing_only_in_case_are_found_across_sources(tmp_path: Path) -> None:
    _case_key(tmp_path)
    a = write_export(tmp_path / "a", [record(0, account="ACCOUNT-RAW-Case"), record(1)])
    b = write_export(tmp_path / "b", [record(2), record(3, account="account-raw-case")])
    report, _ = build(tmp_path, path=None, source=None, split=None, split_shares={"validation": 0.25, "test": 0.25},
                      sources=[{"source": "jsonl", "name": "a", "path": str(a)},
                               {"source": "jsonl", "name": "b", "path": str(b)}])
    assert report["ids_differing_only_in_case"]["account_id"] == {"groups": 1, "where": [{"spellings": [
        {"records": 1, "at": [{"source": "a", "line": 1}]}, {"records": 1, "at": [{"source": "b", "line": 2}]}]}]}
