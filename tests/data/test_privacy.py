"""Pseudonym keys, pseudonyms and deletion requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.build import run_data_stage
from pipeline.data.privacy import (dataset_utterance_id, load_deletions, load_key, pseudonym, quoted_ids, redact_ids,
                                   utterance_pseudonym)
from pipeline.data.splits import assign_split
from pipeline.runtime import PipelineError
from pipeline.tracking import NullTracker
from tests.data.test_build import build, make_cfg, record, split_of, write_export


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "pseudonym.key"
    first = load_key("PIPELINE_TEST_DATA_KEY_UNSET", key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(first) == 64
    assert load_key("PIPELINE_TEST_DATA_KEY_UNSET", key_file) == first


def test_environment_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_TEST_DATA_KEY", "from-the-environment")
    assert load_key("PIPELINE_TEST_DATA_KEY", tmp_path / "unused.key") == b"from-the-environment"
    assert not (tmp_path / "unused.key").exists()


def test_pseudonyms_depend_on_key_and_kind() -> None:
    a = pseudonym(b"k1", "acct", "amzn1.account.X")
    assert a == pseudonym(b"k1", "acct", "amzn1.account.X") and a.startswith("acct_")
    assert a != pseudonym(b"k2", "acct", "amzn1.account.X")
    assert pseudonym(b"k1", "dev", "same") != pseudonym(b"k1", "acct", "same").replace("acct_", "dev_")
    assert "amzn1" not in a


def test_split_is_a_function_of_the_account_and_roughly_follows_the_ratios() -> None:
    splits = [assign_split(b"k", f"acct_{i}", 0.1, 0.2) for i in range(3000)]
    assert splits == [assign_split(b"k", f"acct_{i}", 0.1, 0.2) for i in range(3000)]
    assert 0.07 < splits.count("validation") / 3000 < 0.13 and 0.17 < splits.count("test") / 3000 < 0.23
    # The splits are drawn from the pseudonym key (README: a new key, new splits); the seed plays no part.
    other = [assign_split(b"k2", f"acct_{i}", 0.1, 0.2) for i in range(3000)]
    moved = sum(a != b for a, b in zip(splits, other)) / 3000
    assert 0.3 < moved < 0.6  # independent draws at these shares disagree on 1 - (0.7^2 + 0.1^2 + 0.2^2) = 0.46


def test_deletion_requests(tmp_path: Path) -> None:
    path = tmp_path / "deletions.jsonl"
    path.write_text('{"utterance_id": "u1"}\n\n{"account_id": "A"}\n{"device_serial": "D"}\n')
    deletions = load_deletions(path, b"k")
    assert deletions.matches(b"k", {"utterance_id": "u1", "account_id": "other"})
    assert deletions.matches(b"k", {"utterance_id": "u2", "account_id": "A"})
    assert deletions.matches(b"k", {"utterance_id": "u3", "device_serial": "D"})
    assert not deletions.matches(b"k", {"utterance_id": "u4", "account_id": "B", "device_serial": "E"})
    assert not any("A" == p or "u1" == p for p in deletions.pseudonyms)

    path.write_text('{"utterance_id": "u1"}\n{"speaker": "A"}\n')
    with pytest.raises(PipelineError, match=r"deletions.jsonl line 2: needs a non-empty string"):
        load_deletions(path, b"k")
    with pytest.raises(PipelineError, match="file not found"):
        load_deletions(tmp_path / "missing.jsonl", b"k")


def test_an_utterance_id_that_carries_a_raw_identifier_is_stored_as_its_pseudonym() -> None:
    # FSDD names its files after the speaker; Speech Commands after the speaker's hash.
    fsdd = {"utterance_id": "fsdd/audio/0_george_0", "account_id": "george"}
    stored = dataset_utterance_id(b"k", fsdd["utterance_id"], fsdd)
    assert stored == pseudonym(b"k", "utt", "fsdd/audio/0_george_0") and "george" not in stored
    commands = {"account_id": "5170B77F", "device_serial": "SN-1"}
    assert dataset_utterance_id(b"k", "sc/backward_5170b77f_nohash_4", commands).startswith("utt_")
    assert dataset_utterance_id(b"k", "rec-sn-1-007", {"device_serial": "SN-1"}).startswith("utt_")  # any case
    assert dataset_utterance_id(b"k", "rec-007-ann-9", {"annotator_id": "ann-9"}).startswith("utt_")
    # An id that is the serial, the annotator or the account itself (the build leaves out an account
    # a reader made up from the id, a clip as its own account: tests/data/test_hf_sources.py).
    for name in ("device_serial", "annotator_id", "account_id"):
        assert dataset_utterance_id(b"k", "SERIAL-QQ7733", {name: "SERIAL-QQ7733"}).startswith("utt_")
    # An exporter's account number as a JSON number, or an id wrapped in a list or an object: the
    # record is quarantined for its type, and its id must not show the number there.
    assert dataset_utterance_id(b"k", "99115522-u1", {"account_id": 99115522}).startswith("utt_")
    assert dataset_utterance_id(b"k", "u2-ACCT-ZZ9911", {"account_id": ["ACCT-ZZ9911"]}).startswith("utt_")
    assert dataset_utterance_id(b"k", "u4-ANNOT-XX5522", {"annotator_id": {"id": "ANNOT-XX5522"}}).startswith("utt_")
    # An id with nothing in it: as given. A short id counts as a whole word of the id only
    # (LibriSpeech's speaker 19 in "19-198-0000"; it showed raw), never inside another word.
    assert dataset_utterance_id(b"k", "u0001", {"account_id": "amzn1.account.X"}) == "u0001"
    assert dataset_utterance_id(b"k", "yes_03", {"account_id": "03"}).startswith("utt_")
    assert dataset_utterance_id(b"k", "19/198/19-198-0000", {"account_id": "19"}).startswith("utt_")
    assert dataset_utterance_id(b"k", "42", {"account_id": "42"}).startswith("utt_")
    assert dataset_utterance_id(b"k", "u0193-b19x", {"account_id": "19"}) == "u0193-b19x"
    assert dataset_utterance_id(b"k", "take-7", {"account_id": "7", "device_serial": "1"}).startswith("utt_")
    assert dataset_utterance_id(b"k", "u0001", {"account_id": True, "device_serial": None}) == "u0001"
    # Erasure, the registry and the audit name an utterance by utterance_pseudonym: the stored
    # pseudonym is its own, so a request for the raw id still finds the row.
    assert utterance_pseudonym(b"k", stored) == stored == utterance_pseudonym(b"k", "fsdd/audio/0_george_0")
    assert utterance_pseudonym(b"k", "utt_not-a-pseudonym") == pseudonym(b"k", "utt", "utt_not-a-pseudonym")


# Bytes no decoder takes for audio. Random bytes were, now and then, misread as some format's header,
# and the decoder's message changed with them.
NOT_AUDIO = b"not audio: " * 400


def test_audio_that_fails_to_decode_is_named_without_the_records_raw_identifiers(tmp_path: Path) -> None:
    """Exports name audio files and folders after the device or account. A clip found bad only when
    decoding is named as the metadata checks name it, by its path inside the export with those ids as
    pseudonyms; the export folder itself (here named after the account) is not shown at all."""
    serial, account = "LEAKSERIAL9", "amzn1.account.LEAKACCT"
    export = tmp_path / account / "export"
    (export / "audio" / account).mkdir(parents=True)
    (export / "audio" / f"{serial}_corrupt.wav").write_bytes(NOT_AUDIO)
    (export / "audio" / f"{serial}_empty.wav").write_bytes(b"")
    (export / "audio" / account / "c.wav").write_bytes(NOT_AUDIO)
    audio = {"c1": f"audio/{serial}_corrupt.wav", "c2": f"audio/{serial}_empty.wav", "c3": f"audio/{account}/c.wav"}
    lines = [record(i, utterance_id=uid, audio=path, device_serial=serial, account=account)
             for i, (uid, path) in enumerate(audio.items())]
    lines.append(record(9))  # one good clip, so the build completes and saves a dataset
    write_export(export, lines)
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))

    assert report["records_kept"] == 1
    key = (tmp_path / "cache" / "pseudonym.key").read_bytes().strip()
    dev, acct = pseudonym(key, "dev", serial), pseudonym(key, "acct", account)
    details = {q["utterance_id"]: (q["reason"], q["detail"]) for q in quarantine}
    assert details == {
        "c1": ("unreadable_audio", f"cannot decode audio file 'audio/{dev}_corrupt.wav' (Format not recognised.)"),
        "c2": ("unreadable_audio", f"audio file 'audio/{dev}_empty.wav' is empty"),
        "c3": ("unreadable_audio", f"cannot decode audio file 'audio/{acct}/c.wav' (Format not recognised.)"),
    }
    outputs = [p for d in (tmp_path / "run", Path(report["dataset_path"])) for p in d.rglob("*") if p.is_file()]
    assert {"quarantine.jsonl", "build_report.json", "README.md"} <= {p.name for p in outputs}
    for path in outputs:
        content = path.read_bytes().lower()
        for raw in (serial, account, "LEAKACCT"):  # the account also names the export's folder
            assert raw.lower().encode() not in content, f"{raw!r} found in {path}"
    cached = [json.loads(x) for x in (Path(report["dataset_path"]) / "quarantine.jsonl").read_text().splitlines()]
    assert cached == quarantine


def test_no_raw_identifier_shows_through_an_id_equal_to_it_a_malformed_field_or_an_escaped_path(tmp_path: Path) -> None:
    """Leaks a user's export could cause: an utterance id that is the device serial (the build kept
    ids equal to an identifier as they were), an account number written as a JSON number or wrapped
    in a list (only strings were searched), and a Windows `DOMAIN\\user` annotator folder in a missing
    file's path (the detail quotes the path with `!r`, which doubles the backslash)."""
    export = tmp_path / "export"
    raw = ["SERIAL-QQ7733", "99115522", "ACCT-ZZ9911", "ANNOT-XX5522"]
    lines = [
        record(1, utterance_id="SERIAL-QQ7733", audio="audio/SERIAL-QQ7733.wav", device_serial="SERIAL-QQ7733"),
        record(2, utterance_id="99115522-u2", account=None, audio="audio/u002.wav") | {"account_id": 99115522},
        record(3, utterance_id="ACCT-ZZ9911-u3", audio="audio/u003.wav") | {"account_id": ["ACCT-ZZ9911"]},
        record(4, audio="audio/CORP\\ANNOT-XX5522/u004.wav", annotator_id="CORP\\ANNOT-XX5522"),
        # The annotator typed the account into an entity: the detail quoting it shows the pseudonym.
        record(12, account="ACCT-ZZ9911", entities=[{"type": "person", "value": "ACCT-ZZ9911"}]),
        *[record(i) for i in range(5, 12)],
    ]
    write_export(export, lines)
    for name in ("u002", "u003"):
        (export / "audio" / f"{name}.wav").write_bytes((export / "audio" / "u005.wav").read_bytes())
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))

    key = (tmp_path / "cache" / "pseudonym.key").read_bytes().strip()
    assert report["records_kept"] == 8  # the serial's clip and the seven plain ones
    reasons = sorted((q["utterance_id"], q["reason"]) for q in quarantine)
    assert reasons == sorted([(utterance_pseudonym(key, "99115522-u2"), "invalid_record"),
                              (utterance_pseudonym(key, "ACCT-ZZ9911-u3"), "invalid_record"),
                              ("u004", "missing_audio"), ("u012", "bad_annotation")])
    (entity,) = [q["detail"] for q in quarantine if q["reason"] == "bad_annotation"]
    assert pseudonym(key, "acct", "ACCT-ZZ9911") in entity
    (missing,) = [q["detail"] for q in quarantine if q["reason"] == "missing_audio"]
    assert pseudonym(key, "ann", "CORP\\ANNOT-XX5522") in missing
    assert utterance_pseudonym(key, "SERIAL-QQ7733") in split_of(report["dataset_path"])
    outputs = [p for d in (tmp_path / "run", Path(report["dataset_path"])) for p in d.rglob("*") if p.is_file()]
    for path in outputs:
        content = path.read_bytes()
        for value in raw:
            assert value.encode() not in content, f"{value!r} found in {path}"


