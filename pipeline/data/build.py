"""The data stage: annotated clips in, a validated, pseudonymised DatasetDict out.

Two passes, so memory stays flat whatever the corpus size:
1. metadata (cheap, streamed): schema, deletions, duplicates, flags, annotations and audio paths are
   checked without decoding any audio; deleted and flagged clips are never opened;
2. audio (`datasets.map`, `data.num_proc` workers): decode, mono, resample to 16 kHz, check length
   and silence, store FLAC bytes in arrow files on disk.
Every input record ends in exactly one place: a split, or one line of `quarantine.jsonl`. A build
may read several sources (`data.sources`): each clip keeps its source's name in the `source` column,
the report counts records per source (`by_source`), deletions apply to every source and splits are
by account across all of them. A build in which every record is quarantined writes its quarantine
and report into the run folder and stops with the likeliest cause, instead of saving an empty dataset.

The dataset is saved under `<cache_dir>/datasets/<fingerprint>/`, where the fingerprint hashes the
input files (or a Hugging Face source's rows and embedded audio), every audio file's content, the
settings and CODE_VERSION; it is written to a temporary folder and renamed, so it exists only when
complete and a second run with the same inputs reuses it. Temporary folders of builds that were
killed are swept at the start of every build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Audio, Dataset, DatasetDict, Features, Value
from omegaconf import DictConfig

from pipeline.data.audio import ClipRejected, load_clip, resolve_audio
from pipeline.config import checked
from pipeline.data.card import split_rule, summarise, write_card
from pipeline.data.config import DataConfig, SplitShares, configured_key
from pipeline.data.features import SAMPLING_RATE, SPLITS, dataset_features
from pipeline.data.privacy import (ERASED_DIR, KEY_ID_FILE, Deletions, check_folder_key, dataset_utterance_id,
                                   erased_request_files, erased_requests, key_id, key_stamp, load_deletions,
                                   pseudonym, quoted_ids, redact_ids, stamp_folder_key, utterance_pseudonym)
from pipeline.data.schema import AnnotationError, ExportRecord, ValidationError, annotate, schema_problem, utf8_json
from pipeline.data.sources import RawRecord, Source, open_sources
from pipeline.data.splits import assign_split
from pipeline.run_folder import BUILD_REPORT, DATASET_CLIPS, QUARANTINE_LINES, REPORT_KEY_ID, read_build_report
from pipeline.runtime import PipelineError, publish, usable_cores, write_text_atomic
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

# Bump whenever the same inputs would now give a different dataset, so stale caches are not reused.
CODE_VERSION = 25  # 3: `copy_of` deletes a copy with its original, `train_only` keeps extra audio out of held-out splits;
                  # 4: `copy_of` is a dataset column, so erasure finds a copy whose original is not in the dataset;
                  # 5: records a source keeps out (held-out keyword clips) are quarantined, not skipped;
                  # 6: an utterance id that contains the record's account, device or annotator id is stored as its pseudonym;
                  # 7: a clip that fails to decode is named in the quarantine by its redacted path inside the export;
                  #    exports read as bytes (a byte-order mark dropped, a line not in UTF-8 quarantined), NeMo's
                  #    numbered speakers are accounts, an intent on an empty transcript is a bad annotation;
                  # 8: a number written with thousands commas ("1,500") is spelt as one number; flags match
                  #    data.quarantine_flags in any letter case, with spaces around them;
                  # 9: a MASSIVE record without an intent of its scenario is a bad annotation, a repeated
                  #    MASSIVE id names its file, SLURP's account is the sentence by default;
                  # 10: an utterance id equal to the record's serial, annotator or given account, or holding
                  #    an id written as a number or in a list, is stored as its pseudonym; quarantine details
                  #    quoting a raw id (an escaped path, an entity, a schema error) show its pseudonym
                  # 11: an hf row without an id column is named by its audio's hash, not its row (kept as an
                  #    alias for deletions); metadata.csv ids and transcripts are read as written; a repeated id
                  #    shows the first record's pseudonym; a NeMo path outside data.audio_dir is quarantined
                  #    after the deletion check, as path_outside_root; a listed NeMo manifest's made-up ids
                  #    carry the entry's name
                  # 12: a quarantine line of a record that passed the schema names its account and device
                  #    by pseudonym (a request for the account finds a flagged clip's line)
                  # 13: a record whose transcript, entities or other text holds its own raw identifier is
                  #    quarantined as identifier_in_text; an id with a lone surrogate, a number of over 4,300 digits
                  #    and an unopenable audio path are quarantined (they stopped the build); digit runs
                  #    over 12 digits are spelt one by one; "" as a false wake's intent is none, on a
                  #    command and a scenario without an intent are bad_annotation; an id shorter than
                  #    3 characters that is a whole word of the utterance id makes it a pseudonym; ids are
                  #    found in text only as whole words of 3 characters or more; a JSON line holding a lone
                  #    surrogate is invalid_record; ids are found in any case folding (re's, lower(), casefold());
                  #    an AAC clip whose header states up to 1.5x data.max_duration_s is decoded and measured;
                  #    a LF line that is not JSON and holds bare CRs is read as lines split at them
                  # 14: an inline annotation differing from the transcript in case or spacing keeps its own spans;
                  #    entity values match whole words in any spacing, with offsets on the transcript as written;
                  #    two entities in one word are bad_annotation
                  # 15: a speech corpus's clip that says a keyword under another label is a keyword clip; class-label
                  #    keyword and speaker columns are read by name; a constant account is one held-out speaker
                  # 16: a metadata.csv text cell pandas reads as missing (NA, None, null, nan) is read as written
                  # 17: a train_only clip whose copy_of names a validation or test clip is quarantined as train_only;
                  #    an account, device or annotator id is read without spaces around it (one account, one
                  #    pseudonym, one split; a deletion request for the id finds it); an entity type holding
                  #    the record's raw id is identifier_in_text
                  # 18: a copy (copy_of) whose account falls in another split than its original's is
                  #    quarantined as copy_in_other_split
                  # 19: an account, device or annotator id written with spaces around it is found without them in
                  #    the utterance id, the text and quarantine details (pseudonymised, identifier_in_text, redacted)
                  # 20: a date-like hf cell (pyarrow's timestamp, as a metadata.jsonl recorded_at is read) is text: copied
                  #    as written in metadata.jsonl, else as ISO 8601 (every such clip was invalid_record)
                  # 21: an hf entities column declared as Sequence({type, value, ...}), one list per field, is read
                  #    entity by entity (every such clip was invalid_record)
                  # 22: a MASSIVE record whose `partition` is not its file's is quarantined as other_partition
                  # 23: an inline `[type]` without a colon is quarantined naming the missing colon, not as an
                  #    unbalanced bracket
                  # 24: a blank hf cell of a field data.constants sets takes the constant (a required one was
                  #    quarantined); a blank wake_word_present cell is invalid_record (it was inferred from the intent)
                  # 25: an account trained on in one source and held out by another (a speech corpus's ranked
                  #    speakers) has its training clips moved to its held-out split, train_only ones quarantined
REASONS = (
    "invalid_record", "missing_audio", "unreadable_audio", "path_outside_root", "duplicate_id",
    "bad_annotation", "identifier_in_text", "too_short", "too_long", "silent_audio", "flagged", "deleted", "train_only",
    "copy_in_other_split",
)
# A source's own rule adds reasons of its own (RawRecord.excluded), e.g. a `speech` source's
# `held_out_keyword` and `heard_in_training` (pipeline/data/speech_recipe.py), a `massive_text`
# source's `other_partition` (pipeline/data/sources.py).
# Ids a build compares in any letter case, and how its warning names them: "AB12" and "ab12" are two
# accounts (two pseudonyms, two splits) that may be one, which only whoever exported them can tell.
_CASE_FIELDS = {"account_id": "account id(s)", "device_serial": "device serial(s)"}
# How much of the records the report names by position (_position) it shows; counts say how many in all.
_POSITIONS_SHOWN = 10  # records named per id spelling or moved account: enough to find it
_GROUPS_LISTED = 100  # case groups per field, or moved accounts: a report stays readable
# Columns the audio pass needs and the saved dataset drops. `_name` is how a quarantine detail names
# the audio file: its path inside the export with the record's raw identifiers redacted, since the
# decoding workers do not see the record.
_PRIVATE = {"_path": Value("string"), "_name": Value("string"), "_split": Value("string"), "_src": Value("int32"),
            "_row": Value("int64")}


@dataclass(frozen=True)
class Settings:
    """The `data.*` knobs that change the output (num_proc only changes speed)."""

    min_duration_s: float
    max_duration_s: float
    quarantine_flags: tuple[str, ...]
    validation: float
    test: float


@dataclass
class Plan:
    """Result of the metadata pass: rows still in the running, and what is already quarantined."""

    rows: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    records_in: int
    records_in_by_source: dict[str, int] = field(default_factory=dict)
    content: Any = field(default_factory=hashlib.sha256)  # records and embedded audio of `hf` sources
    # Raw utterance id -> split of every row still in the running, and the copies among them (row, the
    # raw id of the utterance it re-renders, whether it is train_only): a copy in another split than its
    # original puts one utterance's content on both sides of the split.
    split_of: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[dict[str, Any], str, bool]] = field(default_factory=list)
    # The build report's `ids_differing_only_in_case` (_case_groups): records by position, no raw id.
    case_groups: dict[str, Any] = field(default_factory=dict)
    # Each row's raw utterance id, whether it is train_only, and its position (by id(row)): what
    # moving a row to another split must know (_one_split_per_account).
    origin: dict[int, tuple[str, bool, dict[str, Any]]] = field(default_factory=dict)
    # The build report's `accounts_trained_and_held_out` (_one_split_per_account): records by position.
    moved_accounts: dict[str, Any] = field(default_factory=dict)


def run_data_stage(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cache_dir = Path(cfg.cache_dir)
    # Types, allowed values and ranges of every source's keys, before any record is read.
    data = checked(cfg.get("data"), DataConfig, "data")
    settings = _settings(data)
    key = configured_key(cfg.get("privacy"))
    sweep_abandoned(cache_dir / "datasets")
    sources, deletion_files = open_sources(cfg.data, data, cache_dir)
    (run_dir / DATASET_CLIPS).unlink(missing_ok=True)  # an earlier build's: this one may keep nothing
    try:
        report = _run(data, cache_dir, run_dir, sources, deletion_files, key, settings)
    finally:
        for source in sources:
            source.close()
    log.info("data: %d records in, %d kept %s, %d quarantined %s", report["records_in"],
             report["records_kept"], report["splits"], report["records_quarantined"], report["quarantine_reasons"])
    for split in ("validation", "test"):
        if report["splits"].get(split) == 0:  # a few accounts and a share that rounds to none of them
            log.warning("data: split %s holds no clip: the ASR stage needs validation clips and evaluation test "
                        "clips; with few accounts, raise that split's share of accounts (data.split or "
                        "data.split_shares, e.g. {validation: 0.2, test: 0.2})", split)
    tracker.log_summary({
        "data/records_in": report["records_in"], "data/records_kept": report["records_kept"],
        "data/records_quarantined": report["records_quarantined"], "data/hours": report["hours"],
        **{f"data/{split}": n for split, n in report["splits"].items()},
        **{f"data/quarantine/{reason}": n for reason, n in report["quarantine_reasons"].items()},
        **{f"data/by_source/{name}/{k}": v for name, counts in report.get("by_source", {}).items() for k, v in counts.items()},
    })
    return report


def _run(data: DataConfig, cache_dir: Path, run_dir: Path, sources: list[Source], deletion_files: list[Path],
         key: bytes, settings: Settings) -> dict[str, Any]:
    if len({s.root is None and s.hf is None for s in sources}) > 1:
        raise PipelineError(
            f"data.sources mixes text-only sources ({[s.name for s in sources if s.root is None and s.hf is None]}) "
            "with audio sources; build them separately"
        )
    deletions = Deletions()
    for path in deletion_files:
        deletions.pseudonyms |= load_deletions(path, key).pseudonyms
    # What `make erase` removed stays out of every later build: matched only under the key it was made with.
    # A corpus from before key ids were kept is taken as this key's, with a warning (`assumed`).
    assumed = check_folder_key(cache_dir / ERASED_DIR, key, f"the retraining corpus {cache_dir / ERASED_DIR} (deletions "
                     "every build under this cache applies)", "if that key is lost, apply its deletion requests "
                     "again from their original files, under the current key (data.deletions or the inbox)")
    erased = erased_request_files(cache_dir)
    deletions.pseudonyms |= erased_requests(erased).pseudonyms
    plan = _metadata_pass(sources, deletions, key, settings)
    _warn_case_groups(plan.case_groups)
    _warn_moved_accounts(plan.moved_accounts)
    fingerprint = _fingerprint(sources, [*deletion_files, *erased], plan, key, settings)
    final = cache_dir / "datasets" / fingerprint
    report = read_build_report(final)
    if report is not None:
        # A report from before builds named their key has none: the fingerprint hashes this key's id
        # in, so the dataset found under it was built under this key. The run's report says so; the
        # dataset's own, published, is left as it is.
        report.setdefault(REPORT_KEY_ID, key_id(key))
        report.setdefault("ids_differing_only_in_case", plan.case_groups)  # a report from before it was kept
        report.setdefault("accounts_trained_and_held_out", plan.moved_accounts)
        report["reused"] = True
        log.info("data: reusing the finished build %s", final)
    else:
        num_proc = data.num_proc or usable_cores()
        report = _build(sources, plan, settings, fingerprint, final, num_proc, run_dir, key)
        report["reused"] = False
    report["dataset_path"] = str(final.resolve())

    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(final / QUARANTINE_LINES, run_dir / QUARANTINE_LINES)
    if report.get("dataset_path") is not None and (final / "dataset_dict.json").is_file():
        write_clip_list(final, run_dir, key)
    (run_dir / BUILD_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    if assumed:
        # The build applied that corpus's requests as this key's, and warned: stamp it so (the stamp
        # says the key was assumed), so that later builds check it instead of warning each time.
        # Only now, the build done: a build that failed or was refused leaves it as it was.
        stamp_folder_key(cache_dir / ERASED_DIR, key)
    return report


def sweep_abandoned(datasets_dir: Path) -> None:
    """Delete `.tmp-<anything>-<pid>` folders whose process is gone, at the start of every build.

    A killed build leaves its temporary folder behind (it is renamed into place only when
    complete), and nothing else would ever remove it: the next build may have other inputs.
    A folder of a live process (another build running now) is left alone.
    """
    if not datasets_dir.is_dir():
        return
    for tmp in datasets_dir.glob(".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("data: removing %s, left by a build that no longer runs", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user


def _settings(data: DataConfig) -> Settings:
    # The shares: data.split_shares, or the shares form of data.split (`DataConfig.validate` made
    # sure there is one, but for massive_text, whose files fix every record's split, that each is in
    # range with some accounts left to train on, and that min_duration_s < max_duration_s).
    shares = data.shares() or SplitShares(validation=0.0, test=0.0)
    settings = Settings(
        min_duration_s=data.min_duration_s,
        max_duration_s=data.max_duration_s,
        quarantine_flags=tuple(sorted(data.quarantine_flags)),
        validation=shares.validation,
        test=shares.test,
    )
    return settings


def write_clip_list(dataset: Path, run_dir: Path, key: bytes, assumed: str | None = None) -> None:
    """`run_folder.DATASET_CLIPS` of the saved dataset into the run folder: a line per clip.

    The run folder's stamp (privacy.KEY_ID_FILE) names the key the list's pseudonyms were made with:
    erasure and the audit match the list only under that key. Written first, over any earlier
    build's stamp (whose list goes first), so a list is never found beside another key's stamp.
    `key` must be the one the dataset was built under (its `speaker` and `device` are copied as they
    are); `assumed` says why it is taken to be, where that is not recorded, and the stamp says so."""
    text = "".join(" ".join(c) + "\n" for c in clip_pseudonyms(dataset, key))
    (run_dir / DATASET_CLIPS).unlink(missing_ok=True)
    write_text_atomic(run_dir / KEY_ID_FILE, key_stamp(key, assumed))
    write_text_atomic(run_dir / DATASET_CLIPS, text)


def clip_pseudonyms(dataset: Path, key: bytes) -> list[tuple[str, ...]]:
    """Per clip of the saved dataset, sorted: its utterance's pseudonym, then every other one a deletion
    request can name it by (its account, device, and the original it is a copy of)."""
    from datasets import load_from_disk

    clips = []
    for split in load_from_disk(str(dataset)).values():
        columns = {c: split[c] for c in ("utterance_id", "speaker", "device", "copy_of") if c in split.column_names}
        for i, uid in enumerate(columns["utterance_id"]):
            others = [columns[c][i] for c in ("speaker", "device") if c in columns and columns[c][i]]
            if columns.get("copy_of") is not None and columns["copy_of"][i]:
                others.append(utterance_pseudonym(key, columns["copy_of"][i]))
            clips.append((utterance_pseudonym(key, uid), *others))
    return sorted(clips)


def _quarantine_line(row: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    """The quarantine line of a clip that passed the metadata checks (a row of the plan): its ids by
    pseudonym and its row in an hf source, as the metadata checks' own lines name a clip."""
    return {"source": row["source"], "utterance_id": row["utterance_id"],
            **{c: row[c] for c in ("speaker", "device") if row.get(c)},
            **({"row": row["_row"]} if row["_row"] >= 0 else {}), "reason": reason, "detail": detail}


