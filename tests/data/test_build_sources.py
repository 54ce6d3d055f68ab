"""Each non-canonical source format (SLURP, NeMo, MASSIVE text) through the real build."""

from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from datasets import load_from_disk
from omegaconf import OmegaConf

from pipeline.data.build import run_data_stage
from pipeline.data.features import dataset_features
from pipeline.runtime import PipelineError
from pipeline.tracking import NullTracker

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # samples of SLURP devel and MASSIVE en-US


def _tone(path: Path, seconds: float = 1.0, sr: int = 44100, freq: float = 500.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


def _build(tmp_path: Path, **data: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = OmegaConf.create({
        "cache_dir": str(tmp_path / "cache"),
        "privacy": {"key_env": "PIPELINE_TEST_DATA_KEY_UNSET", "key_file": str(tmp_path / "key")},
        "data": {"deletions": None, "min_duration_s": 0.2, "max_duration_s": 30, "quarantine_flags": ["sensitive"],
                 "split": {"validation": 0.3, "test": 0.3}, "num_proc": 1, **data},
    })
    report = run_data_stage(cfg, tmp_path / "run", NullTracker())
    quarantine = [json.loads(x) for x in (tmp_path / "run" / "quarantine.jsonl").read_text().splitlines()]
    assert report["records_in"] == report["records_kept"] + report["records_quarantined"] == report["records_kept"] + len(quarantine)
    return report, quarantine


def test_slurp_one_clip_per_recording(tmp_path: Path) -> None:
    lines = (FIXTURES / "slurp_devel_sample.jsonl").read_text().splitlines()
    chosen = [lines[0], lines[1]]  # qa_currency with two entities; a truncated `intent: query` (weather)
    audio_dir = tmp_path / "slurp_real"
    files = [r["file"] for line in chosen for r in json.loads(line)["recordings"]]
    for i, file in enumerate(files):
        _tone(audio_dir / file, freq=300 + 40 * i)
    manifest = tmp_path / "devel.jsonl"
    manifest.write_text("\n".join([*chosen, '{"slurp_id": 1, "recordings": []}']) + "\n")

    report, quarantine = _build(tmp_path, source="slurp", path=str(manifest), audio_dir=str(audio_dir))
    assert report["records_in"] == len(files) + 1 and report["records_kept"] == len(files)
    assert quarantine == [{"source": "slurp", "line": 3, "reason": "invalid_record",
                           "detail": "a SLURP record needs a non-empty `recordings` list"}]
    dd = load_from_disk(report["dataset_path"])
    rows = [r for ds in dd.values() for r in ds.remove_columns("audio")]
    currency = [r for r in rows if r["utterance_id"] == "slurp-13804-audio-1434542201-headset"][0]
    assert currency["intent"] == "qa_currency"
    assert [e["value"] for e in currency["entities"]] == ["american dollar", "japanese yen"]
    assert currency["bio_tags"][-2:] == ["B-currency_name", "I-currency_name"]
    assert {r["intent"] for r in rows if r["utterance_id"].startswith("slurp-1197-")} == {"weather_query"}
    # By take (data.slurp_account=take): both microphones of one take are one account.
    report, _ = _build(tmp_path, source="slurp", path=str(manifest), audio_dir=str(audio_dir), slurp_account="take")
    split = {r["utterance_id"]: name for name, ds in load_from_disk(report["dataset_path"]).items()
             for r in ds.remove_columns("audio")}
    assert split["slurp-13804-audio-1434542201-headset"] == split["slurp-13804-audio-1434542201"]


def test_slurp_keeps_every_take_of_a_sentence_in_one_split(tmp_path: Path) -> None:
    """SLURP's takes repeat its prompts (several people read each), so a split by take put most test
    sentences in training too, and a text score on them measured memory. By default a sentence is the
    account: no sentence is in two splits."""
    audio_dir = tmp_path / "slurp_real"
    lines = []
    for sid in range(12):
        takes = [f"audio-{1500000000 + 100 * sid + t}" for t in range(4)]
        for i, take in enumerate(takes):
            for file in (f"{take}-headset.flac", f"{take}.flac"):
                _tone(audio_dir / file, seconds=0.3, sr=16000, freq=200 + 20 * sid + 5 * i)
        lines.append(json.dumps({"slurp_id": sid, "sentence": f"wake me up at {sid} am", "scenario": "alarm",
                                 "action": "set", "recordings": [{"file": f"{t}{m}.flac"} for t in takes
                                                                  for m in ("-headset", "")]}))
    manifest = tmp_path / "devel.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    for account, sentence_disjoint in (("sentence", True), ("take", False)):
        report, _ = _build(tmp_path, source="slurp", path=str(manifest), audio_dir=str(audio_dir),
                           **({"slurp_account": account} if account == "take" else {}))
        dd = load_from_disk(report["dataset_path"])
        texts = {name: set(ds["text"]) for name, ds in dd.items()}
        shared = (texts["train"] & texts["test"]) | (texts["train"] & texts["validation"]) | (texts["validation"] & texts["test"])
        assert (not shared) == sentence_disjoint, (account, shared)
        # The dataset card says how (it used to claim that no speaker is in two splits, for any source).
        card = (Path(report["dataset_path"]) / "README.md").read_text()
        assert f"splits are assigned by a keyed hash of the {account} (`data.slurp_account`): SLURP's files name no speakers" in card


def test_nemo_manifest_with_extra_fields(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    _tone(root / "wavs" / "a.wav", seconds=2.0, sr=22050)
    _tone(root / "wavs" / "b.wav")
    _tone(tmp_path / "elsewhere.wav")
    manifest = root / "manifest.json"
    entries = [
        {"audio_filepath": "wavs/a.wav", "duration": 2.0, "text": "turn on the kitchen lights",
         "intent": "iot_hue_lighton", "annotation": "turn on the [house_place : kitchen] lights", "speaker": "SPK-RAW-1"},
        {"audio_filepath": str(root / "wavs" / "b.wav"), "duration": 1.0, "text": "what time is it"},
        {"audio_filepath": str(tmp_path / "elsewhere.wav"), "duration": 1.0, "text": "hello"},
        {"duration": 1.0, "text": "no audio path"},
    ]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))

    report, quarantine = _build(tmp_path, source="nemo", path=str(manifest))
    assert report["records_kept"] == 2
    # A path outside the audio folder names the setting that fixes it, and neither the folder (it often
    # carries a user's name) nor an id made from it.
    assert sorted((q.get("utterance_id", ""), q["reason"], q["detail"]) for q in quarantine) == [
        ("", "invalid_record", "audio_filepath: missing or not a string"),
        ("elsewhere", "path_outside_root", f"audio_filepath is an absolute path outside data.audio_dir={root} (file "
                                           "'elsewhere.wav'); set data.audio_dir to a folder holding every clip")]
    dd = load_from_disk(report["dataset_path"])
    rows = {r["utterance_id"]: r for ds in dd.values() for r in ds}
    assert set(rows) == {"wavs/a", "wavs/b"}
    assert rows["wavs/a"]["entities"][0]["type"] == "house_place" and abs(rows["wavs/a"]["duration"] - 2.0) < 0.01
    assert rows["wavs/a"]["speaker"].startswith("acct_") and rows["wavs/b"]["intent"] is None
    assert b"SPK-RAW-1" not in b"".join(p.read_bytes() for p in Path(report["dataset_path"]).rglob("*") if p.is_file())


def test_massive_text_without_audio(tmp_path: Path) -> None:
    def copy(name: str, n: int) -> Path:
        with open(FIXTURES / name) as f:
            lines = list(islice(f, n))
        out = tmp_path / name
        out.write_text("".join(lines) + '{"id": "x1", "utt": "play jazz", "annot_utt": "play [genre : jazz", "intent": "play_music"}\n')
        return out

    train, dev = copy("en-US.train.jsonl", 30), copy("en-US.dev.jsonl", 20)
    report, quarantine = _build(tmp_path, source="massive_text", train_path=str(train), dev_path=str(dev), split=None)
    assert report["records_in"] == 52 and report["quarantine_reasons"] == {"bad_annotation": 1, "duplicate_id": 1}
    # The repeated id is on line 21 of the dev file, not of the train file: the detail says which.
    assert [q["detail"] for q in quarantine if q["reason"] == "duplicate_id"] == [
        "en-US.dev.jsonl line 21 repeats an earlier utterance_id"]
    assert report["splits"]["train"] == 30 and report["splits"]["validation"] + report["splits"]["test"] == 20
    assert min(report["splits"].values()) > 0
    dd = load_from_disk(report["dataset_path"])
    card = (Path(report["dataset_path"]) / "README.md").read_text()
    assert "splits are assigned by MASSIVE's own split (train file -> train" in card and "- audio: none (text only)" in card
    assert dd["train"].features == dataset_features(with_audio=False, with_source=True)
    assert all(d == 0.0 for d in dd["validation"]["duration"])
    # The dev halves are a fixed function of the MASSIVE id.
    again, _ = _build(tmp_path / "again", source="massive_text", train_path=str(train), dev_path=str(dev), split=None)
    assert load_from_disk(again["dataset_path"])["test"]["utterance_id"] == dd["test"]["utterance_id"]

    # A record whose intent was lost or mangled in an edit is a bad annotation, not a "no command".
    good = json.loads(train.read_text().splitlines()[0])
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps({**good, "id": f"e{i}", **change}) + "\n" for i, change in enumerate(
        [{}, {"intent": None}, {"intent": "alarm"}, {"scenario": "music", "intent": "alarm_set"}])))
    report, quarantine = _build(tmp_path / "edited", source="massive_text", train_path=str(edited), dev_path=str(dev),
                                split=None)
    edits = sorted((q["utterance_id"], q["detail"]) for q in quarantine if q["utterance_id"].startswith("massive-e"))
    assert edits == [
        ("massive-e1", "edited.jsonl: intent None is not an intent of scenario 'alarm' (<scenario>_<action>)"),
        ("massive-e2", "edited.jsonl: intent 'alarm' is not an intent of scenario 'alarm' (<scenario>_<action>)"),
        ("massive-e3", "edited.jsonl: intent 'alarm_set' is not an intent of scenario 'music' (<scenario>_<action>)")]

    # Split shares would be ignored (the files fix the splits); an empty file would leave a split empty
    # and be found only by the NLU stage, without naming the file.
    with pytest.raises(PipelineError, match=r"^data.split_shares does not apply to massive_text: its files fix the splits"):
        _build(tmp_path / "shares", source="massive_text", train_path=str(train), dev_path=str(dev),
               split=None, split_shares={"validation": 0.3, "test": 0.3})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PipelineError, match=rf"^data.train_path={re.escape(str(empty))}: the file holds no records; "
                                            r"point it at MASSIVE's train file"):
        _build(tmp_path / "empty", source="massive_text", train_path=str(empty), dev_path=str(dev), split=None)