def test_a_repeated_id_that_holds_the_first_records_account_is_shown_as_its_pseudonym(tmp_path: Path) -> None:
    """The first "call-JSMITH42-0001" holds its account and is stored as its pseudonym; a second record
    under the same id (an export merging the account) does not hold its own account, and its
    duplicate_id line showed the id raw. It shows the id as the first record's lines do."""
    export = tmp_path / "export"
    uid = "call-JSMITH42-0001"
    write_export(export, [record(1, utterance_id=uid, audio=f"audio/{uid}.wav", account="JSMITH42"),
                          record(2, utterance_id=uid, audio=f"audio/{uid}.wav", account="JSMITH42-merged"), record(3)])
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))
    key = (tmp_path / "cache" / "pseudonym.key").read_bytes().strip()
    assert [(q["utterance_id"], q["reason"]) for q in quarantine] == [(utterance_pseudonym(key, uid), "duplicate_id")]
    written = b"".join(p.read_bytes() for d in (tmp_path / "run", Path(report["dataset_path"])) for p in d.rglob("*")
                       if p.is_file())
    assert b"JSMITH42" not in written


def test_a_record_whose_text_holds_its_own_identifier_is_quarantined_and_the_id_reaches_no_output(tmp_path: Path) -> None:
    """An annotator pastes the device serial into the transcript, a user reads out the account and the
    entity repeats it: kept, the raw id sat in the dataset's transcript, text, words and entities."""
    export = tmp_path / "export"
    serial, account, annotator = "SN-QX-7734", "ACCT-ZZ9911", "ANNOT-XX5522"
    lines = [
        record(1, transcript=f"alexa play jazz music {serial}", device_serial=serial),
        record(2, account=account, transcript=f"alexa call {account.lower()}",
               entities=[{"type": "person", "value": account.lower()}], intent="calling_call"),
        record(3, intent=f"play_{annotator}", annotator_id=annotator),
        # Another record's id, not this one's: the check knows the record's own identifiers only.
        record(4, transcript="alexa play jazz music acct-zz9911"),
        *[record(i) for i in range(5, 10)],
    ]
    write_export(export, lines)
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))

    key = (tmp_path / "cache" / "pseudonym.key").read_bytes().strip()
    assert report["records_kept"] == 6 and report["quarantine_reasons"] == {"identifier_in_text": 3}
    details = {q["utterance_id"]: q["detail"] for q in quarantine}
    assert details["u001"].startswith("transcript holds its device_serial: ")
    assert details["u002"].startswith("transcript holds its account_id; entities holds its account_id: ")
    assert details["u003"].startswith("intent holds its annotator_id: ")
    by_id = {q["utterance_id"]: q for q in quarantine}
    assert by_id["u002"]["speaker"] == pseudonym(key, "acct", account)  # a request for the account finds it
    outputs = [p for d in (tmp_path / "run", Path(report["dataset_path"])) for p in d.rglob("*") if p.is_file()]
    for path in outputs:
        content = path.read_bytes().lower()
        for value in (serial, annotator):
            assert value.lower().encode() not in content, f"{value!r} found in {path}"