def _metadata_pass(sources: list[Source], deletions: Deletions, key: bytes, settings: Settings) -> Plan:
    """Check everything that needs no audio; deletion matching comes first, before any id is echoed.
    utterance_ids are unique across all sources."""
    plan = Plan([], [], 0)
    seen: dict[str, str] = {}  # utterance id -> the id its quarantine and dataset lines show
    spellings: dict[tuple[str, str], dict[str, list[Any]]] = {}  # across sources: one account may be in two
    for index, source in enumerate(sources):
        before = plan.records_in
        for raw in source.records:
            plan.records_in += 1
            _note_spelling(spellings, source.name, raw)
            row = _check_record(source, index, raw, deletions, key, settings, seen, plan)
            if isinstance(row, dict):
                plan.rows.append(row)
            else:
                plan.quarantine.append({"source": source.name, **row[0]})
        plan.records_in_by_source[source.name] = plan.records_in - before
    plan.case_groups = _case_groups(spellings)  # positions only: the raw ids go with `spellings`
    plan.moved_accounts = _one_split_per_account(plan)  # before the copies: it moves rows between splits
    # After every source: an original may come after its copy, or in another source. A copy under
    # another account can fall in another split than its original: training audio that re-renders a
    # validation or test clip would train on it, and a held-out copy of a training clip tests what
    # was trained on. The original stays; the copy goes to the quarantine.
    crossing = {id(row): (plan.split_of[original], train_only) for row, original, train_only in plan.copies
                if plan.split_of.get(original, row["_split"]) != row["_split"]}
    if crossing:
        keep = []
        for row in plan.rows:
            if id(row) not in crossing:
                keep.append(row)
                continue
            split, train_only = crossing[id(row)]
            if train_only:
                line = _quarantine_line(row, "train_only", f"extra training audio re-rendering a clip in {split}: "
                                        "held-out splits keep only what was recorded")
            else:
                line = _quarantine_line(row, "copy_in_other_split", f"re-renders a clip in {split} (copy_of) but its "
                                        f"account is in {row['_split']}: one utterance would be on both sides of the "
                                        "split; export the copy under the original's account, or drop it")
            plan.quarantine.append(line)
        plan.rows = keep
    return plan