def test_nemo_numbered_speakers_segments_and_missing_fields(tmp_path: Path) -> None:
    """LibriSpeech-style manifests number their speakers; a segment of a longer file is refused by
    name, not read whole and then called a duplicate; a bad line names the manifest's own field."""
    root = tmp_path / "corpus"
    for name in ("1089-1", "1089-2", "long"):
        _tone(root / "wavs" / f"{name}.wav", seconds=1.0 if name != "long" else 4.0, freq=300 + len(name) * 30)
    entries = [
        {"audio_filepath": "wavs/1089-1.wav", "duration": 1.0, "text": "first", "speaker": 1089},
        {"audio_filepath": "wavs/1089-2.wav", "duration": 1.0, "text": "second", "speaker": 1089},
        {"audio_filepath": "wavs/long.wav", "offset": 0.0, "duration": 4.0, "text": "the whole file"},
        {"audio_filepath": "wavs/long.wav", "offset": 2.0, "duration": 2.0, "text": "a segment"},
        {"duration": 1.0, "text": "no audio path"},
        {"audio_filepath": "wavs/1089-1.wav", "duration": 1.0},
        {"audio_filepath": "wavs/1089-2.wav", "duration": 1.0, "text": "third", "speaker": 10.5},
        {"audio_filepath": "wavs/1089-2.wav", "duration": 1.0, "text": "fourth", "offset": float("nan")},
        {"audio_filepath": "wavs/1089-2.wav", "duration": 1.0, "text": "fifth", "offset": -1.0},
    ]
    manifest = root / "manifest.json"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))  # NaN as JSON's NaN, as Python writes it

    report, quarantine = _build(tmp_path, source="nemo", path=str(manifest))
    assert report["records_kept"] == 3
    assert [(q["line"], q["reason"], q["detail"]) for q in quarantine] == [
        (4, "invalid_record", "offset 2.0: a segment of a longer file; the build reads whole files, so cut each "
                              "segment into its own file (and drop offset)"),
        (5, "invalid_record", "audio_filepath: missing or not a string"),
        (6, "invalid_record", "text: missing or not a string"),
        (7, "invalid_record", "speaker: a string or a whole number expected, got float"),
        (8, "invalid_record", "offset nan: seconds from the file's start expected, 0 or more"),
        (9, "invalid_record", "offset -1.0: seconds from the file's start expected, 0 or more"),
    ]
    dd = load_from_disk(report["dataset_path"])
    rows = {r["text"]: r for ds in dd.values() for r in ds.remove_columns("audio")}
    assert rows["first"]["speaker"] == rows["second"]["speaker"] != rows["the whole file"]["speaker"]
    # "1089" is the speaker: ids holding it show as pseudonyms, as for any raw account.
    assert rows["first"]["utterance_id"].startswith("utt_") and rows["the whole file"]["utterance_id"] == "wavs/long"