def test_a_short_identifier_is_redacted_where_it_is_a_whole_word() -> None:
    speaker = {"account_id": "19"}
    detail = "cannot decode audio file 'audio/19/198/19-198-0000.flac' (19 bytes)"
    acct = pseudonym(b"k", "acct", "19")
    assert redact_ids(b"k", detail, speaker) == f"cannot decode audio file 'audio/{acct}/198/{acct}-198-0000.flac' ({acct} bytes)"
    assert redact_ids(b"k", "audio/u0193/b19x.wav", speaker) == "audio/u0193/b19x.wav"


def test_redaction_replaces_an_identifier_in_every_case_form_it_detects() -> None:
    """lower() turns a dotted capital I into two characters, the pattern's case folding into one: a
    detail holding such an id lowered was detected as naming it, and kept it."""
    record_ids = {"account_id": "İZMİR-77", "device_serial": "SN-1234"}
    detail = f"cannot decode audio file 'audio/{'İZMİR-77'.lower()}/sn-1234.wav'"
    redacted = redact_ids(b"k", detail, record_ids)
    assert redacted == f"cannot decode audio file 'audio/{pseudonym(b'k', 'acct', 'İZMİR-77')}/{pseudonym(b'k', 'dev', 'SN-1234')}.wav'"
    # As written, the id is replaced in place and the rest of the detail keeps its case.
    assert redact_ids(b"k", "File 'audio/İZMİR-77.WAV'", record_ids) == f"File 'audio/{pseudonym(b'k', 'acct', 'İZMİR-77')}.WAV'"