def _one_split_per_account(plan: Plan) -> dict[str, Any]:
    """Move the training clips of an account that is also held out to its held-out split (test
    before validation); quarantine those of them that are train_only. Returns the build report's
    `accounts_trained_and_held_out`: per account, the first of its moved records by position (source,
    file, line or row, as a quarantine line names a record), no id nor pseudonym. A report is kept
    as the build wrote it, so an account deleted later must not be named in it.

    Splits are by account, but a source may fix its records' splits by a rule of its own: a speech
    corpus holds out its speakers by rank (pipeline.data.speech_recipe), MASSIVE keeps its own split.
    One person under one account id in two sources (an export and an audio folder of the same
    accounts, or two corpora of one speaker) could then be trained on in one and held out in the
    other, and the held-out figures would judge a voice the model heard. Held out wins: it keeps the
    test honest, and no held-out clip moves into training. An account in validation and test alone
    is left there: the keyword test tunes on half of each keyword's clips and scores the other half
    (speech_recipe), one speaker's clips on both sides, and nothing of it is trained on."""
    splits_of: dict[str, Counter] = defaultdict(Counter)
    for row in plan.rows:
        splits_of[row["speaker"]][row["_split"]] += 1
    target = {speaker: ("test" if counts["test"] else "validation")
              for speaker, counts in splits_of.items() if counts["train"] and (counts["test"] or counts["validation"])}
    if not target:
        return {"accounts": 0, "clips_moved": 0, "where": []}
    moved: dict[str, dict[str, Any]] = {}
    keep = []
    for row in plan.rows:
        split = target.get(row["speaker"])
        if split is None or row["_split"] != "train":
            keep.append(row)
            continue
        entry = moved.setdefault(row["speaker"], {"moved_to": split, "clips_moved": 0, "train_only_quarantined": 0,
                                                  "sources": set(), "at": []})
        entry["sources"].add(row["source"])
        raw_id, train_only, at = plan.origin[id(row)]
        if len(entry["at"]) < _POSITIONS_SHOWN:
            entry["at"].append(at)
        if train_only:
            entry["train_only_quarantined"] += 1
            plan.split_of.pop(raw_id, None)
            plan.quarantine.append(_quarantine_line(row, "train_only", f"extra training audio of an account another "
                                                    f"source holds out in {split}: held-out splits keep only what was "
                                                    "recorded"))
            continue
        entry["clips_moved"] += 1
        row["_split"] = split
        plan.split_of[raw_id] = split
        keep.append(row)
    plan.rows = keep
    where = [{**e, "sources": sorted(e["sources"])} for e in moved.values()]
    return {"accounts": len(where), "clips_moved": sum(e["clips_moved"] for e in where), "where": where[:_GROUPS_LISTED]}