def test_massive_and_slurp_records_without_an_id_are_quarantined(tmp_path: Path) -> None:
    with open(FIXTURES / "en-US.train.jsonl") as f:
        good = json.loads(next(f))
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "id"}) + "\n")
    dev.write_text(json.dumps({**good, "id": 7, "partition": "dev"}) + "\n")
    report, quarantine = _build(tmp_path / "massive", source="massive_text", train_path=str(train), dev_path=str(dev),
                                split=None)
    assert report["records_kept"] == 2
    assert quarantine == [{"source": "massive_text", "line": 2, "reason": "invalid_record",
                           "detail": "train.jsonl: a MASSIVE record needs an `id` (string or whole number)"}]

    sentence = json.loads((FIXTURES / "slurp_devel_sample.jsonl").read_text().splitlines()[0])
    del sentence["slurp_id"]
    manifest = tmp_path / "devel.jsonl"
    manifest.write_text(json.dumps(sentence) + "\n")
    (tmp_path / "slurp_audio").mkdir()
    with pytest.raises(PipelineError, match="every record was quarantined"):
        _build(tmp_path / "slurp", source="slurp", path=str(manifest), audio_dir=str(tmp_path / "slurp_audio"))
    lines = [json.loads(x) for x in (tmp_path / "slurp" / "run" / "quarantine.jsonl").read_text().splitlines()]
    assert {(q["line"], q["detail"]) for q in lines} == {(1, "a SLURP record needs a `slurp_id` (string or whole number)")}