def test_redaction_never_searches_the_pseudonyms_it_put_in() -> None:
    """With this key account 069's pseudonym holds "069": the text was lowercased and the pseudonym
    nested inside itself ('speakeracct_43a1...acct_43a1...069bb')."""
    acct = pseudonym(b"k", "acct", "069")
    assert "069" in acct
    assert redact_ids(b"k", "audio/Speaker069/Take.WAV", {"account_id": "069"}) == f"audio/Speaker{acct}/Take.WAV"


def test_a_second_id_is_not_searched_inside_the_first_ids_pseudonym() -> None:
    """Annotator "{hex}" is three characters of the device's pseudonym: replaced after the device, it
    was found inside that pseudonym too and the pseudonym came out broken."""
    dev = pseudonym(b"k", "dev", "SERIAL123")
    annotator = dev[-3:]
    ann = pseudonym(b"k", "ann", annotator)
    record = {"device_serial": "SERIAL123", "annotator_id": annotator}
    assert redact_ids(b"k", f"clips/SERIAL123/{annotator}.wav", record) == f"clips/{dev}/{ann}.wav"


def test_an_id_shaped_like_a_pseudonym_is_still_redacted() -> None:
    """A 16-hex device id in a folder named `dev_<id>` looked like a pseudonym redaction had put in,
    and was left raw in the quarantine line."""
    serial, account = "a1b2c3d4e5f60718", "5f2b9c1e7d3a4b6012"
    record = {"account_id": account, "device_serial": serial}
    detail = f"audio file 'acct_{account}/dev_{serial}/1.wav' does not exist"
    redacted = redact_ids(b"k", detail, record)
    assert serial not in redacted and account not in redacted
    assert redacted == f"audio file 'acct_{pseudonym(b'k', 'acct', account)}/dev_{pseudonym(b'k', 'dev', serial)}/1.wav' does not exist"