def _warn_moved_accounts(moved: dict[str, Any]) -> None:
    if moved.get("accounts"):
        log.warning("data: %d account(s) held out by one source were trained on in another; their %d training clip(s) "
                    "moved to the held-out split (%s's accounts_trained_and_held_out names their records by line or "
                    "row), so no held-out figure judges a voice the model heard",
                    moved["accounts"], moved["clips_moved"], BUILD_REPORT)


def _note_spelling(spellings: dict[tuple[str, str], dict[str, list[Any]]], source: str, raw: RawRecord) -> None:
    """Where each account id and device serial is written, by its case-folded form, then as read.

    Every record with the field counts, a deleted one too: a deletion request names one spelling,
    and the other spelling's clips stay. Values the reader made up (RawRecord.made_up) are not the
    export's to fix. Kept: a count and the first _POSITIONS_SHOWN positions per spelling."""
    if not isinstance(raw.data, dict):
        return
    at = _position(source, raw)
    for name in _CASE_FIELDS:
        value = raw.data.get(name)
        if name in raw.made_up or not isinstance(value, str) or not value.strip():
            continue
        value = value.strip()  # as the schema reads it (schema.ExportRecord)
        seen = spellings.setdefault((name, value.casefold()), {}).setdefault(value, [0, []])
        seen[0] += 1
        if len(seen[1]) < _POSITIONS_SHOWN:
            seen[1].append(at)


