"""Hugging Face datasets (`data=hf`) and several sources in one build (`data.sources`), through the
real build, on small audiofolders and save_to_disk datasets written here from numpy tones."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Sequence, Value, load_from_disk

from pipeline.data.build import run_data_stage
from pipeline.runtime import PipelineError
from pipeline.tracking import NullTracker
from tests.data.test_build import build, make_cfg, record, write_export


def tone(seconds: float = 0.6, sr: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encoded(wave: np.ndarray, sr: int, fmt: str = "FLAC", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, sr, format=fmt, subtype=subtype)
    return buffer.getvalue()


def audiofolder(root: Path, rows: list[dict[str, Any]], sr: int = 8000, csv: bool = False) -> Path:
    """An audiofolder: audio/<name>.flac and metadata.jsonl (or .csv); a row's `_audio` is False for
    a file that is never written, or bytes written as they are (an undecodable file)."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    meta = []
    for i, row in enumerate(rows):
        body = row.pop("_audio", None)
        path = root / row["file_name"]
        if body is None:
            sf.write(path, tone(0.6, sr, 300 + 20 * i), sr)
        elif body is not False:
            path.write_bytes(body)
        meta.append(row)
    if csv:
        keys = list(meta[0])
        lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in meta]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    else:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta))
    return root


def digits(root: Path, speakers: int = 4, takes: int = 3) -> Path:
    """fsdd-like: spoken digits by a few speakers (`transcription`, `speaker_id`, `digit`)."""
    words = ["zero", "one", "two"]
    rows = [{"file_name": f"audio/{d}_{s}_{t}.flac", "transcription": words[d], "speaker_id": f"SPEAKER-RAW-{s}", "digit": d}
            for s in range(speakers) for d in range(3) for t in range(takes)]
    return audiofolder(root, rows)


def hub_style(path: Path, n: int = 12) -> Path:
    """A DatasetDict saved to disk the way hub datasets store audio: encoded bytes inside the arrow
    files, a ClassLabel label, one row without audio and one whose bytes are not audio."""
    features = Features({"audio": Audio(), "label": ClassLabel(names=["yes", "no", "up"]),
                         "speaker_id": Value("string"), "file": Value("string")})

    def rows(split: str, count: int) -> dict[str, list[Any]]:
        audio = [{"bytes": encoded(tone(0.5, 16000, 200 + 30 * i), 16000), "path": f"{split}{i}.flac"} for i in range(count)]
        return {"audio": audio, "label": [i % 3 for i in range(count)],
                "speaker_id": [f"spk-{i % 4}" for i in range(count)], "file": [f"{split}/{i}.flac" for i in range(count)]}

    train = rows("train", n)
    train["audio"][3] = None
    train["audio"][5] = {"bytes": b"not audio at all" * 40, "path": "broken.flac"}
    dd = DatasetDict({"train": Dataset.from_dict(train, features=features),
                      "test": Dataset.from_dict(rows("test", 4), features=features)})
    dd.save_to_disk(str(path))
    return path


def quarantine_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "quarantine.jsonl").read_text().splitlines()]


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_audiofolder_columns_constants_and_pseudonyms(tmp_path: Path) -> None:
    folder = digits(tmp_path / "fsdd")
    report, quarantine = build(tmp_path, source="hf", path=str(folder), columns={"transcript": "transcription",
                               "account_id": "speaker_id"}, constants={"wake_word_present": False, "locale": "en-GB"})
    assert report["records_in"] == 36 and report["records_kept"] == 36 and quarantine == []
    assert report["by_source"] == {"hf": {"records_in": 36, "records_kept": 36, "records_quarantined": 0}}
    dd = load_from_disk(report["dataset_path"])
    rows = [r for ds in dd.values() for r in ds]
    first = next(r for r in rows if r["utterance_id"] == "hf/audio/1_2_0")
    assert first["transcript"] == "one" and first["text"] == "one" and first["intent"] is None
    assert first["wake_word_present"] is False and first["locale"] == "en-GB" and first["source"] == "hf"
    assert first["audio"]["sampling_rate"] == 16000 and abs(first["duration"] - 0.6) < 0.01
    # Splits by account: one speaker's clips share a split; raw speaker ids appear nowhere.
    split_of = {r["speaker"]: name for name, ds in dd.items() for r in ds}
    assert len(split_of) == 4 and all(s.startswith("acct_") for s in split_of)
    assert all(len({n for n, ds in dd.items() if spk in ds["speaker"]}) == 1 for spk in split_of)
    blobs = b"".join(p.read_bytes() for p in Path(report["dataset_path"]).rglob("*") if p.is_file())
    assert b"SPEAKER-RAW" not in blobs