def test_an_id_inside_a_longer_id_leaves_no_tail_of_the_longer_one() -> None:
    record = {"account_id": "12345", "device_serial": "12345-01"}
    redacted = redact_ids(b"k", "audio/12345/12345-01.wav", record)
    assert redacted == f"audio/{pseudonym(b'k', 'acct', '12345')}/{pseudonym(b'k', 'dev', '12345-01')}.wav"


def test_every_case_form_of_an_id_is_found_by_both_checks() -> None:
    """re folds a dotted capital I to "i", lower() to "i" and a combining dot: the id's own upper
    case was missed by one matcher, its lower() by the other, and an utterance id stayed raw."""
    record_ids = {"account_id": "İzmir42"}
    for form in ("İzmir42", "İZMİR42", "izmir42", "İzmir42".lower()):
        assert dataset_utterance_id(b"k", f"{form}_0001", record_ids).startswith("utt_"), form
        assert "account_id" in quoted_ids({"transcript": f"call {form} now"}, record_ids).get("transcript", []), form
        assert redact_ids(b"k", f"audio/{form}/a.wav", record_ids) == f"audio/{pseudonym(b'k', 'acct', 'İzmir42')}/a.wav", form


def test_a_case_form_only_a_fold_finds_is_replaced_where_it_stands() -> None:
    """The lower() pass lowered the whole text: the rest of a path lost its case, and an id only re's
    folding finds ("İAB" for account "iab") became "i̇ab", which no check found any more."""
    serial = "SN-\u01301"  # SN-İ1; lower() gives SN-i and a combining dot, 1
    record = {"device_serial": serial, "account_id": "iab"}
    dev, acct = pseudonym(b"k", "dev", serial), pseudonym(b"k", "acct", "iab")
    assert redact_ids(b"k", f"/Data/Users/{serial.lower()}/Clip.wav", record) == f"/Data/Users/{dev}/Clip.wav"
    assert redact_ids(b"k", f"{serial.lower()} \u0130AB", record) == f"{dev} {acct}"
    # casefold: "ß" and "SS".
    assert redact_ids(b"k", "audio/STRASSE/Take.wav", {"account_id": "straße"}) == f"audio/{pseudonym(b'k', 'acct', 'straße')}/Take.wav"
    assert dataset_utterance_id(b"k", "STRASSE_0", {"account_id": "straße"}).startswith("utt_")
    # A match may end inside a character that folds to two: the next one starts in what is left.
    assert redact_ids(b"k", "audio/ßßsß/x.wav", {"account_id": "sss"}) == f"audio/{pseudonym(b'k', 'acct', 'sss')}{pseudonym(b'k', 'acct', 'sss')}/x.wav"
    left = redact_ids(b"k", "audio/\ufb01\ufb01\ufb01\ufb01\ufb01f/x.wav", {"device_serial": "i\ufb01f"})
    assert "i\ufb01f".casefold() not in left.replace(pseudonym(b"k", "dev", "i\ufb01f"), "/").casefold()