def _position(source: str, raw: RawRecord) -> dict[str, Any]:
    """Where a record is, without an id: its source, file (where a source reads several) and line or
    row, as a quarantine line names it."""
    return {"source": source, **({"file": raw.file} if raw.file else {}),
            **({"row": raw.row} if raw.row is not None else {"line": raw.line})}


def _case_groups(spellings: dict[tuple[str, str], dict[str, list[Any]]]) -> dict[str, Any]:
    """The build report's `ids_differing_only_in_case`: per field, the ids written in two or more
    letter cases, each group's spellings by the records that hold them (source, file where a source
    reads several, line or row, as quarantine lines name a record), in reading order. Neither the raw
    ids nor their pseudonyms: which pseudonyms differ only in case is not the report's to link."""
    out: dict[str, Any] = {name: {"groups": 0, "where": []} for name in _CASE_FIELDS}
    for (name, _), by_value in spellings.items():
        if len(by_value) < 2:
            continue
        out[name]["groups"] += 1
        if len(out[name]["where"]) < _GROUPS_LISTED:
            out[name]["where"].append({"spellings": [
                {"records": count, "at": positions} for count, positions in by_value.values()]})
    return out


def _warn_case_groups(groups: dict[str, Any]) -> None:
    """One warning for the ids written in more than one letter case, by count (the report names the
    records): the build keeps them apart, since only the export's owner knows whether they are one."""
    found = [f"{groups[name]['groups']} {what}" for name, what in _CASE_FIELDS.items()
             if groups.get(name, {}).get("groups")]
    if found:
        log.warning("data: the records of %s differ only in letter case (%s's ids_differing_only_in_case names them by "
                    "line or row); they are split as different accounts, and a deletion request takes only the "
                    "spelling it names: if they are one account, write the export's ids in one case",
                    " and ".join(found), BUILD_REPORT)