def test_audiofolder_csv_defaults_missing_and_undecodable_files(tmp_path: Path) -> None:
    rows = [{"file_name": f"audio/c{i}.flac", "text": f"clip {i}", "speaker_id": f"s{i % 2}"} for i in range(5)]
    rows[1]["_audio"] = False                   # listed, never written
    rows[2]["_audio"] = b"\x00garbage" * 50     # not audio
    folder = audiofolder(tmp_path / "csv", rows, csv=True)
    report, quarantine = build(tmp_path, source="hf", path=str(folder))
    assert report["records_kept"] == 3
    by_row = {q["row"]: q for q in quarantine}
    assert by_row[1]["reason"] == "missing_audio" and by_row[2]["reason"] == "unreadable_audio"
    assert by_row[2]["utterance_id"] == "hf/audio/c2" and by_row[2]["source"] == "hf"
    rows = {r["utterance_id"]: r for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert rows["hf/audio/c0"]["transcript"] == "clip 0"  # `text` read as the transcript
    assert not any(r["wake_word_present"] for r in rows.values())  # no label and no intent: no wake word


def test_audiofolder_of_mp3_and_ogg_at_other_rates_and_channels(tmp_path: Path) -> None:
    """Corpora come as MP3 or Ogg at 22-48 kHz, often stereo, with transcripts written for people
    ("BACKWARD.", "0"): every clip is kept as 16 kHz mono with its length, and its text normalised."""
    files = [("audio/a.mp3", 48000, 2, "MP3", "MPEG_LAYER_III", "BACKWARD."),
             ("audio/b.ogg", 22050, 1, "OGG", "VORBIS", "0"),
             ("audio/c.ogg", 44100, 2, "OGG", "VORBIS", "Hey_Computer")]
    rows = []
    for name, sr, channels, fmt, subtype, text in files:
        wave = tone(1.0, sr, 440.0)
        wave = np.stack([wave] * channels, axis=1) if channels > 1 else wave
        rows.append({"file_name": name, "transcription": text, "_audio": encoded(wave, sr, fmt, subtype)})
    root = audiofolder(tmp_path / "other", rows, csv=True)
    report, quarantine = build(tmp_path, source="hf", path=str(root), columns={"transcript": "transcription"})
    assert report["records_kept"] == 3 and quarantine == []
    rows = {r["utterance_id"]: r for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert {uid: r["text"] for uid, r in rows.items()} == {
        "hf/audio/a": "backward", "hf/audio/b": "zero", "hf/audio/c": "hey computer"}
    for row in rows.values():
        samples = row["audio"].get_all_samples()
        assert samples.sample_rate == 16000 and samples.data.shape[0] == 1  # mono
        assert abs(row["duration"] - 1.0) < 0.08  # MP3 frames pad a little
        assert abs(samples.data.shape[1] / 16000 - row["duration"]) < 0.01
        assert float(samples.data.abs().max()) > 0.1  # the tone, not silence


def test_save_to_disk_hub_style_rows_split_and_class_labels(tmp_path: Path) -> None:
    saved = hub_style(tmp_path / "saved")
    report, quarantine = build(tmp_path, source="hf", path=str(saved), split="train",
                               split_shares={"validation": 0.1, "test": 0.1},
                               columns={"transcript": "label", "utterance_id": "file"})
    assert report["records_in"] == 12 and report["records_kept"] == 10
    assert {(q["row"], q["reason"]) for q in quarantine} == {(3, "missing_audio"), (5, "unreadable_audio")}
    assert all(q["utterance_id"] == f"train/{q['row']}.flac" for q in quarantine)
    rows = {r["utterance_id"]: r for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert [rows[f"train/{i}.flac"]["transcript"] for i in (0, 1, 2, 4)] == ["yes", "no", "up", "no"]
    card = (Path(report["dataset_path"]) / "README.md").read_text()
    assert "- audio: none (text only)" not in card and "- audio: 0." in card  # audio bytes in rows, no folder
    # Every split of the DatasetDict when data.split is null.
    everything, _ = build(tmp_path, run="all", source="hf", path=str(saved), columns={"transcript": "label"})
    assert everything["records_in"] == 16 and everything["fingerprint"] != report["fingerprint"]


def test_streamed_dataset_matches_the_loaded_one(tmp_path: Path) -> None:
    folder = digits(tmp_path / "fsdd", speakers=2, takes=2)
    loaded, _ = build(tmp_path, run="loaded", source="hf", path=str(folder))
    streamed, _ = build(tmp_path, run="streamed", source="hf", path=str(folder), streaming=True)
    a, b = load_from_disk(loaded["dataset_path"]), load_from_disk(streamed["dataset_path"])
    assert {k: sorted(v["utterance_id"]) for k, v in a.items()} == {k: sorted(v["utterance_id"]) for k, v in b.items()}
    assert not list((tmp_path / "cache" / "datasets").glob(".tmp-*"))  # the spool is gone


def test_bad_columns_and_unreachable_hub_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = digits(tmp_path / "fsdd", speakers=1, takes=1)
    with pytest.raises(PipelineError, match=r"data.columns.transcript=words: .* has no column 'words'; its columns are "
                                            r"\['audio', 'transcription', 'speaker_id', 'digit'\]"):
        build(tmp_path, source="hf", path=str(folder), columns={"transcript": "words"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what a machine without the hub sees
    with pytest.raises(PipelineError, match=r"hub is unreachable .* pass a local folder instead: data.path=<folder>"):
        build(tmp_path, source="hf", path="google/speech_commands", name="v0.02")
    with pytest.raises(PipelineError, match="no such folder"):
        build(tmp_path, source="hf", path=str(tmp_path / "not-here"))


def test_several_sources_one_build(tmp_path: Path) -> None:
    export = write_export(tmp_path / "export", [record(i, account=f"SHARED-RAW-{i % 3}") for i in range(9)])
    folder = digits(tmp_path / "fsdd", speakers=3, takes=2)
    meta = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    for i, m in enumerate(meta):  # the same three accounts as the export's
        m["speaker_id"] = f"SHARED-RAW-{i % 3}"
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text('{"utterance_id": "u004"}\n{"utterance_id": "fsdd/audio/2_1_0"}\n')
    sources = [{"source": "jsonl", "path": str(export)},
               {"source": "hf", "name": "fsdd", "path": str(folder), "columns": {"account_id": "speaker_id"},
                "constants": {"intent": "number_say"}}]
    report, quarantine = build(tmp_path, sources=sources, deletions=str(deletions))
    assert report["source"] == ["jsonl", "fsdd"]
    assert report["by_source"] == {"jsonl": {"records_in": 9, "records_kept": 8, "records_quarantined": 1},
                                   "fsdd": {"records_in": 18, "records_kept": 17, "records_quarantined": 1}}
    assert {q["source"] for q in quarantine if q["reason"] == "deleted"} == {"jsonl", "fsdd"}
    dd = load_from_disk(report["dataset_path"])
    rows = [r for ds in dd.remove_columns("audio").values() for r in ds]
    assert {r["source"] for r in rows} == {"jsonl", "fsdd"}
    assert {(r["intent"], r["wake_word_present"]) for r in rows if r["source"] == "fsdd"} == {("number_say", True)}
    split_of: dict[str, set[str]] = {}
    for name, ds in dd.items():
        for spk in ds["speaker"]:
            split_of.setdefault(spk, set()).add(name)
    assert len(split_of) == 3 and all(len(s) == 1 for s in split_of.values())  # disjoint across sources
    # The fingerprint covers every input: change one audio file of the second source.
    again, _ = build(tmp_path, run="same", sources=sources, deletions=str(deletions))
    assert again["reused"] and again["fingerprint"] == report["fingerprint"]
    sf.write(folder / "audio" / "0_0_0.flac", tone(0.7, 8000, 999), 8000)
    changed, _ = build(tmp_path, run="changed", sources=sources, deletions=str(deletions))
    assert not changed["reused"] and changed["fingerprint"] != report["fingerprint"]
    with pytest.raises(PipelineError, match="used twice"):
        build(tmp_path, run="twice", sources=[sources[1], sources[1]])


def test_nothing_kept_writes_the_quarantine_then_stops(tmp_path: Path) -> None:
    """NeMo's manifests name audio relative to where they were made; with the wrong audio_dir no clip resolves."""
    manifest = tmp_path / "an4" / "test_manifest.json"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps({"audio_filepath": f"wav/an4test_clstk/fcaw/an40{i}-fcaw-b.wav", "duration": 1.0,
                                            "text": "rubout g m e f three nine"}) + "\n" for i in range(5)))
    run_dir = tmp_path / "run"
    with pytest.raises(PipelineError, match=r"every record was quarantined \(5 of 5\); most common reason: missing_audio "
                                            r"\(5\), e\.g\. wav/an4test_clstk/fcaw/an400-fcaw-b: .*looked for .*an400-fcaw-b\.wav"):
        run_data_stage(make_cfg(tmp_path, source="nemo", path=str(manifest)), run_dir, NullTracker())
    report = json.loads((run_dir / "build_report.json").read_text())
    assert report["records_in"] == 5 and report["records_kept"] == 0 and report["quarantine_reasons"] == {"missing_audio": 5}
    assert len(quarantine_of(run_dir)) == 5
    assert not [p for p in (tmp_path / "cache" / "datasets").iterdir()]


def test_directory_symlink_needs_allowed_roots(tmp_path: Path) -> None:
    storage = tmp_path / "scratch" / "clips"
    storage.parent.mkdir()
    export = write_export(tmp_path / "export", [record(i) for i in range(4)])
    (tmp_path / "export" / "audio").rename(storage)
    os.symlink(storage, tmp_path / "export" / "audio")  # export/audio -> a folder elsewhere, as on clusters
    with pytest.raises(PipelineError, match="path_outside_root"):
        build(tmp_path, path=str(export))
    quarantine = quarantine_of(tmp_path / "run")
    assert len(quarantine) == 4 and all("data.allowed_roots" in q["detail"] for q in quarantine)
    report, quarantine = build(tmp_path, run="allowed", path=str(export), allowed_roots=[str(storage)])
    assert report["records_kept"] == 4 and quarantine == []


def test_empty_entities_beside_an_annotation_is_no_entities(tmp_path: Path) -> None:
    line = record(0, entities=[], annotation="alexa play [music_genre : jazz] music")
    export = write_export(tmp_path / "export", [line, record(1, entities=[{"type": "music_genre", "value": "jazz"}],
                                                             annotation="alexa play [music_genre : jazz] music")])
    report, quarantine = build(tmp_path, path=str(export))
    assert report["records_kept"] == 1 and [q["reason"] for q in quarantine] == ["invalid_record"]
    kept = [r for ds in load_from_disk(report["dataset_path"]).values() for r in ds.remove_columns("audio")][0]
    assert kept["utterance_id"] == "u000" and kept["entities"][0]["value"] == "jazz"


def test_abandoned_temporary_folders_are_swept(tmp_path: Path) -> None:
    datasets_dir = tmp_path / "cache" / "datasets"
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    dead = datasets_dir / f".tmp-0123456789abcdef0123-{gone}"
    alive = datasets_dir / f".tmp-fedcba9876543210fedc-{os.getppid()}"
    for folder in (dead, alive):
        (folder / "work").mkdir(parents=True)
    export = write_export(tmp_path / "export", [record(i) for i in range(3)])
    build(tmp_path, path=str(export))
    assert not dead.exists() and alive.exists()


def test_audiofolder_reached_through_a_symlink(tmp_path: Path) -> None:
    folder = digits(tmp_path / "storage" / "fsdd", speakers=1, takes=2)
    os.symlink(folder, tmp_path / "fsdd")  # data.path itself is the link
    report, quarantine = build(tmp_path, source="hf", path=str(tmp_path / "fsdd"))
    assert report["records_kept"] == 6 and quarantine == []


def test_identifier_constants_are_never_logged_or_stored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A constant device, account or annotator id is a raw id like any other: the log line that
    lists the constants shows that it is set, never its value."""
    folder = digits(tmp_path / "fsdd", speakers=1, takes=2)
    raw = {"device_serial": "CONSTSERIAL77", "account_id": "amzn1.account.CONSTACCT", "annotator_id": "CONSTANN"}
    with caplog.at_level("INFO", logger="pipeline.data"):
        report, quarantine = build(tmp_path, source="hf", path=str(folder), constants={**raw, "locale": "en-GB"})
    assert report["records_kept"] == 6 and quarantine == []
    line = next(r.getMessage() for r in caplog.records if r.name == "pipeline.data.hf" and "constants" in r.getMessage())
    assert "'device_serial': '(set)'" in line and "'locale': 'en-GB'" in line
    written = caplog.text.encode() + all_bytes(tmp_path / "run") + all_bytes(Path(report["dataset_path"]))
    assert not [v for v in raw.values() if v.encode() in written]


def test_csv_of_numeric_speaker_ids_with_a_blank_cell(tmp_path: Path) -> None:
    """pandas reads a column of whole numbers with one blank cell as floats (101.0, NaN): the speakers
    are still "101" and "102", as in the same column without the blank, and the row without a
    speaker is quarantined rather than made its own account."""
    rows = [{"file_name": "audio/a.flac", "transcription": "zero", "speaker_id": 101},
            {"file_name": "audio/b.flac", "transcription": "one", "speaker_id": 102},
            {"file_name": "audio/c.flac", "transcription": "two", "speaker_id": ""},
            {"file_name": "audio/d.flac", "transcription": "", "speaker_id": 103}]
    report, quarantine = build(tmp_path, source="hf", path=str(audiofolder(tmp_path / "blank", rows, csv=True)))
    assert report["records_kept"] == 2
    assert [(q["row"], q["reason"], q["detail"]) for q in quarantine] == [
        (2, "invalid_record", "account_id: the cell of column 'speaker_id' is empty"),
        (3, "invalid_record", "transcript: the cell of column 'transcription' is empty")]
    whole = audiofolder(tmp_path / "whole", [dict(r) for r in rows[:2]], csv=True)
    again, _ = build(tmp_path, run="whole", source="hf", path=str(whole))
    speakers = [{r["utterance_id"]: r["speaker"] for ds in load_from_disk(b["dataset_path"]).values() for r in ds}
                for b in (report, again)]
    assert speakers[0] == speakers[1] and len(set(speakers[0].values())) == 2


def test_csv_cells_pandas_reads_as_missing_are_read_as_written(tmp_path: Path) -> None:
    """pandas takes NA, None, null, nan (and more) for a blank cell. Before the fix a transcript
    "None" or a speaker "NA" read as empty and the clip was quarantined as invalid_record."""
    rows = [{"file_name": "audio/a.flac", "transcription": "None", "speaker_id": "NA"},
            {"file_name": "audio/b.flac", "transcription": "nan", "speaker_id": "NA"},
            {"file_name": "audio/c.flac", "transcription": "null", "speaker_id": "N/A"},
            {"file_name": "audio/d.flac", "transcription": "NA", "speaker_id": "7"}]
    report, quarantine = build(tmp_path, source="hf", path=str(audiofolder(tmp_path / "na", rows, csv=True)))
    assert quarantine == [] and report["records_kept"] == 4
    kept = {r["text"]: r["speaker"] for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert sorted(kept) == ["na", "nan", "none", "null"]
    assert kept["none"] == kept["nan"] != kept["null"]  # speaker "NA" is one person, "N/A" another


def test_csv_ids_are_read_as_written_not_as_numbers(tmp_path: Path) -> None:
    """A metadata.csv of account numbers: "0101" stays "0101", so a deletion request written as the
    export writes it finds the speaker, and two 17-digit numbers in a column with a blank cell stay two
    people (as floats they are one number)."""
    rows = [{"file_name": "audio/a.flac", "transcription": "zero", "speaker_id": "0101"},
            {"file_name": "audio/b.flac", "transcription": "one", "speaker_id": "0101"},
            {"file_name": "audio/c.flac", "transcription": "two", "speaker_id": "0102"},
            {"file_name": "audio/d.flac", "transcription": "three", "speaker_id": "12345678901234567"},
            {"file_name": "audio/e.flac", "transcription": "four", "speaker_id": "12345678901234568"},
            {"file_name": "audio/f.flac", "transcription": "five", "speaker_id": ""}]
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text('{"account_id": "0101"}\n')
    folder = audiofolder(tmp_path / "ids", rows, csv=True)
    report, quarantine = build(tmp_path, source="hf", path=str(folder), deletions=str(deletions))
    assert report["records_kept"] == 3
    assert sorted(q["reason"] for q in quarantine) == ["deleted", "deleted", "invalid_record"]
    kept = {r["text"]: r["speaker"] for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert sorted(kept) == ["four", "three", "two"] and len(set(kept.values())) == 3


def test_csv_ids_are_read_as_written_in_every_metadata_file(tmp_path: Path) -> None:
    # One split's file looks numeric, the other's does not: each is read as written.
    root = tmp_path / "splits"
    for split, speakers in (("train", ["0101", "0101", "0102"]), ("test", ["abc", "abd", "abc"])):
        audiofolder(root / split, [{"file_name": f"audio/{split}{i}.flac", "transcription": "zero", "speaker_id": s}
                                   for i, s in enumerate(speakers)], csv=True)
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text('{"account_id": "0101"}\n{"account_id": "abd"}\n')
    report, quarantine = build(tmp_path, source="hf", path=str(root), deletions=str(deletions),
                               split_shares={"validation": 0.3, "test": 0.3})
    assert [q["reason"] for q in quarantine] == ["deleted"] * 3 and report["records_kept"] == 3


def test_a_new_split_of_a_saved_dataset_moves_no_earlier_clip_and_deletions_keep_their_clip(tmp_path: Path) -> None:
    """A save_to_disk dataset without id or speaker columns: each clip is its own account, named by
    its audio's hash, not by its row, which a split sorting first would shift: ids, splits and the
    clip a deletion names would all move. Nor by the file name stored with the bytes, which repeats
    across splits (`datasets` keeps only its last part)."""
    features = Features({"audio": Audio(), "transcription": Value("string")})

    def rows(prefix: str, count: int) -> dict[str, list[Any]]:
        return {"audio": [{"bytes": encoded(tone(0.5, 16000, 200 + 17 * i + len(prefix)), 16000), "path": f"{i}.flac"}
                          for i in range(count)],
                "transcription": [f"{prefix} number {i}" for i in range(count)]}

    first = {"train": Dataset.from_dict(rows("clip", 12), features=features)}
    DatasetDict(first).save_to_disk(str(tmp_path / "v1"))
    DatasetDict({"batch2": Dataset.from_dict(rows("new", 3), features=features), **first}).save_to_disk(str(tmp_path / "v2"))
    shares = {"validation": 0.3, "test": 0.3}
    built = [build(tmp_path, run=v, source="hf", path=str(tmp_path / v), split_shares=shares) for v in ("v1", "v2")]
    splits = [{r["text"]: (name, r["utterance_id"]) for name, ds in load_from_disk(b["dataset_path"]).items() for r in ds}
              for b, _ in built]
    assert {t: splits[1][t] for t in splits[0]} == splits[0]  # (the text is normalised: "clip number two")
    assert len(splits[1]) == 15 and built[1][1] == []  # "0.flac" in both splits: no clip is a duplicate
    assert {i[:10] for _, i in splits[1].values()} == {"hf/sha256:"}
    # A deletion request by the new id deletes that clip whatever its row.
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text(json.dumps({"utterance_id": splits[0]["clip number two"][1]}) + "\n")
    again = build(tmp_path, run="v2-deleted", source="hf", path=str(tmp_path / "v2"), split_shares=shares,
                  deletions=str(deletions))
    kept = {r["text"] for ds in load_from_disk(again[0]["dataset_path"]).values() for r in ds}
    assert "clip number two" not in kept and len(kept) == 14


def test_a_deletion_request_written_against_an_old_row_id_still_deletes(tmp_path: Path) -> None:
    """Before build code version 11 such a clip was `<source>/<row>`; requests and tombstones written
    against those ids must not stop matching when the ids change (the row's clip is deleted: at worst
    more than was asked, never less)."""
    features = Features({"audio": Audio(), "transcription": Value("string")})
    audio = [{"bytes": encoded(tone(0.5, 16000, 300 + 20 * i), 16000), "path": f"{i}.flac"} for i in range(6)]
    Dataset.from_dict({"audio": audio, "transcription": [f"number {i}" for i in range(6)]}, features=features) \
        .save_to_disk(str(tmp_path / "saved"))
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text('{"utterance_id": "hf/2"}\n{"account_id": "hf/4"}\n')
    report, quarantine = build(tmp_path, source="hf", path=str(tmp_path / "saved"), deletions=str(deletions),
                               split_shares={"validation": 0.2, "test": 0.2})
    assert [q["reason"] for q in quarantine] == ["deleted", "deleted"]
    kept = {r["text"] for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert kept == {"number zero", "number one", "number three", "number five"}


def test_audiofolder_errors_name_the_real_cause(tmp_path: Path) -> None:
    folder = audiofolder(tmp_path / "outside", [{"file_name": "audio/a.flac", "transcription": "zero"}])
    with pytest.raises(PipelineError, match=r'^data\.split=validation: Unknown split "validation"\. Should be one of '
                                            r"\['train'\]\. \(a '\+' joins several; null reads every split\)$"):
        build(tmp_path, source="hf", path=str(folder), split="validation", split_shares={"validation": 0.3, "test": 0.3})
    sf.write(tmp_path / "x.flac", tone(0.6, 8000), 8000)
    with open(folder / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "../x.flac", "transcription": "one"}) + "\n")
    with pytest.raises(PipelineError, match=r"\(ValueError: Invalid metadata file_name '\.\./x\.flac': .*must be a "
                                            r"relative path.*; fix .*outside/metadata\.jsonl$"):
        build(tmp_path, source="hf", path=str(folder))
    (folder / "metadata.jsonl").write_text("\n")
    with pytest.raises(PipelineError, match=r"outside/metadata\.jsonl is empty; list each audio file in it"):
        build(tmp_path, source="hf", path=str(folder))
    folder = digits(tmp_path / "fsdd", speakers=1, takes=1)
    with pytest.raises(PipelineError, match=rf"data\.path={folder}/metadata\.jsonl is the metadata file; pass the "
                                            rf"folder holding it and the audio files: data\.path={folder}$"):
        build(tmp_path, source="hf", path=str(folder / "metadata.jsonl"))


def test_constants_are_checked_as_config(tmp_path: Path) -> None:
    """A constant the records' schema refuses would quarantine every record; it is a config error,
    naming the key, before the dataset is opened (the path here does not even exist)."""
    missing = str(tmp_path / "not-here")
    with pytest.raises(PipelineError, match=r"^data\.constants\.wake_word_present='maybe': Input should be a valid boolean$"):
        build(tmp_path, source="hf", path=missing, constants={"wake_word_present": "maybe"})
    with pytest.raises(PipelineError, match=r"^data\.constants\.account_id \(an identifier, not shown\): String should "
                                            r"have at least 1 character$"):
        build(tmp_path, source="hf", path=missing, constants={"account_id": ""})
    # A number given for a text field (as a Hydra override parses it) is its digits.
    folder = digits(tmp_path / "fsdd", speakers=1, takes=1)
    report, quarantine = build(tmp_path, source="hf", path=str(folder), constants={"device_serial": 12345})
    assert report["records_kept"] == 3 and quarantine == []


def test_a_clip_that_is_its_own_account_keeps_its_readable_id(tmp_path: Path) -> None:
    """Without a speaker column the reader makes each clip its own account from its id: that account
    hides nothing the id does not show, so the id stays as the corpus wrote it (an account the
    export gives, equal to the id, makes the id a pseudonym: tests/data/test_privacy.py)."""
    rows = [{"file_name": f"audio/athena-{i}.flac", "text": f"clip {i}"} for i in range(4)]
    report, quarantine = build(tmp_path, source="hf", path=str(audiofolder(tmp_path / "own", rows)))
    assert report["records_kept"] == 4 and not quarantine
    ids = {r["utterance_id"]: r["speaker"] for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert set(ids) == {f"hf/audio/athena-{i}" for i in range(4)} and len(set(ids.values())) == 4


def test_the_projects_own_export_given_to_data_hf_names_data_jsonl(tmp_path: Path) -> None:
    """Read as a json dataset, every record was quarantined for a missing transcript column."""
    folder = tmp_path / "export"
    (folder / "audio").mkdir(parents=True)
    sf.write(folder / "audio" / "a.flac", tone(0.6, 8000), 8000)
    (folder / "annotations.jsonl").write_text(json.dumps({"utterance_id": "a", "audio": "audio/a.flac",
                                                          "transcript": "zero", "intent": None}) + "\n")
    with pytest.raises(PipelineError, match=r"holds annotations\.jsonl, the project's own export format, which `data=hf` "
                                            r"does not read: build it with data=jsonl data\.path=.*export/annotations\.jsonl"):
        build(tmp_path, source="hf", path=str(folder))
    # An audiofolder whose metadata sits in a split's folder, beside an export: read as an audiofolder.
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    for i, word in enumerate(["zero", "one", "two", "three"]):
        sf.write(other / "train" / f"{i}.flac", tone(0.6, 8000), 8000)
    (other / "train" / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"{i}.flac", "transcription": w, "speaker_id": f"s{i}"}) + "\n"
        for i, w in enumerate(["zero", "one", "two", "three"])))
    (other / "annotations.jsonl").write_text((folder / "annotations.jsonl").read_text())
    report, _ = build(tmp_path, run="other", source="hf", path=str(other))
    assert report["records_kept"] == 4


def test_a_recorded_at_that_looks_like_a_date_is_copied_as_written(tmp_path: Path) -> None:
    """Before the fix: pyarrow reads a metadata.jsonl string that looks like a date or time
    ("2026-04-13T02:19:08Z", the canonical `recorded_at`) as a timestamp, and a save_to_disk
    dataset may store one so; the schema wants text, so every clip was quarantined as
    invalid_record ("recorded_at: Input should be a valid string"). A metadata.jsonl cell is now
    copied as written, a stored timestamp as ISO 8601 text."""
    stamps = ["2026-04-13T02:19:08Z", "2026-04-14", "2026-04-15 08:00"]
    rows = [{"file_name": f"audio/c{i}.flac", "transcription": f"clip {i}", "speaker_id": f"s{i}",
             "recorded_at": stamp} for i, stamp in enumerate(stamps)]
    report, quarantine = build(tmp_path, source="hf", path=str(audiofolder(tmp_path / "af", rows)))
    assert quarantine == [] and report["records_kept"] == 3
    kept = {r["utterance_id"]: r["recorded_at"] for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert kept == {f"hf/audio/c{i}": stamp for i, stamp in enumerate(stamps)}

    import datetime as dt
    features = Features({"audio": Audio(), "text": Value("string"), "speaker_id": Value("string"),
                         "recorded_at": Value("timestamp[s]")})
    saved = Dataset.from_dict({"audio": [{"bytes": encoded(tone(0.5), 16000), "path": None}], "text": ["yes"],
                               "speaker_id": ["s0"], "recorded_at": [dt.datetime(2026, 4, 13, 2, 19, 8)]}, features=features)
    saved.save_to_disk(str(tmp_path / "saved"))
    report, quarantine = build(tmp_path, run="saved", source="hf", path=str(tmp_path / "saved"))
    assert quarantine == [] and report["records_kept"] == 1
    [row] = [r for ds in load_from_disk(report["dataset_path"]).values() for r in ds]
    assert row["recorded_at"] == "2026-04-13T02:19:08"


def test_entities_stored_as_a_sequence_of_fields_are_read_as_a_list(tmp_path: Path) -> None:
    """Before the fix: a dataset declaring its entities the usual `datasets` way,
    `Sequence({"type": ..., "value": ...})`, gives each row {"type": [...], "value": [...]}, one list
    per field; the schema wants one object per entity, so every clip was quarantined as
    invalid_record ("entities: Input should be a valid list")."""
    features = Features({"audio": Audio(), "text": Value("string"), "speaker_id": Value("string"),
                         "intent": Value("string"),
                         "entities": Sequence({"type": Value("string"), "value": Value("string")})})
    entities = [{"type": ["music_genre"], "value": ["jazz"]}, {"type": [], "value": []},
                {"type": ["artist_name", "house_place"], "value": ["taylor swift", "kitchen"]}]
    texts = ["alexa play jazz", "alexa stop", "alexa play taylor swift in the kitchen"]
    Dataset.from_dict({"audio": [{"bytes": encoded(tone(0.5, 16000, 300 + 50 * i), 16000), "path": None} for i in range(3)],
                       "text": texts, "speaker_id": ["s0", "s1", "s2"], "intent": ["play_music", "stop", "play_music"],
                       "entities": entities}, features=features).save_to_disk(str(tmp_path / "saved"))
    report, quarantine = build(tmp_path, source="hf", path=str(tmp_path / "saved"))
    assert quarantine == [] and report["records_kept"] == 3
    kept = {r["transcript"]: [(e["type"], e["value"]) for e in r["entities"]]
            for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert kept == {texts[0]: [("music_genre", "jazz")], texts[1]: [],
                    texts[2]: [("artist_name", "taylor swift"), ("house_place", "kitchen")]}


def test_blank_cells_fall_back_to_constants_and_a_blank_wake_label_is_quarantined(tmp_path: Path) -> None:
    """A blank cell of a field `data.constants` sets takes the constant, whether or not the field is
    required; a blank cell of a mapped `wake_word_present` column is a clip nobody labelled, quarantined
    as an export's null is. Before the fix a blank speaker cell was quarantined although
    `data.constants.account_id` was set, and a blank wake label was inferred from the intent (a
    false wake with no command counted as no wake, one with a command as a wake)."""
    rows = [{"file_name": "audio/a.flac", "transcription": "zero", "speaker_id": "s1", "woke": True},
            {"file_name": "audio/b.flac", "transcription": "one", "speaker_id": None, "woke": False},
            {"file_name": "audio/c.flac", "transcription": "two", "speaker_id": "s2", "woke": None}]
    folder = audiofolder(tmp_path / "blank", rows)
    report, quarantine = build(tmp_path, source="hf", path=str(folder),
                               columns={"transcript": "transcription", "account_id": "speaker_id", "wake_word_present": "woke"},
                               constants={"account_id": "SHARED-ACCOUNT"})
    assert [(q["row"], q["reason"], q["detail"]) for q in quarantine] == [
        (2, "invalid_record", "wake_word_present: the cell of column 'woke' is empty")]
    kept = {r["text"]: r for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert sorted(kept) == ["one", "zero"] and kept["one"]["wake_word_present"] is False
    assert kept["one"]["speaker"].startswith("acct_") and kept["one"]["speaker"] != kept["zero"]["speaker"]
    # With a constant for the wake label, its blank cell takes it.
    again, quarantine = build(tmp_path, run="constant", source="hf", path=str(folder),
                              columns={"transcript": "transcription", "account_id": "speaker_id", "wake_word_present": "woke"},
                              constants={"account_id": "SHARED-ACCOUNT", "wake_word_present": False})
    assert quarantine == [] and again["records_kept"] == 3