def test_a_short_id_is_left_in_a_detail_quoting_an_annotation() -> None:
    detail = "entity 'five mins' not in the transcript 'timer for 5 mins'"
    assert redact_ids(b"k", detail, {"account_id": "5"}, short=False) == detail
    assert redact_ids(b"k", detail, {"account_id": "5"}).count(pseudonym(b"k", "acct", "5")) == 1  # a path: replaced


def test_text_quotes_an_identifier_only_as_a_whole_word(tmp_path: Path) -> None:
    """Substrings quarantined ordinary commands: annotator "tom" in "tomorrow", account 150 in "1500
    seconds", serial "pla" in "play", account 2026 in the timestamp 2026-01-01."""
    export = tmp_path / "export"
    lines = [record(1, annotator_id="tom", transcript="alexa what is on tomorrow", entities=[], intent="calendar_query"),
             record(2, account="150", transcript="alexa set a timer for 1500 seconds", entities=[], intent="timer_set"),
             record(3, device_serial="pla", transcript="alexa play jazz music"),
             record(4, account="2026", recorded_at="2026-01-01T00:00:00Z"),
             record(5, annotator_id="tom", transcript="alexa call tom", entities=[], intent="calling_call"),
             *[record(i) for i in range(6, 10)]]
    write_export(export, lines)
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert [(q["utterance_id"], q["reason"]) for q in quarantine] == [("u005", "identifier_in_text")]
    assert report["records_kept"] == 8


def test_an_entity_type_holding_the_records_identifier_is_quarantined(tmp_path: Path) -> None:
    """Before the fix: only entity values were checked, so a type an annotation tool filled with the
    annotator's id reached the dataset's `entities` and `bio_tags` columns and the card's type table."""
    export = tmp_path / "export"
    annotator = "ANNOT-QQ4417"
    lines = [record(1, annotator_id=annotator, entities=[{"type": annotator, "value": "jazz"}]),
             *[record(i) for i in range(2, 8)]]
    write_export(export, lines)
    report, quarantine = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert [(q["utterance_id"], q["reason"]) for q in quarantine] == [("u001", "identifier_in_text")]
    assert quarantine[0]["detail"].startswith("entities holds its annotator_id: ")
    written = b"".join(p.read_bytes() for d in (tmp_path / "run", Path(report["dataset_path"])) for p in d.rglob("*")
                       if p.is_file())
    assert annotator.encode() not in written and annotator.lower().encode() not in written


def _export_and_corpus_erasing_u001(tmp_path: Path) -> tuple[Path, bytes, Path]:
    """An export of eight records, the cache's key, and a retraining corpus (no stamp yet) whose
    deletion requests name u001, as `make erase` leaves them."""
    export = tmp_path / "export"
    write_export(export, [record(i, account=f"A{i}") for i in range(1, 9)])
    key = load_key("PIPELINE_TEST_DATA_KEY_UNSET", tmp_path / "cache" / "pseudonym.key")
    corpus = tmp_path / "cache" / "retrain" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "deletion_requests.txt").write_text(pseudonym(key, "utt", "u001") + "\n")
    return export, key, corpus