def _check_record(source: Source, index: int, raw: RawRecord, deletions: Deletions, key: bytes, settings: Settings,
                  seen: dict[str, str], plan: Plan) -> dict[str, Any] | tuple[dict[str, Any]]:
    """The dataset row of one record, or a 1-tuple holding its quarantine line."""
    data = raw.data
    at: dict[str, Any] = {"row": raw.row} if raw.row is not None else {}
    if data is None:
        return ({**(at or {"line": raw.line}), "reason": "invalid_record", "detail": raw.error},)
    if source.hf is not None:
        plan.content.update(_record_digest(data))
    uid = data.get("utterance_id")
    carried = {k: v for k, v in data.items() if k not in raw.made_up}  # raw identifiers no id may show
    where: dict[str, Any] = ({"utterance_id": dataset_utterance_id(key, uid, carried)} if isinstance(uid, str) and uid
                             else ({} if at else {"line": raw.line}))
    where.update(at)
    old_ids = [{"utterance_id": a, **({"account_id": a} if "account_id" in raw.made_up else {})} for a in raw.aliases]
    if deletions.matches(key, data) or any(deletions.matches(key, old) for old in old_ids):
        anon = {"utterance_id": utterance_pseudonym(key, uid), **at} if "utterance_id" in where else where
        return ({**anon, "reason": "deleted", "detail": "matched a deletion request"},)
    try:
        record = ExportRecord.model_validate(data)
    except ValidationError as err:
        return ({**where, "reason": "invalid_record", "detail": redact_ids(key, schema_problem(err), carried)},)
    halves = [name for name, value in record.model_dump().items() if utf8_json(value) is None]
    if halves:  # a JSON `\\ud83d` escape the schema let through: half an emoji, which no dataset column stores
        return ({**where, "reason": "invalid_record", "detail": f"{', '.join(halves)}: a \\u escape of half a character "
                 "(a lone UTF-16 surrogate, as an exporter that cuts an emoji in two writes); fix the line"},)
    if source.hf is None and source.root is not None and record.audio is None:
        return ({**where, "reason": "invalid_record", "detail": "audio: field required"},)
    # From here on a line names the clip's account and device too, by pseudonym: a request for the
    # account later (a flagged clip's, say) finds the line, as it finds the clip's dataset rows.
    where = {**where, "speaker": pseudonym(key, "acct", record.account_id),
             **({"device": pseudonym(key, "dev", record.device_serial)} if record.device_serial else {})}
    if record.utterance_id in seen:
        line = f"row {raw.row}" if at else f"{raw.file + ' ' if raw.file else ''}line {raw.line}"
        # The first record's identifiers may be what the id holds (its pseudonym was shown); this
        # record's own identifiers differ, and would leave the id raw.
        first = seen[record.utterance_id]
        shown = {**where, "utterance_id": first} if first != record.utterance_id else where
        return ({**shown, "reason": "duplicate_id", "detail": f"{line} repeats an earlier utterance_id"},)
    if raw.excluded is None:  # a record its source keeps out (a file outside the audio folder) claims no id
        seen[record.utterance_id] = where.get("utterance_id", record.utterance_id)
    # Compared as annotation tools write them ("Sensitive", " sensitive"): a flag must not be missed.
    wanted = {f.strip().casefold() for f in settings.quarantine_flags}
    flagged = sorted(f for f in record.flags if f.strip().casefold() in wanted)
    if flagged:
        return ({**where, "reason": "flagged", "detail": f"annotator flag(s) {flagged}; audio not copied"},)
    if raw.excluded is not None:
        return ({**where, "reason": raw.excluded[0],
                 "detail": redact_ids(key, raw.excluded[1], carried, short=raw.excluded[0] != "bad_annotation")},)
    try:
        row = annotate(record)
    except AnnotationError as err:
        # A transcript or intent may quote an id ("my account is ..."): the detail shows its pseudonym.
        return ({**where, "reason": "bad_annotation", "detail": redact_ids(key, str(err), carried, short=False)},)
    quoted = quoted_ids(_text_fields(row), carried)
    if quoted:
        # Kept, the raw id would sit in the dataset's text columns, and the recording likely speaks it.
        said = "; ".join(f"{field} holds its {' and '.join(names)}" for field, names in quoted.items())
        return ({**where, "reason": "identifier_in_text", "detail": f"{said}: a raw identifier in the annotation would "
                 "reach the dataset; remove it from the export (or leave the clip out) and build again"},)
    path, name = "", ""
    try:
        if source.hf is not None:
            path, name = _hf_audio(source, raw, plan)
        elif source.root is not None:
            path, name = str(resolve_audio(source.root, record.audio, source.allowed_roots)), record.audio
    except ClipRejected as err:
        return ({**where, "reason": err.reason, "detail": redact_ids(key, err.detail, carried)},)
    speaker = pseudonym(key, "acct", record.account_id)
    split = raw.split or assign_split(key, speaker, settings.validation, settings.test)
    if record.train_only and split != "train":
        return ({**where, "reason": "train_only", "detail": f"extra training audio of an account in {split}: "
                 "held-out splits keep only what was recorded"},)
    row.update(
        duration=0.0,
        speaker=speaker,
        device=pseudonym(key, "dev", record.device_serial) if record.device_serial else None,
        annotator=pseudonym(key, "ann", record.annotator_id) if record.annotator_id else None,
        source=source.name,
        utterance_id=where["utterance_id"],  # record.utterance_id as shown (strict schema: the same string)
        copy_of=dataset_utterance_id(key, record.copy_of, carried) if record.copy_of else None,
        _path=path,
        _name=redact_ids(key, name, carried),
        _split=split,
        _src=index,
        _row=raw.row if raw.row is not None else -1,
    )
    plan.split_of[record.utterance_id] = split
    plan.origin[id(row)] = (record.utterance_id, record.train_only, _position(source.name, raw))
    if record.copy_of:
        plan.copies.append((row, record.copy_of, record.train_only))
    return row


def _text_fields(row: dict[str, Any]) -> dict[str, str]:
    """The dataset row's free-text columns, by the export field a user would fix (not a timestamp's
    digits or the locale: account 2026 is not in 2026-01-01)."""
    fields = {name: row[name] for name in ("transcript", "intent", "scenario") if isinstance(row[name], str)}
    # An entity's type too: it reaches the `entities` and `bio_tags` columns and the card's type table.
    return {**fields, "entities": " ".join(f"{e['type']} {e['value']}" for e in row["entities"])}