def test_an_export_with_a_byte_order_mark_and_a_line_not_in_utf8(tmp_path: Path) -> None:
    """Excel writes a byte-order mark; an old tool writes cp1252. The first is read; the second is
    quarantined by line, never repaired into another account that a deletion request would miss."""
    export = tmp_path / "export"

    def line(utt: str, account: str, **over: Any) -> dict[str, Any]:
        _tone(export / "audio" / f"{utt}.wav", freq=300 + 40 * len(utt) + ord(utt[-1]))
        return {"utterance_id": utt, "audio": f"audio/{utt}.wav", "transcript": "alexa play beyoncé",
                "annotation": "alexa play [artist_name : beyoncé]", "intent": "play_music", "account_id": account, **over}

    first = json.dumps(line("u1", "acct-1", locale=None, flags=None), ensure_ascii=False).encode()
    cp1252 = json.dumps(line("u2", "café-acct"), ensure_ascii=False).encode("cp1252")
    third = json.dumps(line("u3", "acct-3", annotation=None, entities=[
        {"type": "artist_name", "value": "beyoncé", "confidence": 0.9}]), ensure_ascii=False).encode()
    deleted = json.dumps(line("u4", "acct-4"), ensure_ascii=False).encode()
    (export / "annotations.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([first, cp1252, third, deleted]) + b"\r\n")
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_bytes(b"\xef\xbb\xbf" + json.dumps({"account_id": "acct-4"}).encode() + b"\n")

    report, quarantine = _build(tmp_path, source="jsonl", path=str(export / "annotations.jsonl"),
                                deletions=str(deletions))
    column = cp1252.index(b"\xe9") + 1
    assert [(q.get("line"), q["reason"], q["detail"]) for q in quarantine if q["reason"] != "deleted"] == [
        (2, "invalid_record", f"not UTF-8 (byte 0xe9 at byte {column}); save the file as UTF-8")]
    assert [q["reason"] for q in quarantine].count("deleted") == 1
    dd = load_from_disk(report["dataset_path"])
    rows = {r["utterance_id"]: r for ds in dd.values() for r in ds.remove_columns("audio")}
    assert set(rows) == {"u1", "u3"}
    assert rows["u1"]["locale"] == "en-US" and rows["u1"]["transcript"] == "alexa play beyoncé"
    assert [e["value"] for e in rows["u3"]["entities"]] == ["beyoncé"]


def test_errors_in_a_sources_entry_name_the_entry(tmp_path: Path) -> None:
    base = {"split_shares": {"validation": 0.3, "test": 0.3}, "split": None}
    with pytest.raises(PipelineError, match=r"^data\.sources is empty; list at least one entry"):
        _build(tmp_path / "a", sources=[], **base)
    with pytest.raises(PipelineError, match=r"^data\.sources\[1\]\.path is not set for source jsonl; "
                                            r"pass data\.sources\[1\]\.path=<file>$"):
        _build(tmp_path / "b", sources=[{"source": "massive_text", "train_path": str(FIXTURES / "en-US.train.jsonl"),
                                         "dev_path": str(FIXTURES / "en-US.dev.jsonl")},
                                        {"source": "jsonl", "name": "exp"}], **base)
    # The hf reader names its settings data.<setting>; in a list the entry is named before them.
    with pytest.raises(PipelineError, match=r"^data\.sources\[1\] \(clips\): data\.path=\S+/nope: no such folder"):
        _build(tmp_path / "d", sources=[{"source": "massive_text", "train_path": str(FIXTURES / "en-US.train.jsonl"),
                                         "dev_path": str(FIXTURES / "en-US.dev.jsonl")},
                                        {"source": "hf", "name": "clips", "path": str(tmp_path / "nope")}], **base)
    with pytest.raises(PipelineError, match=r"^data\.path=.* is a folder; give the file itself$"):
        _build(tmp_path / "c", source="jsonl", path=str(tmp_path))


def test_an_intent_without_words_is_a_bad_annotation_and_an_empty_export_is_named(tmp_path: Path) -> None:
    export = tmp_path / "export"
    _tone(export / "audio" / "u1.wav")
    _tone(export / "audio" / "u2.wav", freq=700.0)
    records = [{"utterance_id": "u1", "audio": "audio/u1.wav", "transcript": "alexa stop", "intent": "stop",
                "account_id": "a1"},
               {"utterance_id": "u2", "audio": "audio/u2.wav", "transcript": " ?! ", "intent": "play_music",
                "account_id": "a2"}]
    (export / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report, quarantine = _build(tmp_path / "one", source="jsonl", path=str(export / "annotations.jsonl"))
    assert report["records_kept"] == 1
    assert [(q["utterance_id"], q["reason"], q["detail"]) for q in quarantine] == [
        ("u2", "bad_annotation", "intent 'play_music' on an empty transcript; a command has words")]

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PipelineError, match=rf"hold no records \(empty: {empty}\); check data\.path$"):
        _build(tmp_path / "two", source="jsonl", path=str(empty))


def test_a_build_whose_held_out_split_holds_no_clip_says_which_share_to_raise(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    export = tmp_path / "export"
    _tone(export / "audio" / "u1.wav")
    (export / "annotations.jsonl").write_text(json.dumps(
        {"utterance_id": "u1", "audio": "audio/u1.wav", "transcript": "alexa stop", "intent": "stop", "account_id": "a1"}) + "\n")
    with caplog.at_level("WARNING", logger="pipeline.data.build"):
        report, _ = _build(tmp_path, source="jsonl", path=str(export / "annotations.jsonl"))
    empty = [s for s in ("validation", "test") if report["splits"].get(s) == 0]
    assert empty  # one account: at most one held-out split has it
    for split in empty:
        assert f"data: split {split} holds no clip" in caplog.text and "data.split_shares" in caplog.text


def test_what_erasure_applied_under_the_cache_stays_out_of_every_later_build(tmp_path: Path) -> None:
    """`make erase` purges the exports it knows; a fresh export (or demo synthesis) holding the same
    clips must not bring them back: every build reads the requests erasure applied."""
    from pipeline.data.privacy import (ERASED_DIR, REQUESTS_FILE, TOMBSTONES_FILE, load_key, pseudonym,
                                       utterance_pseudonym)

    export = tmp_path / "export"
    records = []
    for i, account in enumerate(["a1", "a2", "a3"]):
        _tone(export / "audio" / f"u{i}.wav", freq=400.0 + 100 * i)
        records.append({"utterance_id": f"u{i}", "audio": f"audio/u{i}.wav", "transcript": "alexa stop",
                        "intent": "stop", "account_id": account})
    (export / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before, _ = _build(tmp_path, source="jsonl", path=str(export / "annotations.jsonl"))
    assert before["records_kept"] == 3
    key = load_key("PIPELINE_TEST_DATA_KEY_UNSET", str(tmp_path / "key"))
    erased = tmp_path / "cache" / ERASED_DIR
    erased.mkdir(parents=True)
    (erased / REQUESTS_FILE).write_text(pseudonym(key, "acct", "a2") + "\n")
    (erased / TOMBSTONES_FILE).write_text(utterance_pseudonym(key, "u0") + "\n")
    after, quarantine = _build(tmp_path, source="jsonl", path=str(export / "annotations.jsonl"))
    assert after["dataset_path"] != before["dataset_path"]  # the requests are part of what the build is of
    assert after["records_kept"] == 1
    assert sorted((q["reason"], q["utterance_id"]) for q in quarantine) == sorted(
        [("deleted", utterance_pseudonym(key, "u0")), ("deleted", utterance_pseudonym(key, "u1"))])


def test_a_flag_is_quarantined_whatever_its_letter_case_or_spaces(tmp_path: Path) -> None:
    export = tmp_path / "export"
    records = []
    for i, flags in enumerate([["Sensitive"], [" sensitive "], ["SENSITIVE", "noisy"], ["noisy"]]):
        _tone(export / "audio" / f"u{i}.wav", freq=300.0 + 100 * i)
        records.append({"utterance_id": f"u{i}", "audio": f"audio/u{i}.wav", "transcript": "alexa stop",
                        "intent": "stop", "account_id": f"a{i}", "flags": flags})
    (export / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report, quarantine = _build(tmp_path, source="jsonl", path=str(export / "annotations.jsonl"))
    assert sorted(q["utterance_id"] for q in quarantine if q["reason"] == "flagged") == ["u0", "u1", "u2"]
    assert report["records_kept"] == 1


def test_a_sources_entry_that_sets_what_holds_for_the_whole_build_is_told_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # `split: {validation: .., test: ..}` is how conf/data/jsonl.yaml sets the shares; in an entry it
    # was ignored without a word, and the build drew other shares than the user wrote.
    entry = {"source": "massive_text", "train_path": str(FIXTURES / "en-US.train.jsonl"),
             "dev_path": str(FIXTURES / "en-US.dev.jsonl"), "split": {"validation": 0.45, "test": 0.45},
             "min_duration_s": 0.5}
    with caplog.at_level("WARNING", logger="pipeline.data.sources"):
        _build(tmp_path, sources=[entry], split_shares={"validation": 0.3, "test": 0.3}, split=None)
    warned = [r.getMessage() for r in caplog.records if r.name == "pipeline.data.sources"]
    assert any("data.sources[0].split is a share of accounts per split" in m and "data.split_shares" in m for m in warned)
    assert any("data.sources[0]: ['min_duration_s'] hold for the whole build" in m for m in warned)


def test_a_nemo_file_outside_the_audio_folder_is_still_deleted_first_and_shown_without_its_ids(tmp_path: Path) -> None:
    # Files named after their speakers, in a folder named after a user: the deletion request finds the
    # first before its path is judged; the second is quarantined with its speaker's pseudonym in its id
    # and detail, and without its folders.
    root = tmp_path / "corpus"
    _tone(root / "a.wav")
    for speaker in ("JSMITH42", "ZZTOP99"):
        _tone(tmp_path / "home" / "jdoe" / f"{speaker}_0001.wav")
    manifest = root / "manifest.json"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in [
        {"audio_filepath": "a.wav", "duration": 1.0, "text": "hello there", "speaker": "OTHER-7"},
        *({"audio_filepath": str(tmp_path / "home" / "jdoe" / f"{speaker}_0001.wav"), "duration": 1.0, "text": "hi",
           "speaker": speaker} for speaker in ("JSMITH42", "ZZTOP99"))]))
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text('{"account_id": "JSMITH42"}\n')
    report, quarantine = _build(tmp_path, source="nemo", path=str(manifest), deletions=str(deletions),
                                split={"validation": 0.0, "test": 0.0})
    assert sorted(q["reason"] for q in quarantine) == ["deleted", "path_outside_root"]
    written = b"".join(p.read_bytes() for d in (tmp_path / "run", Path(report["dataset_path"])) for p in d.rglob("*")
                       if p.is_file())
    assert not [raw for raw in (b"JSMITH42", b"ZZTOP99", b"jdoe") if raw in written]


def test_a_nemo_file_outside_the_audio_folder_does_not_take_the_id_of_a_clip_inside(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    _tone(root / "0001.wav")
    _tone(tmp_path / "elsewhere" / "0001.wav")
    manifest = root / "manifest.json"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in [
        {"audio_filepath": str(tmp_path / "elsewhere" / "0001.wav"), "duration": 1.0, "text": "hi", "speaker": "A1"},
        {"audio_filepath": "0001.wav", "duration": 1.0, "text": "hello", "speaker": "B2"}]))
    report, quarantine = _build(tmp_path, source="nemo", path=str(manifest), split={"validation": 0.0, "test": 0.0})
    assert [q["reason"] for q in quarantine] == ["path_outside_root"] and report["records_kept"] == 1


def test_two_nemo_manifests_in_one_build_keep_their_clips_apart(tmp_path: Path) -> None:
    # Each manifest holds audio/0001.wav; made up from the path alone, the second clip's id repeated
    # the first's and it was quarantined as a duplicate. In a list the id carries the entry's name, and
    # a request by the bare id (as written before) still deletes.
    entries = []
    for name, freq in (("a", 300.0), ("b", 600.0)):
        root = tmp_path / name
        _tone(root / "audio" / "0001.wav", freq=freq)
        _tone(root / "audio" / "0002.wav", freq=freq + 50)
        (root / "manifest.json").write_text("".join(json.dumps({"audio_filepath": f"audio/000{i}.wav", "duration": 1.0,
                                                                 "text": "hello there"}) + "\n" for i in (1, 2)))
        entries.append({"source": "nemo", "name": name, "path": str(root / "manifest.json")})
    report, quarantine = _build(tmp_path, sources=entries, split_shares={"validation": 0.0, "test": 0.0}, split=None)
    ids = {r["utterance_id"] for ds in load_from_disk(report["dataset_path"]).values() for r in ds}
    assert ids == {"a/audio/0001", "a/audio/0002", "b/audio/0001", "b/audio/0002"} and quarantine == []
    deletions = tmp_path / "deletions.jsonl"
    deletions.write_text('{"utterance_id": "audio/0002"}\n')
    report, quarantine = _build(tmp_path / "again", sources=entries, split_shares={"validation": 0.0, "test": 0.0},
                                split=None, deletions=str(deletions))
    assert [q["reason"] for q in quarantine] == ["deleted", "deleted"] and report["records_kept"] == 2


def test_a_record_with_two_entities_in_one_word_is_quarantined(tmp_path: Path) -> None:
    """Its word's one BIO tag kept one of the two; the other trained as no entity."""
    with open(FIXTURES / "en-US.train.jsonl") as f:
        good = json.loads(next(f))
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    both = {**good, "id": "t2", "utt": "set 5-6 pm", "annot_utt": "set [time : 5]-[time : 6] pm"}
    train.write_text(json.dumps(good) + "\n" + json.dumps(both) + "\n")
    dev.write_text(json.dumps({**good, "id": "d1", "partition": "dev"}) + "\n")
    report, quarantine = _build(tmp_path, source="massive_text", train_path=str(train), dev_path=str(dev), split=None)
    assert report["records_kept"] == 2
    assert [(q["utterance_id"], q["reason"], q["detail"]) for q in quarantine] == [
        ("massive-t2", "bad_annotation",
         "entities 'time' ('5') and 'time' ('6') share the word '5-6'; a word is tagged with one entity, so annotate "
         "the word as one")]


def test_a_massive_record_of_another_partition_than_its_file_is_quarantined(tmp_path: Path) -> None:
    """Before the fix: MASSIVE's release keeps every partition of a locale in one file
    (`en-US.jsonl`, each record's `partition` train, dev or test); given as data.train_path, its
    test and dev utterances were trained on, and as data.dev_path its test ones validated on, with
    nothing said. A record whose `partition` is not its file's is quarantined, naming both."""
    lines = [json.loads(x) for x in (FIXTURES / "en-US.train.jsonl").read_text().splitlines()[:6]]
    dev_lines = [json.loads(x) for x in (FIXTURES / "en-US.dev.jsonl").read_text().splitlines()[:4]]
    lines[1]["partition"], lines[2]["partition"], dev_lines[0]["partition"] = "test", "dev", "test"
    del lines[3]["partition"]  # a file without the field is taken as the file it is given as
    train, dev = tmp_path / "en-US.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps(x) + "\n" for x in lines))
    dev.write_text("".join(json.dumps(x) + "\n" for x in dev_lines))
    report, quarantine = _build(tmp_path, source="massive_text", train_path=str(train), dev_path=str(dev), split=None)
    assert report["records_in"] == 10 and report["records_kept"] == 7
    assert [(q["utterance_id"], q["reason"], q["detail"]) for q in quarantine] == [
        (f"massive-{lines[1]['id']}", "other_partition", "en-US.jsonl: partition 'test' in the file given as "
         "data.train_path (MASSIVE's train partition); give each partition's records in its own file"),
        (f"massive-{lines[2]['id']}", "other_partition", "en-US.jsonl: partition 'dev' in the file given as "
         "data.train_path (MASSIVE's train partition); give each partition's records in its own file"),
        (f"massive-{dev_lines[0]['id']}", "other_partition", "dev.jsonl: partition 'test' in the file given as "
         "data.dev_path (MASSIVE's dev partition); give each partition's records in its own file")]