def test_a_build_refuses_erased_requests_made_under_another_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make erase`'s requests (the retraining corpus under this cache) are applied by every build,
    matched as pseudonyms: under another key they would match nothing and the erased clip would be
    built again. The corpus names its key (`pseudonym_key_id`), and a build under another refuses.
    Before the fix: the build under the new key succeeded, u001 (erased) back in the dataset."""
    from pipeline.data.privacy import key_id

    export, old, corpus = _export_and_corpus_erasing_u001(tmp_path)
    (corpus / "pseudonym_key_id").write_text(key_id(old) + "\n")
    report, _ = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert "u001" not in split_of(report["dataset_path"])

    monkeypatch.setenv("PIPELINE_TEST_DATA_KEY_UNSET", "a rotated key")
    with pytest.raises(PipelineError, match=r"^the retraining corpus .* was made under pseudonym key "
                                            rf"{key_id(old)}, but the current key is .*cannot be matched") as err:
        build(tmp_path, "run2", path=str(export / "annotations.jsonl"))
    assert "a rotated key" not in str(err.value) and old.decode() not in str(err.value)


def test_a_background_recording_is_named_by_a_stable_keyed_pseudonym() -> None:
    """The name as written of a background recording may hold a serial: its pseudonym hides it, is the
    same under the same key in every evaluation (what pairs two runs), and differs under another."""
    from pipeline.data.privacy import is_recording_pseudonym, recording_pseudonym

    name = recording_pseudonym(b"key", "test/kitchen-DSN12345.flac")
    assert name == recording_pseudonym(b"key", "test/kitchen-DSN12345.flac") and "DSN12345" not in name
    assert name != recording_pseudonym(b"other key", "test/kitchen-DSN12345.flac")
    assert is_recording_pseudonym(name) and not is_recording_pseudonym("test/kitchen-DSN12345.flac")


def test_a_corpus_from_before_key_ids_is_stamped_as_assumed_by_the_build_that_warned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Before the fix: a corpus without a stamp warned at every build until a retraining or an erasure
    stamped it. The build that warned stamps it, saying the key was assumed; one that fails does not."""
    import logging

    from pipeline.data import privacy
    from pipeline.data.privacy import key_id

    export, key, corpus = _export_and_corpus_erasing_u001(tmp_path)
    stamp = corpus / "pseudonym_key_id"

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "records no pseudonym key id" in r.getMessage()]

    # A build that fails after the check (its build report cannot be written) leaves the corpus unstamped.
    (tmp_path / "failed" / "build_report.json").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"), pytest.raises(IsADirectoryError):
        run_data_stage(make_cfg(tmp_path, path=str(export / "annotations.jsonl")), tmp_path / "failed", NullTracker())
    assert len(warnings()) == 1 and str(corpus) in warnings()[0]
    assert not stamp.exists()

    monkeypatch.setattr(privacy, "_WARNED", set())  # a new process: the warning is given once per process
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        report, _ = build(tmp_path, path=str(export / "annotations.jsonl"))
    assert "u001" not in split_of(report["dataset_path"])
    assert len(warnings()) == 1
    lines = stamp.read_text().splitlines()
    assert lines[0] == key_id(key) and lines[1].startswith("assumed: ")

    monkeypatch.setattr(privacy, "_WARNED", set())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        again, _ = build(tmp_path, "run2", path=str(export / "annotations.jsonl"))
    assert warnings() == [] and again["fingerprint"] == report["fingerprint"]

    monkeypatch.setenv("PIPELINE_TEST_DATA_KEY_UNSET", "a rotated key")  # the assumed key is checked like any
    with pytest.raises(PipelineError, match=rf"^the retraining corpus .* was made under pseudonym key {key_id(key)}"):
        build(tmp_path, "run3", path=str(export / "annotations.jsonl"))