def _hf_audio(source: Source, raw: RawRecord, plan: Plan) -> tuple[str, str]:
    """A Hugging Face row's audio and the name a quarantine detail gives it: ("", "") when its bytes
    are in the dataset (hashed here), else the file and its path inside the audiofolder (or its
    file name: the folders above it are not the export's to show)."""
    audio = raw.audio
    if not isinstance(audio, dict) or (audio.get("bytes") is None and not audio.get("path")):
        raise ClipRejected("missing_audio", f"row {raw.row} has no audio")
    if audio.get("bytes") is not None:
        plan.content.update(hashlib.sha256(audio["bytes"]).digest())
        return "", ""
    path = Path(audio["path"])
    if source.root is not None:  # an audiofolder: the same rules as a path in an export
        relative = str(path)
        for base in (source.root, Path(source.hf.path).absolute()):  # data.path itself may be a symlink
            if path.is_absolute() and path.is_relative_to(base):
                relative = str(path.relative_to(base))
                break
        return str(resolve_audio(source.root, relative, source.allowed_roots)), relative
    if path.is_dir():
        raise ClipRejected("missing_audio", f"row {raw.row}: audio path {str(path)!r} is a folder, not an audio file")
    if not path.is_file():
        raise ClipRejected("missing_audio", f"row {raw.row}: audio file {str(path)!r} does not exist")
    return str(path), path.name


def _record_digest(data: dict[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).digest()


def _fingerprint(sources: list[Source], deletions: list[Path], plan: Plan, key: bytes, settings: Settings) -> str:
    """Content hash of everything the dataset is a function of, the key included (via an HMAC):
    every source's files or rows, every audio file or embedded clip, the deletions, the settings."""
    h = hashlib.sha256()
    described = [[s.kind, s.name, s.options, [str(r) for r in s.allowed_roots]] for s in sources]
    h.update(json.dumps([CODE_VERSION, described, asdict(settings), key_id(key)], default=str).encode())
    for path in [*(f for s in sources for f in s.files), *deletions]:
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    h.update(plan.content.digest())
    for row in plan.rows:
        if row["_path"]:
            with open(row["_path"], "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:20]


def _decode_batch(batch: dict[str, list[Any]], min_s: float, max_s: float, parent_pid: int,
                  tables: dict[int, Any]) -> dict[str, list[Any]]:
    """`datasets.map` worker: one batch of clips (files, or rows of a Hugging Face dataset whose
    encoded bytes are fetched here, by row index) to FLAC bytes, or to a quarantine reason."""
    if os.getpid() != parent_pid:
        torch.set_num_threads(1)  # the workers already fill the cores
    stored: dict[int, bytes] = {}
    wanted: dict[int, list[int]] = {}
    for i, (path, src) in enumerate(zip(batch["_path"], batch["_src"])):
        if not path and src in tables:
            wanted.setdefault(src, []).append(i)
    for src, positions in wanted.items():
        column = tables[src].column_names[0]
        fetched = tables[src][[batch["_row"][i] for i in positions]][column]
        stored.update({i: a["bytes"] for i, a in zip(positions, fetched)})
    out: dict[str, list[Any]] = {"audio": [], "duration": [], "_reject": [], "_detail": []}
    for i, (path, transcript) in enumerate(zip(batch["_path"], batch["transcript"])):
        # load_clip names the clip by `name` only: the redacted path inside the export, never `path`.
        name = f"row {batch['_row'][i]}" if i in stored else batch["_name"][i]
        try:
            audio = stored[i] if i in stored else Path(path)
            clip = load_clip(audio, name, min_s, max_s, need_signal=bool(transcript.strip()))
        except ClipRejected as err:
            out["audio"].append(None)
            out["duration"].append(0.0)
            out["_reject"].append(err.reason)
            out["_detail"].append(err.detail)
            continue
        out["audio"].append({"bytes": clip.flac, "path": None})
        out["duration"].append(clip.duration)
        out["_reject"].append(None)
        out["_detail"].append(None)
    return out


def _build(sources: list[Source], plan: Plan, settings: Settings, fingerprint: str, final: Path, num_proc: int,
           run_dir: Path, key: bytes) -> dict[str, Any]:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{fingerprint}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "work").mkdir(parents=True)
    try:
        with_audio = any(s.root is not None or s.hf is not None for s in sources)
        features = dataset_features(with_audio=with_audio, with_source=True)
        meta_features = Features({**dataset_features(with_audio=False, with_source=True), **_PRIVATE})
        if plan.rows:
            meta = Dataset.from_list(plan.rows, features=meta_features)
        else:  # from_list cannot type an empty list
            meta = Dataset.from_dict({c: [] for c in meta_features}, features=meta_features)
        quarantine = list(plan.quarantine)
        rejected: set[int] = set()
        if with_audio and len(meta):
            tables = {i: s.hf.dataset.select_columns([s.hf.audio_column]) for i, s in enumerate(sources) if s.hf is not None}
            decoded_features = Features({**meta.features, "audio": Audio(sampling_rate=SAMPLING_RATE),
                                         "_reject": Value("string"), "_detail": Value("string")})
            meta = meta.map(
                _decode_batch, batched=True, batch_size=32, writer_batch_size=64,
                num_proc=max(1, min(num_proc, len(meta))), features=decoded_features,
                fn_kwargs={"min_s": settings.min_duration_s, "max_s": settings.max_duration_s,
                           "parent_pid": os.getpid(), "tables": tables},
                cache_file_name=str(tmp / "work" / "decoded.arrow"), new_fingerprint=f"{fingerprint}-decoded",
                desc="decoding audio",
            )
            status = meta.select_columns(["utterance_id", "source", "speaker", "device", "_row", "_reject", "_detail"])
            offset = 0
            for batch in status.iter(batch_size=1000):
                for j, reason in enumerate(batch["_reject"]):
                    if reason is not None:
                        rejected.add(offset + j)
                        quarantine.append(_quarantine_line({c: batch[c][j] for c in batch}, reason, batch["_detail"][j]))
                offset += len(batch["_reject"])
        splits = list(meta.select_columns(["_split"])["_split"]) if len(meta) else []
        kept = sum(1 for i in range(len(splits)) if i not in rejected)
        report = _report(sources, plan, quarantine, fingerprint, kept, key)
        if kept == 0:
            _stop_with_nothing_kept(sources, report, quarantine, run_dir)
        dd = DatasetDict()
        for name in SPLITS:
            keep = [i for i, s in enumerate(splits) if s == name and i not in rejected]
            dd[name] = meta.select(keep).select_columns(list(features))

        out = tmp / "out"
        # An empty split must still get one (empty) shard, or load_from_disk cannot read it back.
        dd.save_to_disk(str(out), num_shards={name: 1 for name, split in dd.items() if len(split) == 0})
        summary = summarise(DatasetDict({k: v.select_columns([c for c in v.column_names if c != "audio"]) for k, v in dd.items()}))
        report.update(splits=summary["splits"], hours=summary["hours"])
        with open(out / QUARANTINE_LINES, "w", encoding="utf-8") as f:
            for line in quarantine:
                f.write(json.dumps(line) + "\n")
        write_card(out / "README.md", summary, report, {s.name: split_rule(s.kind, s.options) for s in sources},
                   text_only=not with_audio)
        (out / BUILD_REPORT).write_text(json.dumps(report, indent=2) + "\n")
        del dd, meta
        publish(out, final, marker=BUILD_REPORT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _report(sources: list[Source], plan: Plan, quarantine: list[dict[str, Any]], fingerprint: str, kept: int,
            key: bytes) -> dict[str, Any]:
    """Counts overall and per source; every record is kept or quarantined, never lost. Names the key the
    dataset's pseudonyms were made with (REPORT_KEY_ID)."""
    out_by = Counter(q["source"] for q in quarantine)
    by_source = {
        s.name: {"records_in": plan.records_in_by_source.get(s.name, 0),
                 "records_kept": plan.records_in_by_source.get(s.name, 0) - out_by[s.name],
                 "records_quarantined": out_by[s.name]}
        for s in sources
    }
    report = {
        "source": sources[0].name if len(sources) == 1 else [s.name for s in sources],
        "fingerprint": fingerprint,
        REPORT_KEY_ID: key_id(key),
        "records_in": plan.records_in,
        "records_kept": kept,
        "records_quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(Counter(q["reason"] for q in quarantine).items())),
        "by_source": by_source,
        "ids_differing_only_in_case": plan.case_groups,
        "accounts_trained_and_held_out": plan.moved_accounts,
        "splits": {name: 0 for name in SPLITS},
        "hours": 0.0,
    }
    if report["records_in"] != kept + len(quarantine) or sum(b["records_kept"] for b in by_source.values()) != kept:
        raise AssertionError(f"data build lost records: {report}")
    return report


def _stop_with_nothing_kept(sources: list[Source], report: dict[str, Any], quarantine: list[dict[str, Any]],
                            run_dir: Path) -> None:
    """Write what was found into the run folder, then stop with the likeliest cause."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / QUARANTINE_LINES, "w", encoding="utf-8") as f:
        for line in quarantine:
            f.write(json.dumps(line) + "\n")
    (run_dir / BUILD_REPORT).write_text(json.dumps({**report, "dataset_path": None}, indent=2) + "\n")
    if not quarantine:
        files = [str(f) for s in sources for f in s.files]
        raise PipelineError(f"the data sources {[s.name for s in sources]} hold no records"
                            f"{' (empty: ' + ', '.join(files) + ')' if files else ''}; check data.path")
    reason, count = Counter(q["reason"] for q in quarantine).most_common(1)[0]
    example = next(q for q in quarantine if q["reason"] == reason)
    where = example.get("utterance_id") or (f"row {example['row']}" if "row" in example else f"line {example.get('line')}")
    hint = {
        "missing_audio": "audio paths are resolved under data.audio_dir (default: the annotation file's folder); "
                         "point it at the folder holding the audio",
        "path_outside_root": "the audio lies outside the export folder; if it is reached through a trusted "
                             "directory symlink, add that folder to data.allowed_roots",
        "deleted": "every record matched data.deletions",
        "invalid_record": ("check the field names (data.columns maps a dataset's columns onto them)"
                           if any(s.hf is not None for s in sources)
                           else "check the records against the annotation format (README, the canonical JSONL export)"),
    }.get(reason, "see the quarantine file for each record's reason")
    roots = sorted({str(s.root.resolve()) for s in sources if s.root is not None})
    raise PipelineError(
        f"every record was quarantined ({len(quarantine)} of {report['records_in']}); most common reason: {reason} "
        f"({count}), e.g. {where}: {example.get('detail')}"
        + (f" (audio root {', '.join(roots)})" if roots and reason in ("missing_audio", "path_outside_root") else "")
        + f"; {hint}. Details: {run_dir / 'quarantine.jsonl'}, {run_dir / 'build_report.json'}"
    )
